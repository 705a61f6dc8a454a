package reflinkcsi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const MiB = 1 << 20

// client holds the CSI clients of one connection to a driver.
type client struct {
	csi.IdentityClient
	csi.ControllerClient
	csi.NodeClient
	csi.SnapshotMetadataClient
}

func dial(t testing.TB, d *Driver) client {
	t.Helper()
	conn, err := grpc.NewClient(d.cfg.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return client{csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn), csi.NewSnapshotMetadataClient(conn)}
}

var (
	blockCap = &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	mountCap = &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
)

func createVolume(t testing.TB, c client, name string, size int64, src *csi.VolumeContentSource) *csi.Volume {
	t.Helper()
	resp, err := c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name:                name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities:  []*csi.VolumeCapability{blockCap},
		VolumeContentSource: src,
	})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

func createSnapshot(t testing.TB, c client, name, volID string) *csi.Snapshot {
	t.Helper()
	resp, err := c.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volID})
	if err != nil {
		t.Fatalf("CreateSnapshot %s: %v", name, err)
	}
	return resp.GetSnapshot()
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id},
	}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id},
	}}
}

func wantCode(t testing.TB, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeAt writes b at off in the file and syncs it.
func writeAt(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// usedBytes returns the bytes in use on the filesystem holding dir.
func usedBytes(t testing.TB, dir string) int64 {
	t.Helper()
	unix.Sync()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	return int64(fs.Blocks-fs.Bfree) * fs.Bsize
}

// span is a byte range [off, off+len).
type span struct{ off, len int64 }

// dataSpans returns the data ranges of a file by SEEK_DATA/SEEK_HOLE,
// independently of FIEMAP.
func dataSpans(t testing.TB, path string) []span {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	var spans []span
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		spans = append(spans, span{data, hole - data})
		off = hole
	}
	return spans
}

// metadataMsg is what the responses of both metadata streams have.
type metadataMsg interface {
	GetBlockMetadataType() csi.BlockMetadataType
	GetVolumeCapacityBytes() int64
	GetBlockMetadata() []*csi.BlockMetadata
}

// collect reads a metadata stream to its end and returns its ranges and
// the number of entries in each message. It checks what every message
// must hold.
func collect(t testing.TB, recv func() (metadataMsg, error), capacity int64) ([]span, []int, error) {
	t.Helper()
	var spans []span
	var sizes []int
	for {
		m, err := recv()
		if err == io.EOF {
			return spans, sizes, nil
		}
		if err != nil {
			return spans, sizes, err
		}
		if m.GetBlockMetadataType() != csi.BlockMetadataType_VARIABLE_LENGTH {
			t.Errorf("block metadata type %s", m.GetBlockMetadataType())
		}
		if m.GetVolumeCapacityBytes() != capacity {
			t.Errorf("volume capacity %d, want %d", m.GetVolumeCapacityBytes(), capacity)
		}
		sizes = append(sizes, len(m.GetBlockMetadata()))
		for _, b := range m.GetBlockMetadata() {
			if n := len(spans); n > 0 && spans[n-1].off+spans[n-1].len > b.GetByteOffset() {
				t.Errorf("range %d+%d overlaps or precedes %d+%d", b.GetByteOffset(), b.GetSizeBytes(), spans[n-1].off, spans[n-1].len)
			}
			spans = append(spans, span{b.GetByteOffset(), b.GetSizeBytes()})
		}
	}
}

func allocatedSpans(t testing.TB, c client, snap string, from int64, maxResults int32, capacity int64) ([]span, []int, error) {
	t.Helper()
	s, err := c.GetMetadataAllocated(context.Background(), &csi.GetMetadataAllocatedRequest{
		SnapshotId: snap, StartingOffset: from, MaxResults: maxResults,
	})
	if err != nil {
		return nil, nil, err
	}
	return collect(t, func() (metadataMsg, error) { return s.Recv() }, capacity)
}

func deltaSpans(t testing.TB, c client, base, target string, from int64, maxResults int32, capacity int64) ([]span, []int, error) {
	t.Helper()
	s, err := c.GetMetadataDelta(context.Background(), &csi.GetMetadataDeltaRequest{
		BaseSnapshotId: base, TargetSnapshotId: target, StartingOffset: from, MaxResults: maxResults,
	})
	if err != nil {
		return nil, nil, err
	}
	return collect(t, func() (metadataMsg, error) { return s.Recv() }, capacity)
}

// blockRound returns the blocks [off, off+n) touches, as a span.
func blockRound(off, n int64) span {
	start := off / blockSize * blockSize
	end := (off + n + blockSize - 1) / blockSize * blockSize
	return span{start, end - start}
}

func equalBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: %d bytes differ from the %d expected, first at offset %d", what, len(got), len(want), i)
	}
}
