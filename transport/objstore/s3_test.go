package objstore_test

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/objstore/objstoretest"
)

func newS3(t *testing.T, srv *minio.Server, bucket, prefix string) objstore.Store {
	t.Helper()
	s, err := objstore.NewS3(t.Context(), objstore.S3Config{
		Endpoint:   srv.Endpoint,
		Secure:     srv.CAFile != "",
		CACertFile: srv.CAFile,
		Bucket:     bucket,
		Prefix:     prefix,
		Creds:      credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// openURL opens a target URL the way the agent does, with credentials from
// the environment.
func openURL(t *testing.T, srv *minio.Server, raw string) objstore.Store {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	loc, err := objstore.ParseURL(raw)
	if err != nil {
		t.Fatal(err)
	}
	s, err := objstore.Open(t.Context(), loc)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestS3(t *testing.T) {
	srv := minio.Start(t)
	srv.CreateBucket(t, "shared")
	n := 0
	t.Run("Prefixed", func(t *testing.T) {
		objstoretest.Run(t, func(t *testing.T) objstore.Store {
			n++
			return newS3(t, srv, "shared", fmt.Sprintf("repo/%d", n))
		})
	})
	// One connection: a List callback that uses the store must not deadlock.
	t.Run("OneConn", func(t *testing.T) {
		objstoretest.Run(t, func(t *testing.T) objstore.Store {
			n++
			s, err := objstore.NewS3(t.Context(), objstore.S3Config{
				Endpoint: srv.Endpoint,
				Bucket:   "shared",
				Prefix:   fmt.Sprintf("one/%d", n),
				Creds:    credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
				MaxConns: 1,
			})
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
	})
	t.Run("BucketRoot", func(t *testing.T) {
		objstoretest.Run(t, func(t *testing.T) objstore.Store {
			n++
			bucket := fmt.Sprintf("root-%d", n)
			srv.CreateBucket(t, bucket)
			return newS3(t, srv, bucket, "")
		})
	})
}

// TLS is the production path: a private CA from ?ca=, and the retry
// wrapper from Open.
func TestS3TLSOpen(t *testing.T) {
	srv := minio.StartTLS(t)
	srv.CreateBucket(t, "tls")
	n := 0
	objstoretest.Run(t, func(t *testing.T) objstore.Store {
		n++
		raw := srv.URL("tls", fmt.Sprintf("p%d", n))
		if !strings.HasPrefix(raw, "s3://") || !strings.Contains(raw, "?ca=") {
			t.Fatalf("TLS server URL %q", raw)
		}
		return openURL(t, srv, raw)
	})
}

func TestS3UntrustedCertificate(t *testing.T) {
	srv := minio.StartTLS(t)
	srv.CreateBucket(t, "bkt")
	loc, err := objstore.ParseURL("s3://" + srv.Endpoint + "/bkt") // no ?ca=
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	s, err := objstore.Open(t.Context(), loc)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Create(t.Context(), "x", []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Create against an untrusted certificate: %v", err)
	}
	if objstore.IsTransient(err) {
		t.Fatalf("certificate error classified transient: %v", err)
	}
}

// Our objects must go up as one PUT (never multipart, whose ETag ends in
// "-N" and whose checksum is a checksum of parts) with a full-object CRC32C
// the server keeps and returns.
func TestS3SinglePutCRC32C(t *testing.T) {
	srv := minio.Start(t)
	srv.CreateBucket(t, "bkt")
	s := newS3(t, srv, "bkt", "pre")
	data := make([]byte, 20<<20+5) // above minio-go's 16 MiB multipart threshold
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := s.Create(t.Context(), "big", data); err != nil {
		t.Fatal(err)
	}
	oi, err := srv.Client(t).StatObject(t.Context(), "bkt", "pre/big", miniogo.StatObjectOptions{Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(oi.ETag, "-") {
		t.Errorf("ETag %q: object was uploaded in parts", oi.ETag)
	}
	if oi.ChecksumCRC32C == "" {
		t.Errorf("server kept no CRC32C (checksums: %+v)", oi)
	}
	info, err := s.Stat(t.Context(), "big")
	if err != nil {
		t.Fatal(err)
	}
	if want := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)); !info.HasCRC32C || info.CRC32C != want {
		t.Fatalf("Stat = %+v, want CRC32C %08x", info, want)
	}
}

func TestS3NoBucket(t *testing.T) {
	srv := minio.Start(t)
	s := newS3(t, srv, "missing", "p")
	ctx := t.Context()
	bucket := "missing"
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, objstore.ErrNoBucket) || objstore.IsTransient(err) {
			t.Errorf("%s on a missing bucket: %v, want permanent ErrNoBucket", op, err)
		}
		if err != nil && !strings.Contains(err.Error(), bucket) {
			t.Errorf("%s: error %q does not name the bucket", op, err)
		}
	}
	check("Create", s.Create(ctx, "x", []byte("x")))
	_, err := s.Get(ctx, "x")
	check("Get", err)
	_, err = s.Stat(ctx, "x")
	check("Stat", err)
	check("List", s.List(ctx, "", func(objstore.Info) error { return nil }))
	check("Delete", s.Delete(ctx, "x"))

	// A bucket deleted under a working store.
	bucket = "doomed"
	srv.CreateBucket(t, "doomed")
	d := newS3(t, srv, "doomed", "")
	if err := d.Create(ctx, "x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	srv.DeleteBucket(t, "doomed")
	_, err = d.Get(ctx, "x")
	check("Get after DeleteBucket", err)
}

func TestS3BadCredentials(t *testing.T) {
	srv := minio.Start(t)
	srv.CreateBucket(t, "bkt")
	s, err := objstore.NewS3(t.Context(), objstore.S3Config{
		Endpoint: srv.Endpoint,
		Bucket:   "bkt",
		Creds:    credentials.NewStaticV4(srv.AccessKey, "wrong-secret-key", ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Create(t.Context(), "x", []byte("x"))
	if !errors.Is(err, objstore.ErrPermission) || objstore.IsTransient(err) {
		t.Fatalf("Create with a wrong secret: %v, want permanent ErrPermission", err)
	}
	if strings.Contains(err.Error(), "wrong-secret-key") {
		t.Fatalf("error leaks the secret: %v", err)
	}
}

// An endpoint nobody listens on must fail fast, as transient, after the
// retry wrapper's few attempts: not after minio-go's own 10 retries.
func TestS3Unreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "id")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	// With a region the PUT itself goes out (no GetBucketLocation first),
	// which is where minio-go would retry on its own.
	var s objstore.Store
	for _, raw := range []string{"s3+http://" + addr + "/bucket/prefix", "s3+http://" + addr + "/bucket/prefix?region=us-east-1"} {
		loc, err := objstore.ParseURL(raw)
		if err != nil {
			t.Fatal(err)
		}
		s, err = objstore.Open(t.Context(), loc)
		if err != nil {
			t.Fatalf("Open must not contact the server: %v", err)
		}
		start := time.Now()
		err = s.Create(t.Context(), "x", []byte("x"))
		took := time.Since(start)
		if err == nil || !objstore.IsTransient(err) {
			t.Fatalf("Create to a closed port: %v, want a transient error", err)
		}
		// DefaultRetry: 12 attempts for a write, 8 to 16 s of waiting.
		if took > 20*time.Second {
			t.Fatalf("Create to a closed port took %v, want 16 s at most", took)
		}
		if took < 5*time.Second {
			t.Errorf("Create gave up after %v: the retry wrapper did not back off", took)
		}
		if !strings.Contains(err.Error(), "12 attempts") || !strings.Contains(err.Error(), addr) {
			t.Errorf("error lacks context: %v", err)
		}
		t.Logf("failed after %v: %v", took, err)
	}

	// A deadline stops the retries at once.
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = s.Get(ctx, "x")
	if time.Since(start) > time.Second || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with a 150ms deadline: %v after %v", err, time.Since(start))
	}
}

// A server that goes away and comes back: the outage is transient, the
// data survives, and the same Store works again.
func TestS3Restart(t *testing.T) {
	srv := minio.Start(t)
	srv.CreateBucket(t, "bkt")
	s := newS3(t, srv, "bkt", "")
	ctx := t.Context()
	if err := s.Create(ctx, "kept", []byte("survives")); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	_, err := s.Stat(ctx, "kept")
	if err == nil || !objstore.IsTransient(err) {
		t.Fatalf("Stat while the server is down: %v, want transient", err)
	}
	srv.Restart()
	b, err := s.Get(ctx, "kept")
	if err != nil || string(b) != "survives" {
		t.Fatalf("Get after restart: %q, %v", b, err)
	}
	if err := s.Create(ctx, "kept", []byte("other")); !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("Create over a restarted server's object: %v, want ErrExists", err)
	}
}

func TestOpenCredentials(t *testing.T) {
	srv := minio.Start(t)
	srv.CreateBucket(t, "bkt")
	creds := filepath.Join(t.TempDir(), "credentials")
	content := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n\n[ferry]\naws_access_key_id = %s\naws_secret_access_key = %s\n\n[wrong]\naws_access_key_id = %s\naws_secret_access_key = nope-nope-nope\n",
		srv.AccessKey, srv.SecretKey, srv.AccessKey, srv.SecretKey, srv.AccessKey)
	if err := os.WriteFile(creds, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	os.Unsetenv("AWS_ACCESS_KEY_ID")
	os.Unsetenv("AWS_SECRET_ACCESS_KEY")

	use := func(raw string) error {
		t.Helper()
		loc, err := objstore.ParseURL(raw)
		if err != nil {
			t.Fatal(err)
		}
		s, err := objstore.Open(t.Context(), loc)
		if err != nil {
			return err
		}
		return s.Create(t.Context(), fmt.Sprintf("obj-%d", time.Now().UnixNano()), []byte("x"))
	}
	if err := use(srv.URL("bkt", "") + "?profile=ferry"); err != nil {
		t.Errorf("profile ferry: %v", err)
	}
	if err := use(srv.URL("bkt", "")); err != nil {
		t.Errorf("default profile: %v", err)
	}
	if err := use(srv.URL("bkt", "") + "?profile=wrong"); !errors.Is(err, objstore.ErrPermission) {
		t.Errorf("profile with a wrong secret: %v, want ErrPermission", err)
	}
	err := use(srv.URL("bkt", "") + "?profile=absent")
	if err == nil || !strings.Contains(err.Error(), `"absent"`) {
		t.Errorf("absent profile: %v, want an error naming it", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	if err := use(srv.URL("bkt", "")); err == nil || !strings.Contains(err.Error(), "together") {
		t.Errorf("AWS_ACCESS_KEY_ID without AWS_SECRET_ACCESS_KEY: %v", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	if err := use(srv.URL("bkt", "")); err != nil {
		t.Errorf("environment credentials: %v", err)
	}
}
