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
	"github.com/walflow/walflow/ledger/jetstream"
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

	failures := writeRecovering(t, w, 1000, txs, size, func(i int) { reached.Store(int64(i)) })
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

// writeRecovering writes the transactions first..first+n-1 (size(lsn) events each) to w,
// syncing every third, as the source does: on a write error, which must match
// ErrWriteFailed, it calls Lead again (for up to a minute) and goes on with the
// transaction after State().LastCommitLSN. progress is called with the number of
// transactions written so far. It syncs at the end and returns the number of failures.
func writeRecovering(t *testing.T, w *jetstream.Ledger, first event.LSN, n int, size func(event.LSN) int, progress func(int)) int {
	t.Helper()
	ctx := context.Background()
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
		if lsn%3 == 0 || int(lsn-first) == n-1 {
			return w.Sync(ctx)
		}
		return nil
	}
	failures := 0
	for i := 0; i < n; {
		lsn := first + event.LSN(i)
		err := write(lsn)
		if err == nil {
			i++
			progress(i)
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
				t.Fatalf("Lead after a write failure: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		i = 0
		if last := w.State().LastCommitLSN; last >= first {
			i = int(last-first) + 1
		}
	}
	return failures
}
