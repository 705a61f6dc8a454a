package repo

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/ferrydr/ferry/transport/objstore"
)

// droppingServer listens on loopback and closes every connection it
// accepts at once, as a target going down does; it counts them.
func droppingServer(t *testing.T) (addr string, accepted *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted = new(atomic.Int64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	return l.Addr().String(), accepted
}

// TestOpenForRestore: with target 1 dropping every connection, Open
// retries it (objstore.DefaultRetry) before going on without it;
// OpenForRestore asks it once and goes on, target 1 marked down. Both open
// the repository from the other two.
func TestOpenForRestore(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	initRepo(t, stores)
	addr, accepted := droppingServer(t)
	env := func(k string) string {
		return map[string]string{"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "secret-key"}[k]
	}
	loc, err := objstore.ParseURL("s3+http://" + addr + "/bucket")
	if err != nil {
		t.Fatal(err)
	}
	dead, err := objstore.OpenEnv(ctx, loc, env)
	if err != nil {
		t.Fatal(err)
	}
	withDead := []objstore.Store{dead, stores[1], stores[2]}

	for _, c := range []struct {
		name string
		open func(context.Context, []objstore.Store, []byte) (*Repo, error)
	}{{"Open", Open}, {"OpenForRestore", OpenForRestore}} {
		before := accepted.Load()
		r, err := c.open(ctx, withDead, []byte("pw"))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r.Targets[0].Down() == nil || r.Targets[1].Down() != nil || r.Targets[2].Down() != nil {
			t.Errorf("%s: targets down %v %v %v, want only target 1", c.name, r.Targets[0].Down(), r.Targets[1].Down(), r.Targets[2].Down())
		}
		n := accepted.Load() - before
		t.Logf("%s: %d connections to the dead target (%v)", c.name, n, r.Targets[0].Down())
		want := int64(objstore.DefaultRetry.Attempts)
		if c.name == "OpenForRestore" {
			want = 1
		}
		if n != want {
			t.Errorf("%s asked the dead target %d times, want %d", c.name, n, want)
		}
	}

	// With every target dead at first, OpenForRestore falls back to Open's
	// retries, and fails as Open does.
	if _, err := OpenForRestore(ctx, []objstore.Store{dead, dead, dead}, []byte("pw")); err == nil {
		t.Fatal("OpenForRestore with no target reachable succeeded")
	}
}
