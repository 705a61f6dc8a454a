package hook

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry/csi/params"
)

// Snapshot is what the hook hands on when a snapshot with Ferry parameters
// has been cut by the driver.
type Snapshot struct {
	SnapshotID     string             `json:"snapshot_id"`
	SourceVolumeID string             `json:"source_volume_id"`
	Name           string             `json:"name"` // the CSI request name
	SizeBytes      int64              `json:"size_bytes"`
	CreatedAt      time.Time          `json:"created_at"`
	ReadyToUse     bool               `json:"ready_to_use"`
	Replication    params.Replication `json:"replication"`
}

// Enqueuer queues replication jobs durably. Enqueue must be idempotent per
// SnapshotID and return only once the job survives a crash.
type Enqueuer interface {
	Enqueue(ctx context.Context, s Snapshot) error
}

const createSnapshot = "/csi.v1.Controller/CreateSnapshot"

// Hook forwards calls to the driver behind conn.
type Hook struct {
	driver          *grpc.ClientConn
	queue           Enqueuer
	secretNamespace string
	log             *slog.Logger
}

// New returns a Hook in front of driver that queues jobs on q.
// secretNamespace is the repository Secret's namespace for classes that
// name none (see params.Parse): the agents' namespace, or empty.
func New(driver *grpc.ClientConn, q Enqueuer, secretNamespace string, log *slog.Logger) *Hook {
	if log == nil {
		log = slog.Default()
	}
	return &Hook{driver: driver, queue: q, secretNamespace: secretNamespace, log: log}
}

// Server returns a gRPC server that proxies every call through the hook.
func (h *Hook) Server(opts ...grpc.ServerOption) *grpc.Server {
	opts = append(opts, grpc.ForceServerCodecV2(rawCodec{}), grpc.UnknownServiceHandler(h.handle))
	return grpc.NewServer(opts...)
}

func (h *Hook) handle(_ any, in grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(in)
	if !ok {
		return status.Error(codes.Internal, "hook: no method in stream")
	}
	start := time.Now()
	ctx := outgoing(in.Context())
	var err error
	if method == createSnapshot {
		err = h.createSnapshot(ctx, in)
	} else {
		err = h.forward(ctx, method, in)
	}
	h.log.Debug("csi call", "method", method, "code", status.Code(err).String(), "duration", time.Since(start))
	return err
}

// outgoing copies the caller's metadata onto the call to the driver, less
// the transport's own headers.
func outgoing(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	md = md.Copy()
	for k := range md {
		if strings.HasPrefix(k, ":") || k == "content-type" || k == "user-agent" || k == "grpc-timeout" {
			delete(md, k)
		}
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// forward pumps messages both ways until the driver ends the call.
func (h *Hook) forward(ctx context.Context, method string, in grpc.ServerStream) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out, err := h.driver.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		return err
	}
	go func() {
		for {
			var f frame
			if err := in.RecvMsg(&f); err != nil {
				if errors.Is(err, io.EOF) {
					out.CloseSend()
				} else {
					cancel() // the caller is gone
				}
				return
			}
			if err := out.SendMsg(&f); err != nil {
				return // the driver ended the call; RecvMsg below returns its status
			}
		}
	}()
	first := true
	for {
		var f frame
		err := out.RecvMsg(&f)
		if first {
			first = false
			if md, herr := out.Header(); herr == nil {
				if err := in.SendHeader(md); err != nil && !errors.Is(err, io.EOF) {
					h.log.Debug("send header", "method", method, "error", err)
				}
			}
		}
		if errors.Is(err, io.EOF) {
			in.SetTrailer(out.Trailer())
			return nil
		}
		if err != nil {
			in.SetTrailer(out.Trailer())
			return err
		}
		if err := in.SendMsg(&f); err != nil {
			return err
		}
	}
}

func (h *Hook) createSnapshot(ctx context.Context, in grpc.ServerStream) error {
	var f frame
	if err := in.RecvMsg(&f); err != nil {
		return err
	}
	req := &csi.CreateSnapshotRequest{}
	if err := proto.Unmarshal(f.payload, req); err != nil {
		return status.Errorf(codes.InvalidArgument, "decode CreateSnapshotRequest: %v", err)
	}
	rep, forwardParams, err := params.Parse(req.GetParameters(), h.secretNamespace)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	req.Parameters = forwardParams
	var header, trailer metadata.MD
	resp, err := csi.NewControllerClient(h.driver).CreateSnapshot(ctx, req, grpc.Header(&header), grpc.Trailer(&trailer))
	if len(header) > 0 {
		_ = in.SendHeader(header)
	}
	in.SetTrailer(trailer)
	if err != nil {
		return err
	}
	if rep != nil {
		snap := resp.GetSnapshot()
		job := Snapshot{
			SnapshotID: snap.GetSnapshotId(), SourceVolumeID: snap.GetSourceVolumeId(), Name: req.GetName(),
			SizeBytes: snap.GetSizeBytes(), CreatedAt: snap.GetCreationTime().AsTime(), ReadyToUse: snap.GetReadyToUse(),
			Replication: *rep,
		}
		if err := h.queue.Enqueue(ctx, job); err != nil {
			// The snapshot exists; failing the call makes the snapshotter
			// retry, which returns the same snapshot and queues again.
			h.log.Error("queue replication job", "snapshot", job.SnapshotID, "error", err)
			return status.Errorf(codes.Unavailable, "snapshot %s was created but its replication job could not be queued: %v", job.SnapshotID, err)
		}
		h.log.Info("replication queued", "snapshot", job.SnapshotID, "volume", job.SourceVolumeID,
			"volumesnapshot", job.Replication.SnapshotNamespace+"/"+job.Replication.SnapshotName)
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		return status.Errorf(codes.Internal, "encode CreateSnapshotResponse: %v", err)
	}
	return in.SendMsg(&frame{payload: b})
}
