package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/pebble"
)

// benchBackends are the disk backends the benchmarks compare, in the same run.
var benchBackends = []struct {
	name string
	open func(tb testing.TB, dir string) ledger.Ledger
}{
	{"disk", func(tb testing.TB, dir string) ledger.Ledger {
		return mustOpen(tb, dir, &Options{Indexer: ledgertest.Indexer})
	}},
	{"pebble", func(tb testing.TB, dir string) ledger.Ledger {
		l, err := pebble.Open(context.Background(), dir, &pebble.Options{Indexer: ledgertest.Indexer})
		if err != nil {
			tb.Fatal(err)
		}
		return l
	}},
}

// cpuTime returns the CPU time the process used so far, user and system, in every
// goroutine (a backend's background work included).
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// duBytes returns the bytes of the files under dir.
func duBytes(tb testing.TB, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// BenchmarkAppend appends events of five columns, indexed under two keys each, in
// transactions of 1 and of 100 events, syncing every 1000 events (as the source's group
// commit does under load), to each backend. It reports events/s and the bytes on disk per
// event at the end.
func BenchmarkAppend(b *testing.B) {
	for _, be := range benchBackends {
		for _, size := range []int{1, 100} {
			b.Run(fmt.Sprintf("backend=%s/tx=%d", be.name, size), func(b *testing.B) {
				ctx := context.Background()
				dir := b.TempDir()
				l := be.open(b, dir)
				defer l.Close()
				e := ledgertest.Event(1, 0, "comments", 7)
				var lsn event.LSN
				n, inTx := 0, false
				b.ReportAllocs()
				cpu0 := cpuTime(b)
				for b.Loop() {
					if !inTx {
						lsn++
						if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
							b.Fatal(err)
						}
						inTx = true
						e.LSN, e.Ordinal = lsn, 0
					}
					e.NewRecord[0].Value = event.Text(23, strconv.Itoa(n%10_000))
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
				b.ReportMetric(float64(duBytes(b, dir))/float64(n), "bytes/event")
				// Close waits for background work (Pebble's flushes and compactions).
				if err := l.Close(); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(n), "cpu-ns/event")
			})
		}
	}
}

// readKeysEvents is how many events BenchmarkReadKeys writes; WALFLOW_BENCH_EVENTS
// changes it (10000000 for the figure in docs/ledger.md).
func readKeysEvents(tb testing.TB) int {
	n := 1_000_000
	if v := os.Getenv("WALFLOW_BENCH_EVENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 10_000 {
			tb.Fatalf("WALFLOW_BENCH_EVENTS=%q: want a number of events of at least 10000", v)
		}
	}
	return n
}

// BenchmarkReadKeys writes a ledger in which one channel holds 100 events spread over all
// of it, then reads that channel with ReadKeys, and reports how many times faster that is
// than a scan of the whole ledger that keeps the channel's events.
func BenchmarkReadKeys(b *testing.B) {
	ctx := context.Background()
	total := readKeysEvents(b)
	every := total / 100
	l := mustOpen(b, b.TempDir(), &Options{Indexer: ledgertest.Indexer})
	defer l.Close()
	lsn := event.LSN(1)
	for i := 0; i < total; i += 100 {
		if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
			b.Fatal(err)
		}
		for j := range 100 {
			table := "hay"
			if (i+j)%every == every/2 {
				table = "needle"
			}
			if err := l.Append(ctx, ledgertest.Event(lsn, uint32(j), table, (i+j)%10_000)); err != nil {
				b.Fatal(err)
			}
		}
		if err := l.CommitTx(ctx, lsn+1); err != nil {
			b.Fatal(err)
		}
		lsn += 2
		if i%10_000 == 0 {
			if err := l.Sync(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := l.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	found := 0
	for after := event.Position(0); ; {
		es, err := l.Read(ctx, after, 10_000)
		if err != nil {
			b.Fatal(err)
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if e.Name == "needle" {
				found++
			}
		}
		after = es[len(es)-1].Position
	}
	scan := time.Since(start)
	if found != 100 {
		b.Fatalf("the scan found %d events of the channel, want 100", found)
	}
	b.ResetTimer()
	for b.Loop() {
		es, err := l.ReadKeys(ctx, []string{"needle"}, 0, 1000)
		if err != nil || len(es) != 100 {
			b.Fatalf("ReadKeys = %d events, %v", len(es), err)
		}
	}
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(total), "events")
	b.ReportMetric(scan.Seconds()*1000, "scan-ms")
	b.ReportMetric(float64(scan)/float64(per), "scan/readkeys")
}
