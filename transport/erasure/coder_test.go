package erasure

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

var testSchemes = []Scheme{{1, 0}, {1, 1}, {2, 1}, {4, 2}, {10, 4}}

func mustCoder(t testing.TB, s Scheme) *Coder {
	t.Helper()
	c, err := NewCoder(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testPack(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func packIDOf(pack []byte) [32]byte { return sha256.Sum256(pack) }

func hexID(id [32]byte) string { return hex.EncodeToString(id[:]) }

func cloneShards(objs [][]byte) [][]byte {
	out := make([][]byte, len(objs))
	for i, o := range objs {
		out[i] = bytes.Clone(o)
	}
	return out
}

// subsets calls fn with every subset of {0..n-1} of at most max elements.
func subsets(n, max int, fn func([]int)) {
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		fn(cur)
		if len(cur) == max {
			return
		}
		for i := start; i < n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(0, nil)
}

func encode(t testing.TB, c *Coder, pack []byte) ([32]byte, [][]byte) {
	t.Helper()
	id := packIDOf(pack)
	objs, err := c.Encode(id, pack)
	if err != nil {
		t.Fatal(err)
	}
	return id, objs
}

func TestRoundTrip(t *testing.T) {
	for _, s := range testSchemes {
		c := mustCoder(t, s)
		for _, n := range []int{0, 1, s.K - 1, s.K, s.K + 1, 4093, 1<<20 + 7, 3<<20 + 1} {
			pack := testPack(n, uint64(n))
			id, objs := encode(t, c, pack)
			if len(objs) != s.Shards() {
				t.Fatalf("%v/%d: %d shards, want %d", s, n, len(objs), s.Shards())
			}
			want := HeaderSize + (n+s.K-1)/s.K
			for i, obj := range objs {
				if len(obj) != want {
					t.Fatalf("%v/%d: shard %d is %d bytes, want %d", s, n, i, len(obj), want)
				}
				if err := Check(id, i, s, obj); err != nil {
					t.Fatalf("%v/%d: %v", s, n, err)
				}
			}
			got, rep, err := c.Decode(id, objs)
			if err != nil {
				t.Fatalf("%v/%d: Decode: %v", s, n, err)
			}
			if !bytes.Equal(got, pack) || got == nil {
				t.Fatalf("%v/%d: Decode returned %d bytes that differ from the pack", s, n, len(got))
			}
			if rep.Healthy() != s.Shards() || rep.Bad() != nil || rep.Reconstructed {
				t.Errorf("%v/%d: report %+v for an intact set", s, n, rep)
			}
			// Lose the first data shard, where parity allows.
			if s.M > 0 {
				objs[0] = nil
				got, rep, err = c.Decode(id, objs)
				if err != nil || !bytes.Equal(got, pack) || !rep.Reconstructed {
					t.Errorf("%v/%d: Decode without shard 0: %v, equal %v, report %+v", s, n, err, bytes.Equal(got, pack), rep)
				}
			}
		}
	}
}

// corruptShard damages obj in one of several ways chosen by how, each of
// which Decode must notice.
func corruptShard(obj []byte, how int) []byte {
	b := bytes.Clone(obj)
	switch how % 6 {
	case 0: // data
		if len(b) > HeaderSize {
			b[HeaderSize+(len(b)-HeaderSize)/2] ^= 0x01
			return b
		}
		b[3] ^= 0x01
	case 1: // header field
		b[9] ^= 0x40
	case 2: // stored data CRC
		b[57] ^= 0x10
	case 3: // stored header CRC
		b[63] ^= 0x80
	case 4:
		b = b[:len(b)-1]
	case 5:
		b = append(b, 0)
	}
	return b
}

func TestEveryLossCombination(t *testing.T) {
	for _, s := range testSchemes {
		c := mustCoder(t, s)
		for _, n := range []int{0, 1, max(s.K-1, 2), 100003} {
			pack := testPack(n, 7)
			id, objs := encode(t, c, pack)
			subsets(s.Shards(), s.M+1, func(lost []int) {
				for _, corrupt := range []bool{false, true} {
					in := slices.Clone(objs)
					for j, i := range lost {
						in[i] = nil
						if corrupt {
							in[i] = corruptShard(objs[i], j+i)
						}
					}
					name := fmt.Sprintf("%v/%d bytes/bad %v/corrupt %v", s, n, lost, corrupt)
					got, rep, err := c.Decode(id, in)
					if len(lost) > s.M {
						if !errors.Is(err, ErrTooFewShards) {
							t.Fatalf("%s: Decode error %v, want ErrTooFewShards", name, err)
						}
					} else if err != nil || !bytes.Equal(got, pack) {
						t.Fatalf("%s: Decode: %v, equal %v", name, err, bytes.Equal(got, pack))
					}
					if !slices.Equal(rep.Bad(), lost) {
						t.Fatalf("%s: report says bad %v", name, rep.Bad())
					}
					want := Missing
					if corrupt {
						want = Corrupt
					}
					for _, i := range lost {
						if rep.States[i] != want || rep.Reasons[i] == "" {
							t.Fatalf("%s: shard %d: %v %q", name, i, rep.States[i], rep.Reasons[i])
						}
					}
					if err == nil && rep.Reconstructed != (slices.ContainsFunc(lost, func(i int) bool { return i < s.K })) {
						t.Fatalf("%s: Reconstructed = %v", name, rep.Reconstructed)
					}

					rebuilt, _, err := c.Rebuild(id, in)
					if len(lost) > s.M {
						if !errors.Is(err, ErrTooFewShards) {
							t.Fatalf("%s: Rebuild error %v, want ErrTooFewShards", name, err)
						}
						continue
					}
					if err != nil {
						t.Fatalf("%s: Rebuild: %v", name, err)
					}
					for i := range objs {
						if !bytes.Equal(rebuilt[i], objs[i]) {
							t.Fatalf("%s: rebuilt shard %d differs from the encoded one", name, i)
						}
					}
				}
			})
		}
	}
}

func TestCorruptionIsDetected(t *testing.T) {
	s := Scheme{K: 4, M: 2}
	c := mustCoder(t, s)
	pack := testPack(10007, 3)
	id, objs := encode(t, c, pack)
	_, other := encode(t, c, testPack(10007, 4))
	_, otherScheme := encode(t, mustCoder(t, Scheme{K: 3, M: 3}), pack)
	flip := func(i, at int) []byte {
		b := bytes.Clone(objs[i])
		b[at] ^= 0x04
		return b
	}
	size := len(objs[0])

	type damage struct {
		shard int
		obj   []byte
		want  string // reason prefix
	}
	var cases []damage
	for i := range objs { // data shards and parity shards alike
		for _, at := range []int{HeaderSize, HeaderSize + 1234, size - 1} {
			cases = append(cases, damage{i, flip(i, at), "crc mismatch"})
		}
		for at := range HeaderSize { // every header byte, both stored CRCs included
			want := "header: crc mismatch"
			switch {
			case at < 4:
				want = "header: bad magic"
			case at == 4:
				want = "header: unsupported version"
			}
			cases = append(cases, damage{i, flip(i, at), want})
		}
		cases = append(cases,
			damage{i, bytes.Clone(objs[i][:0]), "header: truncated: 0 of 64"},
			damage{i, objs[i][:HeaderSize-1], "header: truncated"},
			damage{i, objs[i][:HeaderSize], "truncated: 64 of 2566"},
			damage{i, objs[i][:size-1], "truncated: 2565 of 2566"},
			damage{i, append(bytes.Clone(objs[i]), 0), "1 bytes past the end"},
			damage{i, append(bytes.Clone(objs[i]), make([]byte, 4096)...), "4096 bytes past the end"},
			damage{i, other[i], "wrong pack id"},
			damage{i, otherScheme[i], "wrong scheme 3+3, want 4+2"},
			damage{i, objs[(i+1)%len(objs)], "wrong index"},
			// A header rewritten with a valid CRC still has to match.
			damage{i, withHeader(t, objs[i], func(b []byte) { b[7] = byte((i + 1) % 6) }), "wrong index"},
			damage{i, withHeader(t, objs[i], func(b []byte) { b[30] ^= 1 }), "wrong pack id"},
			damage{i, withHeader(t, objs[i], func(b []byte) { b[8]-- }), "header: pack length 10006, other intact shards say 10007"},
		)
	}
	for _, d := range cases {
		in := slices.Clone(objs)
		in[d.shard] = d.obj
		got, rep, err := c.Decode(id, in)
		if err != nil || !bytes.Equal(got, pack) {
			t.Fatalf("shard %d %q: Decode: %v", d.shard, d.want, err)
		}
		if !slices.Equal(rep.Bad(), []int{d.shard}) || rep.States[d.shard] != Corrupt || !strings.HasPrefix(rep.Reasons[d.shard], d.want) {
			t.Fatalf("shard %d: report %v %q, want corrupt %q", d.shard, rep.States, rep.Reasons, d.want)
		}
		if (d.shard < s.K) != rep.Reconstructed {
			t.Fatalf("shard %d: Reconstructed = %v", d.shard, rep.Reconstructed)
		}
		// A forged pack length shows only next to the other shards.
		forged := strings.HasPrefix(d.want, "header: pack length")
		if err := Check(id, d.shard, s, d.obj); !errors.Is(err, ErrCorruptShard) && !forged {
			t.Fatalf("shard %d %q: Check = %v", d.shard, d.want, err)
		}
	}
}

func TestSwappedShards(t *testing.T) {
	c := mustCoder(t, Scheme{K: 4, M: 2})
	pack := testPack(50000, 5)
	id, objs := encode(t, c, pack)
	in := slices.Clone(objs)
	in[1], in[4] = in[4], in[1]
	got, rep, err := c.Decode(id, in)
	if err != nil || !bytes.Equal(got, pack) {
		t.Fatalf("Decode: %v", err)
	}
	if !slices.Equal(rep.Bad(), []int{1, 4}) || rep.Reasons[1] != "wrong index 4" || rep.Reasons[4] != "wrong index 1" {
		t.Errorf("report %q", rep.Reasons)
	}
}

func TestTooFewShardsNamesThem(t *testing.T) {
	c := mustCoder(t, Scheme{K: 4, M: 2})
	pack := testPack(10007, 6)
	id, objs := encode(t, c, pack)
	in := slices.Clone(objs)
	in[0] = nil
	in[2] = corruptShard(objs[2], 0)
	in[5] = objs[5][:100]
	for _, op := range []string{"decode", "rebuild"} {
		var rep Report
		var err error
		if op == "decode" {
			_, rep, err = c.Decode(id, in)
		} else {
			_, rep, err = c.Rebuild(id, in)
		}
		if !errors.Is(err, ErrTooFewShards) {
			t.Fatalf("%s: error %v, want ErrTooFewShards", op, err)
		}
		for _, want := range []string{
			op + " pack " + hexID(id),
			"too few intact shards: 3 of 4 needed, scheme 4+2",
			"shard 0: missing",
			"shard 2: crc mismatch",
			"shard 5: truncated: 100 of 2566 bytes",
		} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not say %q", op, err, want)
			}
		}
		if !slices.Equal(rep.Bad(), []int{0, 2, 5}) || rep.Healthy() != 3 {
			t.Errorf("%s: report %+v", op, rep)
		}
	}
}

func TestWrongShardCount(t *testing.T) {
	c := mustCoder(t, Scheme{K: 2, M: 1})
	id, objs := encode(t, c, testPack(100, 8))
	if _, _, err := c.Decode(id, objs[:2]); err == nil || errors.Is(err, ErrTooFewShards) {
		t.Errorf("Decode of 2 slots for 2+1: %v", err)
	}
	if _, _, err := c.Rebuild(id, append(objs, objs[0])); err == nil {
		t.Error("Rebuild of 4 slots for 2+1 succeeded")
	}
}

// TestConflictingPackLength covers headers forged with valid CRCs that
// disagree about the pack: the majority wins, a tie trusts nobody.
func TestConflictingPackLength(t *testing.T) {
	setLen := func(obj []byte, n uint64) []byte {
		return withHeader(t, obj, func(b []byte) { binary.LittleEndian.PutUint64(b[8:], n) })
	}
	c := mustCoder(t, Scheme{K: 2, M: 2})
	pack := testPack(100, 9)
	id, objs := encode(t, c, pack)
	_, rep, err := c.Decode(id, [][]byte{objs[0], objs[1], setLen(objs[2], 99), setLen(objs[3], 99)})
	if !errors.Is(err, ErrTooFewShards) || !slices.Equal(rep.Bad(), []int{0, 1, 2, 3}) ||
		!strings.Contains(err.Error(), "shard 2: header: pack length 99, other intact shards disagree") {
		t.Errorf("tie: %v, report %+v", err, rep)
	}

	// Two shards both claiming 99 bytes outvote the one that is right,
	// but then the pack's last byte lands in the padding.
	c = mustCoder(t, Scheme{K: 2, M: 1})
	pack = testPack(100, 10)
	if pack[99] == 0 {
		t.Fatal("test pack must not end in a zero byte")
	}
	id, objs = encode(t, c, pack)
	_, rep, err = c.Decode(id, [][]byte{setLen(objs[0], 99), setLen(objs[1], 99), objs[2]})
	if err == nil || !strings.Contains(err.Error(), "nonzero padding at pack byte 99") ||
		rep.Reasons[2] != "header: pack length 100, other intact shards say 99" {
		t.Errorf("forged majority: %v, report %+v", err, rep)
	}
}

func TestNoParity(t *testing.T) {
	s := Scheme{K: 3, M: 0}
	c := mustCoder(t, s)
	pack := testPack(1000, 11)
	id, objs := encode(t, c, pack)
	for i := range objs {
		in := slices.Clone(objs)
		in[i] = nil
		if _, _, err := c.Decode(id, in); !errors.Is(err, ErrTooFewShards) {
			t.Errorf("3+0 without shard %d: %v", i, err)
		}
		if _, _, err := c.Rebuild(id, in); !errors.Is(err, ErrTooFewShards) {
			t.Errorf("3+0 rebuild without shard %d: %v", i, err)
		}
	}
	out, rep, err := c.Rebuild(id, objs)
	if err != nil || rep.Reconstructed || len(out) != 3 {
		t.Fatalf("Rebuild of an intact 3+0 set: %v %+v", err, rep)
	}
}

func TestRebuildKeepsIntactObjects(t *testing.T) {
	c := mustCoder(t, Scheme{K: 4, M: 2})
	id, objs := encode(t, c, testPack(4096, 12))
	in := slices.Clone(objs)
	in[1], in[4] = nil, corruptShard(objs[4], 0)
	out, rep, err := c.Rebuild(id, in)
	if err != nil || !rep.Reconstructed || !slices.Equal(rep.Bad(), []int{1, 4}) {
		t.Fatalf("Rebuild: %v %+v", err, rep)
	}
	for i := range out {
		if shared := &out[i][0] == &objs[i][0]; shared != (i != 1 && i != 4) {
			t.Errorf("shard %d: shares memory with the input: %v", i, shared)
		}
		if !bytes.Equal(out[i], objs[i]) {
			t.Errorf("shard %d differs", i)
		}
	}
	if in[1] != nil {
		t.Error("Rebuild modified the caller's slice")
	}
}

func TestDecodeDoesNotModifyInput(t *testing.T) {
	c := mustCoder(t, Scheme{K: 4, M: 2})
	id, objs := encode(t, c, testPack(99999, 13))
	in := slices.Clone(objs)
	in[0], in[3] = nil, corruptShard(objs[3], 0)
	before := cloneShards(in)
	if _, _, err := c.Decode(id, in); err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if !bytes.Equal(in[i], before[i]) || (in[i] == nil) != (before[i] == nil) {
			t.Errorf("shard %d changed", i)
		}
	}
}

// TestFormatGolden pins the parity bytes: the Reed-Solomon matrix is part
// of the format, so a library upgrade that changes it must fail here, not
// on a restore.
func TestFormatGolden(t *testing.T) {
	for _, tc := range []struct {
		s    Scheme
		want string
	}{
		{Scheme{2, 1}, "feea6e0cf69069670898e07008f459f816fc8bfa1dbb2f82221d10637196713c"},
		{Scheme{4, 2}, "54cb8f2ced401806b0e1850b93350fa21f860f7503999df99a11bbb244e1a030"},
		{Scheme{10, 4}, "49019dcbf90999fff3e087c8c180ce5d0b1174d4603073b7fa11c5805cecb584"},
	} {
		pack := make([]byte, 10000)
		for i := range pack {
			pack[i] = byte(i*31 + i/256)
		}
		objs, err := mustCoder(t, tc.s).Encode([32]byte{0xfe, 0xed}, pack)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		for _, o := range objs {
			h.Write(o)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != tc.want {
			t.Errorf("%v: shard objects hash to %s, want %s", tc.s, got, tc.want)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	c := mustCoder(t, Scheme{K: 4, M: 2})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for n := range 20 {
				pack := testPack(1000*n+g, uint64(g*100+n))
				id, objs := encode(t, c, pack)
				objs[(g+n)%4] = nil
				objs[4] = nil
				got, _, err := c.Decode(id, objs)
				if err != nil || !bytes.Equal(got, pack) {
					t.Errorf("goroutine %d, pack %d: %v", g, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
