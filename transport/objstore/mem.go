package objstore

import (
	"context"
	"fmt"
	"hash/crc32"
	"strings"
	"sync"
	"sync/atomic"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(data []byte) uint32 { return crc32.Checksum(data, castagnoli) }

type memObject struct {
	data []byte
	crc  uint32
}

type memStore struct {
	loc string
	mu  sync.RWMutex
	obj map[string]memObject
}

var memSeq atomic.Int64

// NewMem returns an empty in-memory Store, for tests and benchmarks. It keeps
// CRC32C for every object. Data is copied in and out.
func NewMem() Store {
	return &memStore{
		loc: fmt.Sprintf("mem:%d", memSeq.Add(1)),
		obj: make(map[string]memObject),
	}
}

func (m *memStore) Location() string { return m.loc }

func (m *memStore) err(op, name string, kind, cause error) error {
	return &opError{op: op, name: name, loc: m.loc, kind: kind, cause: cause}
}

func (m *memStore) Create(ctx context.Context, name string, data []byte) error {
	if err := checkName(name); err != nil {
		return m.err("create", name, nil, err)
	}
	if err := ctx.Err(); err != nil {
		return m.err("create", name, nil, err)
	}
	o := memObject{data: append([]byte{}, data...), crc: crc32c(data)}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.obj[name]; ok {
		return m.err("create", name, ErrExists, nil)
	}
	m.obj[name] = o
	return nil
}

func (m *memStore) lookup(ctx context.Context, op, name string) (memObject, error) {
	if err := checkName(name); err != nil {
		return memObject{}, m.err(op, name, nil, err)
	}
	if err := ctx.Err(); err != nil {
		return memObject{}, m.err(op, name, nil, err)
	}
	m.mu.RLock()
	o, ok := m.obj[name]
	m.mu.RUnlock()
	if !ok {
		return memObject{}, m.err(op, name, ErrNotFound, nil)
	}
	return o, nil
}

func (m *memStore) Get(ctx context.Context, name string) ([]byte, error) {
	o, err := m.lookup(ctx, "get", name)
	if err != nil {
		return nil, err
	}
	return append([]byte{}, o.data...), nil
}

func (m *memStore) GetRange(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if err := checkRange(off, length); err != nil {
		return nil, m.err("get range of", name, nil, err)
	}
	o, err := m.lookup(ctx, "get range of", name)
	if err != nil {
		return nil, err
	}
	if off+length > int64(len(o.data)) {
		return nil, m.err("get range of", name, nil, fmt.Errorf("%w: [%d, %d) of %d bytes", errRange, off, off+length, len(o.data)))
	}
	return append([]byte{}, o.data[off:off+length]...), nil
}

func (m *memStore) Stat(ctx context.Context, name string) (Info, error) {
	o, err := m.lookup(ctx, "stat", name)
	if err != nil {
		return Info{}, err
	}
	return Info{Name: name, Size: int64(len(o.data)), CRC32C: o.crc, HasCRC32C: true}, nil
}

func (m *memStore) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := checkPrefix(prefix); err != nil {
		return m.err("list", prefix, nil, err)
	}
	// Snapshot first so fn may call back into the store.
	m.mu.RLock()
	var infos []Info
	for name, o := range m.obj {
		if strings.HasPrefix(name, prefix) {
			infos = append(infos, Info{Name: name, Size: int64(len(o.data)), CRC32C: o.crc, HasCRC32C: true})
		}
	}
	m.mu.RUnlock()
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return m.err("list", prefix, nil, err)
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

func (m *memStore) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return m.err("delete", name, nil, err)
	}
	if err := ctx.Err(); err != nil {
		return m.err("delete", name, nil, err)
	}
	m.mu.Lock()
	delete(m.obj, name)
	m.mu.Unlock()
	return nil
}
