package pebble

import (
	"encoding/binary"
	"log/slog"
	"testing"

	pebbledb "github.com/cockroachdb/pebble/v2"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pebblelog"
)

var discard = slog.New(slog.DiscardHandler)

// crash closes the ledger as a crash would leave it: the batch of the open transaction
// is dropped unwritten and no metadata is written. Chunks already written stay on disk.
func (l *Ledger) crash() {
	l.pub.Close()
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	l.batch.Close()
	l.db.Close()
	l.fsClose.Close()
}

// raw is what a closed ledger's directory holds.
type raw struct {
	head   event.Position
	tail   event.Position
	events []event.Position            // positions of the stored events
	index  map[string][]event.Position // index entries
}

// eventsPast returns how many stored events are past the head.
func (r raw) eventsPast() int {
	n := 0
	for _, p := range r.events {
		if p > r.head {
			n++
		}
	}
	return n
}

// indexPast returns how many index entries are past the head.
func (r raw) indexPast() int {
	n := 0
	for _, ps := range r.index {
		for _, p := range ps {
			if p > r.head {
				n++
			}
		}
	}
	return n
}

// rawScan reads every key of the closed ledger in dir.
func rawScan(t testing.TB, dir string) raw {
	t.Helper()
	db := rawOpen(t, dir)
	defer db.Close()
	r := raw{index: map[string][]event.Position{}}
	if v, closer, err := db.Get(stateKey); err == nil {
		st, err := decodeState(v)
		closer.Close()
		if err != nil {
			t.Fatal(err)
		}
		r.head, r.tail = st.Head, st.Tail
	}
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		switch k[0] {
		case prefixEvent:
			p, ok := parseEventKey(k)
			if !ok {
				t.Fatalf("malformed event key %x", k)
			}
			r.events = append(r.events, p)
		case prefixIndex:
			if len(k) < 10 || k[len(k)-9] != 0 {
				t.Fatalf("malformed index key %x", k)
			}
			key := string(k[1 : len(k)-9])
			r.index[key] = append(r.index[key], event.Position(binary.BigEndian.Uint64(k[len(k)-8:])))
		case prefixMeta:
		default:
			t.Fatalf("unknown key %x", k)
		}
	}
	return r
}

// rawOpen opens the Pebble database of a closed ledger.
func rawOpen(t testing.TB, dir string) *pebbledb.DB {
	t.Helper()
	db, err := pebbledb.Open(dir, &pebbledb.Options{Logger: pebblelog.Logger{Log: discard}})
	if err != nil {
		t.Fatal(err)
	}
	return db
}
