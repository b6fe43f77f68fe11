package pebble

import (
	"context"
	"fmt"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// BenchmarkAppend appends events of five columns, indexed under two keys each, in
// transactions of 1 and of 100 events, syncing every 1000 events.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{1, 100} {
		b.Run(fmt.Sprintf("tx=%d", size), func(b *testing.B) {
			ctx := context.Background()
			l := mustOpen(b, b.TempDir(), &Options{Indexer: ledgertest.Indexer})
			defer l.Close()
			e := ledgertest.Event(1, 0, "comments", 7)
			var lsn event.LSN
			n, inTx := 0, false
			b.ReportAllocs()
			for b.Loop() {
				if !inTx {
					lsn++
					if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
						b.Fatal(err)
					}
					inTx = true
					e.LSN, e.Ordinal = lsn, 0
				}
				if err := l.Append(ctx, e); err != nil {
					b.Fatal(err)
				}
				e.Ordinal++
				n++
				if n%size == 0 {
					if err := l.CommitTx(ctx, lsn+1); err != nil {
						b.Fatal(err)
					}
					inTx = false
				}
				if n%1000 == 0 {
					if err := l.Sync(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
			if inTx {
				if err := l.CommitTx(ctx, lsn+1); err != nil {
					b.Fatal(err)
				}
			}
			if err := l.Sync(ctx); err != nil {
				b.Fatal(err)
			}
		})
	}
}
