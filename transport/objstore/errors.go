package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/minio/minio-go/v7"
)

// opError is the error every Store returns: what was done to which object on
// which store, the sentinel it amounts to (if any) and the backend's cause.
type opError struct {
	op    string // "create", "get", ...
	name  string // object name or list prefix
	loc   string // Store.Location()
	kind  error  // one of the sentinels, or nil
	cause error  // backend error, or nil when kind says it all
}

func (e *opError) Error() string {
	var b strings.Builder
	if e.name == "" {
		fmt.Fprintf(&b, "%s %s: ", e.op, e.loc)
	} else {
		fmt.Fprintf(&b, "%s %q at %s: ", e.op, e.name, e.loc)
	}
	switch {
	case e.kind != nil && e.cause != nil:
		fmt.Fprintf(&b, "%v (%v)", e.kind, e.cause)
	case e.kind != nil:
		b.WriteString(e.kind.Error())
	default:
		fmt.Fprint(&b, e.cause)
	}
	return b.String()
}

func (e *opError) Unwrap() []error {
	var errs []error
	if e.kind != nil {
		errs = append(errs, e.kind)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// IsTransient reports whether err is worth retrying: timeouts, refused or
// reset connections, truncated responses, HTTP 5xx, 408, 429 and S3
// throttling codes. The sentinels, context cancellation, a caller's deadline,
// other 4xx responses and local errors are not.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	for _, s := range []error{ErrNotFound, ErrExists, ErrNoBucket, ErrPermission, context.Canceled} {
		if errors.Is(err, s) {
			return false
		}
	}
	if isCallerDeadline(err) {
		return false
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		return transientS3(resp)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		// The HTTP client's connection was closed under it (the server
		// reset it mid-request, and the transport closed its end).
		errors.Is(err, net.ErrClosed) {
		return true
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return true
	}
	// The server closed the connection before answering: io.EOF, which
	// minio-go rewrites into a message of its own (api.go, executeMethod);
	// or it closed a kept-alive connection just as the client took it
	// from its pool, which net/http reports with an error it does not
	// export (errServerClosedIdle). Servers close idle connections when
	// they like, so one such race must not take a target out of use.
	var uerr *url.Error
	if errors.As(err, &uerr) && (errors.Is(uerr.Err, io.EOF) ||
		strings.HasPrefix(uerr.Err.Error(), "Connection closed by foreign host") ||
		uerr.Err.Error() == "http: server closed idle connection") {
		return true
	}
	return false
}

// isCallerDeadline reports whether err carries context.DeadlineExceeded
// itself, which is what net/http returns when the request's context expires.
// Network timeouts only claim to be it via an Is method, and stay transient.
func isCallerDeadline(err error) bool {
	for err != nil {
		if err == context.DeadlineExceeded { // identity, not errors.Is
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if isCallerDeadline(e) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}

// s3Error is minio-go's ErrorResponse as this package reports it: with the
// S3 code and HTTP status in the message, which ErrorResponse.Error omits.
type s3Error struct{ resp minio.ErrorResponse }

func (e *s3Error) Error() string {
	msg := e.resp.Message
	if msg == "" {
		msg = e.resp.Error()
	}
	return fmt.Sprintf("S3 %s (HTTP %d): %s", e.resp.Code, e.resp.StatusCode, msg)
}

func (e *s3Error) Unwrap() error { return e.resp }

// transientCodes are S3 error codes worth retrying whatever the status.
// ConditionalRequestConflict is AWS's 409 for a conditional PUT racing
// another write of the same key; the retry then gets its definite answer.
var transientCodes = map[string]bool{
	"SlowDown": true, "SlowDownRead": true, "SlowDownWrite": true,
	"Throttling": true, "ThrottlingException": true, "RequestLimitExceeded": true,
	"RequestThrottled": true, "RequestTimeout": true, "InternalError": true,
	"ServiceUnavailable": true, "XMinioServerNotInitialized": true,
	"ConditionalRequestConflict": true,
}

func transientS3(resp minio.ErrorResponse) bool {
	switch c := resp.StatusCode; {
	case c >= 500, c == http.StatusRequestTimeout, c == http.StatusTooManyRequests:
		return true
	}
	return transientCodes[resp.Code]
}

// errRange reports a GetRange outside the object.
var errRange = errors.New("range outside the object")

// MaxObjectSize bounds the objects Get reads whole. Ferry's largest are
// manifests, which a reader decompresses to at most 1 GiB, and shards, a
// pack of at most 256 MiB plus one chunk. Get refuses an object that
// claims more (a broken or hostile server's Content-Length, a sparse file)
// before allocating for it, rather than die of a failed allocation.
const MaxObjectSize = 1<<30 + 1<<20

// checkObjectSize is Get's check of the size a store claims.
func checkObjectSize(size int64) error {
	if size > MaxObjectSize {
		return fmt.Errorf("object claims %d bytes, more than any Ferry object (%d)", size, int64(MaxObjectSize))
	}
	return nil
}

// checkName enforces the naming rule in the package documentation.
func checkName(name string) error {
	if name == "" {
		return errors.New("invalid object name: empty")
	}
	if len(name) > 1024 {
		return errors.New("invalid object name: longer than 1024 bytes")
	}
	if !utf8.ValidString(name) {
		return errors.New("invalid object name: not valid UTF-8")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("invalid object name: control character")
		}
	}
	for seg := range strings.SplitSeq(name, "/") {
		if err := checkSegment(seg); err != nil {
			return err
		}
	}
	return nil
}

func checkSegment(seg string) error {
	switch {
	case seg == "":
		return errors.New("invalid object name: empty path segment")
	case seg == "." || seg == "..":
		return fmt.Errorf("invalid object name: %q segment", seg)
	case strings.HasPrefix(seg, tmpPrefix):
		return fmt.Errorf("invalid object name: segment starts with reserved %q", tmpPrefix)
	}
	return nil
}

// checkPrefix accepts what a name could start with: its complete segments
// must be valid, the last one may be partial or empty.
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		if err := checkName(prefix[:i]); err != nil {
			return fmt.Errorf("invalid list prefix: %w", err)
		}
	}
	if !utf8.ValidString(prefix) || strings.ContainsFunc(prefix, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return errors.New("invalid list prefix: control character or invalid UTF-8")
	}
	return nil
}

func checkRange(off, length int64) error {
	if off < 0 || length < 0 || off > (1<<62) || length > (1<<62) {
		return fmt.Errorf("%w: offset %d, length %d", errRange, off, length)
	}
	return nil
}
