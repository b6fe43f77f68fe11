package jetstream_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/ledgertest"
)

func sync(t testing.TB, l ledger.Ledger) {
	t.Helper()
	if err := l.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

// TestFence has a second writer take the stream over: the first one's later appends and
// bookkeeping fail with ErrFenced, which is also ErrWriteFailed, and add nothing.
func TestFence(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	a := lead(t, connect(t, s), stream)
	ledgertest.WriteTx(t, a, 10, txEvents(10, 3)...)
	sync(t, a)

	b := lead(t, connect(t, s), stream)
	if st := b.State(); st.Head != 3 || st.LastCommitLSN != 10 {
		t.Fatalf("the new writer's State = %+v, want head 3 at LSN 10", st)
	}
	ledgertest.WriteTx(t, b, 20, txEvents(20, 2)...)
	sync(t, b)

	// The deposed writer still believes its head is 3: its append lands nowhere.
	ledgertest.WriteTx(t, a, 30, txEvents(30, 4)...)
	err := a.Sync(ctx)
	if !errors.Is(err, jetstream.ErrFenced) || !errors.Is(err, ledger.ErrWriteFailed) {
		t.Fatalf("the deposed writer's Sync = %v, want ErrFenced and ErrWriteFailed", err)
	}
	if err := a.BeginTx(ctx, event.TxMeta{CommitLSN: 40}); !errors.Is(err, ledger.ErrWriteFailed) {
		t.Fatalf("BeginTx after a fenced Sync = %v, want ErrWriteFailed", err)
	}
	if err := a.Truncate(ctx, 1); !errors.Is(err, jetstream.ErrFenced) {
		t.Fatalf("Truncate after a fenced Sync = %v, want ErrFenced", err)
	}
	// The deposed node's readers follow the new writer.
	eventually(t, "the deposed node to see the new writer's head", func() bool { return a.State().Head == 5 })
	checkLedger(t, readAll(t, a), 1, []event.LSN{10, 20}, func(lsn event.LSN) int { return map[event.LSN]int{10: 3, 20: 2}[lsn] })
	// Its bookkeeping is fenced too, even without an append.
	c := open(t, connect(t, s), stream, ledgertest.Indexer)
	if err := c.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.SetAcked(ctx, 21); !errors.Is(err, jetstream.ErrFenced) || !errors.Is(err, ledger.ErrWriteFailed) {
		t.Fatalf("SetAcked of a deposed writer = %v, want ErrFenced and ErrWriteFailed", err)
	}

	r := open(t, connect(t, s), stream, ledgertest.Indexer)
	eventually(t, "the reader to see head 5", func() bool { return r.State().Head == 5 })
	checkLedger(t, readAll(t, r), 1, []event.LSN{10, 20}, func(lsn event.LSN) int { return map[event.LSN]int{10: 3, 20: 2}[lsn] })
	if st := c.State(); st.Head != 5 || st.LastCommitLSN != 20 {
		t.Fatalf("the third writer's State = %+v, want head 5 at LSN 20", st)
	}
}

// TestReadOnly checks that a ledger that does not lead refuses writes.
func TestReadOnly(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	l := open(t, connect(t, s), newStream(), nil)
	for what, err := range map[string]error{
		"BeginTx":   l.BeginTx(ctx, event.TxMeta{CommitLSN: 1}),
		"Sync":      l.Sync(ctx),
		"SetAcked":  l.SetAcked(ctx, 1),
		"SetOrigin": l.SetOrigin(ctx, ledger.Origin{Slot: "s"}),
		"Truncate":  l.Truncate(ctx, 1),
	} {
		if !errors.Is(err, jetstream.ErrReadOnly) {
			t.Errorf("%s on a read-only ledger = %v, want ErrReadOnly", what, err)
		}
	}
}

// TestReplayAfterCrash has a writer die while publishing a transaction; the next writer
// replays it from the start (as the source does from the slot): the positions are the
// ones the first writer gave, and no event is stored twice.
func TestReplayAfterCrash(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	a := lead(t, connect(t, s), stream)
	reader := open(t, connect(t, s), stream, ledgertest.Indexer)
	ledgertest.WriteTx(t, a, 10, txEvents(10, 3)...)
	sync(t, a)
	if err := a.SetAcked(ctx, 11); err != nil {
		t.Fatal(err)
	}

	jetstream.CrashAfter(a, 30)
	if err := a.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
		t.Fatal(err)
	}
	first := txEvents(20, 50)
	for _, e := range first {
		if err := a.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.CommitTx(ctx, 21); err == nil {
		t.Fatal("CommitTx with a crash after 30 events succeeded")
	}
	a.Close() // the writer is gone; 30 events of transaction 20 are in the stream

	b := lead(t, connect(t, s), stream)
	if st := b.State(); st.Head != 3 || st.LastCommitLSN != 10 || st.AckedLSN != 11 {
		t.Fatalf("State after the crash = %+v, want head 3 at LSN 10, acked 11", st)
	}
	// The source replays from the slot: transaction 10 is skipped, 20 comes again.
	if err := b.BeginTx(ctx, event.TxMeta{CommitLSN: 10}); !errors.Is(err, ledger.ErrOutOfOrder) {
		t.Fatalf("BeginTx of the synced transaction = %v, want ErrOutOfOrder", err)
	}
	if reader.State().Head != 3 {
		t.Fatalf("a reader sees head %d while transaction 20 is unfinished", reader.State().Head)
	}
	ps := ledgertest.WriteTx(t, b, 20, txEvents(20, 50)...)
	for i, e := range first {
		if ps[i] != e.Position {
			t.Fatalf("the replayed event %d is at position %d; the first writer gave it %d", i, ps[i], e.Position)
		}
	}
	ledgertest.WriteTx(t, b, 30, txEvents(30, 2)...)
	sync(t, b)
	size := func(lsn event.LSN) int { return map[event.LSN]int{10: 3, 20: 50, 30: 2}[lsn] }
	checkLedger(t, readAll(t, b), 1, []event.LSN{10, 20, 30}, size)
	eventually(t, "the reader to reach head 55", func() bool { return reader.State().Head == 55 })
	checkLedger(t, readAll(t, reader), 1, []event.LSN{10, 20, 30}, size)
	// The index skips nothing and doubles nothing.
	es, err := reader.ReadKeys(ctx, []string{"a", "b", "c"}, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	checkLedger(t, es, 1, []event.LSN{10, 20, 30}, size)
}

// TestReplayDiffers has the next writer replay something other than the unfinished
// transaction: it fails with a clear error instead of mixing two transactions.
func TestReplayDiffers(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	a := lead(t, connect(t, s), stream)
	jetstream.CrashAfter(a, 5)
	if err := a.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
		t.Fatal(err)
	}
	for _, e := range txEvents(20, 10) {
		if err := a.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.CommitTx(ctx, 21); err == nil {
		t.Fatal("CommitTx with a crash after 5 events succeeded")
	}
	a.Close()

	b := lead(t, connect(t, s), stream)
	err := b.BeginTx(ctx, event.TxMeta{CommitLSN: 30})
	if !errors.Is(err, ledger.ErrWriteFailed) {
		t.Fatalf("BeginTx of another transaction = %v, want ErrWriteFailed", err)
	}
	t.Log(err)

	c := lead(t, connect(t, s), stream)
	if err := c.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
		t.Fatal(err)
	}
	for _, e := range txEvents(20, 4) { // shorter than what is in the stream
		if err := c.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CommitTx(ctx, 21); !errors.Is(err, ledger.ErrWriteFailed) {
		t.Fatalf("CommitTx of a shorter replay = %v, want ErrWriteFailed", err)
	}
	if st := c.State(); st.Head != 0 {
		t.Fatalf("State = %+v, want nothing visible", st)
	}
}

// TestBatchRules records the rules of JetStream's atomic batches the writer's design
// follows: only a batch's first message may expect the stream's last sequence, a message
// may not expect the last message id (so the fence is one batch committed at a time, not
// an id chain), and a refused batch stores none of its messages.
func TestBatchRules(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	open(t, connect(t, s), stream, nil) // creates the stream
	nc := connect(t, s)
	subj := "walflow." + strings.ToLower(stream) + ".events"
	batch := func(id string, n int, hdr func(i int, h nats.Header)) error {
		for i := 1; i <= n; i++ {
			m := nats.NewMsg(subj)
			m.Data = []byte("x")
			m.Header.Set("Nats-Batch-Id", id)
			m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i))
			hdr(i, m.Header)
			if i < n {
				if err := nc.PublishMsg(m); err != nil {
					return err
				}
				continue
			}
			m.Header.Set("Nats-Batch-Commit", "1")
			reply, err := nc.RequestMsgWithContext(ctx, m)
			if err != nil {
				return err
			}
			var ack struct {
				Seq   uint64 `json:"seq"`
				Error *struct {
					Code int `json:"err_code"`
				} `json:"error"`
			}
			if err := json.Unmarshal(reply.Data, &ack); err != nil {
				return err
			}
			if ack.Error != nil {
				return fmt.Errorf("error code %d", ack.Error.Code)
			}
		}
		return nil
	}
	if err := batch("ok", 3, func(i int, h nats.Header) {
		if i == 1 {
			h.Set("Nats-Expected-Last-Sequence", "0")
		}
	}); err != nil {
		t.Fatalf("a batch expecting the last sequence on its first message: %v", err)
	}
	for name, c := range map[string]struct {
		hdr  func(i int, h nats.Header)
		code string
	}{
		"wrong last sequence": {func(i int, h nats.Header) {
			if i == 1 {
				h.Set("Nats-Expected-Last-Sequence", "2")
			}
		}, "10071"},
		"expected sequence past the first message": {func(i int, h nats.Header) {
			h.Set("Nats-Expected-Last-Sequence", strconv.Itoa(2+i))
		}, "10164"},
		"expected last message id": {func(i int, h nats.Header) {
			h.Set("Nats-Expected-Last-Msg-Id", "x")
		}, "10177"},
	} {
		if err := batch(strings.ReplaceAll(name, " ", "-"), 3, c.hdr); err == nil || !strings.Contains(err.Error(), c.code) {
			t.Errorf("a batch with %s = %v, want error code %s", name, err, c.code)
		}
	}
	if n := lastSeq(t, nc, stream); n != 3 {
		t.Fatalf("the stream ends at sequence %d, want 3: a refused batch stored messages", n)
	}
}

// TestSecondNode writes from one node and reads from another (its own connection and
// index, opened after the writes, so rebuilt from the stream): same positions, same
// events, same key reads, same state; and Wait there wakes on the writer's Sync.
func TestSecondNode(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	w := lead(t, connect(t, s), stream)
	for i := range 40 {
		lsn := event.LSN(100 + i)
		ledgertest.WriteTx(t, w, lsn, txEvents(lsn, 1+i%7)...)
		if i%4 == 3 {
			sync(t, w)
		}
	}
	sync(t, w)
	if err := w.SetOrigin(ctx, ledger.Origin{SystemID: "1", Timeline: 1, Database: "app", Slot: "walflow"}); err != nil {
		t.Fatal(err)
	}
	if err := w.SetAcked(ctx, 120); err != nil {
		t.Fatal(err)
	}
	if err := w.Truncate(ctx, 10); err != nil {
		t.Fatal(err)
	}

	// A small cache, so that reads also fetch from the stream.
	nc := connect(t, s)
	r, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer, CacheEvents: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	eventually(t, "the second node's state to match", func() bool { return r.State() == w.State() })
	same := func() {
		t.Helper()
		want := readAll(t, w)
		if got := readAll(t, r); !reflect.DeepEqual(got, want) {
			t.Fatalf("the second node reads %d events, the writer %d, or they differ", len(got), len(want))
		}
		for _, keys := range [][]string{{"a"}, {"b", "c"}, {"a/105000"}, {"c/120002", "b/130001"}} {
			for _, after := range []event.Position{10, 11, 50} {
				want, err := w.ReadKeys(ctx, keys, after, 7)
				if err != nil {
					t.Fatal(err)
				}
				got, err := r.ReadKeys(ctx, keys, after, 7)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("ReadKeys(%q, %d) on the second node differs from the writer's", keys, after)
				}
			}
		}
		if _, err := r.Read(ctx, 5, 10); !errors.Is(err, ledger.ErrTruncated) {
			t.Fatalf("Read before the tail on the second node = %v, want ErrTruncated", err)
		}
	}
	same()

	// Wait on the second node wakes on the writer's next Sync.
	head := r.State().Head
	done := make(chan error, 1)
	go func() { done <- r.Wait(ctx, head) }()
	ledgertest.WriteTx(t, w, 500, txEvents(500, 3)...)
	sync(t, w)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	eventually(t, "the second node's state to match", func() bool { return r.State() == w.State() })
	same()
}

// TestNoPartialTx has a reader on another connection read the whole ledger over and over
// while a transaction far larger than the writer's spool memory and the readers' cache is
// appended: it sees all of it or none of it.
func TestNoPartialTx(t *testing.T) {
	s := startServer(t, "", 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream := newStream()
	nc := connect(t, s)
	w, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer, SpoolMemory: 64 << 10, SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := jetstream.Open(ctx, jetstream.Options{Conn: connect(t, s), Stream: stream, Indexer: ledgertest.Indexer, CacheEvents: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const big = 6000
	size := func(lsn event.LSN) int {
		if lsn == 20 {
			return big
		}
		return 2
	}
	ledgertest.WriteTx(t, w, 10, txEvents(10, 2)...)
	sync(t, w)

	errc := make(chan error, 1)
	reads := 0
	go func() {
		errc <- func() error {
			for {
				head := r.State().Head
				es, err := r.Read(ctx, 0, 1<<30)
				if err != nil {
					return err
				}
				reads++
				switch n := len(es); {
				case n < int(head):
					return errors.New("read fewer events than the head")
				case n == 0 || n == 2: // this node may not have seen transaction 10 yet
				case n == 2+big || n == 4+big:
					if n == 4+big {
						return nil
					}
				default:
					return errors.New("a reader saw part of a transaction")
				}
				for i, e := range es {
					if e.Position != event.Position(i+1) {
						return errors.New("positions have a gap")
					}
				}
				keyed, err := r.ReadKeys(ctx, []string{"a", "b", "c"}, 0, 1<<30)
				if err != nil {
					return err
				}
				if n := len(keyed); n != 0 && n != 2 && n != 2+big && n != 4+big {
					return errors.New("a key reader saw part of a transaction")
				}
			}
		}()
	}()
	ledgertest.WriteTx(t, w, 20, txEvents(20, big)...)
	sync(t, w)
	ledgertest.WriteTx(t, w, 30, txEvents(30, 2)...)
	sync(t, w)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d full reads while the transaction was appended", reads)
	checkLedger(t, readAll(t, r), 1, []event.LSN{10, 20, 30}, size)
}

// TestLeadRecoversState checks that a new writer recovers the bookkeeping from NATS alone:
// the LSNs of an empty transaction (only in the bucket) and of transactions synced after
// the bucket was last written (only in the stream's end markers).
func TestLeadRecoversState(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	a := lead(t, connect(t, s), stream)
	o := ledger.Origin{SystemID: "42", Timeline: 2, Database: "app", Slot: "walflow"}
	if err := a.SetOrigin(ctx, o); err != nil {
		t.Fatal(err)
	}
	ledgertest.WriteTx(t, a, 10, txEvents(10, 2)...)
	ledgertest.WriteTx(t, a, 20) // empty
	sync(t, a)
	if err := a.SetAcked(ctx, 21); err != nil {
		t.Fatal(err)
	}
	want := ledger.State{Head: 2, LastCommitLSN: 20, LastEndLSN: 21, AckedLSN: 21, Origin: o}
	b := lead(t, connect(t, s), stream)
	if st := b.State(); st != want {
		t.Fatalf("State after an empty transaction = %+v, want %+v", st, want)
	}
	// Transactions with events right after a bucket write are only in the stream.
	ledgertest.WriteTx(t, b, 30, txEvents(30, 3)...)
	sync(t, b)
	ledgertest.WriteTx(t, b, 40, txEvents(40, 1)...)
	sync(t, b)
	want.Head, want.LastCommitLSN, want.LastEndLSN = 6, 40, 41
	c := lead(t, connect(t, s), stream)
	if st := c.State(); st != want {
		t.Fatalf("State after transactions the bucket may not hold = %+v, want %+v", st, want)
	}
	r := open(t, connect(t, s), stream, nil)
	eventually(t, "a reader's state to match", func() bool { return r.State() == want })
}

// TestOptionsErrors checks that bad options are refused with errors naming the option.
func TestOptionsErrors(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s)
	ctx := context.Background()
	for _, c := range []struct {
		opts jetstream.Options
		want string
	}{
		{jetstream.Options{}, "Options.Conn is nil"},
		{jetstream.Options{Conn: nc, Stream: "a.b"}, `stream name "a.b" is invalid`},
		{jetstream.Options{Conn: nc, Subject: "walflow.>"}, `subject "walflow.>" is invalid`},
		{jetstream.Options{Conn: nc, StateBucket: "x y"}, `state bucket name "x y" is invalid`},
		{jetstream.Options{Conn: nc, Replicas: 7}, "replicas 7 is invalid"},
		{jetstream.Options{Conn: nc, Stream: newStream(), Replicas: 3}, "with 3 replicas"},
		{jetstream.Options{Conn: nc, IndexDir: os.TempDir()}, "is also the spool directory"},
	} {
		l, err := jetstream.Open(ctx, c.opts)
		if err == nil {
			l.Close()
			t.Fatalf("Open(%+v) succeeded, want an error saying %q", c.opts, c.want)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Fatalf("Open(%+v) = %v, want an error saying %q", c.opts, err, c.want)
		}
	}
}

// TestFenceRace has the deposed writer append between the new writer's Lead and its
// first append: the deposed writer's transaction stands (it is whole and in commit
// order), the new writer's first append fails with ErrFenced, and after leading again it
// holds that transaction, so the source's replay skips it: each transaction once.
func TestFenceRace(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	a := lead(t, connect(t, s), stream)
	ledgertest.WriteTx(t, a, 10, txEvents(10, 2)...)
	sync(t, a)
	b := lead(t, connect(t, s), stream)
	ledgertest.WriteTx(t, a, 20, txEvents(20, 3)...)
	sync(t, a) // lands: b has appended nothing yet

	ledgertest.WriteTx(t, b, 20, txEvents(20, 3)...) // the source replays 20 to the new writer
	if err := b.Sync(ctx); !errors.Is(err, jetstream.ErrFenced) || !errors.Is(err, ledger.ErrWriteFailed) {
		t.Fatalf("the new writer's first Sync = %v, want ErrFenced and ErrWriteFailed", err)
	}
	if err := b.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	if st := b.State(); st.Head != 5 || st.LastCommitLSN != 20 {
		t.Fatalf("State after leading again = %+v, want head 5 at LSN 20", st)
	}
	if err := b.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); !errors.Is(err, ledger.ErrOutOfOrder) {
		t.Fatalf("BeginTx(20) after leading again = %v, want ErrOutOfOrder", err)
	}
	ledgertest.WriteTx(t, b, 30, txEvents(30, 1)...)
	sync(t, b)
	// The deposed writer is fenced now.
	ledgertest.WriteTx(t, a, 40, txEvents(40, 1)...)
	if err := a.Sync(ctx); !errors.Is(err, jetstream.ErrFenced) {
		t.Fatalf("the deposed writer's Sync after the new writer appended = %v, want ErrFenced", err)
	}
	size := func(lsn event.LSN) int { return map[event.LSN]int{10: 2, 20: 3, 30: 1}[lsn] }
	checkLedger(t, readAll(t, b), 1, []event.LSN{10, 20, 30}, size)
	eventually(t, "the deposed node to follow", func() bool { return a.State().Head == 6 })
	checkLedger(t, readAll(t, a), 1, []event.LSN{10, 20, 30}, size)
}

// TestResign has a writer resign without a failed write, as a source does when its
// replication connection ends: its writes fail with ErrReadOnly, and its State follows
// the next writer's appends, which it never would while it believed it led.
func TestResign(t *testing.T) {
	s := startServer(t, "", 0)
	ctx := context.Background()
	stream := newStream()
	a := lead(t, connect(t, s), stream)
	ledgertest.WriteTx(t, a, 10, txEvents(10, 3)...)
	sync(t, a)
	a.Resign()
	a.Resign() // a ledger that does not lead ignores it
	if err := a.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); !errors.Is(err, jetstream.ErrReadOnly) {
		t.Fatalf("BeginTx after Resign = %v, want ErrReadOnly", err)
	}

	b := lead(t, connect(t, s), stream)
	ledgertest.WriteTx(t, b, 20, txEvents(20, 2)...)
	sync(t, b)
	eventually(t, "the resigned ledger to see the new writer's head", func() bool {
		st := a.State()
		return st.Head == 5 && st.LastCommitLSN == 20
	})
	checkLedger(t, readAll(t, a), 1, []event.LSN{10, 20}, func(lsn event.LSN) int { return map[event.LSN]int{10: 3, 20: 2}[lsn] })

	// It may lead again.
	b.Resign()
	if err := a.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	ledgertest.WriteTx(t, a, 30, txEvents(30, 1)...)
	sync(t, a)
	if st := a.State(); st.Head != 6 || st.LastCommitLSN != 30 {
		t.Fatalf("State after leading again = %+v, want head 6 at LSN 30", st)
	}
}
