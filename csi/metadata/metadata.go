// Package metadata asks a CSI driver's SnapshotMetadata service which ranges
// of a snapshot to read: the allocated ranges for a first backup, the ranges
// changed since the previous replicated snapshot for later ones. A stream
// that breaks is resumed from the end of the last range received
// (starting_offset). A driver without the service, or one that answers
// FAILED_PRECONDITION or UNIMPLEMENTED, yields ErrUnsupported: the caller
// then reads the whole volume.
package metadata

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/chunk"
)

// ErrUnsupported means the driver cannot say which blocks to read.
var ErrUnsupported = errors.New("the driver offers no snapshot metadata")

// Result is the ranges a snapshot asks to read.
type Result struct {
	Ranges   []chunk.Range // sorted, merged
	Capacity int64         // the volume's size as the driver reports it
}

// Bytes is the total length of the ranges.
func (r Result) Bytes() int64 {
	var n int64
	for _, x := range r.Ranges {
		n += x.Len
	}
	return n
}

// Supported reports whether the driver advertises the SnapshotMetadata service.
func Supported(ctx context.Context, conn *grpc.ClientConn) (bool, error) {
	resp, err := csi.NewIdentityClient(conn).GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		return false, fmt.Errorf("plugin capabilities: %w", err)
	}
	for _, c := range resp.GetCapabilities() {
		if c.GetService().GetType() == csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE {
			return true, nil
		}
	}
	return false, nil
}

// Allocated returns the allocated ranges of snapshot.
func Allocated(ctx context.Context, conn *grpc.ClientConn, snapshot string) (Result, error) {
	return collect[csi.SnapshotMetadata_GetMetadataAllocatedClient, *csi.GetMetadataAllocatedResponse](ctx, func(ctx context.Context, from int64) (csi.SnapshotMetadata_GetMetadataAllocatedClient, error) {
		return csi.NewSnapshotMetadataClient(conn).GetMetadataAllocated(ctx, &csi.GetMetadataAllocatedRequest{SnapshotId: snapshot, StartingOffset: from})
	})
}

// Delta returns the ranges in which target differs from base.
func Delta(ctx context.Context, conn *grpc.ClientConn, base, target string) (Result, error) {
	return collect[csi.SnapshotMetadata_GetMetadataDeltaClient, *csi.GetMetadataDeltaResponse](ctx, func(ctx context.Context, from int64) (csi.SnapshotMetadata_GetMetadataDeltaClient, error) {
		return csi.NewSnapshotMetadataClient(conn).GetMetadataDelta(ctx, &csi.GetMetadataDeltaRequest{BaseSnapshotId: base, TargetSnapshotId: target, StartingOffset: from})
	})
}

// response is what both streams' messages have in common.
type response interface {
	GetVolumeCapacityBytes() int64
	GetBlockMetadata() []*csi.BlockMetadata
}

// resumeAttempts bounds how often a broken stream is resumed.
const resumeAttempts = 3

func collect[S interface{ Recv() (R, error) }, R response](ctx context.Context, open func(context.Context, int64) (S, error)) (Result, error) {
	var res Result
	var from int64
	for attempt := 0; ; attempt++ {
		err := func() error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			s, err := open(ctx, from)
			if err != nil {
				return err
			}
			for {
				r, err := s.Recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return err
				}
				res.Capacity = r.GetVolumeCapacityBytes()
				for _, b := range r.GetBlockMetadata() {
					if b.GetByteOffset() < 0 || b.GetSizeBytes() <= 0 {
						return status.Errorf(codes.Internal, "driver sent a bad range (%d, %d)", b.GetByteOffset(), b.GetSizeBytes())
					}
					res.Ranges = append(res.Ranges, chunk.Range{Off: b.GetByteOffset(), Len: b.GetSizeBytes()})
					from = max(from, b.GetByteOffset()+b.GetSizeBytes())
				}
			}
		}()
		switch status.Code(err) {
		case codes.OK:
			res.Ranges = normalize(res.Ranges)
			return res, nil
		case codes.FailedPrecondition, codes.Unimplemented:
			return Result{}, fmt.Errorf("%w: %v", ErrUnsupported, err)
		case codes.Unavailable, codes.Aborted, codes.DeadlineExceeded:
			if attempt < resumeAttempts {
				select {
				case <-time.After(time.Duration(attempt+1) * 250 * time.Millisecond):
					continue
				case <-ctx.Done():
				}
			}
		}
		return Result{}, fmt.Errorf("snapshot metadata: %w", err)
	}
}

// normalize sorts ranges and merges overlapping or touching ones.
func normalize(rs []chunk.Range) []chunk.Range {
	slices.SortFunc(rs, func(a, b chunk.Range) int { return cmp.Compare(a.Off, b.Off) })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r.Off <= out[n-1].Off+out[n-1].Len {
			out[n-1].Len = max(out[n-1].Len, r.Off+r.Len-out[n-1].Off)
			continue
		}
		out = append(out, r)
	}
	return out
}
