// Package objstoretest is the conformance suite every objstore.Store
// implementation runs, so that the rest of Ferry can rely on the contract
// documented on objstore.Store whatever the backend.
package objstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/ferrydr/ferry/transport/objstore"
)

// Run runs the conformance suite. newStore must return an empty store each
// time it is called (each subtest gets its own).
func Run(t *testing.T, newStore func(t *testing.T) objstore.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, objstore.Store)
	}{
		{"CreateGetStat", testCreateGetStat},
		{"CreateExisting", testCreateExisting},
		{"NotFound", testNotFound},
		{"GetRange", testGetRange},
		{"Empty", testEmpty},
		{"List", testList},
		{"ListStop", testListStop},
		{"Delete", testDelete},
		{"ConcurrentSameName", testConcurrentSameName},
		{"ConcurrentDistinct", testConcurrentDistinct},
		{"Large", testLarge},
		{"InvalidNames", testInvalidNames},
		{"Cancelled", testCancelled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if s.Location() == "" {
				t.Fatal("Location() is empty")
			}
			tc.fn(t, s)
		})
	}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// data returns n deterministic pseudo-random bytes.
func data(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0xfe77))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func mustCreate(t *testing.T, s objstore.Store, name string, b []byte) {
	t.Helper()
	if err := s.Create(t.Context(), name, b); err != nil {
		t.Fatalf("Create(%q): %v", name, err)
	}
}

// checkObject asserts that name holds want, through Get and Stat.
func checkObject(t *testing.T, s objstore.Store, name string, want []byte) {
	t.Helper()
	got, err := s.Get(t.Context(), name)
	if err != nil {
		t.Fatalf("Get(%q): %v", name, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q): got %d bytes, want %d bytes (content differs)", name, len(got), len(want))
	}
	info, err := s.Stat(t.Context(), name)
	if err != nil {
		t.Fatalf("Stat(%q): %v", name, err)
	}
	if info.Name != name || info.Size != int64(len(want)) {
		t.Fatalf("Stat(%q) = {Name: %q, Size: %d}, want {%q, %d}", name, info.Name, info.Size, name, len(want))
	}
	checkCRC(t, info, want)
}

func checkCRC(t *testing.T, info objstore.Info, want []byte) {
	t.Helper()
	if c := crc32.Checksum(want, castagnoli); info.HasCRC32C && info.CRC32C != c {
		t.Fatalf("%q: CRC32C %08x, want %08x", info.Name, info.CRC32C, c)
	}
}

func wantErr(t *testing.T, what string, err, sentinel error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("%s: got error %v, want %v", what, err, sentinel)
	}
	if objstore.IsTransient(err) {
		t.Fatalf("%s: %v classified transient", what, err)
	}
}

func testCreateGetStat(t *testing.T, s objstore.Store) {
	b := data(1, 1000)
	mustCreate(t, s, "obj", b)
	checkObject(t, s, "obj", b)
	mustCreate(t, s, "dir/sub/deeper/obj", b[:10])
	checkObject(t, s, "dir/sub/deeper/obj", b[:10])
	// Create copies: changing the caller's buffer afterwards changes nothing.
	b[0]++
	got, err := s.Get(t.Context(), "obj")
	if err != nil {
		t.Fatal(err)
	}
	if got[0] == b[0] {
		t.Fatal("store kept a reference to the caller's buffer")
	}
}

func testCreateExisting(t *testing.T, s objstore.Store) {
	first, second := data(2, 500), data(3, 700)
	mustCreate(t, s, "x/obj", first)
	err := s.Create(t.Context(), "x/obj", second)
	wantErr(t, "second Create", err, objstore.ErrExists)
	checkObject(t, s, "x/obj", first)
	// Same content again is still an ErrExists: Create never overwrites.
	wantErr(t, "Create with same content", s.Create(t.Context(), "x/obj", first), objstore.ErrExists)
}

func testNotFound(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	mustCreate(t, s, "present/obj", []byte("x"))
	// "present" is a "directory" of objects and "present/obj/below" lies
	// under an object: neither is an object.
	for _, name := range []string{"absent", "present/absent", "present", "present/obj/below"} {
		_, err := s.Get(ctx, name)
		wantErr(t, fmt.Sprintf("Get(%q)", name), err, objstore.ErrNotFound)
		_, err = s.Stat(ctx, name)
		wantErr(t, fmt.Sprintf("Stat(%q)", name), err, objstore.ErrNotFound)
		_, err = s.GetRange(ctx, name, 0, 1)
		wantErr(t, fmt.Sprintf("GetRange(%q)", name), err, objstore.ErrNotFound)
		if err := s.Delete(ctx, name); err != nil {
			t.Fatalf("Delete(%q) of an absent object: %v", name, err)
		}
	}
	checkObject(t, s, "present/obj", []byte("x"))
}

func testGetRange(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	b := data(4, 4096)
	mustCreate(t, s, "r", b)
	for _, r := range [][2]int64{{0, 4096}, {0, 1}, {1, 100}, {4095, 1}, {1000, 3096}, {2048, 0}, {4096, 0}} {
		got, err := s.GetRange(ctx, "r", r[0], r[1])
		if err != nil {
			t.Fatalf("GetRange(%d, %d): %v", r[0], r[1], err)
		}
		if !bytes.Equal(got, b[r[0]:r[0]+r[1]]) {
			t.Fatalf("GetRange(%d, %d): wrong %d bytes", r[0], r[1], len(got))
		}
	}
	for _, r := range [][2]int64{{4000, 97}, {4096, 1}, {5000, 10}, {4097, 0}, {-1, 10}, {0, -1}} {
		got, err := s.GetRange(ctx, "r", r[0], r[1])
		if err == nil {
			t.Fatalf("GetRange(%d, %d) outside a 4096-byte object returned %d bytes, no error", r[0], r[1], len(got))
		}
		if objstore.IsTransient(err) || errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("GetRange(%d, %d): %v: want a permanent error other than ErrNotFound", r[0], r[1], err)
		}
	}
}

func testEmpty(t *testing.T, s objstore.Store) {
	mustCreate(t, s, "empty", nil)
	checkObject(t, s, "empty", []byte{})
	got, err := s.GetRange(t.Context(), "empty", 0, 0)
	if err != nil || len(got) != 0 {
		t.Fatalf("GetRange(0, 0) of an empty object = %d bytes, %v", len(got), err)
	}
	wantErr(t, "second Create of empty", s.Create(t.Context(), "empty", nil), objstore.ErrExists)
}

// list returns name -> size of the objects under prefix.
func list(t *testing.T, s objstore.Store, prefix string) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	err := s.List(t.Context(), prefix, func(info objstore.Info) error {
		if _, dup := got[info.Name]; dup {
			t.Errorf("List(%q) returned %q twice", prefix, info.Name)
		}
		got[info.Name] = info.Size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func testList(t *testing.T, s objstore.Store) {
	objs := map[string][]byte{
		"list/a":       data(5, 1),
		"list/b/c":     data(6, 22),
		"list/b/d/e":   data(7, 333),
		"list/bb":      data(8, 4444),
		"list/.hidden": data(9, 5),
		"other/x":      data(10, 6),
		"top":          data(11, 0),
	}
	for name, b := range objs {
		mustCreate(t, s, name, b)
	}
	want := func(names ...string) map[string]int64 {
		m := map[string]int64{}
		for _, n := range names {
			m[n] = int64(len(objs[n]))
		}
		return m
	}
	for _, tc := range []struct {
		prefix string
		want   map[string]int64
	}{
		{"", want("list/a", "list/b/c", "list/b/d/e", "list/bb", "list/.hidden", "other/x", "top")},
		{"list/", want("list/a", "list/b/c", "list/b/d/e", "list/bb", "list/.hidden")},
		{"list/b", want("list/b/c", "list/b/d/e", "list/bb")},
		{"list/b/", want("list/b/c", "list/b/d/e")},
		{"list/.", want("list/.hidden")},
		{"li", want("list/a", "list/b/c", "list/b/d/e", "list/bb", "list/.hidden")},
		{"list/b/d/e", want("list/b/d/e")},
		{"nothing/", want()},
		{"list/zz", want()},
	} {
		if got := list(t, s, tc.prefix); !maps.Equal(got, tc.want) {
			t.Errorf("List(%q) = %v, want %v", tc.prefix, got, tc.want)
		}
	}
	err := s.List(t.Context(), "list/", func(info objstore.Info) error {
		checkCRC(t, info, objs[info.Name])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testListStop(t *testing.T, s objstore.Store) {
	for i := range 5 {
		mustCreate(t, s, fmt.Sprintf("s/%d", i), []byte{byte(i)})
	}
	stop := errors.New("stop")
	calls := 0
	err := s.List(t.Context(), "s/", func(objstore.Info) error {
		calls++
		return stop
	})
	if err != stop { // unchanged, not merely wrapped
		t.Fatalf("List returned %v, want fn's error unchanged", err)
	}
	if calls != 1 {
		t.Fatalf("fn called %d times after returning an error", calls)
	}
	// fn may use the store while listing.
	err = s.List(t.Context(), "s/", func(info objstore.Info) error {
		_, err := s.Get(t.Context(), info.Name)
		return err
	})
	if err != nil {
		t.Fatalf("Get inside List: %v", err)
	}
}

func testDelete(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	mustCreate(t, s, "d/keep", []byte("keep"))
	mustCreate(t, s, "d/gone", []byte("gone"))
	if err := s.Delete(ctx, "d/gone"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	_, err := s.Stat(ctx, "d/gone")
	wantErr(t, "Stat after Delete", err, objstore.ErrNotFound)
	if got := list(t, s, "d/"); !maps.Equal(got, map[string]int64{"d/keep": 4}) {
		t.Fatalf("List after Delete = %v", got)
	}
	if err := s.Delete(ctx, "d/gone"); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	// A deleted name can be created again (prune, then the same data again).
	mustCreate(t, s, "d/gone", []byte("back"))
	checkObject(t, s, "d/gone", []byte("back"))
	checkObject(t, s, "d/keep", []byte("keep"))
}

func testConcurrentSameName(t *testing.T, s objstore.Store) {
	const n = 16
	var (
		wg   sync.WaitGroup
		errs [n]error
	)
	for i := range n {
		wg.Go(func() {
			errs[i] = s.Create(t.Context(), "race/obj", data(uint64(100+i), 64<<10))
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("Create %d and %d of the same name both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, objstore.ErrExists):
			t.Fatalf("Create %d: %v, want nil or ErrExists", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no concurrent Create succeeded")
	}
	checkObject(t, s, "race/obj", data(uint64(100+winner), 64<<10))
}

func testConcurrentDistinct(t *testing.T, s objstore.Store) {
	const n = 32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := s.Create(t.Context(), fmt.Sprintf("many/%02d", i), data(uint64(i), i*100)); err != nil {
				t.Errorf("Create %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	got := list(t, s, "many/")
	if len(got) != n {
		t.Fatalf("List found %d objects, want %d", len(got), n)
	}
	for i := range n {
		if size := got[fmt.Sprintf("many/%02d", i)]; size != int64(i*100) {
			t.Fatalf("many/%02d: size %d, want %d", i, size, i*100)
		}
	}
}

func testLarge(t *testing.T, s objstore.Store) {
	if testing.Short() {
		t.Skip("20 MiB round trip skipped in -short mode")
	}
	b := data(12, 20<<20)
	mustCreate(t, s, "big/obj", b)
	checkObject(t, s, "big/obj", b)
	off, n := int64(17<<20+3), int64(2<<20)
	got, err := s.GetRange(t.Context(), "big/obj", off, n)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b[off:off+n]) {
		t.Fatal("GetRange of a large object returned wrong bytes")
	}
}

func testInvalidNames(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	for _, name := range []string{"", "/abs", "trailing/", "a//b", "../up", "a/../b", "a/./b", ".", ".tmp-x", "a/.tmp-y", "nul\x00", "nl\n", "\xff"} {
		if err := s.Create(ctx, name, []byte("x")); err == nil || objstore.IsTransient(err) {
			t.Errorf("Create(%q) = %v, want a permanent error", name, err)
		}
		if _, err := s.Get(ctx, name); err == nil || errors.Is(err, objstore.ErrNotFound) {
			t.Errorf("Get(%q) = %v, want an invalid-name error", name, err)
		}
		if err := s.Delete(ctx, name); err == nil {
			t.Errorf("Delete(%q) accepted an invalid name", name)
		}
	}
	if got := list(t, s, ""); len(got) != 0 {
		t.Fatalf("invalid names left objects: %v", slices.Collect(maps.Keys(got)))
	}
	if err := s.List(ctx, "../", func(objstore.Info) error { return nil }); err == nil {
		t.Error(`List("../") accepted an invalid prefix`)
	}
}

func testCancelled(t *testing.T, s objstore.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := s.Create(ctx, "c/obj", []byte("x"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Create with a cancelled context: %v, want context.Canceled", err)
	}
	if objstore.IsTransient(err) {
		t.Fatalf("%v classified transient", err)
	}
	if _, err := s.Stat(t.Context(), "c/obj"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Stat after cancelled Create: %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, "c/obj"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with a cancelled context: %v, want context.Canceled", err)
	}
}
