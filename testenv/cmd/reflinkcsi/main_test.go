package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/testenv/reflinkcsi"
	"github.com/ferrydr/ferry/testenv/xfs"
)

func TestBadFlags(t *testing.T) {
	plain := t.TempDir()
	if xfs.CheckReflink(plain) == nil {
		t.Skipf("%s supports reflink: cannot check the refusal of a directory without it", plain)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--nope"}, 2, "flag provided but not defined"},
		{[]string{"--endpoint", "unix:///tmp/x.sock", "--node-id", "n"}, 2, "dir is required"},
		{[]string{"--endpoint", "/tmp/x.sock", "--dir", "/tmp", "--node-id", "n"}, 2, "unix:///"},
		{[]string{"--endpoint", "unix:///tmp/x.sock", "--dir", plain, "--node-id", "n"}, 1, "reflink"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("run %q = %d, %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}

// The command serves the driver on its socket until its context ends.
func TestServe(t *testing.T) {
	dir := xfs.Mount(t, 0)
	sockDir, err := os.MkdirTemp("", "reflinkcsi-cmd-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr lockedBuffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"--endpoint", "unix://" + sock, "--dir", dir, "--node-id", "n1", "--controller-publish"}, &stderr)
	}()
	// Until a connection is accepted (the file appears at bind, before listen).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket after 10s: %s", stderr.String())
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != reflinkcsi.DriverName {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	node, err := csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || node.GetNodeId() != "n1" {
		t.Fatalf("NodeGetInfo = %v, %v", node, err)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "method=/csi.v1.Identity/GetPluginInfo") {
		t.Errorf("calls not logged: %s", stderr.String())
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
