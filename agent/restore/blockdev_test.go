package restore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/agent/source"
	"github.com/ferrydr/ferry/testenv/loop"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// TestBlockDevices backs up from a loop device and restores into others:
// one smaller than the snapshot (refused, untouched), one full of garbage
// (holes overwritten with real zeros).
func TestBlockDevices(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const size = 24 << 20
	img := filepath.Join(dir, "vol.img")
	if err := volume.Write(img, volume.Spec{Size: size, DataFrac: 0.3, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	src := loop.Attach(t, img, true)
	r, err := repo.Init(ctx, []objstore.Store{objstore.NewMem(), objstore.NewMem()}, password, repo.Options{
		Erasure: erasure.Scheme{K: 1, M: 1}, PackSize: 2 << 20, Chunking: &smallChunks, KDF: crypt.KDFParams{N: 1024, R: 8, P: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	v, err := source.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	sum, err := backup.Run(ctx, r, v, v.Size(), backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.BytesZero == 0 {
		t.Fatal("no zero extents found on the device")
	}
	snap, err := r.FindSnapshot(ctx, sum.SnapshotID, "")
	if err != nil {
		t.Fatal(err)
	}

	small := filepath.Join(dir, "small.img")
	garbage := bytes.Repeat([]byte{0xEE}, size/2)
	if err := os.WriteFile(small, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := restore.Run(ctx, r, snap, loop.Attach(t, small, false), restore.Options{}); !errors.Is(err, restore.ErrTargetTooSmall) {
		t.Fatalf("restore into a smaller device: %v", err)
	}
	if b, _ := os.ReadFile(small); !bytes.Equal(b, garbage) {
		t.Fatal("a refused restore wrote to the device")
	}

	full := filepath.Join(dir, "full.img")
	if err := os.WriteFile(full, bytes.Repeat([]byte{0xEE}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	rs, err := restore.Run(ctx, r, snap, loop.Attach(t, full, false), restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, img, full)
	if d := restore.DirectBytes(rs); d < rs.BytesWritten/2 {
		t.Errorf("%d of %d bytes written to the device direct, want most", d, rs.BytesWritten)
	}
}
