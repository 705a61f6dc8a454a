package erasure

import (
	"hash/crc32"
	"testing"
)

func TestCRCConcat(t *testing.T) {
	data := testPack(5000, 3)
	for _, cut := range []int{0, 1, 7, 64, 1000, 4999, 5000} {
		for _, end := range []int{cut, cut + 1, 5000} {
			if end > len(data) {
				continue
			}
			a, b := data[:cut], data[cut:end]
			want := crc32.Checksum(data[:end], castagnoli)
			got := crcConcat(crc32.Checksum(a, castagnoli), crc32.Checksum(b, castagnoli), uint64(len(b)))
			if got != want {
				t.Fatalf("a %d bytes, b %d bytes: %08x, want %08x", len(a), len(b), got, want)
			}
		}
	}
}

// TestObjectCRC: the CRC of every object Encode and Rebuild make, from
// their headers alone.
func TestObjectCRC(t *testing.T) {
	for _, s := range testSchemes {
		c := mustCoder(t, s)
		for _, n := range []int{0, 1, 1000, 1 << 20} {
			pack := testPack(n, uint64(n))
			id := packIDOf(pack)
			objs, err := c.Encode(id, pack)
			if err != nil {
				t.Fatal(err)
			}
			if s.M > 0 {
				in := cloneShards(objs)
				in[0] = nil
				if objs, _, err = c.Rebuild(id, in); err != nil {
					t.Fatal(err)
				}
			}
			for i, obj := range objs {
				if got, want := ObjectCRC(obj), crc32.Checksum(obj, castagnoli); got != want {
					t.Fatalf("%s, %d bytes, shard %d: %08x, want %08x", s, n, i, got, want)
				}
			}
		}
	}
}
