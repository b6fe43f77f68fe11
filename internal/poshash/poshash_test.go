package poshash_test

import (
	"encoding/binary"
	"hash/fnv"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/poshash"
)

func TestAddIsFNV1a(t *testing.T) {
	h, want := poshash.Offset, fnv.New64a()
	for _, p := range []event.Position{1, 2, 300, 1 << 40} {
		h = poshash.Add(h, p)
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(p))
		want.Write(b[:])
	}
	if h != want.Sum64() {
		t.Fatalf("Add = %x, hash/fnv = %x", h, want.Sum64())
	}
	if poshash.Add(poshash.Add(poshash.Offset, 1), 2) == poshash.Add(poshash.Add(poshash.Offset, 2), 1) {
		t.Fatal("order does not change the hash")
	}
}
