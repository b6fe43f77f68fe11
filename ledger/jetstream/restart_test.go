package jetstream_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// TestServerRestart restarts the NATS server (same store, same port) while a writer
// appends and a reader on another connection follows. The writer does what the source
// does: on a write error it calls Lead again (until the server is back) and replays from
// the transaction after State().LastCommitLSN. At the end the stream holds every
// transaction exactly once, in order, and the reader sees the same.
func TestServerRestart(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, 0)
	port := s.Addr().(*net.TCPAddr).Port
	ctx := context.Background()
	stream := newStream()
	w := lead(t, connect(t, s), stream)
	r := open(t, connect(t, s), stream, ledgertest.Indexer)

	const txs = 300
	size := func(lsn event.LSN) int { return 1 + int(lsn%5) }
	var reached atomic.Int64
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		for reached.Load() < 100 {
			time.Sleep(time.Millisecond)
		}
		s.Shutdown()
		s.WaitForShutdown()
		startServer(t, dir, port)
	}()

	failures := 0
	write := func(lsn event.LSN) error {
		if err := w.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
			return err
		}
		for _, e := range txEvents(lsn, size(lsn)) {
			if err := w.Append(ctx, e); err != nil {
				return err
			}
		}
		if err := w.CommitTx(ctx, lsn+1); err != nil {
			return err
		}
		if lsn%3 == 0 {
			return w.Sync(ctx)
		}
		return nil
	}
	for i := 0; i < txs; {
		lsn := event.LSN(1000 + i)
		err := write(lsn)
		if err == nil {
			i++
			reached.Store(int64(i))
			continue
		}
		if !errors.Is(err, ledger.ErrWriteFailed) {
			t.Fatalf("a write failed with %v, which does not match ErrWriteFailed (the source would not restart)", err)
		}
		failures++
		t.Logf("write of %s failed: %v", lsn, err)
		deadline := time.Now().Add(60 * time.Second)
		for {
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := w.Lead(lctx)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Lead after the restart: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		i = int(w.State().LastCommitLSN) - 1000 + 1
		if w.State().LastCommitLSN == 0 {
			i = 0
		}
	}
	<-restarted
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d write failures across the restart", failures)
	lsns := make([]event.LSN, txs)
	for i := range lsns {
		lsns[i] = event.LSN(1000 + i)
	}
	checkLedger(t, readAll(t, w), 1, lsns, size)
	head := w.State().Head
	eventually(t, "the reader to reach the writer's head", func() bool { return r.State().Head == head })
	checkLedger(t, readAll(t, r), 1, lsns, size)
	es, err := r.ReadKeys(ctx, []string{"a", "b", "c"}, 0, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	checkLedger(t, es, 1, lsns, size)
}
