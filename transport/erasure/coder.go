package erasure

import (
	"errors"
	"fmt"
	"hash/crc32"
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
	if int64(len(pack)) > MaxPackLen {
		return nil, fmt.Errorf("encode pack %x: %d bytes exceeds the maximum of %d", packID, len(pack), int64(MaxPackLen))
	}
	h := Header{K: c.s.K, M: c.s.M, PackLen: int64(len(pack)), PackID: packID}
	h.ShardLen = shardLenFor(h.PackLen, h.K)
	size := int(h.ShardLen)

	objs := make([][]byte, c.s.Shards())
	data := make([][]byte, c.s.Shards())
	for i := range objs {
		objs[i] = make([]byte, HeaderSize+size)
		data[i] = objs[i][HeaderSize:]
		if i < c.s.K {
			copy(data[i], pack[min(i*size, len(pack)):])
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
	h, rep, err := c.check("decode", packID, shards)
	if err != nil {
		return nil, rep, err
	}
	k, size := c.s.K, int(h.ShardLen)
	rep.Reconstructed = slices.ContainsFunc(rep.States[:k], func(s ShardState) bool { return s != OK })
	out := make([]byte, k*size)
	if size == 0 {
		return out, rep, nil
	}
	rs := make([][]byte, c.s.Shards())
	for i := range k {
		part := out[i*size : (i+1)*size : (i+1)*size]
		if rep.States[i] == OK {
			copy(part, shards[i][HeaderSize:])
			rs[i] = part
		} else {
			// Empty with capacity: reedsolomon reconstructs into it.
			rs[i] = part[:0]
		}
	}
	// check guarantees k intact shards, so a lost data shard implies
	// m > 0 and a non-nil c.rs.
	if rep.Reconstructed {
		for i := k; i < len(rs); i++ {
			if rep.States[i] == OK {
				rs[i] = shards[i][HeaderSize:]
			}
		}
		if err := c.rs.ReconstructData(rs); err != nil {
			return nil, rep, fmt.Errorf("decode pack %x: %w", packID, err)
		}
	}
	// The padding is zero in every shard set Encode wrote; anything else
	// means intact-looking shards that do not belong together.
	if i := slices.IndexFunc(out[h.PackLen:], func(b byte) bool { return b != 0 }); i >= 0 {
		return nil, rep, fmt.Errorf("decode pack %x: shards disagree: nonzero padding at pack byte %d", packID, h.PackLen+int64(i))
	}
	return out[:h.PackLen:h.PackLen], rep, nil
}

// Rebuild returns all k+m shard objects of a pack, regenerating missing and
// corrupt ones from the intact ones, for repair. It checks like Decode and
// fails like it. Intact objects are returned as given (same backing
// arrays); regenerated ones are new and byte-identical to what Encode wrote.
// Memory: one new object per bad shard.
func (c *Coder) Rebuild(packID [32]byte, shards [][]byte) ([][]byte, Report, error) {
	h, rep, err := c.check("rebuild", packID, shards)
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
// when at least k are intact.
func (c *Coder) check(op string, packID [32]byte, shards [][]byte) (Header, Report, error) {
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
		h, reason := inspect(packID, i, c.s, obj)
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
