package perf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/restic/chunker"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// SamplePol is the chunker polynomial of the stage measurements: any
// irreducible polynomial chunks at the same speed.
const SamplePol = chunker.Pol(0x3DA3358B4DC173)

// SampleData returns n bytes, reproducible from seed, that compress about
// as a volume of ordinary files does: runs of 4 to 64 KiB of random bytes
// (media, archives: incompressible, 40%), text (words of a fixed
// vocabulary, Zipf-distributed, 35%), binary records (counters, timestamps,
// small enumerations, 15%) and zeros (padding, 10%).
func SampleData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0xda7a))
	words := make([][]byte, 1024)
	for i := range words {
		w := make([]byte, 2+r.IntN(9))
		for j := range w {
			w[j] = byte('a' + r.IntN(26))
		}
		words[i] = w
	}
	zipf := rand.NewZipf(r, 1.1, 2, uint64(len(words)-1))
	b := make([]byte, 0, n)
	for len(b) < n {
		run := min(n-len(b), 4096+r.IntN(60<<10))
		end := len(b) + run
		switch p := r.IntN(100); {
		case p < 40:
			for len(b) < end {
				b = binary.LittleEndian.AppendUint64(b, r.Uint64())
			}
		case p < 75:
			for col := 0; len(b) < end; col++ {
				b = append(b, words[zipf.Uint64()]...)
				switch {
				case col%12 == 11:
					b = append(b, '\n')
				case r.IntN(9) == 0:
					b = append(b, ", "...)
				default:
					b = append(b, ' ')
				}
			}
		case p < 90:
			seq, ts := r.Uint64N(1<<20), uint32(1.7e9+r.IntN(1e8))
			for len(b) < end {
				seq++
				ts += uint32(r.IntN(1000))
				b = binary.LittleEndian.AppendUint64(b, seq)
				b = binary.LittleEndian.AppendUint32(b, ts)
				b = binary.LittleEndian.AppendUint32(b, uint32(r.IntN(16)))
				b = append(b, byte(r.IntN(4)), 0, 0, 0)
			}
		default:
			b = append(b, make([]byte, run)...)
		}
		b = b[:end]
	}
	return b
}

// Stage is one step of a backup measured on its own: Run does it once over
// the whole sample and returns its error.
type Stage struct {
	Name string
	What string // what one Run does
	// Bytes is what one Run consumes (the stage's own input: volume bytes
	// for chunking, compressed blobs for sealing, packs for erasure coding).
	Bytes int64
	Run   func() error
}

// Stages are the CPU-bound steps a backup takes for every new byte, in
// pipeline order, over one sample. Sample is the volume bytes every stage's
// Run covers (through its own input), and Stored/Sample the compression
// ratio the sample achieved.
type Stages struct {
	List   []Stage
	Sample int64
	Stored int64
}

// NewStages prepares the stages over data: it chunks, hashes, compresses,
// seals and packs data once so that each stage can run alone on what the
// one before it produced. The chunking is the repository default's sizes,
// compression, sealing and packing are Ferry's own (transport/pack), and
// erasure coding uses scheme as a repository would (transport/repo).
func NewStages(data []byte, scheme erasure.Scheme) (*Stages, error) {
	params := chunk.DefaultParams(SamplePol)
	key, err := crypt.NewRandomKey()
	if err != nil {
		return nil, err
	}
	codec, err := pack.NewCodec(key)
	if err != nil {
		return nil, err
	}
	coder, err := erasure.NewCoder(scheme)
	if err != nil {
		return nil, err
	}
	// The settings of transport/pack.NewCodec, one encoder per core measured.
	zenc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	idk := chunk.NewIDKey(key.IDKey())

	chunkAll := func(each func(chunk.Chunk)) error {
		sp, err := chunk.NewSplitter(bytes.NewReader(data), int64(len(data)), nil, params)
		if err != nil {
			return err
		}
		buf := make([]byte, params.MaxSize)
		for {
			c, err := sp.Next(buf)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if each != nil {
				each(c)
			}
		}
	}

	type blob struct {
		plain, body []byte
		id          chunk.ID
		compressed  bool
		sealed      []byte
	}
	var blobs []*blob
	if err := chunkAll(func(c chunk.Chunk) {
		if !c.Zero { // zero chunks are holes: never hashed nor stored
			blobs = append(blobs, &blob{plain: data[c.Off : c.Off+c.Len]})
		}
	}); err != nil {
		return nil, err
	}
	st := &Stages{Sample: int64(len(data))}
	var plainBytes, bodyBytes int64
	for _, b := range blobs {
		b.id = idk.Sum(b.plain)
		b.sealed, _, b.compressed = codec.SealBlob(nil, nil, b.id, b.plain)
		b.body = b.plain
		if b.compressed {
			b.body = zenc.EncodeAll(b.plain, nil)
		}
		plainBytes += int64(len(b.plain))
		bodyBytes += int64(len(b.body))
	}
	packAll := func(each func([]byte, pack.ID) error) error {
		var w *pack.Writer
		flush := func() error {
			p, id, _ := w.Finish()
			w = nil
			return each(p, id)
		}
		for _, b := range blobs {
			if w == nil {
				w = codec.NewWriter(repo.DefaultPackSize + int(params.MaxSize))
			}
			w.Add(b.id, b.sealed, len(b.plain), b.compressed)
			if w.Len() >= repo.DefaultPackSize {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if w != nil {
			return flush()
		}
		return nil
	}
	type packed struct {
		p  []byte
		id pack.ID
	}
	var packs []packed
	var sealedBytes, packBytes int64
	for _, b := range blobs {
		sealedBytes += int64(len(b.sealed))
	}
	if err := packAll(func(p []byte, id pack.ID) error {
		packs = append(packs, packed{p, id})
		packBytes += int64(len(p))
		return nil
	}); err != nil {
		return nil, err
	}
	st.Stored = packBytes

	var zbuf, sbuf []byte
	st.List = []Stage{
		{
			Name: "chunk", What: "content-defined chunking (restic/chunker, 256 KiB / 1 MiB / 4 MiB)",
			Bytes: int64(len(data)), Run: func() error { return chunkAll(nil) },
		},
		{
			Name: "hash", What: "chunk IDs: HMAC-SHA256 under the repository key",
			Bytes: plainBytes, Run: func() error {
				for _, b := range blobs {
					idk.Sum(b.plain)
				}
				return nil
			},
		},
		{
			Name: "compress", What: "zstd at Ferry's level (SpeedFastest)",
			Bytes: plainBytes, Run: func() error {
				for _, b := range blobs {
					zbuf = zenc.EncodeAll(b.plain, zbuf[:0])
				}
				return nil
			},
		},
		{
			Name: "seal", What: "AES-256-GCM of each blob, compressed or not",
			Bytes: bodyBytes, Run: func() error {
				for _, b := range blobs {
					sbuf = key.Seal(sbuf[:0], b.body, b.id[:])
				}
				return nil
			},
		},
		{
			Name: "pack", What: fmt.Sprintf("sealed blobs into %d MiB packs: copy, sealed header, SHA-256 pack ID", repo.DefaultPackSize>>20),
			Bytes: sealedBytes, Run: func() error { return packAll(func([]byte, pack.ID) error { return nil }) },
		},
		{
			Name: "erasure", What: fmt.Sprintf("Reed-Solomon %s shards of each pack, CRC32C of each shard's data and of each shard object", scheme),
			Bytes: packBytes, Run: func() error {
				for _, p := range packs {
					shards, err := coder.Encode(p.id, p.p)
					if err != nil {
						return err
					}
					for _, s := range shards {
						repo.ShardCRC(s)
					}
				}
				return nil
			},
		},
	}
	return st, nil
}

// Result is one stage's measurement.
type Result struct {
	Name    string  `json:"name"`
	What    string  `json:"what"`
	Bytes   int64   `json:"bytes"`   // the stage's own input processed
	Seconds float64 `json:"seconds"` // on one goroutine
	// MBps is the stage's own input per second on one core (10^6 bytes).
	MBps float64 `json:"mb_per_s"`
	// VolumeMBps is volume bytes per second on one core: the sample's
	// bytes divided by the time this stage takes over the sample, so that
	// stages compare directly (its inverse is the stage's share of a
	// backup's CPU time per byte).
	VolumeMBps float64 `json:"volume_mb_per_s"`
}

// Measure runs s over and over on one goroutine for at least d (and at
// least once), until ctx is done.
func (st *Stages) Measure(ctx context.Context, s Stage, d time.Duration) (Result, error) {
	start := time.Now()
	runs := 0
	for runs == 0 || time.Since(start) < d {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		if err := s.Run(); err != nil {
			return Result{}, fmt.Errorf("stage %s: %w", s.Name, err)
		}
		runs++
	}
	sec := time.Since(start).Seconds()
	if sec <= 0 {
		return Result{}, errors.New("clock did not advance")
	}
	return Result{
		Name: s.Name, What: s.What, Bytes: int64(runs) * s.Bytes, Seconds: sec,
		MBps:       float64(runs) * float64(s.Bytes) / sec / 1e6,
		VolumeMBps: float64(runs) * float64(st.Sample) / sec / 1e6,
	}, nil
}
