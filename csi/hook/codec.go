package hook

import (
	"fmt"

	"google.golang.org/grpc/mem"
)

// frame is one message, kept as the bytes that came over the wire.
type frame struct{ payload []byte }

// rawCodec passes frames through untouched. It calls itself "proto" so the
// content type on both sides stays application/grpc+proto.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("hook codec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(f.payload)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("hook codec: cannot unmarshal into %T", v)
	}
	f.payload = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }
