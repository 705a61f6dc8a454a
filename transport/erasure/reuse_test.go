package erasure

import (
	"bytes"
	"errors"
	"testing"
)

// TestEncodeToReuses: objects encoded into buffers that held another pack
// (larger, smaller, the last one's padding dirty) are the ones Encode
// makes, in the same buffers where they fit.
func TestEncodeToReuses(t *testing.T) {
	for _, s := range testSchemes {
		c := mustCoder(t, s)
		var objs [][]byte
		for i, n := range []int{3<<20 + 1, 1000, 5, 0, 1<<20 + 7, 4093} {
			pack := testPack(n, uint64(i))
			for _, o := range objs {
				for j := range o[:cap(o)] {
					o[:cap(o)][j] = 0xa5
				}
			}
			before := make([]*byte, len(objs))
			for j, o := range objs {
				if cap(o) > 0 {
					before[j] = &o[:1][0]
				}
			}
			id, want := encode(t, c, pack)
			got, err := c.EncodeTo(objs, id, pack)
			if err != nil {
				t.Fatal(err)
			}
			for j := range want {
				if !bytes.Equal(got[j], want[j]) {
					t.Fatalf("%s, pack %d (%d bytes): shard %d differs from Encode's", s, i, n, j)
				}
				if j < len(before) && before[j] != nil && cap(objs[j]) >= len(want[j]) && &got[j][:1][0] != before[j] {
					t.Fatalf("%s, pack %d: shard %d not encoded into its buffer", s, i, j)
				}
			}
			objs = got
		}
	}
}

// TestDecodeVerified: every range of a pack read back through Decoded, with
// and without lost data shards, equals the pack.
func TestDecodeVerified(t *testing.T) {
	var d Decoded
	for _, s := range testSchemes {
		c := mustCoder(t, s)
		for _, n := range []int{0, 1, s.K + 1, 4093, 70000} {
			pack := testPack(n, uint64(n))
			id, objs := encode(t, c, pack)
			subsets(s.Shards(), s.M, func(lost []int) {
				in := cloneShards(objs)
				for _, i := range lost {
					in[i] = nil
				}
				rep, err := c.DecodeVerified(&d, id, in)
				if err != nil {
					t.Fatalf("%s, %d bytes, lost %v: %v", s, n, lost, err)
				}
				dataLost := false
				for _, i := range lost {
					dataLost = dataLost || i < s.K
				}
				if rep.Reconstructed != dataLost || d.Len() != int64(n) {
					t.Fatalf("%s, %d bytes, lost %v: reconstructed %v, length %d", s, n, lost, rep.Reconstructed, d.Len())
				}
				step := max(1, n/97)
				for off := 0; off <= n; off += step {
					for _, l := range []int{0, 1, 17, 1000, n - off} {
						if off+l > n || l < 0 {
							continue
						}
						got, err := d.Bytes(int64(off), int64(l))
						if err != nil || !bytes.Equal(got, pack[off:off+l]) {
							t.Fatalf("%s, %d bytes, lost %v: Bytes(%d, %d): %v", s, n, lost, off, l, err)
						}
					}
				}
				if _, err := d.Bytes(int64(n)-1, 2); err == nil {
					t.Fatalf("%s, %d bytes: a range past the end", s, n)
				}
				if _, err := d.Bytes(-1, 1); err == nil {
					t.Fatalf("%s, %d bytes: a range before the start", s, n)
				}
			})
		}
	}
}

// TestDecodeVerifiedChecksHeaders: shards that fail Check in their header
// still count as bad; too few good ones fail as Decode does.
func TestDecodeVerifiedChecksHeaders(t *testing.T) {
	s := Scheme{K: 2, M: 1}
	c := mustCoder(t, s)
	pack := testPack(10000, 1)
	id, objs := encode(t, c, pack)
	var d Decoded
	in := cloneShards(objs)
	in[1][9] ^= 0x40 // a header field: the header CRC no longer matches
	rep, err := c.DecodeVerified(&d, id, in)
	if err != nil || rep.States[1] != Corrupt || !rep.Reconstructed {
		t.Fatalf("bad header: %v, %+v", err, rep)
	}
	if got, _ := d.Bytes(0, int64(len(pack))); !bytes.Equal(got, pack) {
		t.Fatal("pack differs")
	}
	in[2] = nil
	if _, err := c.DecodeVerified(&d, id, in); !errors.Is(err, ErrTooFewShards) {
		t.Fatalf("two of three shards bad: %v", err)
	}
}

// TestReconstructRange: any range of a lost data shard, from the same range
// of k others.
func TestReconstructRange(t *testing.T) {
	for _, s := range testSchemes {
		if s.M == 0 {
			continue
		}
		c := mustCoder(t, s)
		pack := testPack(100000, 9)
		_, objs := encode(t, c, pack)
		shardLen := (len(pack) + s.K - 1) / s.K
		for lost := range s.K {
			for _, r := range [][2]int{{0, shardLen}, {0, 1}, {shardLen - 1, shardLen}, {777, 5000}} {
				parts := make([][]byte, s.Shards())
				have := 0
				// Parity first, so that data shards are missing too.
				for i := s.Shards() - 1; i >= 0 && have < s.K; i-- {
					if i != lost {
						parts[i] = bytes.Clone(objs[i][HeaderSize+r[0] : HeaderSize+r[1]])
						have++
					}
				}
				got, err := c.ReconstructRange(parts, lost)
				if err != nil || !bytes.Equal(got, objs[lost][HeaderSize+r[0]:HeaderSize+r[1]]) {
					t.Fatalf("%s, shard %d, range %v: %v", s, lost, r, err)
				}
			}
		}
		if _, err := c.ReconstructRange(make([][]byte, s.Shards()), 0); err == nil {
			t.Fatalf("%s: reconstructed from nothing", s)
		}
		// ReconstructRanges: as many data shards as there are parity
		// shards, at once, from the parity and the other data shards.
		r := [2]int{321, shardLen - 5}
		parts := make([][]byte, s.Shards())
		var lost []int
		for i := range parts {
			if i < s.M {
				lost = append(lost, i)
			} else {
				parts[i] = bytes.Clone(objs[i][HeaderSize+r[0] : HeaderSize+r[1]])
			}
		}
		if err := c.ReconstructRanges(parts, lost); err != nil {
			t.Fatalf("%s: shards %v: %v", s, lost, err)
		}
		for _, i := range lost {
			if !bytes.Equal(parts[i], objs[i][HeaderSize+r[0]:HeaderSize+r[1]]) {
				t.Fatalf("%s: shard %d of %v rebuilt wrong", s, i, lost)
			}
		}
		if err := c.ReconstructRanges(parts, []int{s.K}); err == nil {
			t.Fatalf("%s: rebuilt parity shard %d as a data shard", s, s.K)
		}
	}
}
