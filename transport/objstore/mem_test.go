package objstore_test

import (
	"testing"

	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/objstore/objstoretest"
)

func TestMem(t *testing.T) {
	objstoretest.Run(t, func(*testing.T) objstore.Store { return objstore.NewMem() })
}

func TestMemWithRetry(t *testing.T) {
	objstoretest.Run(t, func(*testing.T) objstore.Store {
		return objstore.WithRetry(objstore.NewMem(), objstore.DefaultRetry)
	})
}
