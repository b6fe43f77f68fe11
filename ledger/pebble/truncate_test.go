package pebble

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// TestTruncateReopen truncates in several batches, then checks on disk that nothing at or
// before the tail is left, events or index entries, and that the tail survives reopening.
func TestTruncateReopen(t *testing.T) {
	t.Parallel()
	ledgertest.TruncateReopen(t, dirCases)
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
