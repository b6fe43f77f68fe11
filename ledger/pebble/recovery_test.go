package pebble

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	pebbledb "github.com/cockroachdb/pebble/v2"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// dirCases drives the ledgertest cases of a directory backend with chunks of a few
// events and truncation in batches of 7 (several batches, and keys with range and point
// deletions), checking the Pebble keys between their steps.
var dirCases = ledgertest.DirCases{
	OpenFunc: func(ctx context.Context, dir string) (ledger.Ledger, error) {
		l, err := Open(ctx, dir, &Options{Indexer: ledgertest.Indexer, ChunkBytes: 512})
		if err != nil {
			return nil, err
		}
		l.truncEvents = 7
		return l, nil
	},
	CrashFunc:     func(l ledger.Ledger) { l.(*Ledger).crash() },
	LosesUnsynced: true,
	CrashedFunc: func(t *testing.T, dir string) {
		before := rawScan(t, dir)
		if before.head != 2 || before.eventsPast() < 150 || before.indexPast() < 300 {
			t.Fatalf("after the crash: head %d, %d events and %d index entries past it; want many chunks written",
				before.head, before.eventsPast(), before.indexPast())
		}
	},
	RecoveredFunc: func(t *testing.T, dir string) {
		after := rawScan(t, dir)
		if after.eventsPast() != 0 || after.indexPast() != 0 {
			t.Fatalf("after recovery: %d events and %d index entries past the head", after.eventsPast(), after.indexPast())
		}
		if !slices.Equal(after.events, []event.Position{1, 2}) || len(after.index) != 4 {
			t.Fatalf("after recovery: events %v, index %v", after.events, after.index)
		}
	},
	TruncatedFunc: func(t *testing.T, dir string, tail event.Position, written []*event.Event) {
		r := rawScan(t, dir)
		if r.tail != tail || r.head != 120 {
			t.Fatalf("stored tail %d and head %d, want %d and 120", r.tail, r.head, tail)
		}
		if !slices.Equal(r.events, ledgertest.Span(tail+1, 120)) {
			t.Fatalf("stored events %v, want %d..120", r.events, tail+1)
		}
		model := map[string][]event.Position{}
		for _, e := range written {
			if e.Position > tail {
				for _, k := range ledgertest.Indexer(e, nil) {
					model[k] = append(model[k], e.Position)
				}
			}
		}
		if !reflect.DeepEqual(r.index, model) {
			t.Fatalf("stored index %v\nwant %v", r.index, model)
		}
	},
	TruncatedAllFunc: func(t *testing.T, dir string, l ledger.Ledger) {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if r := rawScan(t, dir); r.tail != 126 || len(r.events) != 0 || len(r.index) != 0 {
			t.Fatalf("after truncating everything: tail %d, events %v, index %v", r.tail, r.events, r.index)
		}
	},
}

func TestReopen(t *testing.T) { ledgertest.Reopen(t, dirCases) }

// TestInterruptedTransaction leaves a transaction of many chunks unfinished, and checks
// that Open removes its events and index entries and reuses its positions.
func TestInterruptedTransaction(t *testing.T) { ledgertest.InterruptedTx(t, dirCases) }

// TestAbortRemovesEverything checks on disk that an aborted transaction of many chunks
// leaves no event or index entry behind.
func TestAbortRemovesEverything(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := mustOpen(t, dir, &Options{Indexer: ledgertest.Indexer, ChunkBytes: 512})
	ledgertest.WriteTx(t, l, 10, ledgertest.Event(10, 0, "a", 1))
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := l.Append(ctx, ledgertest.Event(20, uint32(i), "gone", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.AbortTx(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := rawScan(t, dir)
	if r.head != 1 || !slices.Equal(r.events, []event.Position{1}) || len(r.index) != 2 {
		t.Fatalf("after the abort: head %d, events %v, index %v", r.head, r.events, r.index)
	}
}

// corrupt writes raw keys into the closed ledger in dir.
func corrupt(t *testing.T, dir string, set map[string][]byte, del ...[]byte) {
	t.Helper()
	db := rawOpen(t, dir)
	for k, v := range set {
		if err := db.Set([]byte(k), v, pebbledb.Sync); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range del {
		if err := db.Delete(k, pebbledb.Sync); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptEvents(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := &Options{Indexer: ledgertest.Indexer}
	l := mustOpen(t, dir, opts)
	var es []*event.Event
	for i := range 6 {
		es = append(es, ledgertest.Event(10, uint32(i), "a", i))
	}
	ledgertest.WriteTx(t, l, 10, es...)
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	l.Close()

	other := ledgertest.Event(10, 0, "a", 9)
	other.Position = 99
	corrupt(t, dir, map[string][]byte{
		string(eventKey(nil, 2)): {1, 2, 3},
		string(eventKey(nil, 3)): event.AppendBinary(nil, other),
	}, eventKey(nil, 5))

	l = mustOpen(t, dir, opts)
	defer l.Close()
	for _, tc := range []struct {
		after event.Position
		want  string
	}{
		{0, "position 2"},
		{1, "position 2"},
		{2, "event at position 3: stored event says position 99"},
		{3, "event at position 5 is missing"},
	} {
		_, err := l.Read(ctx, tc.after, 10)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
			t.Errorf("Read(%d) = %v, want an error naming %q and the directory", tc.after, err, tc.want)
		}
	}
	if _, err := l.Read(ctx, 2, 1); err == nil {
		t.Error("Read(2, 1) of a misplaced event: no error")
	}
	if got, err := l.Read(ctx, 3, 1); err != nil || len(got) != 1 || got[0].Position != 4 {
		t.Errorf("Read(3, 1) of a sound event = %v, %v", got, err)
	}
	_, err := l.ReadKeys(ctx, []string{"a/1"}, 0, 10)
	if err == nil || !strings.Contains(err.Error(), "position 2") {
		t.Errorf("ReadKeys(a/1) = %v, want an error naming position 2", err)
	}
	_, err = l.ReadKeys(ctx, []string{"a/4"}, 0, 10)
	if err == nil || !strings.Contains(err.Error(), "position 5") {
		t.Errorf("ReadKeys(a/4) = %v, want an error naming position 5", err)
	}
	if got, err := l.ReadKeys(ctx, []string{"a/3"}, 0, 10); err != nil || len(got) != 1 {
		t.Errorf("ReadKeys(a/3) = %v, %v", got, err)
	}
}

func TestCorruptMetadataAndRecovery(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := &Options{Indexer: ledgertest.Indexer}
	l := mustOpen(t, dir, opts)
	ledgertest.WriteTx(t, l, 10, ledgertest.Event(10, 0, "a", 1))
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	l.Close()

	// A corrupt event past the head: recovery cannot know its index keys.
	corrupt(t, dir, map[string][]byte{string(eventKey(nil, 2)): {1, 0xff}})
	_, err := Open(ctx, dir, opts)
	if err == nil || !strings.Contains(err.Error(), "ledger: open "+dir) || !strings.Contains(err.Error(), "position 2") {
		t.Fatalf("Open with a corrupt event past the head = %v", err)
	}
	corrupt(t, dir, nil, eventKey(nil, 2))

	corrupt(t, dir, map[string][]byte{string(stateKey): {1, 0x80}})
	_, err = Open(ctx, dir, opts)
	if err == nil || !strings.Contains(err.Error(), "ledger: open "+dir) || !strings.Contains(err.Error(), "metadata") {
		t.Fatalf("Open with corrupt metadata = %v", err)
	}
	corrupt(t, dir, map[string][]byte{string(stateKey): {9}})
	_, err = Open(ctx, dir, opts)
	if err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Fatalf("Open with metadata of a newer version = %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ledgertest.OpenErrors(t, dirCases)
	dir := t.TempDir()
	l := mustOpen(t, dir, nil)
	defer l.Close()
	if _, err := Open(context.Background(), dir, nil); err == nil {
		t.Fatal("opening a ledger twice: no error")
	}
}

func TestStateEncoding(t *testing.T) {
	for _, st := range []ledger.State{
		{},
		{Head: 1<<64 - 1, LastCommitLSN: 1<<64 - 1, LastEndLSN: 3, AckedLSN: 2,
			Origin: ledger.Origin{SystemID: "73", Timeline: -1 << 31, Database: "d\x00b", Slot: "s"}},
		{Head: 10, Tail: 10, LastCommitLSN: 5},
		{Head: 1<<64 - 1, Tail: 1<<64 - 2, AckedLSN: 1, Origin: ledger.Origin{Slot: "s"}},
	} {
		b := encodeState(nil, st)
		got, err := decodeState(b)
		if err != nil || got != st {
			t.Fatalf("decodeState(encodeState(%+v)) = %+v, %v", st, got, err)
		}
		for i := range b {
			if _, err := decodeState(b[:i]); err == nil {
				t.Fatalf("decodeState of %d of %d bytes: no error", i, len(b))
			}
		}
		if _, err := decodeState(append(b, 0)); err == nil {
			t.Fatal("decodeState with a trailing byte: no error")
		}
		// A ledger never truncated keeps the version earlier walflow versions read.
		if want := byte(stateVersion); st.Tail == 0 && b[0] != want {
			t.Fatalf("encodeState(%+v) is version %d, want %d", st, b[0], want)
		}
	}
	if _, err := decodeState(encodeState(nil, ledger.State{Head: 4, Tail: 5})); err == nil {
		t.Fatal("decodeState of a tail past the head: no error")
	}
}

// TestOpenDiskBackend checks that a directory of the disk backend is refused with an error
// that says what to set.
func TestOpenDiskBackend(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ledger.meta"), []byte("WFLMETA"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), dir, nil)
	if err == nil || !strings.Contains(err.Error(), "ledger.backend: disk") {
		t.Fatalf("Open of a disk ledger = %v, want an error saying to set ledger.backend: disk", err)
	}
}
