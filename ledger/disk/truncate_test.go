package disk

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
)

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
	ledgertest.TruncateReopen(t, dirCases)
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
		ledgertest.WriteTxs(t, l, lsn, 200, 10) // about 500 kB
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
	ledgertest.WriteTxs(t, l, 100, 30, 4)
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
