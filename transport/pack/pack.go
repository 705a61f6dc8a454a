package pack

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"

	"github.com/klauspost/compress/zstd"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/crypt"
)

// ID names a pack: the SHA-256 of its bytes.
type ID [32]byte

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex digits, for messages.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// ParseID parses a 64-digit hex pack ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("pack id %q: want 64 hex digits", s)
	}
	_, err := hex.Decode(id[:], []byte(s))
	return id, err
}

// Sum returns the ID of pack bytes.
func Sum(p []byte) ID { return sha256.Sum256(p) }

// Entry locates one blob inside a pack.
type Entry struct {
	ID         chunk.ID
	Offset     uint32 // of the sealed blob in the pack
	Length     uint32 // of the sealed blob
	RawLength  uint32 // of the chunk's plaintext
	Compressed bool
}

// MaxRawLength bounds a chunk's plaintext, so hostile headers cannot make a
// reader allocate without limit.
const MaxRawLength = 64 << 20

var (
	// ErrFormat means bytes that should be a pack, a header or a blob are
	// not well formed.
	ErrFormat  = errors.New("malformed pack")
	magic      = []byte("FRYP")
	headerAD   = []byte("ferry pack header v1")
	blobADBase = []byte("ferry blob v1")
)

const trailerLen = 8

// Codec compresses, seals and opens blobs. It is safe for concurrent use.
type Codec struct {
	key *crypt.Key
	enc *zstd.Encoder
	dec *zstd.Decoder
}

// NewCodec returns a Codec sealing with key.
func NewCodec(key *crypt.Key) (*Codec, error) {
	n := runtime.GOMAXPROCS(0)
	// No frame checksum: AES-GCM authenticates every blob and its keyed
	// hash is checked on restore, so zstd's xxhash of the content (about
	// 3% of a backup's CPU, as much again on restore) would prove nothing.
	// Blobs written with a checksum still decode, and it is checked.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(n), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(n), zstd.WithDecoderMaxMemory(MaxRawLength))
	if err != nil {
		return nil, err
	}
	return &Codec{key: key, enc: enc, dec: dec}, nil
}

func blobAD(id chunk.ID) []byte {
	return append(append(make([]byte, 0, len(blobADBase)+len(id)), blobADBase...), id[:]...)
}

// SealBlob compresses plaintext when that pays (saves at least 1/32) and
// seals it, appending to dst. scratch is reused for the compressed form.
// Data that looks random (see incompressible) is not even tried.
func (c *Codec) SealBlob(dst, scratch []byte, id chunk.ID, plaintext []byte) (sealed, scratchOut []byte, compressed bool) {
	body := plaintext
	if !incompressible(plaintext) {
		scratch = c.enc.EncodeAll(plaintext, scratch[:0])
		if pays(len(scratch), len(plaintext)) {
			body, compressed = scratch, true
		}
	}
	return c.key.Seal(dst, body, blobAD(id)), scratch, compressed
}

// pays reports whether compressing n bytes into z is worth a decompression
// on every read: it must save at least 1/32.
func pays(z, n int) bool { return z < n-n/32 }

// OpenBlob authenticates, decrypts and decompresses the blob e from pack
// bytes p, appending the plaintext to dst. The caller checks the chunk ID.
func (c *Codec) OpenBlob(dst []byte, p []byte, e Entry) ([]byte, error) {
	end := uint64(e.Offset) + uint64(e.Length)
	if end > uint64(len(p)) || e.RawLength > MaxRawLength {
		return nil, fmt.Errorf("blob %s at %d+%d beyond pack of %d bytes: %w", e.ID.Short(), e.Offset, e.Length, len(p), ErrFormat)
	}
	plain, err := c.key.Open(nil, p[e.Offset:end], blobAD(e.ID))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", e.ID.Short(), err)
	}
	if !e.Compressed {
		if len(plain) != int(e.RawLength) {
			return nil, fmt.Errorf("blob %s: %d bytes, header says %d: %w", e.ID.Short(), len(plain), e.RawLength, ErrFormat)
		}
		return append(dst, plain...), nil
	}
	start := len(dst)
	out, err := c.dec.DecodeAll(plain, dst)
	if err != nil {
		return nil, fmt.Errorf("blob %s: decompress: %w", e.ID.Short(), err)
	}
	if len(out)-start != int(e.RawLength) {
		return nil, fmt.Errorf("blob %s: %d bytes, header says %d: %w", e.ID.Short(), len(out)-start, e.RawLength, ErrFormat)
	}
	return out, nil
}

// Writer assembles sealed blobs into one pack.
type Writer struct {
	codec   *Codec
	buf     []byte
	entries []Entry
}

// NewWriter returns a Writer whose buffer starts with capacity sizeHint.
func (c *Codec) NewWriter(sizeHint int) *Writer {
	return c.NewWriterBuffer(make([]byte, 0, sizeHint))
}

// NewWriterBuffer returns a Writer that assembles the pack in buf[:0], so
// that the caller can reuse pack buffers. The pack Finish returns is in buf
// when it fits, else in a larger array the caller may keep instead: the
// header grows with the number of blobs, which compression makes
// unbounded.
func (c *Codec) NewWriterBuffer(buf []byte) *Writer {
	return &Writer{codec: c, buf: buf[:0]}
}

func maxHeaderLen(entries int) int {
	return 1 + binary.MaxVarintLen64 + entries*(1+32+3*binary.MaxVarintLen32)
}

// Add appends a sealed blob.
func (w *Writer) Add(id chunk.ID, sealed []byte, rawLength int, compressed bool) {
	w.entries = append(w.entries, Entry{ID: id, Offset: uint32(len(w.buf)), Length: uint32(len(sealed)), RawLength: uint32(rawLength), Compressed: compressed})
	w.buf = append(w.buf, sealed...)
}

// Len is the number of bytes added so far.
func (w *Writer) Len() int { return len(w.buf) }

// Count is the number of blobs added so far.
func (w *Writer) Count() int { return len(w.entries) }

// Finish seals the header and returns the pack, its ID and its entries.
// The Writer must not be used afterwards.
func (w *Writer) Finish() ([]byte, ID, []Entry) {
	hdr := make([]byte, 0, maxHeaderLen(len(w.entries)))
	hdr = append(hdr, 1)
	hdr = binary.AppendUvarint(hdr, uint64(len(w.entries)))
	for _, e := range w.entries {
		var flags byte
		if e.Compressed {
			flags |= 1
		}
		hdr = append(hdr, flags)
		hdr = append(hdr, e.ID[:]...)
		hdr = binary.AppendUvarint(hdr, uint64(e.Offset))
		hdr = binary.AppendUvarint(hdr, uint64(e.Length))
		hdr = binary.AppendUvarint(hdr, uint64(e.RawLength))
	}
	p := w.codec.key.Seal(w.buf, hdr, headerAD)
	p = binary.LittleEndian.AppendUint32(p, uint32(len(p)-len(w.buf)))
	p = append(p, magic...)
	entries := w.entries
	w.buf, w.entries = nil, nil
	return p, Sum(p), entries
}

// ParseHeader authenticates and parses the header at the end of pack p.
func (c *Codec) ParseHeader(p []byte) ([]Entry, error) {
	if len(p) < trailerLen || string(p[len(p)-4:]) != string(magic) {
		return nil, fmt.Errorf("no pack trailer: %w", ErrFormat)
	}
	hlen := uint64(binary.LittleEndian.Uint32(p[len(p)-trailerLen:]))
	if hlen > uint64(len(p)-trailerLen) {
		return nil, fmt.Errorf("header length %d beyond pack of %d bytes: %w", hlen, len(p), ErrFormat)
	}
	blobsEnd := uint64(len(p)-trailerLen) - hlen
	hdr, err := c.key.Open(nil, p[blobsEnd:len(p)-trailerLen], headerAD)
	if err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	if len(hdr) < 1 || hdr[0] != 1 {
		return nil, fmt.Errorf("pack header version: %w", ErrFormat)
	}
	rest := hdr[1:]
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > uint64(len(rest))/(1+32+3) {
		return nil, fmt.Errorf("pack header count: %w", ErrFormat)
	}
	rest = rest[k:]
	entries := make([]Entry, 0, n)
	for i := uint64(0); i < n; i++ {
		if len(rest) < 33 {
			return nil, fmt.Errorf("pack header entry %d truncated: %w", i, ErrFormat)
		}
		var e Entry
		e.Compressed = rest[0]&1 != 0
		copy(e.ID[:], rest[1:33])
		rest = rest[33:]
		var vals [3]uint64
		for j := range vals {
			v, k := binary.Uvarint(rest)
			if k <= 0 || v > 1<<32-1 {
				return nil, fmt.Errorf("pack header entry %d field %d: %w", i, j, ErrFormat)
			}
			vals[j], rest = v, rest[k:]
		}
		e.Offset, e.Length, e.RawLength = uint32(vals[0]), uint32(vals[1]), uint32(vals[2])
		if uint64(e.Offset)+uint64(e.Length) > blobsEnd || e.RawLength > MaxRawLength {
			return nil, fmt.Errorf("pack header entry %d out of bounds: %w", i, ErrFormat)
		}
		entries = append(entries, e)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("pack header: %d trailing bytes: %w", len(rest), ErrFormat)
	}
	return entries, nil
}
