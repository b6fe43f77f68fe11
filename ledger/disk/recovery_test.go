package disk

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/pebble"
)

func readAll(t testing.TB, l ledger.Ledger) []event.Event {
	t.Helper()
	es, err := l.Read(context.Background(), 0, 1<<30)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return es
}

// tinyOpts makes segments of a few events, so that tests span many.
var tinyOpts = &Options{Indexer: ledgertest.Indexer, SegmentBytes: 2048, ChunkBytes: 512}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := mustOpen(t, dir, tinyOpts)
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
	if r := rawScan(t, dir); len(r.segments) < 4 {
		t.Fatalf("%d segments, want several", len(r.segments))
	}

	l = mustOpen(t, dir, tinyOpts)
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

// TestInterruptedTransaction leaves a transaction spanning segments unfinished, and checks
// that Open removes its records and reuses its positions, while what was synced stays.
func TestInterruptedTransaction(t *testing.T) {
	for _, tc := range []struct {
		name   string
		commit bool // commit the transaction, but do not Sync
	}{{"open", false}, {"committed", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			l := mustOpen(t, dir, tinyOpts)
			ledgertest.WriteTx(t, l, 10, ledgertest.Event(10, 0, "a", 1), ledgertest.Event(10, 1, "b", 2))
			if err := l.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			st := l.State()
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
			if before.eventsPast(2) < 150 || len(before.segments) < 5 {
				t.Fatalf("after the crash: %d events past the head in %d segments; want many segments written", before.eventsPast(2), len(before.segments))
			}

			l = mustOpen(t, dir, tinyOpts)
			if got := l.State(); got != st {
				t.Fatalf("State after recovery = %+v, want %+v", got, st)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			after := rawScan(t, dir)
			if !slices.Equal(after.events, []event.Position{1, 2}) || !slices.Equal(after.commits, []event.Position{2}) {
				t.Fatalf("after recovery: events %v, commits %v", after.events, after.commits)
			}

			l = mustOpen(t, dir, tinyOpts)
			defer l.Close()
			ps := ledgertest.WriteTx(t, l, 15, ledgertest.Event(15, 0, "c", 3), ledgertest.Event(15, 1, "c", 4))
			if !slices.Equal(ps, []event.Position{3, 4}) {
				t.Fatalf("positions after recovery = %v, want [3 4]", ps)
			}
			if err := l.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"partial", "partial/0", "partial/1"} {
				if es, err := l.ReadKeys(ctx, []string{k}, 0, 100); err != nil || len(es) != 0 {
					t.Fatalf("ReadKeys(%s) = %d events, %v; want none", k, len(es), err)
				}
			}
			es, err := l.ReadKeys(ctx, []string{"c", "a"}, 0, 100)
			if err != nil || len(es) != 3 || es[0].Position != 1 || es[1].Position != 3 {
				t.Fatalf("ReadKeys(c, a) = %d events, %v", len(es), err)
			}
		})
	}
}

// TestCloseDropsUnsynced checks that Close keeps only what was synced, as documented.
func TestCloseDropsUnsynced(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := mustOpen(t, dir, &Options{Indexer: ledgertest.Indexer, ChunkBytes: 64})
	ledgertest.WriteTx(t, l, 10, ledgertest.Event(10, 0, "a", 1))
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	ledgertest.WriteTx(t, l, 12, ledgertest.Event(12, 0, "a", 2))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, nil)
	defer l.Close()
	if st := l.State(); st.Head != 1 || st.LastCommitLSN != 10 {
		t.Fatalf("State after Close without Sync = %+v, want head 1, commit LSN 10", st)
	}
}

// TestAbortAcrossSegments aborts a transaction that started segments, and checks that
// they are gone and the ledger goes on from the transaction's first position.
func TestAbortAcrossSegments(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := mustOpen(t, dir, tinyOpts)
	ledgertest.WriteTx(t, l, 10, ledgertest.Event(10, 0, "a", 1), ledgertest.Event(10, 1, "a", 2))
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	segs := len(rawScan(t, dir).segments)
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := l.Append(ctx, ledgertest.Event(20, uint32(i), "gone", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(rawScan(t, dir).segments); n < segs+5 {
		t.Fatalf("%d segments during the transaction, want many more than %d", n, segs)
	}
	if err := l.AbortTx(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, l); len(got) != 2 {
		t.Fatalf("read %d events after the abort, want 2", len(got))
	}
	ps := ledgertest.WriteTx(t, l, 30, ledgertest.Event(30, 0, "b", 3))
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if ps[0] != 3 {
		t.Fatalf("position after the abort = %d, want 3", ps[0])
	}
	if es, err := l.ReadKeys(ctx, []string{"gone", "b"}, 0, 100); err != nil || len(es) != 1 || es[0].Position != 3 {
		t.Fatalf("ReadKeys(gone, b) = %d events, %v", len(es), err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := rawScan(t, dir)
	if !slices.Equal(r.events, []event.Position{1, 2, 3}) || len(r.segments) != segs {
		t.Fatalf("after the abort: events %v in %d segments, want 1..3 in %d", r.events, len(r.segments), segs)
	}
}

// TestLockAndReadOnly checks that a second writer is refused while a read-only reader
// works beside the writer.
func TestLockAndReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := mustOpen(t, dir, tinyOpts)
	defer l.Close()
	for i := range 30 {
		ledgertest.WriteTx(t, l, event.LSN(10+i), ledgertest.Event(event.LSN(10+i), 0, "a", i%4))
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// An unsynced transaction, partly on disk, is not seen by the reader.
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 100}); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if err := l.Append(ctx, ledgertest.Event(100, uint32(i), "a", 1)); err != nil {
			t.Fatal(err)
		}
	}
	var iu *ledger.InUseError
	if _, err := Open(ctx, dir, tinyOpts); !errors.As(err, &iu) || iu.Dir != dir || iu.PID != os.Getpid() {
		t.Fatalf("a second writer: %v, want an InUseError naming %s and this process", err, dir)
	}
	ro, err := OpenReadOnly(ctx, dir, tinyOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if got, want := ro.State(), l.State(); got != want {
		t.Fatalf("read-only State %+v, writer's %+v", got, want)
	}
	if got, want := readAll(t, ro), readAll(t, l); !reflect.DeepEqual(got, want) {
		t.Fatalf("read-only read %d events, writer %d", len(got), len(want))
	}
	got, err := ro.ReadKeys(ctx, []string{"a/1"}, 0, 100)
	if err != nil || len(got) != 8 {
		t.Fatalf("read-only ReadKeys = %d events, %v; want 8", len(got), err)
	}
	if err := ro.BeginTx(ctx, event.TxMeta{CommitLSN: 1000}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("BeginTx on a read-only ledger = %v", err)
	}
	if err := ro.Truncate(ctx, 3); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Truncate on a read-only ledger = %v", err)
	}
	// The reader changed nothing: the writer goes on.
	if err := l.CommitTx(ctx, 101); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if h := l.State().Head; h != 70 {
		t.Fatalf("head %d, want 70", h)
	}
	if _, err := OpenReadOnly(ctx, t.TempDir(), nil); err == nil {
		t.Fatal("OpenReadOnly of an empty directory: no error")
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
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Open(cctx, t.TempDir(), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open with a cancelled context = %v", err)
	}
	// A directory of the pebble backend.
	dir := t.TempDir()
	p, err := pebble.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, dir, nil); err == nil || !strings.Contains(err.Error(), "ledger.backend: pebble") || !strings.Contains(err.Error(), "walflow ledger migrate") {
		t.Fatalf("Open of a pebble ledger = %v, want an error saying to set ledger.backend: pebble", err)
	}
}

func TestMetaEncoding(t *testing.T) {
	for _, st := range []ledger.State{
		{},
		{Head: 1<<64 - 1, LastCommitLSN: 1<<64 - 1, LastEndLSN: 3, AckedLSN: 2,
			Origin: ledger.Origin{SystemID: "73", Timeline: -1 << 31, Database: "d\x00b", Slot: "s"}},
		{Head: 10, Tail: 10, LastCommitLSN: 5},
	} {
		b := encodeMeta(st)
		got, err := decodeMeta(b)
		if err != nil || got != st {
			t.Fatalf("decodeMeta(encodeMeta(%+v)) = %+v, %v", st, got, err)
		}
		for i := range b {
			if _, err := decodeMeta(b[:i]); err == nil {
				t.Fatalf("decodeMeta of %d of %d bytes: no error", i, len(b))
			}
			c := slices.Clone(b)
			c[i] ^= 0x10
			if _, err := decodeMeta(c); err == nil {
				t.Fatalf("decodeMeta with byte %d flipped: no error", i)
			}
		}
	}
}

// TestReadOnlyBesideTruncate runs the writer's Truncate after a reader listed the
// directory and read the meta file, before it opens the segments: the reader lists it again
// and opens the ledger.
func TestReadOnlyBesideTruncate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := mustOpen(t, dir, tinyOpts)
	defer l.Close()
	writeTxs(t, l, 100, 30, 4)
	segs := rawScan(t, dir).segments
	second, _ := parseSegName(segs[1])
	calls := 0
	afterList = func(string) {
		calls++
		if calls == 1 {
			if err := l.Truncate(ctx, second-1); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { afterList = nil }()
	ro, err := OpenReadOnly(ctx, dir, tinyOpts)
	if err != nil {
		t.Fatalf("OpenReadOnly while a segment is removed: %v", err)
	}
	defer ro.Close()
	if calls != 2 || ro.State() != l.State() {
		t.Fatalf("the reader listed the directory %d times, state %+v, want twice and %+v", calls, ro.State(), l.State())
	}
}
