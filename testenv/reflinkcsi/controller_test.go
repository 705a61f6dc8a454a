package reflinkcsi

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// A snapshot is a reflink copy: it costs no data blocks, and writes to the
// volume after it leave it unchanged.
func TestSnapshotIsReflink(t *testing.T) {
	d := StartTest(t, Config{})
	c := dial(t, d)
	vol := createVolume(t, c, "data", 64*MiB, nil)
	volFile := d.store.volumeFile(vol.GetVolumeId())
	data := randomBytes(1, 32*MiB)
	writeAt(t, volFile, 0, data)

	before := usedBytes(t, d.cfg.Dir)
	snap := createSnapshot(t, c, "data-1", vol.GetVolumeId())
	if grew := usedBytes(t, d.cfg.Dir) - before; grew > 1*MiB {
		t.Errorf("snapshot of 32 MiB of data used %d more bytes: not a reflink", grew)
	}
	if snap.GetSizeBytes() != 64*MiB || !snap.GetReadyToUse() || snap.GetSourceVolumeId() != vol.GetVolumeId() {
		t.Errorf("snapshot = %v", snap)
	}

	writeAt(t, volFile, 4*MiB, randomBytes(2, MiB))
	snapBytes := readFile(t, d.store.snapshotFile(snap.GetSnapshotId()))
	equalBytes(t, "snapshot after writing the volume", snapBytes[:len(data)], data)
	equalBytes(t, "snapshot tail", snapBytes[len(data):], make([]byte, 32*MiB))
}

// A volume restored from a snapshot, or cloned from a volume, holds its
// source's bytes and grows to the size asked for.
func TestCreateVolumeFromSource(t *testing.T) {
	d := StartTest(t, Config{})
	c := dial(t, d)
	vol := createVolume(t, c, "src", 16*MiB, nil)
	data := randomBytes(3, 16*MiB)
	writeAt(t, d.store.volumeFile(vol.GetVolumeId()), 0, data)
	snap := createSnapshot(t, c, "src-1", vol.GetVolumeId())
	writeAt(t, d.store.volumeFile(vol.GetVolumeId()), 0, randomBytes(4, MiB)) // after the snapshot

	restored := createVolume(t, c, "restored", 32*MiB, fromSnapshot(snap.GetSnapshotId()))
	if restored.GetCapacityBytes() != 32*MiB || restored.GetContentSource().GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
		t.Errorf("restored volume = %v", restored)
	}
	got := readFile(t, d.store.volumeFile(restored.GetVolumeId()))
	equalBytes(t, "restored volume", got, append(bytes.Clone(data), make([]byte, 16*MiB)...))

	clone := createVolume(t, c, "clone", 0, fromVolume(vol.GetVolumeId()))
	if clone.GetCapacityBytes() != 16*MiB {
		t.Errorf("clone without a size has %d bytes, want its source's 16 MiB", clone.GetCapacityBytes())
	}
	equalBytes(t, "cloned volume", readFile(t, d.store.volumeFile(clone.GetVolumeId())),
		readFile(t, d.store.volumeFile(vol.GetVolumeId())))

	_, err := c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: "too-small", CapacityRange: &csi.CapacityRange{RequiredBytes: MiB, LimitBytes: MiB},
		VolumeCapabilities: []*csi.VolumeCapability{blockCap}, VolumeContentSource: fromSnapshot(snap.GetSnapshotId()),
	})
	wantCode(t, err, codes.OutOfRange)
	_, err = c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: "no-source", VolumeCapabilities: []*csi.VolumeCapability{blockCap},
		VolumeContentSource: fromSnapshot(snapshotID("never-taken")),
	})
	wantCode(t, err, codes.NotFound)
}

func TestIdempotenceAndConflicts(t *testing.T) {
	d := StartTest(t, Config{})
	c := dial(t, d)
	ctx := context.Background()
	a := createVolume(t, c, "a", 8*MiB, nil)
	if again := createVolume(t, c, "a", 8*MiB, nil); again.GetVolumeId() != a.GetVolumeId() {
		t.Errorf("same name gave %s, then %s", a.GetVolumeId(), again.GetVolumeId())
	}
	_, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "a", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * MiB},
		VolumeCapabilities: []*csi.VolumeCapability{blockCap},
	})
	wantCode(t, err, codes.AlreadyExists)

	b := createVolume(t, c, "b", 8*MiB, nil)
	s := createSnapshot(t, c, "s", a.GetVolumeId())
	if again := createSnapshot(t, c, "s", a.GetVolumeId()); again.GetSnapshotId() != s.GetSnapshotId() ||
		!again.GetCreationTime().AsTime().Equal(s.GetCreationTime().AsTime()) {
		t.Errorf("same snapshot name gave %v, then %v", s, again)
	}
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: b.GetVolumeId()})
	wantCode(t, err, codes.AlreadyExists)

	// Parameters: Kubernetes' own pass, anything else is named and refused.
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
		Name: "k8s", SourceVolumeId: a.GetVolumeId(),
		Parameters: map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "snap-1"},
	})
	if err != nil {
		t.Errorf("Kubernetes parameters refused: %v", err)
	}
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
		Name: "ferry", SourceVolumeId: a.GetVolumeId(),
		Parameters: map[string]string{"ferry.dev/repository": "s3://x"},
	})
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), `"ferry.dev/repository"`) {
		t.Errorf("error does not name the parameter: %v", err)
	}

	// Pagination covers every volume once.
	var ids []string
	token := ""
	for {
		resp, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 1, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.GetEntries() {
			ids = append(ids, e.GetVolume().GetVolumeId())
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	if len(ids) != 2 || ids[0] >= ids[1] {
		t.Errorf("paged volume IDs = %v, want a's and b's in order", ids)
	}
	_, err = c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "nonsense"})
	wantCode(t, err, codes.Aborted)

	// Deleting the source keeps its snapshots (they share no state).
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: a.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	resp, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: a.GetVolumeId()})
	if err != nil || len(resp.GetEntries()) != 2 {
		t.Fatalf("snapshots of the deleted volume = %v, %v; want 2", resp, err)
	}
}

// A restarted driver knows the volumes and snapshots of the one before,
// and creating them again by name gives the same objects.
// A volume's label, a StorageClass parameter, comes back in its volume
// context; a snapshot takes no label, and a volume no other parameter of
// its own.
func TestVolumeLabel(t *testing.T) {
	c := dial(t, StartTest(t, Config{}))
	ctx := context.Background()
	labelled := &csi.CreateVolumeRequest{
		Name: "labelled", VolumeCapabilities: []*csi.VolumeCapability{blockCap},
		Parameters: map[string]string{ParamLabel: "fast", "csi.storage.k8s.io/pvc/name": "data"},
	}
	lv, err := c.CreateVolume(ctx, labelled)
	if err != nil {
		t.Fatal(err)
	}
	if got := lv.GetVolume().GetVolumeContext(); len(got) != 1 || got[ParamLabel] != "fast" {
		t.Errorf("volume context of a labelled volume: %v", got)
	}
	plain := createVolume(t, c, "plain", MiB, nil)
	if got := plain.GetVolumeContext(); got != nil {
		t.Errorf("volume context of a volume without label: %v", got)
	}
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
		Name: "labelled", SourceVolumeId: plain.GetVolumeId(), Parameters: map[string]string{ParamLabel: "fast"},
	})
	wantCode(t, err, codes.InvalidArgument)
	labelled.Name, labelled.Parameters = "typo", map[string]string{"lable": "fast"}
	_, err = c.CreateVolume(ctx, labelled)
	wantCode(t, err, codes.InvalidArgument)
}

func TestRestart(t *testing.T) {
	cfg := testConfig(t, Config{})
	d1, stop := serve(t, cfg)
	c1 := dial(t, d1)
	vol := createVolume(t, c1, "kept", 8*MiB, nil)
	writeAt(t, d1.store.volumeFile(vol.GetVolumeId()), 0, randomBytes(5, MiB))
	snap := createSnapshot(t, c1, "kept-1", vol.GetVolumeId())
	stop()

	d2, _ := serve(t, cfg)
	c2 := dial(t, d2)
	ctx := context.Background()
	vols, err := c2.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(vols.GetEntries()) != 1 || vols.GetEntries()[0].GetVolume().GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("volumes after restart = %v, %v", vols, err)
	}
	if again := createVolume(t, c2, "kept", 8*MiB, nil); again.GetVolumeId() != vol.GetVolumeId() {
		t.Errorf("volume after restart is %s, was %s", again.GetVolumeId(), vol.GetVolumeId())
	}
	got, err := c2.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
	if err != nil || !got.GetSnapshot().GetCreationTime().AsTime().Equal(snap.GetCreationTime().AsTime()) {
		t.Fatalf("snapshot after restart = %v, %v; was %v", got, err, snap)
	}
	spans, _, err := allocatedSpans(t, c2, snap.GetSnapshotId(), 0, 0, 8*MiB)
	if err != nil || len(spans) != 1 || spans[0] != (span{0, MiB}) {
		t.Errorf("allocated after restart = %v, %v", spans, err)
	}
}

// Secrets never reach the log; every call does, with method and code.
func TestLogStripsSecrets(t *testing.T) {
	var buf syncBuffer
	d := StartTest(t, Config{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	c := dial(t, d)
	const secret = "hunter2-do-not-log"
	_, err := c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: "v", VolumeCapabilities: []*csi.VolumeCapability{blockCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: MiB},
		Secrets:       map[string]string{"password": secret},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: "x", Secrets: map[string]string{"token": secret}})
	if err != nil {
		t.Fatal(err)
	}
	log := buf.String()
	if strings.Contains(log, secret) {
		t.Fatalf("log holds the secret:\n%s", log)
	}
	for _, want := range []string{
		"method=/csi.v1.Controller/CreateVolume", "code=OK", "duration=", "password", strippedValue,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

// syncBuffer is a bytes.Buffer that the server's goroutines may write
// while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestNewRejectsDirWithoutReflink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, 0) })
	_, err := New(Config{Endpoint: "unix:///tmp/x.sock", Dir: dir, NodeID: "n"})
	if err == nil || !strings.Contains(err.Error(), "reflink") {
		t.Fatalf("New on tmpfs = %v, want an error about reflink", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Endpoint: "tcp://x", Dir: "/d", NodeID: "n"}, "unix:///"},
		{Config{Endpoint: "unix://relative", Dir: "/d", NodeID: "n"}, "absolute"},
		{Config{Endpoint: "unix:///s", NodeID: "n"}, "dir is required"},
		{Config{Endpoint: "unix:///s", Dir: "/d"}, "node ID is required"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	ok := Config{Endpoint: "unix:///s", Dir: "rel", NodeID: "n"}
	if err := ok.Validate(); err != nil || !strings.HasPrefix(ok.Dir, "/") {
		t.Errorf("Validate made Dir %q, %v", ok.Dir, err)
	}
}
