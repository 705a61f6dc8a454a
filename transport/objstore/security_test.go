package objstore_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/objstore"
)

// A target is reached over TLS only as its URL says, and only when its
// certificate chains to the system roots or the ?ca= given: a wrong CA, a
// plain-HTTP server behind s3:// and a TLS server behind s3+http:// all
// fail, permanently, before any object is written.
func TestS3TLSRefused(t *testing.T) {
	tlsSrv := minio.StartTLS(t)
	tlsSrv.CreateBucket(t, "bkt")
	other := minio.StartTLS(t) // its CA did not sign tlsSrv's certificate
	plain := minio.Start(t)
	plain.CreateBucket(t, "bkt")

	for _, c := range []struct {
		name, url string
		srv       *minio.Server
		want      string
	}{
		{"wrong ca", "s3://" + tlsSrv.Endpoint + "/bkt?ca=" + url.QueryEscape(other.CAFile), tlsSrv, "certificate signed by unknown authority"},
		{"system roots only", "s3://" + tlsSrv.Endpoint + "/bkt", tlsSrv, "certificate signed by unknown authority"},
		{"s3 to a plain http server", "s3://" + plain.Endpoint + "/bkt", plain, "server gave HTTP response to HTTPS client"},
		{"s3+http to a tls server", "s3+http://" + tlsSrv.Endpoint + "/bkt", tlsSrv, "Client sent an HTTP request to an HTTPS server"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := openURL(t, c.srv, c.url)
			err := s.Create(t.Context(), "tls-probe", []byte("x"))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Create: %v, want an error saying %q", err, c.want)
			}
			if objstore.IsTransient(err) {
				t.Fatalf("classified transient, would be retried: %v", err)
			}
			if _, err := c.srv.Client(t).StatObject(t.Context(), "bkt", "tls-probe", miniogo.StatObjectOptions{}); err == nil {
				t.Fatal("the object was written")
			}
		})
	}

	t.Run("ca file without a certificate", func(t *testing.T) {
		ca := filepath.Join(t.TempDir(), "ca.pem")
		if err := os.WriteFile(ca, []byte("not a certificate\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		loc, err := objstore.ParseURL("s3://" + tlsSrv.Endpoint + "/bkt?ca=" + url.QueryEscape(ca))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := objstore.OpenEnv(t.Context(), loc, envOf(tlsSrv)); err == nil || !strings.Contains(err.Error(), "no PEM certificate found") {
			t.Fatalf("Open with a CA file holding no certificate: %v", err)
		}
	})
}

func envOf(srv *minio.Server) objstore.Env {
	return func(k string) string {
		switch k {
		case "AWS_ACCESS_KEY_ID":
			return srv.AccessKey
		case "AWS_SECRET_ACCESS_KEY":
			return srv.SecretKey
		}
		return ""
	}
}

// A store that claims an object larger than any Ferry writes gets an error
// from Get, not an allocation of that size: 1 TiB would kill the process.
// Over S3, a proxy in front of MinIO (standing for a hostile provider or a
// man in the middle of s3+http://) rewrites the Content-Length of GETs.
func TestGetRefusesHugeObject(t *testing.T) {
	const claimed = 1 << 40

	t.Run("s3", func(t *testing.T) {
		srv := minio.Start(t)
		srv.CreateBucket(t, "bkt")
		backend, err := url.Parse("http://" + srv.Endpoint)
		if err != nil {
			t.Fatal(err)
		}
		proxy := httputil.NewSingleHostReverseProxy(backend)
		proxy.ModifyResponse = func(resp *http.Response) error {
			if resp.Request.Method == http.MethodGet && strings.HasSuffix(resp.Request.URL.Path, "/big") {
				resp.ContentLength = claimed
				resp.Header.Set("Content-Length", strconv.FormatInt(claimed, 10))
			}
			return nil
		}
		lying := httptest.NewServer(proxy)
		t.Cleanup(lying.Close)
		s, err := objstore.NewS3(t.Context(), objstore.S3Config{
			Endpoint: strings.TrimPrefix(lying.URL, "http://"),
			Bucket:   "bkt",
			Region:   "us-east-1",
			Creds:    credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"big", "small"} {
			if err := s.Create(t.Context(), name, []byte("a few bytes")); err != nil {
				t.Fatal(err)
			}
		}
		if b, err := s.Get(t.Context(), "small"); err != nil || string(b) != "a few bytes" {
			t.Fatalf("Get through the proxy: %q, %v", b, err)
		}
		_, err = s.Get(t.Context(), "big")
		if err == nil || !strings.Contains(err.Error(), "object claims 1099511627776 bytes") || objstore.IsTransient(err) {
			t.Fatalf("Get of an object claiming 1 TiB: %v", err)
		}
	})

	t.Run("file", func(t *testing.T) {
		s, dir := newFile(t)
		if err := s.Create(t.Context(), "big", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, "big"), claimed); err != nil { // sparse
			t.Fatal(err)
		}
		_, err := s.Get(t.Context(), "big")
		if err == nil || !strings.Contains(err.Error(), "object claims 1099511627776 bytes") || errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("Get of a 1 TiB sparse file: %v", err)
		}
	})
}
