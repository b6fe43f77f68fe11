package pebble

import (
	"context"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// writeTxs writes n transactions of sizes events each from lsn, of the tables a and b with
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

// TestTruncateReopen truncates in several batches, then checks on disk that nothing at or
// before the tail is left, events or index entries, and that the tail survives reopening.
func TestTruncateReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	opts := &Options{Indexer: ledgertest.Indexer}
	l := mustOpen(t, dir, opts)
	l.truncEvents = 7 // several batches, and keys with range and point deletions
	written := writeTxs(t, l, 100, 30, 4)
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
	if r.tail != tail || r.head != 120 {
		t.Fatalf("stored tail %d and head %d, want %d and 120", r.tail, r.head, tail)
	}
	want := []event.Position{}
	for p := event.Position(tail + 1); p <= 120; p++ {
		want = append(want, p)
	}
	if !slices.Equal(r.events, want) {
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

	l = mustOpen(t, dir, opts)
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
	// The writer goes on after the tail, and a later Sync keeps it.
	writeTxs(t, l, 200, 2, 3)
	if got := l.State(); got.Tail != tail || got.Head != 126 {
		t.Fatalf("State after appending = %+v", got)
	}
	if err := l.Truncate(ctx, 126); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if r := rawScan(t, dir); r.tail != 126 || len(r.events) != 0 || len(r.index) != 0 {
		t.Fatalf("after truncating everything: tail %d, events %v, index %v", r.tail, r.events, r.index)
	}
}

// TestTruncateReclaimsSpace appends and truncates in rounds: the files of events must stay
// about the size of what is kept, not of everything ever written.
func TestTruncateReclaimsSpace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	l := mustOpen(t, dir, &Options{Indexer: ledgertest.Indexer})
	defer l.Close()
	l.compactAfter = 1 << 20 // compact after every round, as a long run does every 64 MiB
	const (
		rounds    = 8
		perRound  = 8000
		bodyBytes = 1000
		keep      = 1000 // events kept after each round: about 1 MB
	)
	// Incompressible bodies, so that the sizes on disk are those of the data.
	rng := rand.New(rand.NewPCG(1, 2))
	var sb strings.Builder
	for range 64 << 10 {
		sb.WriteByte(byte('a' + rng.IntN(26)))
	}
	body := sb.String()
	lsn := event.LSN(1)
	var tables, total []uint64
	for round := range rounds {
		for i := 0; i < perRound; i += 100 {
			if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
				t.Fatal(err)
			}
			for j := range 100 {
				e := ledgertest.Event(lsn, uint32(j), "comments", round*perRound+i+j)
				e.NewRecord[1].Value = event.Text(25, body[rng.IntN(len(body)-bodyBytes):][:bodyBytes])
				if err := l.Append(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.CommitTx(ctx, lsn+1); err != nil {
				t.Fatal(err)
			}
			lsn += 2
		}
		if err := l.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if err := l.Truncate(ctx, l.State().Head-keep); err != nil {
			t.Fatal(err)
		}
		m := l.db.Metrics()
		tables = append(tables, uint64(m.Total().TablesSize))
		total = append(total, m.DiskSpaceUsage())
	}
	written := uint64(rounds * perRound * bodyBytes)
	// The tables hold what is kept (events and index); the rest of the directory is the
	// write-ahead log, whose size Pebble bounds by the memtable's, whatever was written.
	for i, n := range tables {
		if n > 4*keep*bodyBytes {
			t.Fatalf("table bytes after each round %v (written %d): %d after round %d; truncated events are not reclaimed", tables, written, n, i)
		}
	}
	if last := total[len(total)-1]; last > 4*memTableBytes {
		t.Fatalf("disk usage after each round %v: %d bytes at the end for %d written", total, last, written)
	}
	if err := l.Truncate(ctx, l.State().Head); err != nil {
		t.Fatal(err)
	}
	if st := l.State(); st.Tail != st.Head {
		t.Fatalf("State after truncating everything = %+v", st)
	}
}
