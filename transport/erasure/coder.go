package erasure

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"

	"github.com/klauspost/reedsolomon"
)

// ErrTooFewShards is wrapped by Decode and Rebuild when fewer than k shards
// are intact; the error names the bad shards and why each is bad.
var ErrTooFewShards = errors.New("too few intact shards")

// ShardState is the verdict on one shard object.
type ShardState int

const (
	OK ShardState = iota
	Missing
	Corrupt
)

func (s ShardState) String() string {
	switch s {
	case OK:
		return "ok"
	case Missing:
		return "missing"
	case Corrupt:
		return "corrupt"
	}
	return fmt.Sprintf("ShardState(%d)", int(s))
}

// Report says, per shard index, what Decode or Rebuild found.
type Report struct {
	States []ShardState
	// Reasons holds a human-readable reason for each bad shard ("missing",
	// "crc mismatch ...", "truncated: ...", "wrong pack id ...",
	// "header: ..."); it is empty for intact ones.
	Reasons []string
	// Reconstructed is true when shard data had to be computed from parity:
	// a data shard for Decode, any shard for Rebuild.
	Reconstructed bool
}

// Healthy returns the number of intact shards.
func (r Report) Healthy() int {
	n := 0
	for _, s := range r.States {
		if s == OK {
			n++
		}
	}
	return n
}

// Bad returns the indexes of missing and corrupt shards, in order.
func (r Report) Bad() []int {
	var bad []int
	for i, s := range r.States {
		if s != OK {
			bad = append(bad, i)
		}
	}
	return bad
}

func (r *Report) mark(i int, s ShardState, reason string) {
	r.States[i], r.Reasons[i] = s, reason
}

func (r Report) describeBad() string {
	var b strings.Builder
	for _, i := range r.Bad() {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "shard %d: %s", i, r.Reasons[i])
	}
	return b.String()
}

// Coder encodes packs into shard objects and decodes them for one Scheme.
// It is safe for concurrent use.
type Coder struct {
	s Scheme
	// rs is nil when s.M == 0: plain striping needs no code.
	rs reedsolomon.Encoder
}

// NewCoder returns a Coder for s. Parity is what reedsolomon.New(k, m)
// computes with default options; that matrix is part of the shard format.
func NewCoder(s Scheme) (*Coder, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("erasure scheme %s: %w", s, err)
	}
	c := &Coder{s: s}
	if s.M > 0 {
		rs, err := reedsolomon.New(s.K, s.M)
		if err != nil {
			return nil, fmt.Errorf("erasure scheme %s: %w", s, err)
		}
		c.rs = rs
	}
	return c, nil
}

// Scheme returns the coder's scheme.
func (c *Coder) Scheme() Scheme { return c.s }

// Encode splits pack into k+m complete shard objects (header and data),
// index i at position i. It copies pack once into the data shards and
// computes parity in place: memory is (k+m) * (HeaderSize + ceil(len/k))
// bytes, about (k+m)/k times the pack, in k+m separate allocations.
func (c *Coder) Encode(packID [32]byte, pack []byte) ([][]byte, error) {
	return c.EncodeTo(nil, packID, pack)
}

// EncodeTo is Encode into the buffers of objs, objects an earlier EncodeTo
// returned (or nil), so that a writer can reuse them: a buffer whose
// capacity suffices is overwritten, others are allocated.
func (c *Coder) EncodeTo(objs [][]byte, packID [32]byte, pack []byte) ([][]byte, error) {
	if int64(len(pack)) > MaxPackLen {
		return nil, fmt.Errorf("encode pack %x: %d bytes exceeds the maximum of %d", packID, len(pack), int64(MaxPackLen))
	}
	h := Header{K: c.s.K, M: c.s.M, PackLen: int64(len(pack)), PackID: packID}
	h.ShardLen = shardLenFor(h.PackLen, h.K)
	size := int(h.ShardLen)

	if len(objs) != c.s.Shards() {
		objs = make([][]byte, c.s.Shards())
	}
	data := make([][]byte, c.s.Shards())
	for i := range objs {
		if cap(objs[i]) < HeaderSize+size {
			objs[i] = make([]byte, HeaderSize+size)
		}
		objs[i] = objs[i][:HeaderSize+size]
		data[i] = objs[i][HeaderSize:]
		if i < c.s.K {
			n := copy(data[i], pack[min(i*size, len(pack)):])
			clear(data[i][n:]) // the last one's padding, in a reused buffer
		}
	}
	// reedsolomon refuses empty shards; an empty pack has nothing to code.
	if c.rs != nil && size > 0 {
		if err := c.rs.Encode(data); err != nil {
			return nil, fmt.Errorf("encode pack %x: %w", packID, err)
		}
	}
	for i, obj := range objs {
		h.Index = i
		h.DataCRC = crc32.Checksum(data[i], castagnoli)
		h.put(obj)
	}
	return objs, nil
}

// Decode returns the pack from its shard objects, given by index (nil for a
// missing one). Every object is checked (header, pack ID, scheme, index,
// length, data CRC) and a bad one is treated as missing; missing data shards
// are reconstructed from parity. With fewer than k intact shards the error
// wraps ErrTooFewShards. The Report is filled in whenever len(shards) is
// right, also on error.
//
// Memory: the returned pack, k*ceil(packLen/k) bytes (intact data shards are
// copied into it once, lost ones reconstructed straight into it), plus
// reedsolomon's small scratch. Parity objects are read in place.
func (c *Coder) Decode(packID [32]byte, shards [][]byte) ([]byte, Report, error) {
	h, rep, err := c.check("decode", packID, shards, true)
	if err != nil {
		return nil, rep, err
	}
	k, size := c.s.K, int(h.ShardLen)
	out := make([]byte, k*size)
	parts := make([][]byte, k)
	for i := range parts {
		parts[i] = out[i*size : (i+1)*size : (i+1)*size]
		if rep.States[i] == OK {
			copy(parts[i], shards[i][HeaderSize:])
		}
	}
	if err := c.reconstruct(packID, h, &rep, shards, parts); err != nil {
		return nil, rep, err
	}
	return out[:h.PackLen:h.PackLen], rep, nil
}

// Decoded is a pack held as the data of its k data shards, which
// DecodeVerified does not copy together: Bytes serves ranges of it. Reuse
// one Decoded for many packs: the buffers it keeps for reconstructed shards
// and for ranges that span two shards grow to what the largest needed.
type Decoded struct {
	packLen, shardLen int64
	parts             [][]byte // the k data shards' data, shardLen bytes each
	rebuilt           [][]byte // buffers for reconstructed data shards
	join              []byte
}

// Len returns the length of the pack.
func (d *Decoded) Len() int64 { return d.packLen }

// Bytes returns the pack's bytes [off, off+n): a slice of a shard's data,
// or, for a range that spans shards, a copy valid until the next Bytes.
func (d *Decoded) Bytes(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off > d.packLen-n {
		return nil, fmt.Errorf("range [%d,+%d) outside the pack of %d bytes", off, n, d.packLen)
	}
	if n == 0 {
		return nil, nil
	}
	i, at := off/d.shardLen, off%d.shardLen
	if at+n <= d.shardLen {
		return d.parts[i][at : at+n], nil
	}
	if int64(cap(d.join)) < n {
		d.join = make([]byte, n)
	}
	out := d.join[:n]
	for done := int64(0); done < n; i, at = i+1, 0 {
		done += int64(copy(out[done:], d.parts[i][at:]))
	}
	return out, nil
}

// WriteTo writes the whole pack to w, shard by shard, without copying it
// together: to hash it, for one.
func (d *Decoded) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, part := range d.parts {
		if n >= d.packLen {
			break
		}
		m, err := w.Write(part[:min(int64(len(part)), d.packLen-n)])
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// DecodeVerified is Decode into d, without copying the data shards: d keeps
// references to shards until the next DecodeVerified into it. The caller
// has checked every object it passes (Check, which reads its data for the
// CRC): DecodeVerified reads only their headers, so that a pack's data is
// read once on its way to the caller. Reconstructed data shards go into
// d's own buffers.
func (c *Coder) DecodeVerified(d *Decoded, packID [32]byte, shards [][]byte) (Report, error) {
	h, rep, err := c.check("decode", packID, shards, false)
	if err != nil {
		return rep, err
	}
	k := c.s.K
	if len(d.parts) != k {
		d.parts, d.rebuilt = make([][]byte, k), make([][]byte, k)
	}
	d.packLen, d.shardLen = h.PackLen, h.ShardLen
	for i := range k {
		if rep.States[i] == OK {
			d.parts[i] = shards[i][HeaderSize:]
			continue
		}
		if int64(cap(d.rebuilt[i])) < h.ShardLen {
			d.rebuilt[i] = make([]byte, h.ShardLen)
		}
		d.parts[i] = d.rebuilt[i][:h.ShardLen]
	}
	if err := c.reconstruct(packID, h, &rep, shards, d.parts); err != nil {
		clear(d.parts)
		return rep, err
	}
	return rep, nil
}

// reconstruct fills the parts (data shard data, shardLen bytes each) of the
// lost data shards from the intact shards, sets rep.Reconstructed, and
// checks the padding after the pack.
func (c *Coder) reconstruct(packID [32]byte, h Header, rep *Report, shards, parts [][]byte) error {
	k, size := c.s.K, int(h.ShardLen)
	rep.Reconstructed = slices.ContainsFunc(rep.States[:k], func(s ShardState) bool { return s != OK })
	if size == 0 {
		return nil
	}
	// check guarantees k intact shards, so a lost data shard implies
	// m > 0 and a non-nil c.rs.
	if rep.Reconstructed {
		rs := make([][]byte, c.s.Shards())
		for i := range rs {
			switch {
			case i < k && rep.States[i] != OK:
				rs[i] = parts[i][:0] // empty with capacity: reedsolomon fills it
			case i < k:
				rs[i] = parts[i]
			case rep.States[i] == OK:
				rs[i] = shards[i][HeaderSize:]
			}
		}
		if err := c.rs.ReconstructData(rs); err != nil {
			return fmt.Errorf("decode pack %x: %w", packID, err)
		}
	}
	// The padding is zero in every shard set Encode wrote; anything else
	// means intact-looking shards that do not belong together.
	// There are fewer than k bytes of it.
	for off := h.PackLen; off < int64(k)*h.ShardLen; off++ {
		if parts[off/h.ShardLen][off%h.ShardLen] != 0 {
			return fmt.Errorf("decode pack %x: shards disagree: nonzero padding at pack byte %d", packID, off)
		}
	}
	return nil
}

// Rebuild returns all k+m shard objects of a pack, regenerating missing and
// corrupt ones from the intact ones, for repair. It checks like Decode and
// fails like it. Intact objects are returned as given (same backing
// arrays); regenerated ones are new and byte-identical to what Encode wrote.
// Memory: one new object per bad shard.
func (c *Coder) Rebuild(packID [32]byte, shards [][]byte) ([][]byte, Report, error) {
	h, rep, err := c.check("rebuild", packID, shards, true)
	if err != nil {
		return nil, rep, err
	}
	out := slices.Clone(shards)
	bad := rep.Bad()
	if len(bad) == 0 {
		return out, rep, nil
	}
	size := int(h.ShardLen)
	rs := make([][]byte, len(shards))
	for i := range rs {
		if rep.States[i] == OK {
			rs[i] = shards[i][HeaderSize:]
		} else {
			out[i] = make([]byte, HeaderSize+size)
			rs[i] = out[i][HeaderSize:HeaderSize]
		}
	}
	// As in Decode, a bad shard with k intact ones implies c.rs != nil.
	if size > 0 {
		if err := c.rs.Reconstruct(rs); err != nil {
			return nil, rep, fmt.Errorf("rebuild pack %x: %w", packID, err)
		}
	}
	for _, i := range bad {
		h.Index = i
		h.DataCRC = crc32.Checksum(out[i][HeaderSize:], castagnoli)
		h.put(out[i])
	}
	rep.Reconstructed = true
	return out, rep, nil
}

// check inspects every shard object, marks the bad ones in the report, and
// returns the header of an intact shard (its geometry stands for the pack)
// when at least k are intact. Without dataCRC it trusts the shards' data
// (the caller checked it).
func (c *Coder) check(op string, packID [32]byte, shards [][]byte, dataCRC bool) (Header, Report, error) {
	n := c.s.Shards()
	if len(shards) != n {
		return Header{}, Report{}, fmt.Errorf("%s pack %x: got %d shard objects, scheme %s has %d", op, packID, len(shards), c.s, n)
	}
	rep := Report{States: make([]ShardState, n), Reasons: make([]string, n)}
	headers := make([]Header, n)
	votes := make(map[int64]int)
	for i, obj := range shards {
		if obj == nil {
			rep.mark(i, Missing, "missing")
			continue
		}
		h, reason := inspect(packID, i, c.s, obj, dataCRC)
		if reason != "" {
			rep.mark(i, Corrupt, reason)
			continue
		}
		headers[i] = h
		votes[h.PackLen]++
	}

	// Intact shards of one pack agree on its length. Should they not (only
	// a forged header can do that), the majority wins; without one, none
	// can be trusted.
	var packLen int64
	best, tied := 0, false
	for l, v := range votes {
		switch {
		case v > best:
			packLen, best, tied = l, v, false
		case v == best:
			tied = true
		}
	}
	for i, h := range headers {
		if rep.States[i] != OK || h.PackLen == packLen && !tied {
			continue
		}
		if tied {
			rep.mark(i, Corrupt, fmt.Sprintf("header: pack length %d, other intact shards disagree", h.PackLen))
		} else {
			rep.mark(i, Corrupt, fmt.Sprintf("header: pack length %d, other intact shards say %d", h.PackLen, packLen))
		}
	}

	if healthy := rep.Healthy(); healthy < c.s.K {
		return Header{}, rep, fmt.Errorf("%s pack %x: %w: %d of %d needed, scheme %s; %s",
			op, packID, ErrTooFewShards, healthy, c.s.K, c.s, rep.describeBad())
	}
	i := slices.Index(rep.States, OK)
	return headers[i], rep, nil
}

// ReconstructRange computes data shard lost's bytes in one range from the
// same range of other shards: parts[i] is that range of shard i's data (nil
// where not read; at least k of them), all of one length. Reed-Solomon works
// byte position by byte position, so any range of the shards works, and a
// reader can rebuild just the bytes it needs. Nothing here is checked: a
// wrong part makes wrong bytes, which the caller must detect.
func (c *Coder) ReconstructRange(parts [][]byte, lost int) ([]byte, error) {
	if err := c.ReconstructRanges(parts, []int{lost}); err != nil {
		return nil, err
	}
	return parts[lost], nil
}

// ReconstructRanges is ReconstructRange for several data shards at once:
// it fills parts[i] for each i in lost.
func (c *Coder) ReconstructRanges(parts [][]byte, lost []int) error {
	if len(parts) != c.s.Shards() || len(lost) == 0 || c.rs == nil {
		return fmt.Errorf("reconstruct data shards %v of scheme %s: bad arguments", lost, c.s)
	}
	required := make([]bool, c.s.K)
	for _, i := range lost {
		if i < 0 || i >= c.s.K {
			return fmt.Errorf("reconstruct data shards %v of scheme %s: bad arguments", lost, c.s)
		}
		required[i] = true
	}
	if err := c.rs.ReconstructSome(parts, required); err != nil {
		return fmt.Errorf("reconstruct data shards %v: %w", lost, err)
	}
	return nil
}
