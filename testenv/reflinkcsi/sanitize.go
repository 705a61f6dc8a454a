package reflinkcsi

import (
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

const strippedValue = "***stripped***"

// stripSecrets formats a request for the log with the value of every field
// the CSI spec marks as secret (csi_secret) replaced, however deep it sits.
func stripSecrets(req any) string {
	m, ok := req.(proto.Message)
	if !ok || m == nil {
		return ""
	}
	m = proto.Clone(m)
	strip(m.ProtoReflect())
	return prototext.MarshalOptions{}.Format(m)
}

func strip(m protoreflect.Message) {
	var fields []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		fields = append(fields, fd)
		return true
	})
	for _, fd := range fields {
		switch {
		case isSecret(fd) && fd.IsMap():
			mv := m.Mutable(fd).Map()
			var keys []protoreflect.MapKey
			mv.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			for _, k := range keys {
				if fd.MapValue().Kind() == protoreflect.StringKind {
					mv.Set(k, protoreflect.ValueOfString(strippedValue))
				} else {
					mv.Clear(k)
				}
			}
		case isSecret(fd) && fd.Kind() == protoreflect.StringKind && !fd.IsList():
			m.Set(fd, protoreflect.ValueOfString(strippedValue))
		case isSecret(fd):
			m.Clear(fd)
		case fd.IsMap() && fd.MapValue().Message() != nil:
			m.Mutable(fd).Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				strip(mv.Message())
				return true
			})
		case fd.IsList() && fd.Message() != nil:
			l := m.Mutable(fd).List()
			for i := range l.Len() {
				strip(l.Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			strip(m.Mutable(fd).Message())
		}
	}
}

func isSecret(fd protoreflect.FieldDescriptor) bool {
	opts := fd.Options()
	if opts == nil {
		return false
	}
	secret, _ := proto.GetExtension(opts, csi.E_CsiSecret).(bool)
	return secret
}
