package pebble

import (
	"context"
	"errors"
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

func readAll(t testing.TB, l ledger.Ledger) []event.Event {
	t.Helper()
	es, err := l.Read(context.Background(), 0, 1<<30)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return es
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := &Options{Indexer: ledgertest.Indexer, ChunkBytes: 2048}
	l := mustOpen(t, dir, opts)
	for i := range 20 {
		lsn := event.LSN(100 + i)
		var es []*event.Event
		for j := range 1 + i%4 {
			es = append(es, ledgertest.Event(lsn, uint32(j), []string{"a", "b"}[j%2], i))
		}
		ledgertest.WriteTx(t, l, lsn, es...)
	}
	o := ledger.Origin{SystemID: "7340422612718047236", Timeline: 2, Database: "app", Slot: "walflow_1"}
	if err := l.SetOrigin(ctx, o); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.SetAcked(ctx, 110); err != nil {
		t.Fatal(err)
	}
	st := l.State()
	all := readAll(t, l)
	byKey, err := l.ReadKeys(ctx, []string{"b", "a/3"}, 5, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); !errors.Is(err, ledger.ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}

	l = mustOpen(t, dir, opts)
	defer l.Close()
	want := ledger.State{Head: 50, LastCommitLSN: 119, LastEndLSN: 120, AckedLSN: 110, Origin: o}
	if st != want || l.State() != want {
		t.Fatalf("State before Close %+v, after reopening %+v; want %+v", st, l.State(), want)
	}
	if got := readAll(t, l); !reflect.DeepEqual(got, all) {
		t.Fatal("events differ after reopening")
	}
	got, err := l.ReadKeys(ctx, []string{"b", "a/3"}, 5, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, byKey) || len(got) == 0 {
		t.Fatalf("ReadKeys differs after reopening: %d events, then %d", len(byKey), len(got))
	}
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 119}); !errors.Is(err, ledger.ErrOutOfOrder) {
		t.Fatalf("BeginTx(119) after reopening = %v, want ErrOutOfOrder", err)
	}
	if ps := ledgertest.WriteTx(t, l, 200, ledgertest.Event(200, 0, "a", 1)); ps[0] != 51 {
		t.Fatalf("first position after reopening = %d, want 51", ps[0])
	}
}

// TestInterruptedTransaction leaves a transaction of many chunks unfinished, and checks
// that Open removes its events and index entries and reuses its positions.
func TestInterruptedTransaction(t *testing.T) {
	for _, tc := range []struct {
		name   string
		commit bool // commit the transaction, but do not Sync
	}{{"open", false}, {"committed", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			opts := &Options{Indexer: ledgertest.Indexer, ChunkBytes: 512}
			l := mustOpen(t, dir, opts)
			ledgertest.WriteTx(t, l, 10, ledgertest.Event(10, 0, "a", 1), ledgertest.Event(10, 1, "b", 2))
			if err := l.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			st := l.State()
			ledgertest.WriteTx(t, l, 15, ledgertest.Event(15, 0, "a", 3)) // committed, not synced
			if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
				t.Fatal(err)
			}
			for i := range 200 {
				if err := l.Append(ctx, ledgertest.Event(20, uint32(i), "partial", i)); err != nil {
					t.Fatal(err)
				}
			}
			if tc.commit {
				if err := l.CommitTx(ctx, 21); err != nil {
					t.Fatal(err)
				}
			}
			l.crash()

			before := rawScan(t, dir)
			if before.head != 2 || before.eventsPast() < 150 || before.indexPast() < 300 {
				t.Fatalf("after the crash: head %d, %d events and %d index entries past it; want many chunks written",
					before.head, before.eventsPast(), before.indexPast())
			}

			l = mustOpen(t, dir, opts)
			if got := l.State(); got != st {
				t.Fatalf("State after recovery = %+v, want %+v", got, st)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			after := rawScan(t, dir)
			if after.eventsPast() != 0 || after.indexPast() != 0 {
				t.Fatalf("after recovery: %d events and %d index entries past the head", after.eventsPast(), after.indexPast())
			}
			if !slices.Equal(after.events, []event.Position{1, 2}) || len(after.index) != 4 {
				t.Fatalf("after recovery: events %v, index %v", after.events, after.index)
			}

			l = mustOpen(t, dir, opts)
			defer l.Close()
			ps := ledgertest.WriteTx(t, l, 15, ledgertest.Event(15, 0, "c", 3), ledgertest.Event(15, 1, "c", 4))
			if !slices.Equal(ps, []event.Position{3, 4}) {
				t.Fatalf("positions after recovery = %v, want [3 4]", ps)
			}
			if err := l.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"partial", "partial/0", "partial/1", "a/3"} {
				if es, err := l.ReadKeys(ctx, []string{k}, 0, 100); err != nil || len(es) != 0 {
					t.Fatalf("ReadKeys(%s) = %d events, %v; want none", k, len(es), err)
				}
			}
			es, err := l.ReadKeys(ctx, []string{"c", "a"}, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(es); got != 3 || es[0].Position != 1 || es[1].Position != 3 {
				t.Fatalf("ReadKeys(c, a) = %d events", got)
			}
		})
	}
}

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
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, file, nil); err == nil || !strings.HasPrefix(err.Error(), "ledger: open "+file+": ") {
		t.Fatalf("Open(a file) = %v", err)
	}
	if _, err := Open(ctx, "", nil); err == nil {
		t.Fatal("Open(\"\"): no error")
	}
	dir := t.TempDir()
	l := mustOpen(t, dir, nil)
	defer l.Close()
	if _, err := Open(ctx, dir, nil); err == nil {
		t.Fatal("opening a ledger twice: no error")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Open(cctx, t.TempDir(), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open with a cancelled context = %v", err)
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
