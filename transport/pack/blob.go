package pack

import (
	"fmt"
	"math"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/crypt"
)

// nonceLen is the part of crypt.Overhead that precedes the ciphertext.
const nonceLen = 12

// Sealer compresses and seals blobs in place, in two buffers it keeps, so
// that sealing a chunk allocates nothing: the plaintext is read straight
// into Plain, compressed into the second buffer, and whichever form is
// stored is encrypted where it lies, after room left for the nonce. One
// Sealer per goroutine.
type Sealer struct {
	codec *Codec
	plain []byte // nonceLen, then the plaintext
	comp  []byte // nonceLen, then the compressed plaintext
	ad    adBuffer
}

// NewSealer returns a Sealer for chunks of up to maxLen bytes.
func (c *Codec) NewSealer(maxLen int) *Sealer {
	// Stored raw, a block of zstd's costs 3 bytes per 128 KiB: the
	// compressed form of data that does not shrink fits here too, so
	// EncodeAll never grows the buffer.
	n := nonceLen + max(maxLen, c.enc.MaxEncodedSize(maxLen)) + crypt.Overhead
	return &Sealer{codec: c, plain: make([]byte, n), comp: make([]byte, n), ad: newADBuffer()}
}

// Plain returns the buffer for a chunk of n bytes, at most the maxLen the
// Sealer was made for; Seal seals what it holds.
func (s *Sealer) Plain(n int) []byte { return s.plain[nonceLen : nonceLen+n] }

// Seal compresses the n bytes in Plain when that pays, as SealBlob does,
// and seals them under id. The sealed blob is valid until the next Seal
// and overwrites Plain.
func (s *Sealer) Seal(id chunk.ID, n int) (sealed []byte, compressed bool) {
	body, buf := s.plain[nonceLen:nonceLen+n], s.plain
	if !incompressible(body) {
		z := s.codec.enc.EncodeAll(body, s.comp[:nonceLen])
		if pays(len(z)-nonceLen, n) {
			body, buf, compressed = z[nonceLen:], z, true
		}
	}
	// crypt's Seal writes the nonce into buf[:nonceLen] and the ciphertext
	// over the body, which it may (exact overlap).
	return s.codec.key.Seal(buf[:0], body, s.ad.of(id)), compressed
}

// adBuffer holds a blob's associated data, so that building it for each
// blob allocates nothing.
type adBuffer []byte

func newADBuffer() adBuffer { return blobAD(chunk.ID{}) }

func (b adBuffer) of(id chunk.ID) []byte {
	copy(b[len(blobADBase):], id[:])
	return b
}

// Opener opens blobs into a buffer it keeps, so that opening allocates
// nothing. One Opener per goroutine.
type Opener struct {
	codec *Codec
	plain []byte // decrypted, still compressed
	out   []byte
	ad    adBuffer
}

// NewOpener returns an Opener for chunks of up to maxLen bytes; larger ones
// (up to MaxRawLength) grow its buffers.
func (c *Codec) NewOpener(maxLen int) *Opener {
	return &Opener{codec: c, out: make([]byte, 0, maxLen), ad: newADBuffer()}
}

// Open authenticates, decrypts and decompresses the sealed blob of entry e
// (sealed is its bytes in the pack, e.Length of them) and returns the
// plaintext, valid until the next Open. The caller checks the chunk ID.
func (o *Opener) Open(sealed []byte, e Entry) ([]byte, error) {
	out, err := o.OpenAppend(o.out[:0], sealed, e)
	if err != nil {
		return nil, err
	}
	o.out = out[:0]
	return out, nil
}

// OpenAppend is Open appending the plaintext to dst: it returns dst
// extended by the blob's e.RawLength bytes, so that a caller can gather
// blobs that follow each other in one buffer without copying them.
func (o *Opener) OpenAppend(dst, sealed []byte, e Entry) ([]byte, error) {
	if len(sealed) != int(e.Length) || e.RawLength > MaxRawLength {
		return nil, fmt.Errorf("blob %s: %d sealed bytes, entry says %d: %w", e.ID.Short(), len(sealed), e.Length, ErrFormat)
	}
	plain := o.plain[:0]
	if !e.Compressed {
		plain = dst
	}
	plain, err := o.codec.key.Open(plain, sealed, o.ad.of(e.ID))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", e.ID.Short(), err)
	}
	out := plain
	if e.Compressed {
		o.plain = plain[:0]
		if out, err = o.codec.dec.DecodeAll(plain, dst); err != nil {
			return nil, fmt.Errorf("blob %s: decompress: %w", e.ID.Short(), err)
		}
	}
	if len(out)-len(dst) != int(e.RawLength) {
		return nil, fmt.Errorf("blob %s: %d bytes, header says %d: %w", e.ID.Short(), len(out)-len(dst), e.RawLength, ErrFormat)
	}
	return out, nil
}

// Sampling for incompressible: 64 pieces of 128 bytes spread over the data.
const (
	samplePieces = 64
	samplePiece  = 128
	// incompressibleBits is the order-0 entropy, in bits per byte, above
	// which data counts as random. Huffman coding cannot save the 1/32
	// that compression must (7.75 bits per byte); 8 KiB of random bytes
	// measure about 7.98 (the estimate runs low by about 255/(2n ln 2)).
	incompressibleBits = 7.9
)

// incompressible reports whether data looks random (already compressed or
// encrypted, as much of a volume is), from the byte frequencies of a spread
// sample: zstd would spend as long again as the rest of sealing to find out
// that it cannot shrink it. Short data is always tried. Repeats of random
// data would still compress and look random here; they are rare inside one
// chunk, and repeated chunks are deduplicated anyway.
func incompressible(data []byte) bool {
	if len(data) < 64<<10 {
		return false
	}
	var freq [256]int
	step := (len(data) - samplePiece) / (samplePieces - 1)
	for i := range samplePieces {
		for _, b := range data[i*step : i*step+samplePiece] {
			freq[b]++
		}
	}
	const n = samplePieces * samplePiece
	bits := 0.0
	for _, f := range freq {
		if f > 0 {
			p := float64(f) / n
			bits -= p * math.Log2(p)
		}
	}
	return bits > incompressibleBits
}
