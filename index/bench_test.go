package index_test

import (
	"context"
	"flag"
	"path/filepath"
	"strconv"
	"syscall"
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
	writeBenchTx(b, l, n, users, 1000)
}

// writeBenchTx appends n inserts, the i-th with user_id i%users, txSize per transaction.
func writeBenchTx(b *testing.B, l ledger.Ledger, n, users, txSize int) {
	ctx := context.Background()
	cols := []event.Column{{Name: "id", OID: 23}, {Name: "user_id", OID: 23}, {Name: "title", OID: 25}}
	for i := 0; i < n; {
		lsn := l.State().LastCommitLSN + 1
		if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
			b.Fatal(err)
		}
		for j := 0; j < txSize && i < n; j, i = j+1, i+1 {
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

// BenchmarkLiveIndexing indexes events as they are written to a disk ledger (100-event
// transactions, three indexers running live), once with the indexers fed by the writer
// (Runner.Feed: values computed at Append) and once reading every event back. Each
// reports events/s and the process's CPU per event (user + sys, writer and indexers
// together), and the fed run also its CPU as a ratio to the read-back one's.
func BenchmarkLiveIndexing(b *testing.B) {
	const events = 200_000
	cpu := map[bool]float64{}
	for _, fed := range []bool{false, true} {
		name := map[bool]string{false: "read_back", true: "fed"}[fed]
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				cpu[fed] = liveIndexing(b, fed, events)
			}
			b.ReportMetric(float64(events*b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(cpu[fed]*1e6, "cpu_µs/event")
			if fed && cpu[false] > 0 {
				b.ReportMetric(cpu[true]/cpu[false], "cpu_vs_read_back")
			}
		})
	}
}

// liveIndexing writes n events through a live runner and returns the CPU seconds per event
// spent until every indexer has indexed them.
func liveIndexing(b *testing.B, fed bool, n int) float64 {
	ctx := context.Background()
	led, err := ledgerdisk.Open(ctx, filepath.Join(b.TempDir(), "ledger"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer led.Close()
	store, err := indexdisk.Open(ctx, filepath.Join(b.TempDir(), "index"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	ixs := []index.Indexer{index.Field("user_id", "user_id"), index.Type("type"), index.Table("table")}
	r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: ixs})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	var sink ledger.Ledger = led
	if fed {
		sink = r.Feed(led)
	}
	before := cpuSeconds(b)
	writeBenchTx(b, sink, n, 10_000, 100)
	for _, ix := range ixs {
		if err := r.Wait(ctx, ix.Name, led.State().Head); err != nil {
			b.Fatal(err)
		}
	}
	used := cpuSeconds(b) - before
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return used / float64(n)
}

func cpuSeconds(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
