package disk

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// writeTxs writes n transactions of size events each from lsn, of the tables a and b with
// ids cycling through 5, syncs, and returns the events.
func writeTxs(t *testing.T, l *Ledger, lsn event.LSN, n, size int) []*event.Event {
	t.Helper()
	var all []*event.Event
	for i := range n {
		var es []*event.Event
		for j := range size {
			es = append(es, ledgertest.Event(lsn+event.LSN(i), uint32(j), []string{"a", "b"}[j%2], (i+j)%5))
		}
		ledgertest.WriteTx(t, l, lsn+event.LSN(i), es...)
		all = append(all, es...)
	}
	if err := l.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return all
}

// dirBytes returns the bytes of the segment and index files in dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if filepath.Ext(e.Name()) == segExt || filepath.Ext(e.Name()) == idxExt {
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			n += fi.Size()
		}
	}
	return n
}

// TestTruncateReopen truncates, then checks on disk that every segment wholly at or before
// the tail is gone, and that the tail survives reopening.
func TestTruncateReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	l := mustOpen(t, dir, tinyOpts)
	writeTxs(t, l, 100, 30, 4)
	if err := l.SetAcked(ctx, 120); err != nil {
		t.Fatal(err)
	}
	const tail = 75
	if err := l.Truncate(ctx, tail); err != nil {
		t.Fatal(err)
	}
	st := l.State()
	keys := []string{"a", "b/3", "a/1"}
	byKey, err := l.ReadKeys(ctx, keys, tail, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := rawScan(t, dir)
	first, _ := parseSegName(r.segments[0])
	if first > tail+1 || first < tail-20 || r.events[len(r.events)-1] != 120 {
		t.Fatalf("after truncating through %d the oldest segment starts at %d; want the segment holding %d", tail, first, tail+1)
	}

	l = mustOpen(t, dir, tinyOpts)
	defer l.Close()
	if got := l.State(); got != st || got.Tail != tail || got.AckedLSN != 120 {
		t.Fatalf("State after reopening = %+v, want %+v", got, st)
	}
	_, err = l.Read(ctx, tail-1, 10)
	ledgertest.WantTruncated(t, "Read below the tail after reopening", err, tail-1, tail)
	_, err = l.ReadKeys(ctx, keys, 0, 10)
	ledgertest.WantTruncated(t, "ReadKeys below the tail after reopening", err, 0, tail)
	got, err := l.ReadKeys(ctx, keys, tail, 1000)
	if err != nil || !reflect.DeepEqual(got, byKey) || len(got) == 0 {
		t.Fatalf("ReadKeys after reopening: %d events, %v; before, %d", len(got), err, len(byKey))
	}
	writeTxs(t, l, 200, 2, 3)
	if got := l.State(); got.Tail != tail || got.Head != 126 {
		t.Fatalf("State after appending = %+v", got)
	}
	if err := l.Truncate(ctx, 126); err != nil {
		t.Fatal(err)
	}
	if r := rawScan(t, dir); len(r.segments) != 1 {
		t.Fatalf("after truncating everything: %d segments, want only the active one", len(r.segments))
	}
}

// TestTruncateReclaimsSpace appends and truncates in rounds: the segment files must stay
// about the size of what is kept, not of everything ever written.
func TestTruncateReclaimsSpace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	const segBytes = 64 << 10
	l := mustOpen(t, dir, &Options{Indexer: ledgertest.Indexer, SegmentBytes: segBytes})
	defer l.Close()
	var sizes []int64
	lsn := event.LSN(1)
	for range 8 {
		writeTxs(t, l, lsn, 200, 10) // about 500 kB
		lsn += 200
		if err := l.Truncate(ctx, l.State().Head-100); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, dirBytes(t, dir))
	}
	for _, n := range sizes {
		if n > 3*segBytes {
			t.Fatalf("bytes of segment and index files after each round: %v; truncated segments are not removed", sizes)
		}
	}
}

// TestTruncateInterrupted leaves the segments a Truncate recorded as removed, as a crash
// between the meta file and the deletions would: Open removes them.
func TestTruncateInterrupted(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, tinyOpts)
	writeTxs(t, l, 100, 30, 4)
	st := l.State()
	st.Tail = 90
	if err := writeFileAtomic(dir, metaName, encodeMeta(st)); err != nil {
		t.Fatal(err)
	}
	l.crash()
	before := len(rawScan(t, dir).segments)
	l = mustOpen(t, dir, tinyOpts)
	defer l.Close()
	if got := l.State(); got != st {
		t.Fatalf("State = %+v, want %+v", got, st)
	}
	if after := len(rawScan(t, dir).segments); after >= before-5 {
		t.Fatalf("%d segments before Open, %d after; want those before the tail removed", before, after)
	}
	es, err := l.Read(context.Background(), 90, 1000)
	if err != nil || len(es) != 30 || es[0].Position != 91 {
		t.Fatalf("read %d events after the tail: %v", len(es), err)
	}
}
