package repo

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/transport/erasure"
)

// TestOpenSegment: a segment's bytes open only under their own name, and
// only as the extents the manifest says: from its offset, as many.
func TestOpenSegment(t *testing.T) {
	ctx := context.Background()
	stores, r, s, want := segmentedSnapshot(t)
	var err error
	if len(s.Segments) < 3 {
		t.Fatalf("%d segments, want several", len(s.Segments))
	}
	objs := make([][]byte, len(s.Segments))
	var got []Extent
	var off int64
	for i, sg := range s.Segments {
		if objs[i], err = stores[i%3].Get(ctx, sg.Name()); err != nil {
			t.Fatal(err)
		}
		exts, err := r.OpenSegment(sg, off, objs[i])
		if err != nil {
			t.Fatalf("segment %d: %v", i+1, err)
		}
		got = append(got, exts...)
		if _, err := r.OpenSegment(sg, off+1, objs[i]); err == nil {
			t.Fatalf("segment %d opened at another offset", i+1)
		}
		off += sg.Len
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("extents\n got %+v\nwant %+v", got, want)
	}
	if _, err := r.OpenSegment(s.Segments[0], 0, objs[1]); err == nil || !strings.Contains(err.Error(), "does not match its name") {
		t.Fatalf("another segment's bytes: %v", err)
	}
	more := s.Segments[0]
	more.Extents++
	if _, err := r.OpenSegment(more, 0, objs[0]); err == nil {
		t.Fatal("a segment opened as holding more extents than it does")
	}
}

// TestInitRefusesSegments: a target that holds segments holds a
// repository; Init leaves it alone.
func TestInitRefusesSegments(t *testing.T) {
	ctx := context.Background()
	stores := memStores(2)
	if err := stores[1].Create(ctx, "extents/"+strings.Repeat("ab", 32), []byte("a segment")); err != nil {
		t.Fatal(err)
	}
	_, err := Init(ctx, stores, []byte("pw"), Options{Erasure: erasure.Scheme{K: 1, M: 1}, Chunking: &testParams, KDF: testKDF})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "target 2") {
		t.Fatalf("init over a target with segments: %v", err)
	}
}
