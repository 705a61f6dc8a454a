package repo

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/transport/objstore"
)

// TestOpenSegment: a segment's blob opens only as the segment the manifest
// names, and only as the extents the manifest says: from its offset, as
// many.
func TestOpenSegment(t *testing.T) {
	ctx := context.Background()
	_, r, s, want := segmentedSnapshot(t)
	x, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []Extent
	var off int64
	var first []byte
	for i, sg := range s.Segments {
		info, e, ok := x.Lookup(sg.ID)
		if !ok {
			t.Fatalf("segment %d is in no index object", i+1)
		}
		p, _, err := r.ReadPack(ctx, info.ID)
		if err != nil {
			t.Fatal(err)
		}
		exts, err := r.OpenSegment(sg, off, p, e)
		if err != nil {
			t.Fatalf("segment %d: %v", i+1, err)
		}
		got = append(got, exts...)
		if _, err := r.OpenSegment(sg, off+1, p, e); err == nil {
			t.Fatalf("segment %d opened at another offset", i+1)
		}
		if i == 1 {
			// The second segment's blob, taken for the first.
			if _, err := r.OpenSegment(s.Segments[0], 0, p, e); err == nil || !strings.Contains(err.Error(), "does not match its ID") {
				t.Fatalf("another segment's blob: %v", err)
			}
		}
		if i == 0 {
			first = p
			more := sg
			more.Extents++
			if _, err := r.OpenSegment(more, 0, p, e); err == nil {
				t.Fatal("a segment opened as holding more extents than it does")
			}
		}
		off += sg.Len
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("extents\n got %+v\nwant %+v", got, want)
	}
	_, e, _ := x.Lookup(s.Segments[0].ID)
	bad := append([]byte(nil), first...)
	bad[e.Offset+e.Length/2] ^= 1
	if _, err := r.OpenSegment(s.Segments[0], 0, bad, e); err == nil {
		t.Fatal("a segment with a flipped byte opened")
	}
}

// names lists the objects under prefix of s.
func names(t *testing.T, s objstore.Store, prefix string) []string {
	t.Helper()
	var out []string
	if err := s.List(context.Background(), prefix, func(i objstore.Info) error {
		out = append(out, i.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}
