package erasure

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

const (
	// HeaderSize is the size of the header that starts every shard object.
	HeaderSize = 64
	// Version is the shard format this package writes and reads.
	Version = 1
	// MaxPackLen bounds the pack length a header may claim, so a damaged
	// header cannot make a reader size buffers beyond reason. Packs are
	// 8-32 MiB; 4 GiB leaves room without letting k*shardLen overflow.
	MaxPackLen = 1 << 32

	magic = "FRYS"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorruptShard is wrapped by Check when a shard object fails a check.
var ErrCorruptShard = errors.New("corrupt shard")

// Header is the parsed header of a shard object.
type Header struct {
	K, M, Index int
	// PackLen is the length of the whole pack, ShardLen = ceil(PackLen/K)
	// the length of the data after the header.
	PackLen, ShardLen int64
	PackID            [32]byte
	// DataCRC is the CRC-32C of the shard data.
	DataCRC uint32
}

// ParseHeader parses and validates the header at the start of obj (which may
// be the whole shard object or just its first HeaderSize bytes): magic,
// version, header CRC, and sizes that agree with each other. It does not look
// at the shard data.
func ParseHeader(obj []byte) (Header, error) {
	if len(obj) < HeaderSize {
		return Header{}, fmt.Errorf("header: truncated: %d of %d bytes", len(obj), HeaderSize)
	}
	b := obj[:HeaderSize]
	if string(b[0:4]) != magic {
		return Header{}, fmt.Errorf("header: bad magic %q", b[0:4])
	}
	if b[4] != Version {
		return Header{}, fmt.Errorf("header: unsupported version %d", b[4])
	}
	if got, want := crc32.Checksum(b[:60], castagnoli), binary.LittleEndian.Uint32(b[60:]); got != want {
		return Header{}, fmt.Errorf("header: crc mismatch (stored %08x, computed %08x)", want, got)
	}
	h := Header{
		K:       int(b[5]),
		M:       int(b[6]),
		Index:   int(b[7]),
		DataCRC: binary.LittleEndian.Uint32(b[56:]),
	}
	copy(h.PackID[:], b[24:56])
	if err := (Scheme{K: h.K, M: h.M}).Validate(); err != nil {
		return Header{}, fmt.Errorf("header: scheme %d+%d: %w", h.K, h.M, err)
	}
	if h.Index >= h.K+h.M {
		return Header{}, fmt.Errorf("header: shard index %d out of range for %d+%d", h.Index, h.K, h.M)
	}
	packLen, shardLen := binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:])
	if packLen > MaxPackLen {
		return Header{}, fmt.Errorf("header: pack length %d exceeds %d", packLen, uint64(MaxPackLen))
	}
	h.PackLen = int64(packLen)
	h.ShardLen = shardLenFor(h.PackLen, h.K)
	if shardLen != uint64(h.ShardLen) {
		return Header{}, fmt.Errorf("header: shard length %d, want %d for a %d-byte pack in %d data shards",
			shardLen, h.ShardLen, packLen, h.K)
	}
	return h, nil
}

// put writes h as a shard header into b[:HeaderSize].
func (h Header) put(b []byte) {
	b = b[:HeaderSize]
	copy(b, magic)
	b[4] = Version
	b[5] = byte(h.K)
	b[6] = byte(h.M)
	b[7] = byte(h.Index)
	binary.LittleEndian.PutUint64(b[8:], uint64(h.PackLen))
	binary.LittleEndian.PutUint64(b[16:], uint64(h.ShardLen))
	copy(b[24:56], h.PackID[:])
	binary.LittleEndian.PutUint32(b[56:], h.DataCRC)
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
}

func shardLenFor(packLen int64, k int) int64 {
	return (packLen + int64(k) - 1) / int64(k)
}

// Check validates one shard object on its own, without decoding: the header,
// that it belongs to pack packID as shard index of scheme s, its length and
// its data CRC. Errors wrap ErrCorruptShard.
func Check(packID [32]byte, index int, s Scheme, obj []byte) error {
	if _, reason := inspect(packID, index, s, obj, true); reason != "" {
		return fmt.Errorf("%w %d of pack %x: %s", ErrCorruptShard, index, packID, reason)
	}
	return nil
}

// inspect is Check for callers that want the bare reason ("" when the shard
// is intact) and the parsed header; without dataCRC it checks all but the
// data's CRC.
func inspect(packID [32]byte, index int, s Scheme, obj []byte, dataCRC bool) (Header, string) {
	h, err := ParseHeader(obj)
	if err != nil {
		return Header{}, err.Error()
	}
	switch {
	case h.PackID != packID:
		return Header{}, fmt.Sprintf("wrong pack id %x", h.PackID)
	case h.K != s.K || h.M != s.M:
		return Header{}, fmt.Sprintf("wrong scheme %d+%d, want %s", h.K, h.M, s)
	case h.Index != index:
		return Header{}, fmt.Sprintf("wrong index %d", h.Index)
	}
	if want := HeaderSize + h.ShardLen; int64(len(obj)) != want {
		if int64(len(obj)) < want {
			return Header{}, fmt.Sprintf("truncated: %d of %d bytes", len(obj), want)
		}
		return Header{}, fmt.Sprintf("%d bytes past the end (%d of %d)", int64(len(obj))-want, len(obj), want)
	}
	if !dataCRC {
		return h, ""
	}
	if got := crc32.Checksum(obj[HeaderSize:], castagnoli); got != h.DataCRC {
		return Header{}, fmt.Sprintf("crc mismatch (stored %08x, computed %08x)", h.DataCRC, got)
	}
	return h, ""
}
