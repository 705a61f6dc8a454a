package loopdev

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestAttachFindDetach(t *testing.T) {
	if os.Getenv("FERRY_TEST_NO_LOOP") == "1" || os.Geteuid() != 0 {
		t.Skip("needs root and loop devices")
	}
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(file, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := Attach(ctx, file, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Detach(ctx, dev) })

	// Found by inode, whatever path names the file.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	found, err := Find(link)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Path != dev || !found[0].ReadOnly || found[0].BackingFile != file {
		t.Fatalf("Find = %+v, want read-only %s backed by %s", found, dev, file)
	}
	onFS, err := OnFilesystem(filepath.Dir(file))
	if err != nil {
		t.Fatal(err)
	}
	if !contains(onFS, dev) {
		t.Errorf("OnFilesystem = %+v, want it to include %s", onFS, dev)
	}
	if points, err := MountsOf(found[0].Path); err != nil || len(points) != 0 {
		t.Errorf("MountsOf = %v, %v; want none", points, err)
	}

	if err := Detach(ctx, dev); err != nil {
		t.Fatal(err)
	}
	if found, err := Find(file); err != nil || len(found) != 0 {
		t.Fatalf("after Detach, Find = %+v, %v", found, err)
	}
}

func contains(devs []Device, path string) bool {
	for _, d := range devs {
		if d.Path == path {
			return true
		}
	}
	return false
}

func TestMountPointRoot(t *testing.T) {
	ok, err := MountPoint("/")
	if err != nil || !ok {
		t.Fatalf("MountPoint(/) = %v, %v", ok, err)
	}
	if ok, _ := MountPoint(t.TempDir()); ok {
		t.Error("a fresh temp dir is a mount point")
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:  "/a b",
		`/tab\011`: "/tab\t",
		`/plain`:   "/plain",
		`/end\04`:  `/end\04`,
		`/back\\x`: `/back\\x`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
