package erasure

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"slices"
	"testing"
)

// Seeds live in testdata/fuzz/FuzzParseHeader: valid headers of several
// schemes and sizes, and damaged ones.
func FuzzParseHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		checkParsed(t, b)
		// The fuzzer cannot guess CRCs: parse a copy with a correct header
		// CRC too, so that the field checks behind it get exercised.
		if len(b) >= HeaderSize {
			fixed := bytes.Clone(b[:HeaderSize])
			binary.LittleEndian.PutUint32(fixed[60:], crc32.Checksum(fixed[:60], castagnoli))
			checkParsed(t, fixed)
		}
	})
}

func checkParsed(t *testing.T, b []byte) {
	h, err := ParseHeader(b)
	if err != nil {
		return
	}
	if h.K < 1 || h.M < 0 || h.K+h.M > maxShards || h.Index >= h.K+h.M ||
		h.PackLen < 0 || h.PackLen > MaxPackLen || h.ShardLen != shardLenFor(h.PackLen, h.K) {
		t.Fatalf("ParseHeader accepted %+v", h)
	}
	again := make([]byte, HeaderSize)
	h.put(again)
	if !bytes.Equal(again, b[:HeaderSize]) {
		t.Fatalf("header does not round-trip:\n in %x\nout %x", b[:HeaderSize], again)
	}
}

var fuzzSchemes = []Scheme{{1, 0}, {1, 1}, {2, 1}, {3, 0}, {3, 2}, {4, 2}}

// FuzzDecode damages a valid shard set as ops say and checks that Decode and
// Rebuild never panic, never return wrong bytes without an error, and report
// exactly the shards that differ from what Encode wrote. Every op is five
// bytes: kind, shard, two bytes of position, value. Seeds live in
// testdata/fuzz/FuzzDecode.
//
// Ops never forge a header CRC: a forged header is a different threat (see
// TestConflictingPackLength), and what it can do is not a decoding bug.
func FuzzDecode(f *testing.F) {
	coders := make([]*Coder, len(fuzzSchemes))
	for i, s := range fuzzSchemes {
		coders[i] = mustCoder(f, s)
	}
	f.Fuzz(func(t *testing.T, scheme byte, pack, ops []byte) {
		if len(pack) > 1<<16 {
			pack = pack[:1<<16]
		}
		c := coders[int(scheme)%len(coders)]
		s := c.Scheme()
		n := s.Shards()
		id, orig := encode(t, c, pack)
		_, other := encode(t, c, append(bytes.Clone(pack), 1))
		otherID := id
		otherID[0] ^= 1
		sameData, err := c.Encode(otherID, pack)
		if err != nil {
			t.Fatal(err)
		}

		shards := cloneShards(orig)
		for ; len(ops) >= 5; ops = ops[5:] {
			i, pos, v := int(ops[1])%n, int(ops[2])|int(ops[3])<<8, ops[4]
			switch ops[0] % 8 {
			case 0: // flip bits
				if len(shards[i]) > 0 {
					shards[i][pos%len(shards[i])] ^= v | 1
				}
			case 1:
				shards[i] = shards[i][:pos%(len(shards[i])+1)]
			case 2:
				shards[i] = append(shards[i], bytes.Repeat([]byte{v}, pos%100+1)...)
			case 3:
				shards[i] = nil
			case 4:
				j := int(v) % n
				shards[i], shards[j] = shards[j], shards[i]
			case 5:
				shards[i] = bytes.Clone(shards[int(v)%n])
			case 6: // a shard of another pack of the same shape
				shards[i] = bytes.Clone(other[int(v)%n])
			case 7: // the same data under another pack ID
				shards[i] = bytes.Clone(sameData[int(v)%n])
			}
		}
		var damaged []int
		for i := range shards {
			if shards[i] == nil || !bytes.Equal(shards[i], orig[i]) {
				damaged = append(damaged, i)
			}
		}
		before := cloneShards(shards)

		got, rep, err := c.Decode(id, shards)
		if len(damaged) > s.M {
			if !errors.Is(err, ErrTooFewShards) {
				t.Fatalf("%v, damaged %v: Decode error %v, want ErrTooFewShards", s, damaged, err)
			}
		} else if err != nil || !bytes.Equal(got, pack) {
			t.Fatalf("%v, damaged %v: Decode: %v, equal %v", s, damaged, err, bytes.Equal(got, pack))
		}
		if !slices.Equal(rep.Bad(), damaged) {
			t.Fatalf("%v: damaged %v, report says %v %q", s, damaged, rep.Bad(), rep.Reasons)
		}
		for i := range shards {
			if !bytes.Equal(shards[i], before[i]) {
				t.Fatalf("Decode modified shard %d", i)
			}
		}

		rebuilt, _, err := c.Rebuild(id, shards)
		if err != nil {
			if len(damaged) <= s.M {
				t.Fatalf("%v, damaged %v: Rebuild: %v", s, damaged, err)
			}
			return
		}
		for i := range rebuilt {
			if !bytes.Equal(rebuilt[i], orig[i]) {
				t.Fatalf("%v, damaged %v: rebuilt shard %d differs", s, damaged, i)
			}
		}
	})
}
