package jetstream_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// openBatch opens a ledger on stream publishing at most batch events per atomic batch.
func openBatch(t testing.TB, nc *nats.Conn, stream string, batch int) *jetstream.Ledger {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer, SpoolDir: t.TempDir(), BatchMessages: batch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// lastSeq returns the stream's last sequence.
func lastSeq(t testing.TB, nc *nats.Conn, stream string) uint64 {
	t.Helper()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// TestFencedBatchesRefusedWhole has a deposed writer publish a transaction spanning two
// batches after the new writer appended: its first batch is refused, and its second is
// never committed, although its expected last sequence is the stream's last sequence by
// then: nothing of the transaction lands, in the stream or in any reader.
func TestFencedBatchesRefusedWhole(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	nc := connect(t, s)
	a := openBatch(t, nc, stream, 2)
	if err := a.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	ledgertest.WriteTx(t, a, 10, txEvents(10, 3)...)
	sync(t, a)

	b := lead(t, connect(t, s), stream)
	ledgertest.WriteTx(t, b, 20, txEvents(20, 2)...)
	sync(t, b)

	// a believes its head is 3: its batches put the events at 4-5 (expecting 3) and 6-7
	// (expecting 5, which is the stream's last sequence now).
	// The refusal surfaces at CommitTx, which waits for the first batch before it
	// commits the second, or at Sync.
	err := a.BeginTx(ctx, event.TxMeta{CommitLSN: 30})
	for _, e := range txEvents(30, 4) {
		if err == nil {
			err = a.Append(ctx, e)
		}
	}
	if err == nil {
		err = a.CommitTx(ctx, 31)
	}
	if err == nil {
		err = a.Sync(ctx)
	}
	if !errors.Is(err, jetstream.ErrFenced) || !errors.Is(err, ledger.ErrWriteFailed) {
		t.Fatalf("the deposed writer's write = %v, want ErrFenced and ErrWriteFailed", err)
	}
	// Its second batch stays staged on the server, uncommitted, until the server drops
	// it; give a wrongly committed one time to land.
	time.Sleep(200 * time.Millisecond)
	if n := lastSeq(t, nc, stream); n != 5 {
		t.Fatalf("the stream ends at sequence %d after the deposed writer's batches, want 5", n)
	}
	r := open(t, connect(t, s), stream, ledgertest.Indexer)
	size := func(lsn event.LSN) int { return map[event.LSN]int{10: 3, 20: 2}[lsn] }
	checkLedger(t, readAll(t, r), 1, []event.LSN{10, 20}, size)
	ledgertest.WriteTx(t, b, 40, txEvents(40, 3)...)
	sync(t, b)
	checkLedger(t, readAll(t, b), 1, []event.LSN{10, 20, 40}, func(lsn event.LSN) int { return map[event.LSN]int{10: 3, 20: 2, 40: 3}[lsn] })
}

// TestReplayAcrossBatches has a writer die in a transaction spanning several batches, after
// two of them were stored: no reader sees any of it, and the next writer's replay
// completes it at the positions the first writer gave, publishing only the rest, in
// batches again; the transactions before it in the same batch stay.
func TestReplayAcrossBatches(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	nc := connect(t, s)
	a := openBatch(t, nc, stream, 8)
	if err := a.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	reader := open(t, connect(t, s), stream, ledgertest.Indexer)
	ledgertest.WriteTx(t, a, 10, txEvents(10, 3)...)
	sync(t, a)
	ledgertest.WriteTx(t, a, 15, txEvents(15, 2)...) // shares its batch with 20's first events
	jetstream.CrashAfter(a, 19)
	if err := a.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
		t.Fatal(err)
	}
	first := txEvents(20, 30)
	for _, e := range first {
		if err := a.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.CommitTx(ctx, 21); err == nil {
		t.Fatal("CommitTx with a crash after 19 events succeeded")
	}
	a.Close()
	if n := lastSeq(t, nc, stream); n != 3+2+19 {
		t.Fatalf("the stream ends at sequence %d after the crash, want %d", n, 3+2+19)
	}
	eventually(t, "the reader to see transaction 15", func() bool { return reader.State().Head == 5 })
	time.Sleep(100 * time.Millisecond)
	if h := reader.State().Head; h != 5 {
		t.Fatalf("a reader sees head %d while transaction 20 is unfinished, want 5", h)
	}

	b := openBatch(t, connect(t, s), stream, 8)
	if err := b.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	if st := b.State(); st.Head != 5 || st.LastCommitLSN != 15 {
		t.Fatalf("State after the crash = %+v, want head 5 at LSN 15", st)
	}
	ps := ledgertest.WriteTx(t, b, 20, txEvents(20, 30)...)
	for i, e := range first {
		if ps[i] != e.Position {
			t.Fatalf("the replayed event %d is at position %d; the first writer gave it %d", i, ps[i], e.Position)
		}
	}
	ledgertest.WriteTx(t, b, 30, txEvents(30, 2)...)
	sync(t, b)
	size := func(lsn event.LSN) int { return map[event.LSN]int{10: 3, 15: 2, 20: 30, 30: 2}[lsn] }
	checkLedger(t, readAll(t, b), 1, []event.LSN{10, 15, 20, 30}, size)
	eventually(t, "the reader to reach head 37", func() bool { return reader.State().Head == 37 })
	checkLedger(t, readAll(t, reader), 1, []event.LSN{10, 15, 20, 30}, size)
	if n := lastSeq(t, nc, stream); n != 37 {
		t.Fatalf("the stream ends at sequence %d, want 37: the replay stored events twice", n)
	}
}

// TestBatchTooLarge has the writer publish batches larger than the server accepts: Sync
// fails with an error that names the setting to lower, and nothing lands.
func TestBatchTooLarge(t *testing.T) {
	s := startServer(t, "", 0) // the server's default max_batch_size: 1000
	ctx := context.Background()
	stream := newStream()
	nc := connect(t, s)
	l := openBatch(t, nc, stream, 1500)
	if err := l.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	ledgertest.WriteTx(t, l, 10, txEvents(10, 1200)...)
	err := l.Sync(ctx)
	if !errors.Is(err, ledger.ErrWriteFailed) || !strings.Contains(err.Error(), "BatchMessages") {
		t.Fatalf("Sync of a batch of 1200 events = %v, want ErrWriteFailed naming BatchMessages", err)
	}
	if n := lastSeq(t, nc, stream); n != 0 {
		t.Fatalf("the stream ends at sequence %d after a refused batch, want 0", n)
	}
}

// TestOpenUpdatesStream opens the ledger on a stream created without atomic batch
// publish and holding messages published one at a time (Nats-Msg-Id, no Walflow-Id), the
// last transaction unfinished: Open enables batches, and the replay recognises the
// unfinished transaction's messages by their message id.
func TestOpenUpdatesStream(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	nc := connect(t, s)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	subj := "walflow." + strings.ToLower(stream) + ".events"
	if _, err := js.CreateStream(ctx, natsjs.StreamConfig{Name: stream, Subjects: []string{subj}, Storage: natsjs.FileStorage, Discard: natsjs.DiscardNew, DenyDelete: true}); err != nil {
		t.Fatal(err)
	}
	// Transaction 10 whole (2 events), then 3 events of transaction 20's 5.
	publish := func(pos int, e *event.Event, lsn event.LSN, i int, end string) {
		e.Position = event.Position(pos)
		m := nats.NewMsg(subj)
		m.Data = event.AppendBinary(nil, e)
		m.Header.Set("Walflow-Tx", strconv.FormatUint(uint64(lsn), 10))
		if end != "" {
			m.Header.Set("Walflow-End", end)
		}
		if _, err := js.PublishMsg(ctx, m, natsjs.WithMsgID(strconv.FormatUint(uint64(lsn), 10)+"/"+strconv.Itoa(i)), natsjs.WithExpectLastSequence(uint64(pos-1))); err != nil {
			t.Fatal(err)
		}
	}
	for i, e := range txEvents(10, 2) {
		end := ""
		if i == 1 {
			end = "1 11"
		}
		publish(1+i, e, 10, i, end)
	}
	for i, e := range txEvents(20, 5)[:3] {
		publish(3+i, e, 20, i, "")
	}

	l := lead(t, connect(t, s), stream)
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	if !st.CachedInfo().Config.AllowAtomicPublish {
		if info, err := st.Info(ctx); err != nil || !info.Config.AllowAtomicPublish {
			t.Fatalf("stream %s does not allow atomic publish after Open (%v)", stream, err)
		}
	}
	if got := l.State(); got.Head != 2 || got.LastCommitLSN != 10 {
		t.Fatalf("State = %+v, want head 2 at LSN 10", got)
	}
	ledgertest.WriteTx(t, l, 20, txEvents(20, 5)...)
	ledgertest.WriteTx(t, l, 30, txEvents(30, 2)...)
	sync(t, l)
	size := func(lsn event.LSN) int { return map[event.LSN]int{10: 2, 20: 5, 30: 2}[lsn] }
	checkLedger(t, readAll(t, l), 1, []event.LSN{10, 20, 30}, size)
	if n := lastSeq(t, nc, stream); n != 9 {
		t.Fatalf("the stream ends at sequence %d, want 9", n)
	}
}
