package objstore

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"golang.org/x/sync/semaphore"
)

// S3Config configures an S3 store.
type S3Config struct {
	Endpoint   string // "host:port"
	Secure     bool   // HTTPS; plain HTTP is for loopback and trusted networks
	Bucket     string // must exist
	Prefix     string // optional key prefix, '/'-separated, no leading or trailing '/'
	Region     string // optional; empty asks the server once per bucket (GetBucketLocation)
	Creds      *credentials.Credentials
	CACertFile string // optional PEM bundle trusted in addition to the system roots
	MaxConns   int    // parallel HTTP requests per store; 0 means 8
	// StallTimeout fails a request whose connection moves no byte in
	// either direction for this long (a target that hangs: a black-holed
	// route, a stuck server), so WithRetry can retry it and readers can
	// fall back to other shards; 0 means DefaultStallTimeout.
	StallTimeout time.Duration
}

// DefaultStallTimeout is S3Config.StallTimeout's default.
const DefaultStallTimeout = 30 * time.Second

// s3Store writes each object with one PUT that carries If-None-Match: * and
// a CRC32C trailer the server verifies. minio-go's own retries are turned off
// (Options.MaxRetries = 1) so that WithRetry is the one retry layer: it knows
// that a Create retried after an ambiguous failure may meet its own object.
type s3Store struct {
	client *minio.Client
	core   minio.Core
	bucket string
	prefix string // "" or "p/q/", prepended to every object name
	secure bool
	loc    string
}

// NewS3 returns a Store on an existing bucket. It checks the configuration
// and resolves credentials (which may use ctx), but does not contact the
// server: a missing bucket or an unreachable endpoint shows up on the first
// operation.
func NewS3(ctx context.Context, cfg S3Config) (Store, error) {
	scheme := "s3+http"
	if cfg.Secure {
		scheme = "s3"
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	loc := scheme + "://" + cfg.Endpoint + "/" + cfg.Bucket
	if prefix != "" {
		loc += "/" + prefix
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("s3 store %s: %s", loc, fmt.Sprintf(format, args...))
	}
	if _, _, err := net.SplitHostPort(cfg.Endpoint); err != nil {
		return nil, fail("endpoint must be host:port: %v", err)
	}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return nil, fail("bucket: %v", err)
	}
	if prefix != "" {
		if err := checkName(prefix); err != nil {
			return nil, fail("prefix: %v", err)
		}
		prefix += "/"
	}
	if cfg.Creds == nil {
		return nil, fail("no credentials")
	}
	if _, err := cfg.Creds.GetWithContext(&credentials.CredContext{Context: ctx}); err != nil {
		return nil, fail("credentials: %v", err)
	}
	maxConns := cfg.MaxConns
	if maxConns <= 0 {
		maxConns = 8
	}
	tr, err := minio.DefaultTransport(cfg.Secure)
	if err != nil {
		return nil, fail("%v", err)
	}
	// Fail fast on an unreachable endpoint, and on a connection that
	// stalls; WithRetry decides how long to keep trying.
	stall := cfg.StallTimeout
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	dialer := &net.Dialer{Timeout: min(10*time.Second, stall), KeepAlive: 30 * time.Second}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &stallConn{Conn: c, timeout: stall}, nil
	}
	tr.MaxIdleConnsPerHost = max(maxConns, tr.MaxIdleConnsPerHost)
	if cfg.CACertFile != "" {
		if !cfg.Secure {
			return nil, fail("a CA certificate needs TLS (s3://, not s3+http://)")
		}
		pool, err := certPool(cfg.CACertFile)
		if err != nil {
			return nil, fail("%v", err)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:           cfg.Creds,
		Secure:          cfg.Secure,
		Transport:       &limitTransport{sem: semaphore.NewWeighted(int64(maxConns)), rt: tr},
		Region:          cfg.Region,
		TrailingHeaders: true, // needed for the CRC32C trailer
		MaxRetries:      1,    // one attempt; WithRetry retries
	})
	if err != nil {
		return nil, fail("%v", err)
	}
	return &s3Store{
		client: client,
		core:   minio.Core{Client: client},
		bucket: cfg.Bucket,
		prefix: prefix,
		secure: cfg.Secure,
		loc:    loc,
	}, nil
}

// stallConn fails a Read or Write that makes no progress for timeout: each
// call pushes the connection's deadline forward. An idle pooled connection
// times out too, and is then dropped and redialled, which is harmless.
type stallConn struct {
	net.Conn
	timeout time.Duration
}

func (c *stallConn) Read(b []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	return c.Conn.Read(b)
}

func (c *stallConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(b)
}

func certPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA certificate %s: no PEM certificate found", file)
	}
	return pool, nil
}

// limitTransport bounds the HTTP requests in flight: a request holds a slot
// from RoundTrip until its response body is closed. Waiting honours the
// request's context. Limiting here rather than per Store method keeps a
// List's callback free to use the store while the listing goes on.
type limitTransport struct {
	sem *semaphore.Weighted
	rt  http.RoundTripper
}

func (l *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := l.sem.Acquire(req.Context(), 1); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	resp, err := l.rt.RoundTrip(req)
	if err != nil {
		l.sem.Release(1)
		return nil, err
	}
	resp.Body = &releaseBody{ReadCloser: resp.Body, release: sync.OnceFunc(func() { l.sem.Release(1) })}
	return resp, nil
}

type releaseBody struct {
	io.ReadCloser
	release func()
}

func (b *releaseBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}

func (s *s3Store) Location() string { return s.loc }

func (s *s3Store) key(name string) string { return s.prefix + name }

// err translates a minio-go error for op on name.
func (s *s3Store) err(op, name string, err error) error {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return &opError{op: op, name: name, loc: s.loc, cause: err}
	}
	var kind error
	switch {
	case resp.Code == minio.NoSuchBucket:
		kind = ErrNoBucket
	case resp.Code == minio.NoSuchKey || resp.StatusCode == http.StatusNotFound:
		kind = ErrNotFound
	case op == "create" && (resp.Code == minio.PreconditionFailed || resp.StatusCode == http.StatusPreconditionFailed):
		kind = ErrExists
	case resp.StatusCode == http.StatusForbidden || resp.Code == minio.AccessDenied ||
		resp.Code == minio.InvalidAccessKeyID || resp.Code == minio.SignatureDoesNotMatch:
		kind = ErrPermission
	}
	var cause error = &s3Error{resp: resp}
	if resp.Code == minio.InvalidRange {
		cause = fmt.Errorf("%w: %w", errRange, cause)
	}
	return &opError{op: op, name: name, loc: s.loc, kind: kind, cause: cause}
}

func (s *s3Store) Create(ctx context.Context, name string, data []byte) error {
	if err := checkName(name); err != nil {
		return &opError{op: "create", name: name, loc: s.loc, cause: err}
	}
	opts := minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		// One PUT of known size, never multipart: our objects are at most
		// tens of MiB and a single PUT is atomic with its condition.
		DisableMultipart: true,
		Checksum:         minio.ChecksumCRC32C,
		SendContentMd5:   false,
		// Never hash the payload for the signature: Ferry authenticates
		// every object end to end (AES-GCM, and the index's CRC of each
		// shard), so a SHA-256 of each upload (7% of a backup's CPU
		// over plain HTTP) would prove nothing more; the CRC32C above lets
		// the store refuse a body damaged in transit.
		DisableContentSha256: true,
	}
	opts.SetMatchETagExcept("*") // If-None-Match: *
	_, err := s.client.PutObject(ctx, s.bucket, s.key(name), bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		return s.err("create", name, err)
	}
	return nil
}

func (s *s3Store) Get(ctx context.Context, name string) ([]byte, error) {
	return s.get(ctx, "get", name, minio.GetObjectOptions{}, -1)
}

// get reads one GET response whole. want is the length the caller asked
// for, or -1 for the whole object.
func (s *s3Store) get(ctx context.Context, op, name string, opts minio.GetObjectOptions, want int64) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, &opError{op: op, name: name, loc: s.loc, cause: err}
	}
	body, info, _, err := s.core.GetObject(ctx, s.bucket, s.key(name), opts)
	if err != nil {
		return nil, s.err(op, name, err)
	}
	defer body.Close()
	if want >= 0 && info.Size != want {
		// The object ends inside the range: the server sent less.
		return nil, &opError{op: op, name: name, loc: s.loc, cause: fmt.Errorf("%w: server returned %d of %d bytes", errRange, info.Size, want)}
	}
	if err := checkObjectSize(info.Size); err != nil {
		return nil, &opError{op: op, name: name, loc: s.loc, cause: err}
	}
	var buf []byte
	if info.Size >= 0 {
		buf = make([]byte, info.Size)
		_, err = io.ReadFull(body, buf)
	} else {
		buf, err = io.ReadAll(io.LimitReader(body, MaxObjectSize+1))
		if err == nil {
			err = checkObjectSize(int64(len(buf)))
		}
	}
	if err != nil {
		return nil, &opError{op: op, name: name, loc: s.loc, cause: err}
	}
	return buf, nil
}

func (s *s3Store) GetRange(ctx context.Context, name string, off, length int64) ([]byte, error) {
	const op = "get range of"
	if err := checkRange(off, length); err != nil {
		return nil, &opError{op: op, name: name, loc: s.loc, cause: err}
	}
	if length == 0 {
		// HTTP cannot ask for zero bytes.
		info, err := s.Stat(ctx, name)
		if err != nil {
			return nil, err
		}
		if off > info.Size {
			return nil, &opError{op: op, name: name, loc: s.loc, cause: fmt.Errorf("%w: offset %d of %d bytes", errRange, off, info.Size)}
		}
		return []byte{}, nil
	}
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+length-1); err != nil {
		return nil, &opError{op: op, name: name, loc: s.loc, cause: err}
	}
	return s.get(ctx, op, name, opts, length)
}

func (s *s3Store) Stat(ctx context.Context, name string) (Info, error) {
	if err := checkName(name); err != nil {
		return Info{}, &opError{op: "stat", name: name, loc: s.loc, cause: err}
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.key(name), minio.StatObjectOptions{Checksum: true})
	if err != nil {
		return Info{}, s.err("stat", name, err)
	}
	info := Info{Name: name, Size: oi.Size}
	info.CRC32C, info.HasCRC32C = parseCRC32C(oi.ChecksumCRC32C)
	return info, nil
}

// parseCRC32C decodes S3's base64 checksum value. A composite checksum of a
// multipart upload ("...-N") is not the object's CRC32C and is ignored.
func parseCRC32C(v string) (uint32, bool) {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(b) != 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(b), true
}

func (s *s3Store) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := checkPrefix(prefix); err != nil {
		return &opError{op: "list", name: prefix, loc: s.loc, cause: err}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// MinIO refuses a prefix ending in a "." or ".." segment; ask for the
	// directory then and filter here.
	server := s.key(prefix)
	if last := prefix[strings.LastIndexByte(prefix, '/')+1:]; last == "." || last == ".." {
		server = s.key(prefix[:len(prefix)-len(last)])
	}
	noOwner := false
	opts := minio.ListObjectsOptions{Prefix: server, Recursive: true, FetchOwner: &noOwner}
	for oi := range s.client.ListObjectsIter(ctx, s.bucket, opts) {
		if oi.Err != nil {
			return s.err("list", prefix, oi.Err)
		}
		name, ok := strings.CutPrefix(oi.Key, s.prefix)
		if !ok || !strings.HasPrefix(name, prefix) || name == "" || strings.HasSuffix(name, "/") {
			continue // not asked for, or a "directory" marker some tools create
		}
		info := Info{Name: name, Size: oi.Size}
		// S3 and MinIO listings carry no checksum values today; take one
		// if a server sends it.
		info.CRC32C, info.HasCRC32C = parseCRC32C(oi.ChecksumCRC32C)
		if err := fn(info); err != nil {
			return err
		}
	}
	// The iterator ends silently when ctx is cancelled.
	if err := ctx.Err(); err != nil {
		return &opError{op: "list", name: prefix, loc: s.loc, cause: err}
	}
	return nil
}

func (s *s3Store) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return &opError{op: "delete", name: name, loc: s.loc, cause: err}
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.key(name), minio.RemoveObjectOptions{}); err != nil {
		err = s.err("delete", name, err)
		if errors.Is(err, ErrNotFound) && !errors.Is(err, ErrNoBucket) {
			return nil
		}
		return err
	}
	return nil
}
