package objstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/transport/objstore"
)

func TestIsTransient(t *testing.T) {
	dialRefused := &url.Error{Op: "Put", URL: "http://127.0.0.1:1/b/o", Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("something"), false},
		{fmt.Errorf("get: %w", objstore.ErrNotFound), false},
		{fmt.Errorf("create: %w", objstore.ErrExists), false},
		{fmt.Errorf("x: %w", objstore.ErrNoBucket), false},
		{fmt.Errorf("x: %w", objstore.ErrPermission), false},
		{context.Canceled, false},
		{&url.Error{Op: "Get", URL: "u", Err: context.Canceled}, false},
		{&url.Error{Op: "Get", URL: "u", Err: context.DeadlineExceeded}, false},
		{dialRefused, true},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, true},
		{fmt.Errorf("read body: %w", io.ErrUnexpectedEOF), true},
		{&url.Error{Op: "Get", URL: "u", Err: io.EOF}, true},
		// minio-go's rewording of that EOF.
		{&url.Error{Op: "Put", URL: "u", Err: errors.New("Connection closed by foreign host u. Retry again.")}, true},
		// net/http's errServerClosedIdle (unexported): the server closed a
		// pooled connection as the client took it.
		{&url.Error{Op: "Get", URL: "u", Err: errors.New("http: server closed idle connection")}, true},
		{&net.DNSError{Err: "timeout", IsTimeout: true}, true},
		{minio.ErrorResponse{Code: "InternalError", StatusCode: 500}, true},
		{minio.ErrorResponse{Code: "ServiceUnavailable", StatusCode: 503}, true},
		{minio.ErrorResponse{Code: "SlowDown", StatusCode: 503}, true},
		{minio.ErrorResponse{Code: "TooManyRequests", StatusCode: 429}, true},
		{minio.ErrorResponse{Code: "RequestTimeout", StatusCode: 400}, true},
		{minio.ErrorResponse{Code: "ConditionalRequestConflict", StatusCode: 409}, true},
		{minio.ErrorResponse{Code: "InvalidArgument", StatusCode: 400}, false},
		{minio.ErrorResponse{Code: "MethodNotAllowed", StatusCode: 405}, false},
		{fmt.Errorf("%w (%w)", objstore.ErrPermission, minio.ErrorResponse{Code: "AccessDenied", StatusCode: 403}), false},
	} {
		if got := objstore.IsTransient(tc.err); got != tc.want {
			t.Errorf("IsTransient(%#v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
