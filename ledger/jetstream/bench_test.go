package jetstream_test

import (
	"context"
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
