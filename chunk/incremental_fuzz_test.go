package chunk

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// fuzzEdit applies one edit, described by 5 bytes (op, position as
// 2 bytes, length in units of 4, fill seed), to g and declares it. It
// reports whether the edit ends the generation.
func fuzzEdit(g *generation, e []byte) (end bool) {
	op, n, seed := e[0]%8, int(e[3])*4+int(e[0]>>3)%4, e[4]
	pos := int(binary.LittleEndian.Uint16(e[1:])) % (len(g.vol) + 1)
	fill := func(n int) []byte {
		b := make([]byte, n)
		x := uint32(seed)*2654435761 + 1
		for i := range b {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			b[i] = byte(x)
		}
		return b
	}
	declare := func(off, n int) { g.changed = append(g.changed, Range{Off: int64(off), Len: int64(n)}) }
	switch op {
	case 0: // overwrite
		end := min(pos+n, len(g.vol))
		copy(g.vol[pos:end], fill(end-pos))
		declare(pos, end-pos)
	case 1: // zero a range
		end := min(pos+n, len(g.vol))
		clear(g.vol[pos:end])
		declare(pos, end-pos)
	case 2: // insert
		g.vol = slices.Insert(g.vol, pos, fill(n)...)
		declare(pos, len(g.vol)-pos)
	case 3: // delete
		g.vol = slices.Delete(g.vol, pos, min(pos+n, len(g.vol)))
		declare(pos, len(g.vol)-pos)
	case 4: // grow with data; growth from the old size on need not be declared
		start := len(g.vol)
		g.vol = append(g.vol, fill(n)...)
		if start < len(g.old) || seed%2 == 0 {
			declare(start, n)
		}
	case 5: // grow with zeros
		start := len(g.vol)
		g.vol = append(g.vol, make([]byte, n*int(seed%16))...)
		declare(start, len(g.vol)-start)
	case 6: // truncate
		g.vol = g.vol[:len(g.vol)-min(n, len(g.vol))]
	default:
		return true
	}
	return false
}

// FuzzIncremental chunks a volume made of the fuzz input, edits it in
// generations described by edits, chunks each generation incrementally
// from the list of the one before, and compares with the reference.
func FuzzIncremental(f *testing.F) {
	f.Add([]byte{}, []byte{}, []byte{})
	f.Add(bytes.Repeat([]byte{7, 1, 200, 33}, 300), []byte{3, 10, 33, 0, 64, 2, 16, 5, 65},
		[]byte{0, 100, 1, 3, 9, 2, 50, 0, 1, 1, 7, 0, 0, 0, 0, 1, 200, 0, 9, 0})
	f.Add(make([]byte, 2000), []byte{1, 7, 33}, []byte{0, 44, 3, 2, 5, 5, 0, 0, 30, 3})
	f.Add(bytes.Repeat([]byte("ferry"), 400), []byte{200, 0, 255, 0, 3},
		[]byte{4, 0, 0, 100, 1, 6, 0, 0, 10, 0, 7, 0, 0, 0, 0, 3, 20, 0, 5, 0, 12, 0, 0, 60, 3})
	f.Fuzz(fuzzIncremental)
}

func fuzzIncremental(t *testing.T, data, spec, edits []byte) {
	vol, _, bsize := fuzzVolume(data, spec)
	prev := shape(reference(t, vol, fuzzParams))
	for {
		g := &generation{old: vol, vol: bytes.Clone(vol), prev: prev}
		for len(edits) >= 5 {
			e := edits[:5]
			edits = edits[5:]
			if fuzzEdit(g, e) {
				break
			}
		}
		// Odd-length zero runs of the new volume are declared holes.
		for _, r := range zeroRuns(g.vol, 1) {
			if r.Len%2 == 1 {
				g.holes = append(g.holes, r)
			}
		}
		run, _ := checkGeneration(t, g, nil, fuzzParams, bsize)
		if len(edits) < 5 {
			return
		}
		vol, prev = g.vol, shape(run.chunks)
	}
}
