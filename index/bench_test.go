package index_test

import (
	"context"
	"flag"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexdisk "github.com/walflow/walflow/index/disk"
	indexmem "github.com/walflow/walflow/index/memory"
	"github.com/walflow/walflow/ledger"
	ledgerdisk "github.com/walflow/walflow/ledger/disk"
)

var (
	benchEvents = flag.Int("index.events", 100_000, "events in the ledger of BenchmarkLookup (the item 1 target is measured at 1000000)")
	benchUsers  = flag.Int("index.users", 10_000, "distinct user_id values in the ledger of BenchmarkLookup")
)

// BenchmarkLookup reads one user's events through the user_id index, and reports how many
// times faster that is than finding them with a full scan of the same ledger: on the
// memory ledger and store, and on the disk ones.
func BenchmarkLookup(b *testing.B) {
	b.Run("memory", func(b *testing.B) {
		benchLookup(b, newLedgerTB(b), indexmem.New())
	})
	b.Run("disk", func(b *testing.B) {
		ctx := context.Background()
		led, err := ledgerdisk.Open(ctx, filepath.Join(b.TempDir(), "ledger"), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { led.Close() })
		store, err := indexdisk.Open(ctx, filepath.Join(b.TempDir(), "index"), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { store.Close() })
		benchLookup(b, led, store)
	})
}

func benchLookup(b *testing.B, led ledger.Ledger, store index.Store) {
	ctx := context.Background()
	writeBenchUsers(b, led, *benchEvents, *benchUsers)
	r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{index.Field("user_id", "user_id")}})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- r.Run(runCtx) }()
	if err := r.Wait(ctx, "user_id", led.State().Head); err != nil {
		b.Fatal(err)
	}
	build := time.Since(start)
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	const user = "7"
	start = time.Now()
	scanned := scanUser(b, led, user)
	scan := time.Since(start)

	var n int
	b.ResetTimer()
	for b.Loop() {
		evs, err := r.Read(ctx, "user_id", user, 0, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		n = len(evs)
	}
	if n != scanned {
		b.Fatalf("index read %d events; the scan found %d", n, scanned)
	}
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(n), "events/lookup")
	b.ReportMetric(scan.Seconds()/per.Seconds(), "x_faster_than_scan")
	b.ReportMetric(float64(*benchEvents)/build.Seconds(), "indexed_events/s")
}

// scanUser counts the user's events by reading the whole ledger.
func scanUser(b *testing.B, led ledger.Ledger, user string) int {
	n := 0
	for after := event.Position(0); ; {
		evs, err := led.Read(context.Background(), after, 4096)
		if err != nil {
			b.Fatal(err)
		}
		if len(evs) == 0 {
			return n
		}
		for i := range evs {
			if v, ok := evs[i].NewRecord.Get("user_id"); ok && v.String() == user {
				n++
			}
		}
		after = evs[len(evs)-1].Position
	}
}

// writeBenchUsers appends n inserts, the i-th with user_id i%users, 1000 per transaction.
func writeBenchUsers(b *testing.B, l ledger.Ledger, n, users int) {
	ctx := context.Background()
	cols := []event.Column{{Name: "id", OID: 23}, {Name: "user_id", OID: 23}, {Name: "title", OID: 25}}
	for i := 0; i < n; {
		lsn := l.State().LastCommitLSN + 1
		if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
			b.Fatal(err)
		}
		for j := 0; j < 1000 && i < n; j, i = j+1, i+1 {
			e := &event.Event{LSN: lsn, Ordinal: uint32(j), Name: "posts", Type: event.Insert,
				Source: event.Source{Schema: "public", Table: "posts", Columns: cols},
				NewRecord: event.Record{
					{Name: "id", Value: event.Text(23, strconv.Itoa(i))},
					{Name: "user_id", Value: event.Text(23, strconv.Itoa(i%users))},
					{Name: "title", Value: event.Text(25, "a post of about forty bytes of text....")},
				}}
			if err := l.Append(ctx, e); err != nil {
				b.Fatal(err)
			}
		}
		if err := l.CommitTx(ctx, lsn+1); err != nil {
			b.Fatal(err)
		}
		if err := l.Sync(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
