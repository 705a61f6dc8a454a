package reflinkcsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/testenv/xfs"
)

// Driver serves the Identity, Controller, Node and SnapshotMetadata
// services. Build it with New and serve with Run.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	csi.UnimplementedSnapshotMetadataServer

	cfg   Config
	log   *slog.Logger
	store store

	// mu serialises every call that reads or changes records, loop
	// devices or mounts. The driver is for tests: one lock keeps it
	// obviously correct, and no call holds it for long (the metadata
	// streams release it before they send).
	mu sync.Mutex

	breaks atomic.Int64 // metadata streams still to break (Config.BreakMetadataStreams)
}

// New validates cfg, checks that cfg.Dir can hold reflinks and prepares
// it. A restarted driver finds the volumes and snapshots a previous one
// left in cfg.Dir.
func New(cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("reflinkcsi: %w", err)
	}
	if fi, err := os.Stat(cfg.Dir); err != nil {
		return nil, fmt.Errorf("reflinkcsi: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("reflinkcsi: %s is not a directory", cfg.Dir)
	}
	if err := xfs.CheckReflink(cfg.Dir); err != nil {
		return nil, fmt.Errorf("reflinkcsi: %w", err)
	}
	d := &Driver{cfg: cfg, log: cfg.Logger, store: store{dir: cfg.Dir}}
	d.breaks.Store(int64(cfg.BreakMetadataStreams))
	if d.log == nil {
		d.log = slog.Default()
	}
	if err := d.store.open(); err != nil {
		return nil, fmt.Errorf("reflinkcsi: %w", err)
	}
	return d, nil
}

// Run listens on the configured endpoint and serves until ctx is done.
func (d *Driver) Run(ctx context.Context) error {
	path, err := socketPath(d.cfg.Endpoint)
	if err != nil {
		return err
	}
	// A socket left by a driver that was killed.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(d.logUnary),
		grpc.ChainStreamInterceptor(d.logStream),
	)
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	csi.RegisterSnapshotMetadataServer(srv, d)

	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		// Let calls in flight finish, but not for ever: a client may
		// have walked away from a stream.
		t := time.AfterFunc(10*time.Second, srv.Stop)
		srv.GracefulStop()
		t.Stop()
	}()
	d.log.Info("serving", "driver", DriverName, "endpoint", d.cfg.Endpoint, "dir", d.cfg.Dir,
		"node", d.cfg.NodeID, "controllerPublish", d.cfg.ControllerPublish)
	err = srv.Serve(lis)
	if ctx.Err() != nil {
		<-stopped
		return nil
	}
	return err
}

func (d *Driver) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	err = statusError(err)
	d.logCall(ctx, info.FullMethod, start, req, err)
	return resp, err
}

func (d *Driver) logStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	rs := &recordingStream{ServerStream: ss}
	err := statusError(handler(srv, rs))
	d.logCall(ss.Context(), info.FullMethod, start, rs.req, err, slog.Int("messages", rs.sent))
	return err
}

// recordingStream keeps a server stream's request for the log and counts
// the messages sent.
type recordingStream struct {
	grpc.ServerStream
	req  any
	sent int
}

func (s *recordingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && s.req == nil {
		s.req = m
	}
	return err
}

func (s *recordingStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.sent++
	}
	return err
}

func (d *Driver) logCall(ctx context.Context, method string, start time.Time, req any, err error, extra ...slog.Attr) {
	code := status.Code(err)
	attrs := append([]slog.Attr{
		slog.String("method", method),
		slog.Duration("duration", time.Since(start)),
		slog.String("code", code.String()),
		slog.String("request", stripSecrets(req)),
	}, extra...)
	level := slog.LevelInfo
	if err != nil {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
		if code == codes.Internal || code == codes.Unknown {
			level = slog.LevelError
		}
	}
	d.log.LogAttrs(ctx, level, "csi call", attrs...)
}

// statusError turns the errors of the driver's helpers into gRPC status
// errors; it is the one place that maps conditions to codes.
func statusError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, errNotFound):
		code = codes.NotFound
	case errors.Is(err, errExists):
		code = codes.AlreadyExists
	case errors.Is(err, errPrecondition):
		code = codes.FailedPrecondition
	case errors.Is(err, errOutOfRange):
		code = codes.OutOfRange
	case errors.Is(err, errInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, errExhausted):
		code = codes.ResourceExhausted
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}

// invalid returns an INVALID_ARGUMENT error; the RPCs validate their
// requests before doing anything.
func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
