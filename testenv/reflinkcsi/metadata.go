package reflinkcsi

import (
	"fmt"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// defaultMaxResults is the number of ranges per response message when the
// request leaves max_results at 0.
const defaultMaxResults = 1024

// The SnapshotMetadata service reports VARIABLE_LENGTH ranges: they are
// the files' extents as FIEMAP gives them (merged where adjacent), so one
// range covers a whole written stretch however long, instead of one
// FIXED_LENGTH entry per block. Offsets and lengths are multiples of the
// XFS block size (4 KiB), except that a range is clipped to the
// starting_offset and to the snapshot's size.

// GetMetadataAllocated streams the snapshot file's data ranges.
func (d *Driver) GetMetadataAllocated(req *csi.GetMetadataAllocatedRequest, stream csi.SnapshotMetadata_GetMetadataAllocatedServer) error {
	if d.cfg.NoSnapshotMetadata {
		return status.Error(codes.Unimplemented, "SnapshotMetadata is switched off (NoSnapshotMetadata)")
	}
	if req.GetSnapshotId() == "" {
		return invalid("snapshot ID is required")
	}
	if req.GetMaxResults() < 0 {
		return invalid("max_results must not be negative")
	}
	sn, f, err := d.openSnapshot(req.GetSnapshotId())
	if err != nil {
		return err
	}
	defer f.Close()
	from := req.GetStartingOffset()
	if err := checkOffset(from, sn.Size); err != nil {
		return err
	}
	out := d.newRangeSender(req.GetMaxResults(), func(b []*csi.BlockMetadata) error {
		return stream.Send(&csi.GetMetadataAllocatedResponse{
			BlockMetadataType:   csi.BlockMetadataType_VARIABLE_LENGTH,
			VolumeCapacityBytes: sn.Size,
			BlockMetadata:       b,
		})
	})
	if err := allocated(newExtentReader(f, from, sn.Size), out.add); err != nil {
		return err
	}
	return out.close()
}

// GetMetadataDelta streams the ranges where the target snapshot's data
// may differ from the base's: those whose disk blocks the two files do
// not share.
func (d *Driver) GetMetadataDelta(req *csi.GetMetadataDeltaRequest, stream csi.SnapshotMetadata_GetMetadataDeltaServer) error {
	if d.cfg.NoSnapshotMetadata {
		return status.Error(codes.Unimplemented, "SnapshotMetadata is switched off (NoSnapshotMetadata)")
	}
	if req.GetBaseSnapshotId() == "" {
		return invalid("base snapshot ID is required")
	}
	if req.GetTargetSnapshotId() == "" {
		return invalid("target snapshot ID is required")
	}
	if req.GetMaxResults() < 0 {
		return invalid("max_results must not be negative")
	}
	base, bf, err := d.openSnapshot(req.GetBaseSnapshotId())
	if err != nil {
		return fmt.Errorf("base: %w", err)
	}
	defer bf.Close()
	target, tf, err := d.openSnapshot(req.GetTargetSnapshotId())
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer tf.Close()
	if base.Volume != target.Volume {
		return invalid("base snapshot %s is of volume %s, target snapshot %s of volume %s: both must be of the same volume",
			base.ID, base.Volume, target.ID, target.Volume)
	}
	if base.Created.After(target.Created) {
		return invalid("base snapshot %s was taken after target snapshot %s", base.ID, target.ID)
	}
	from := req.GetStartingOffset()
	if err := checkOffset(from, target.Size); err != nil {
		return err
	}
	out := d.newRangeSender(req.GetMaxResults(), func(b []*csi.BlockMetadata) error {
		return stream.Send(&csi.GetMetadataDeltaResponse{
			BlockMetadataType:   csi.BlockMetadataType_VARIABLE_LENGTH,
			VolumeCapacityBytes: target.Size,
			BlockMetadata:       b,
		})
	})
	err = changed(newExtentReader(bf, from, base.Size), newExtentReader(tf, from, target.Size), from, target.Size, out.add)
	if err != nil {
		return err
	}
	return out.close()
}

// openSnapshot returns a snapshot's record and opens its file. The lock
// is held only for that: the stream reads the open file, which stays
// readable even if the snapshot is deleted meanwhile.
func (d *Driver) openSnapshot(id string) (*snapshot, *os.File, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sn, err := d.store.snapshot(id)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.Open(d.store.snapshotFile(sn.ID))
	if err != nil {
		return nil, nil, err
	}
	return sn, f, nil
}

func checkOffset(off, size int64) error {
	if off < 0 || off > size {
		return fmt.Errorf("%w: starting offset %d is outside the snapshot's %d bytes", errOutOfRange, off, size)
	}
	return nil
}

// rangeSender batches ranges into response messages of at most max
// entries. It always sends at least one message, so a client learns the
// volume's capacity even when there are no ranges.
type rangeSender struct {
	max   int
	batch []*csi.BlockMetadata
	send  func([]*csi.BlockMetadata) error
	sent  bool
}

func (d *Driver) newRangeSender(maxResults int32, send func([]*csi.BlockMetadata) error) *rangeSender {
	n := int(maxResults)
	if n == 0 {
		n = defaultMaxResults
	}
	if d.breaks.Add(-1) >= 0 {
		// Config.BreakMetadataStreams: this stream dies after one message.
		inner, sent := send, false
		send = func(b []*csi.BlockMetadata) error {
			if sent {
				return status.Error(codes.Unavailable, "stream broken on purpose (BreakMetadataStreams)")
			}
			sent = true
			return inner(b)
		}
	}
	return &rangeSender{max: n, send: send}
}

func (s *rangeSender) add(off, length int64) error {
	s.batch = append(s.batch, &csi.BlockMetadata{ByteOffset: off, SizeBytes: length})
	if len(s.batch) < s.max {
		return nil
	}
	return s.flush()
}

func (s *rangeSender) flush() error {
	s.sent = true
	err := s.send(s.batch)
	s.batch = nil
	return err
}

func (s *rangeSender) close() error {
	if len(s.batch) > 0 || !s.sent {
		return s.flush()
	}
	return nil
}
