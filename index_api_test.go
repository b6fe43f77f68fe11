package walflow_test

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// indexEventsStream encodes evs as the index events API does.
func indexEventsStream(evs ...*event.Event) []byte {
	var b []byte
	for _, e := range evs {
		enc := event.AppendBinary(nil, e)
		b = binary.AppendUvarint(b, uint64(len(enc)))
		b = append(b, enc...)
	}
	return b
}

// TestDecodeIndexEvents: the events come back as sent; a stream cut anywhere but between
// events, a length beyond any event, or garbage is an error, never a panic.
func TestDecodeIndexEvents(t *testing.T) {
	t.Parallel()
	var want []event.Event
	var evs []*event.Event
	for i := range 3 {
		e := ledgertest.Event(event.LSN(10+i), 0, "comments", i)
		e.Position = event.Position(i + 1)
		evs = append(evs, e)
		want = append(want, *e)
	}
	stream := indexEventsStream(evs...)
	got, err := walflow.DecodeIndexEvents(bytes.NewReader(stream))
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("DecodeIndexEvents = %+v, %v; want the three events", got, err)
	}
	if got, err := walflow.DecodeIndexEvents(bytes.NewReader(nil)); err != nil || len(got) != 0 {
		t.Fatalf("empty answer: %v, %v; want no events", got, err)
	}
	boundaries := map[int]bool{0: true, len(stream): true,
		len(indexEventsStream(evs[0])): true, len(indexEventsStream(evs[0], evs[1])): true}
	for cut := range len(stream) {
		_, err := walflow.DecodeIndexEvents(bytes.NewReader(stream[:cut]))
		if boundaries[cut] != (err == nil) {
			t.Fatalf("stream cut at %d of %d: %v", cut, len(stream), err)
		}
	}
	huge := binary.AppendUvarint(nil, 1<<40)
	if _, err := walflow.DecodeIndexEvents(bytes.NewReader(huge)); err == nil || !strings.Contains(err.Error(), "claims") {
		t.Fatalf("a length of 2^40: %v", err)
	}
}

func FuzzDecodeIndexEvents(f *testing.F) {
	e := ledgertest.Event(7, 0, "posts", 1)
	f.Add(indexEventsStream(e, e))
	f.Add([]byte{0x05, 1, 2, 3, 4, 5})
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := walflow.DecodeIndexEvents(bytes.NewReader(b))
		if err != nil {
			return
		}
		// What decodes encodes back to the same stream.
		ptrs := make([]*event.Event, len(evs))
		for i := range evs {
			ptrs[i] = &evs[i]
		}
		again, err := walflow.DecodeIndexEvents(bytes.NewReader(indexEventsStream(ptrs...)))
		if err != nil || !reflect.DeepEqual(again, evs) {
			t.Fatalf("re-encoded events decode to %+v, %v; want %+v", again, err, evs)
		}
	})
}
