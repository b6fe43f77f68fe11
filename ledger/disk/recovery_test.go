package disk

import (
	"context"
	"errors"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/pebble"
)

// tinyOpts makes segments of a few events, so that tests span many.
var tinyOpts = &Options{Indexer: ledgertest.Indexer, SegmentBytes: 2048, ChunkBytes: 512}

// dirCases drives the ledgertest cases of a directory backend with tinyOpts, checking
// the segment files between their steps.
var dirCases = ledgertest.DirCases{
	OpenFunc: func(ctx context.Context, dir string) (ledger.Ledger, error) {
		return Open(ctx, dir, tinyOpts)
	},
	CrashFunc: func(l ledger.Ledger) { l.(*Ledger).crash() },
	ReopenedFunc: func(t *testing.T, dir string) {
		if r := rawScan(t, dir); len(r.segments) < 4 {
			t.Fatalf("%d segments, want several", len(r.segments))
		}
	},
	CrashedFunc: func(t *testing.T, dir string) {
		before := rawScan(t, dir)
		if before.eventsPast(2) < 150 || len(before.segments) < 5 {
			t.Fatalf("after the crash: %d events past the head in %d segments; want many segments written", before.eventsPast(2), len(before.segments))
		}
	},
	RecoveredFunc: func(t *testing.T, dir string) {
		after := rawScan(t, dir)
		if !slices.Equal(after.events, []event.Position{1, 2}) || !slices.Equal(after.commits, []event.Position{2}) {
			t.Fatalf("after recovery: events %v, commits %v", after.events, after.commits)
		}
	},
	TruncatedFunc: func(t *testing.T, dir string, tail event.Position, _ []*event.Event) {
		r := rawScan(t, dir)
		first, _ := parseSegName(r.segments[0])
		if first > tail+1 || first < tail-20 || r.events[len(r.events)-1] != 120 {
			t.Fatalf("after truncating through %d the oldest segment starts at %d; want the segment holding %d", tail, first, tail+1)
		}
	},
	TruncatedAllFunc: func(t *testing.T, dir string, _ ledger.Ledger) {
		if r := rawScan(t, dir); len(r.segments) != 1 {
			t.Fatalf("after truncating everything: %d segments, want only the active one", len(r.segments))
		}
	},
}

func TestReopen(t *testing.T) { ledgertest.Reopen(t, dirCases) }

// TestInterruptedTransaction leaves a transaction spanning segments unfinished, and checks
// that Open removes its records and reuses its positions, while what was synced stays.
func TestInterruptedTransaction(t *testing.T) { ledgertest.InterruptedTx(t, dirCases) }

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
	if got := ledgertest.ReadAll(t, l); len(got) != 2 {
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
	if got, want := ledgertest.ReadAll(t, ro), ledgertest.ReadAll(t, l); !reflect.DeepEqual(got, want) {
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
	ledgertest.OpenErrors(t, dirCases)
	ctx := context.Background()
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
	ledgertest.WriteTxs(t, l, 100, 30, 4)
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
