package erasure

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
)

// TestHeaderLayout pins the on-target format byte by byte, computing the
// CRCs independently of the package.
func TestHeaderLayout(t *testing.T) {
	c := mustCoder(t, Scheme{K: 2, M: 1})
	var id [32]byte
	for i := range id {
		id[i] = 0xa0 + byte(i)
	}
	objs, err := c.Encode(id, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	crc := func(b []byte) uint32 { return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)) }
	for i, obj := range objs {
		if len(obj) != 64+3 {
			t.Fatalf("shard %d: %d bytes, want 67", i, len(obj))
		}
		want := []byte{'F', 'R', 'Y', 'S', 1, 2, 1, byte(i)}
		want = binary.LittleEndian.AppendUint64(want, 5)
		want = binary.LittleEndian.AppendUint64(want, 3)
		want = append(want, id[:]...)
		want = binary.LittleEndian.AppendUint32(want, crc(obj[64:]))
		want = binary.LittleEndian.AppendUint32(want, crc(want))
		if !bytes.Equal(obj[:64], want) {
			t.Errorf("shard %d header\n got %x\nwant %x", i, obj[:64], want)
		}
	}
	if string(objs[0][64:]) != "hel" || string(objs[1][64:]) != "lo\x00" {
		t.Errorf("data shards %q %q, want \"hel\" \"lo\\x00\"", objs[0][64:], objs[1][64:])
	}
	h, err := ParseHeader(objs[2])
	if err != nil {
		t.Fatal(err)
	}
	if want := (Header{K: 2, M: 1, Index: 2, PackLen: 5, ShardLen: 3, PackID: id, DataCRC: crc(objs[2][64:])}); h != want {
		t.Errorf("ParseHeader = %+v, want %+v", h, want)
	}
	// The header alone parses too, for readers that fetch only it.
	if _, err := ParseHeader(objs[2][:HeaderSize]); err != nil {
		t.Errorf("ParseHeader(header only): %v", err)
	}
}

// withHeader returns a copy of a valid header changed by edit, with its
// header CRC recomputed so that only the edited field is wrong.
func withHeader(t *testing.T, obj []byte, edit func(b []byte)) []byte {
	t.Helper()
	b := bytes.Clone(obj)
	edit(b)
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
	return b
}

func TestParseHeaderRejects(t *testing.T) {
	c := mustCoder(t, Scheme{K: 4, M: 2})
	objs, err := c.Encode([32]byte{1}, testPack(1000, 1))
	if err != nil {
		t.Fatal(err)
	}
	obj := objs[5]
	for _, tc := range []struct {
		name string
		obj  []byte
		want string
	}{
		{"empty", nil, "header: truncated: 0 of 64 bytes"},
		{"short", obj[:63], "header: truncated: 63 of 64 bytes"},
		{"magic", withHeader(t, obj, func(b []byte) { b[0] = 'X' }), "header: bad magic"},
		{"version", withHeader(t, obj, func(b []byte) { b[4] = 2 }), "header: unsupported version 2"},
		{"header crc", func() []byte { b := bytes.Clone(obj); b[61] ^= 1; return b }(), "header: crc mismatch"},
		{"k zero", withHeader(t, obj, func(b []byte) { b[5] = 0 }), "need at least 1 data shard"},
		{"k+m", withHeader(t, obj, func(b []byte) { b[5], b[6] = 200, 100 }), "at most 256 shards"},
		{"index", withHeader(t, obj, func(b []byte) { b[7] = 6 }), "shard index 6 out of range for 4+2"},
		{"huge pack", withHeader(t, obj, func(b []byte) {
			binary.LittleEndian.PutUint64(b[8:], 1<<62)
			binary.LittleEndian.PutUint64(b[16:], 1<<60)
		}), "exceeds"},
		{"shard length", withHeader(t, obj, func(b []byte) { binary.LittleEndian.PutUint64(b[16:], 251) }), "shard length 251, want 250"},
		{"shard length overflow", withHeader(t, obj, func(b []byte) { binary.LittleEndian.PutUint64(b[16:], 1<<63) }), "shard length"},
	} {
		_, err := ParseHeader(tc.obj)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseHeader error %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	s := Scheme{K: 4, M: 2}
	c := mustCoder(t, s)
	pack := testPack(10007, 2)
	id := packIDOf(pack)
	objs, err := c.Encode(id, pack)
	if err != nil {
		t.Fatal(err)
	}
	for i, obj := range objs {
		if err := Check(id, i, s, obj); err != nil {
			t.Errorf("Check(shard %d): %v", i, err)
		}
	}
	flipped := bytes.Clone(objs[3])
	flipped[len(flipped)-1] ^= 0x80
	for _, tc := range []struct {
		name  string
		id    [32]byte
		index int
		s     Scheme
		obj   []byte
		want  string
	}{
		{"data flip", id, 3, s, flipped, "corrupt shard 3 of pack " + hexID(id) + ": crc mismatch"},
		{"wrong pack", [32]byte{9}, 3, s, objs[3], "wrong pack id " + hexID(id)},
		{"wrong index", id, 2, s, objs[3], "wrong index 3"},
		{"wrong scheme", id, 3, Scheme{K: 3, M: 3}, objs[3], "wrong scheme 4+2, want 3+3"},
		{"truncated", id, 3, s, objs[3][:100], "truncated: 100 of 2566 bytes"},
		{"extended", id, 3, s, append(bytes.Clone(objs[3]), 0), "1 bytes past the end (2567 of 2566)"},
		{"nil", id, 3, s, nil, "header: truncated"},
	} {
		err := Check(tc.id, tc.index, tc.s, tc.obj)
		if !errors.Is(err, ErrCorruptShard) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Check = %v, want ErrCorruptShard saying %q", tc.name, err, tc.want)
		}
	}
}
