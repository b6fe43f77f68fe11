package jetstream_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/disk"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// BenchmarkAppend appends b.N events in transactions of 100 events, syncing every 10
// transactions (as the source's group commit does under load), to ledger/disk and to a
// JetStream ledger on an embedded R1 server with sync always and with a one-minute sync
// interval, and on an R3 stream of three embedded servers (same machine) with both
// settings, in the same run. It reports events/s, and for JetStream the ratio to
// ledger/disk's events/s (x_disk).
func BenchmarkAppend(b *testing.B) {
	var diskRate float64
	run := func(b *testing.B, l ledger.Ledger) float64 {
		ctx := context.Background()
		e := ledgertest.Event(1, 0, "comments", 7)
		lsn := l.State().LastCommitLSN
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		for n := 0; n < b.N; {
			lsn++
			if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
				b.Fatal(err)
			}
			for j := 0; j < 100 && n < b.N; j++ {
				e.LSN, e.Ordinal = lsn, uint32(j)
				if err := l.Append(ctx, e); err != nil {
					b.Fatal(err)
				}
				n++
			}
			if err := l.CommitTx(ctx, lsn+1); err != nil {
				b.Fatal(err)
			}
			if lsn%10 == 0 || n == b.N {
				if err := l.Sync(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
		rate := float64(b.N) / time.Since(start).Seconds()
		b.ReportMetric(rate, "events/s")
		return rate
	}
	b.Run("backend=disk", func(b *testing.B) {
		l, err := disk.Open(context.Background(), b.TempDir(), &disk.Options{Indexer: ledgertest.Indexer})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		diskRate = run(b, l)
	})
	for _, c := range []struct {
		name string
		sync time.Duration
	}{{"always", 0}, {"1m", time.Minute}} {
		b.Run("backend=jetstream/sync="+c.name, func(b *testing.B) {
			s := startServerSync(b, "", 0, c.sync)
			l, err := jetstream.Open(context.Background(), jetstream.Options{Conn: connect(b, s), Stream: newStream(), Indexer: ledgertest.Indexer})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			if err := l.Lead(context.Background()); err != nil {
				b.Fatal(err)
			}
			rate := run(b, l)
			if diskRate > 0 {
				b.ReportMetric(rate/diskRate, "x_disk")
			}
		})
	}
	for _, c := range []struct {
		name string
		sync time.Duration
	}{{"always", 0}, {"1m", time.Minute}} {
		b.Run("backend=jetstream-r3/sync="+c.name, func(b *testing.B) {
			servers := startCluster(b, c.sync)
			var l *jetstream.Ledger
			stream := newStream()
			eventually(b, "the R3 stream to open", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				var err error
				l, err = jetstream.Open(ctx, jetstream.Options{Conn: connect(b, servers[0]), Stream: stream, Replicas: 3, Indexer: ledgertest.Indexer})
				return err == nil
			})
			defer l.Close()
			if err := l.Lead(context.Background()); err != nil {
				b.Fatal(err)
			}
			rate := run(b, l)
			if diskRate > 0 {
				b.ReportMetric(rate/diskRate, "x_disk")
			}
		})
	}
}

// BenchmarkOpenIndex measures Open of a reader on a stream of 500,000 events (100-event
// transactions, two index keys each: the table and the row) with its channel index in
// memory (built from the whole stream), in a directory that is empty (rebuilt from the
// whole stream) and in a directory a previous Open left (reused: caught up from its
// checkpoint). It reports the time of one Open (ms/open), and once it returned, what the
// open reader adds to the live heap (heap_MB, after a collection), the process's resident
// memory (rss_MB, the embedded server and the writer included) and the directory's size
// (disk_MB).
func BenchmarkOpenIndex(b *testing.B) {
	const events = 500_000
	jetstream.SetFlushEvents(8192)
	s := startServer(b, "", 0)
	nc := connect(b, s)
	stream := newStream()
	w, err := jetstream.Open(context.Background(), jetstream.Options{Conn: nc, Stream: stream, SpoolDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	if err := w.Lead(ctx); err != nil {
		b.Fatal(err)
	}
	for n, lsn := 0, event.LSN(1); n < events; lsn++ {
		if err := w.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
			b.Fatal(err)
		}
		for j := 0; j < 100 && n < events; j++ {
			if err := w.Append(ctx, ledgertest.Event(lsn, uint32(j), string(rune('a'+n%3)), n)); err != nil {
				b.Fatal(err)
			}
			n++
		}
		if err := w.CommitTx(ctx, lsn+1); err != nil {
			b.Fatal(err)
		}
		if lsn%10 == 0 {
			if err := w.Sync(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := w.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	reused := b.TempDir()
	for _, c := range []struct {
		name   string
		dir    func(b *testing.B) string
		before func(b *testing.B, dir string)
	}{
		{"index=memory", func(*testing.B) string { return "" }, func(*testing.B, string) {}},
		{"index=dir/rebuild", func(b *testing.B) string { return filepath.Join(b.TempDir(), "index") }, func(b *testing.B, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				b.Fatal(err)
			}
		}},
		{"index=dir/reuse", func(*testing.B) string { return reused }, func(b *testing.B, dir string) {
			if _, err := os.Stat(filepath.Join(dir, "LOCK")); err == nil {
				return
			}
			l, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer, IndexDir: dir})
			if err != nil {
				b.Fatal(err)
			}
			l.Close()
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			dir := c.dir(b)
			var heap, rss float64
			var elapsed time.Duration
			for range b.N {
				b.StopTimer()
				c.before(b, dir)
				settle()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				base := float64(ms.HeapAlloc) / (1 << 20)
				b.StartTimer()
				start := time.Now()
				l, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer, IndexDir: dir})
				if err != nil {
					b.Fatal(err)
				}
				elapsed += time.Since(start)
				b.StopTimer()
				if h := l.State().Head; h != events {
					b.Fatalf("head %d, want %d", h, events)
				}
				settle()
				runtime.ReadMemStats(&ms)
				heap = max(heap, float64(ms.HeapAlloc)/(1<<20)-base)
				rss = max(rss, residentMB())
				l.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(elapsed.Milliseconds())/float64(b.N), "ms/open")
			b.ReportMetric(heap, "heap_MB")
			b.ReportMetric(rss, "rss_MB")
			if dir != "" {
				b.ReportMetric(dirMB(b, dir), "disk_MB")
			}
		})
	}
}

// settle waits until the embedded server dropped the message blocks it cached for the
// last reads (it keeps them 10 s), then collects garbage and returns free memory to the
// system, so that heap and RSS measure the ledger.
func settle() {
	time.Sleep(11 * time.Second)
	runtime.GC()
	debug.FreeOSMemory()
}

// residentMB returns the process's resident memory in MiB (VmRSS); 0 where /proc is
// missing.
func residentMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

// dirMB returns the size of the files in dir, in MiB.
func dirMB(b *testing.B, dir string) float64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return float64(n) / (1 << 20)
}
