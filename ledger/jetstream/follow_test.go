package jetstream_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// TestReaderFollowsServerRestarts stops and restarts, one at a time, the two servers of a
// three-server cluster the writer is not connected to, while it writes: a reader connected
// to every server keeps following the stream to its end each time (its ordered consumer
// may live on the stopped server, or come back stalled with it).
func TestReaderFollowsServerRestarts(t *testing.T) {
	ctx := context.Background()
	lc, err := cluster.StartLocalCluster(ctx, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lc.Shutdown)
	conn := func(urls ...string) *nats.Conn {
		nc, err := nats.Connect(strings.Join(urls, ","), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	stream := newStream()
	openR3 := func(nc *nats.Conn) *jetstream.Ledger {
		var l *jetstream.Ledger
		eventually(t, "the R3 stream to open", func() bool {
			octx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			var err error
			l, err = jetstream.Open(octx, jetstream.Options{Conn: nc, Stream: stream, Replicas: 3, Indexer: ledgertest.Indexer, SpoolDir: t.TempDir()})
			return err == nil
		})
		t.Cleanup(func() { l.Close() })
		return l
	}
	w := openR3(conn(lc.URLs()[0]))
	if err := w.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	r := openR3(conn(lc.URLs()...))
	size := func(event.LSN) int { return 3 }
	lsn := event.LSN(100)
	var lsns []event.LSN
	write := func(n int) {
		writeRecovering(t, w, lsn, n, size, func(int) {})
		for range n {
			lsns = append(lsns, lsn)
			lsn++
		}
	}
	write(20)
	for _, s := range lc.Servers()[1:] {
		s.Stop()
		write(20)
		if err := s.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		write(20)
		head := w.State().Head
		eventually(t, "the reader to reach the writer's head after "+s.Name()+" restarted", func() bool { return r.State().Head == head })
	}
	checkLedger(t, readAll(t, r), 1, lsns, size)
}
