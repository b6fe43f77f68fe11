package jetstream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/notify"
)

// errCrash is the error of a CommitTx that a test stopped midway (crashAfter).
var errCrash = errors.New("ledger/jetstream: CommitTx stopped midway by a test")

// bucketInterval is how often Sync records the bookkeeping in the state bucket when the
// stream's end markers already carry it.
const bucketInterval = 5 * time.Second

// Headers of JetStream's atomic batch publish.
const (
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
	hdrExpectLast  = "Nats-Expected-Last-Sequence"
)

// maxBatchBytes closes a batch once its messages' payloads reach this many bytes, so that
// the stream leader, which holds a batch in memory until its commit, holds little.
const maxBatchBytes = 4 << 20

// writer is the state of the leading ledger's writer.
type writer struct {
	kvRev   uint64
	durable ledger.State // as of the last Sync: what the state bucket holds
	pending ledger.State // durable plus the committed transactions not yet synced
	dirty   bool         // pending differs from durable
	// bucketStale is set when the pending LSNs are not those of the stream's last end
	// marker (an empty transaction came last): Sync must record them in the bucket.
	bucketStale bool
	bucketAt    time.Time // the last write of the bucket
	failed      error     // set by a failed write; every later write returns it

	inTx    bool
	txMeta  event.TxMeta
	txFirst event.Position
	spool   spool

	// batch is the atomic batch being published: its messages are sent as the
	// transactions commit, all but the last at once; the last is held back until the
	// batch closes, when it is sent with the commit header.
	batch openBatch
	// batchPrefix makes this writer's batch ids unique among writers; batchN counts its
	// batches.
	batchPrefix string
	batchN      uint64
	// inflight holds the closed batches awaiting JetStream's acknowledgement: at most
	// one, since a batch is committed only once the one before it was acknowledged.
	inflight []inflight

	// orphan is the unterminated tail Lead found: messages orphanFirst..orphanLast of
	// the transaction committed at orphanLSN, whose writer died before its end.
	orphanFirst, orphanLast event.Position
	orphanLSN               event.LSN

	// lastSeq is the last sequence the writer published (or found in the stream).
	lastSeq event.Position

	keys []string
	buf  []byte
}

// openBatch is the atomic batch being published.
type openBatch struct {
	id    string
	n     int // messages, the held one included
	bytes int
	first event.Position
	held  *nats.Msg // the last message, sent when the batch closes
}

// inflight is a closed batch: its commit was sent, its acknowledgement is awaited.
type inflight struct {
	f           jetstream.PubAckFuture
	first, last event.Position
}

// msgID is the identity of the i-th event of the transaction committed at lsn, which its
// message carries in the Walflow-Id header.
func msgID(lsn event.LSN, i int) string {
	return strconv.FormatUint(uint64(lsn), 10) + "/" + strconv.Itoa(i)
}

// storedID returns the identity a stored message carries: its Walflow-Id header, or the
// Nats-Msg-Id of a message published one at a time (the ledger's earlier format).
func storedID(h nats.Header) string {
	if id := h.Get(hdrID); id != "" {
		return id
	}
	return h.Get(jetstream.MsgIDHeader)
}

// Lead makes this ledger the stream's writer: it recovers the bookkeeping from the state
// bucket and the stream's tail, and takes over the bucket's entry, so that a previous
// writer's later writes fail with [ErrFenced]. It may be called again after a write
// failed, to start over from what the stream holds, as after a crash: an open
// transaction is dropped, a committed but unsynced one is kept if the stream holds all
// of it, and the source replays from the slot whatever is missing.
func (l *Ledger) Lead(ctx context.Context) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if l.opts.ReadOnly {
		return fmt.Errorf("%w: it was opened with Options.ReadOnly", ErrReadOnly)
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	ctx, cancel := l.opCtx(ctx)
	defer cancel()
	w, tail, err := l.recover(ctx)
	if err != nil {
		return l.closedErr(err)
	}
	if err := l.idx.waitProcessed(ctx, l.ctx, max(w.durable.Head, tail)); err != nil {
		return l.closedErr(fmt.Errorf("ledger/jetstream: catch up with stream %s to sequence %d: %w", l.opts.Stream, w.durable.Head, err))
	}
	if l.w != nil {
		l.w.spool.close()
	}
	l.w = w
	l.mu.Lock()
	l.leading = true
	l.kvRec, l.kvRev = recordOf(w.durable), w.kvRev
	l.pub.Publish(w.durable)
	l.mu.Unlock()
	l.setTail(min(tail, w.durable.Head))
	if w.orphanLast > 0 {
		l.log.Warn("ledger/jetstream: the stream ends with an unfinished transaction; its replay will complete it", "commit_lsn", w.orphanLSN, "first", w.orphanFirst, "last", w.orphanLast)
	}
	return nil
}

// Resign ends this ledger's lead, if it leads: its writes fail with [ErrReadOnly] until
// [Ledger.Lead] is called again, and its State follows the stream again, as on a node
// that never led, so it sees what the next writer appends. A source calls it when it
// stops streaming (pgwal.Standby.ResignFunc): a node that lost its replication
// connection without a failed write (a network cut it noticed late) would otherwise keep
// the State of its last write. What the writer synced stays in the stream; an
// unfinished transaction is dropped, as after a crash.
func (l *Ledger) Resign() {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.w == nil {
		return
	}
	l.w.spool.close()
	l.w = nil
	l.mu.Lock()
	l.leading = false
	l.mu.Unlock()
	l.publishView()
}

// recover reads the bookkeeping and the stream's unsynced end, and takes the bucket's
// entry over.
func (l *Ledger) recover(ctx context.Context) (*writer, event.Position, error) {
	var rec record
	var rev uint64
	e, err := l.kv.Get(ctx, stateKey)
	switch {
	case err == nil:
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return nil, 0, fmt.Errorf("ledger/jetstream: decode %s/%s: %w", l.opts.StateBucket, stateKey, err)
		}
		rev = e.Revision()
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, 0, fmt.Errorf("ledger/jetstream: read %s/%s: %w", l.opts.StateBucket, stateKey, err)
	}
	info, err := l.stream.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("ledger/jetstream: read stream %s info: %w", l.opts.Stream, err)
	}
	tail, last := tailOf(info.State)
	st := rec.state()
	if last < st.Head {
		return nil, 0, fmt.Errorf("ledger/jetstream: stream %s ends at sequence %d but bucket %s records head %d; the stream was deleted or replaced: delete the bucket too to start a new ledger, or restore the stream", l.opts.Stream, last, l.opts.StateBucket, st.Head)
	}
	prefix, err := newBatchPrefix()
	if err != nil {
		return nil, 0, err
	}
	w := &writer{spool: spool{dir: l.opts.SpoolDir, limit: l.opts.SpoolMemory}, batchPrefix: prefix}
	if w.spool.dir == "" {
		w.spool.dir = os.TempDir()
	}
	w.lastSeq = last
	// Transactions synced after the bucket was last written, and an unfinished one.
	if from := max(st.Head, tail) + 1; from <= last {
		if err := l.scanHeaders(ctx, from, last, func(seq event.Position, h nats.Header) error {
			tx := h.Get(hdrTx)
			if end := h.Get(hdrEnd); end != "" {
				_, commit, endLSN, err := parseEnd(tx, end)
				if err != nil {
					return fmt.Errorf("ledger/jetstream: the end marker at sequence %d of stream %s: %w", seq, l.opts.Stream, err)
				}
				st.Head = seq
				if commit > st.LastCommitLSN {
					st.LastCommitLSN, st.LastEndLSN = commit, endLSN
				}
				w.orphanFirst, w.orphanLast, w.orphanLSN = 0, 0, 0
				return nil
			}
			lsn, err := strconv.ParseUint(tx, 10, 64)
			if err != nil {
				return fmt.Errorf("ledger/jetstream: the message at sequence %d of stream %s has no valid %s header (%q); the stream holds messages walflow did not write", seq, l.opts.Stream, hdrTx, tx)
			}
			if w.orphanLast == 0 {
				w.orphanFirst = seq
			}
			w.orphanLast, w.orphanLSN = seq, event.LSN(lsn)
			return nil
		}); err != nil {
			return nil, 0, err
		}
	}
	b, err := json.Marshal(recordOf(st))
	if err != nil {
		return nil, 0, err
	}
	if rev == 0 {
		rev, err = l.kv.Create(ctx, stateKey, b)
	} else {
		rev, err = l.kv.Update(ctx, stateKey, b, rev)
	}
	if err != nil {
		if isFenceErr(err) {
			return nil, 0, fmt.Errorf("%w: another writer took over bucket %s during Lead: %v", ErrFenced, l.opts.StateBucket, err)
		}
		return nil, 0, fmt.Errorf("ledger/jetstream: record the writer's state in %s/%s: %w", l.opts.StateBucket, stateKey, err)
	}
	w.kvRev, w.bucketAt = rev, time.Now()
	w.durable, w.pending = st, st
	return w, tail, nil
}

// scanHeaders calls fn with the headers of the messages from..to, in order.
func (l *Ledger) scanHeaders(ctx context.Context, from, to event.Position, fn func(event.Position, nats.Header) error) error {
	cons, err := l.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{l.opts.Subject},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       uint64(from),
		HeadersOnly:       true,
		InactiveThreshold: 10 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("ledger/jetstream: scan stream %s from sequence %d: %w", l.opts.Stream, from, err)
	}
	next := from
	for next <= to {
		batch, err := cons.Fetch(min(int(to-next)+1, 4096), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("ledger/jetstream: scan stream %s from sequence %d: %w", l.opts.Stream, next, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("ledger/jetstream: scan stream %s: %w", l.opts.Stream, err)
			}
			seq := event.Position(md.Sequence.Stream)
			if seq > to {
				break
			}
			if err := fn(seq, m.Headers()); err != nil {
				return err
			}
			next = seq + 1
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if got == 0 {
			return fmt.Errorf("ledger/jetstream: scan stream %s: no message at or after sequence %d although it ends at %d", l.opts.Stream, next, to)
		}
	}
	return nil
}

// isFenceErr reports whether err is JetStream's refusal of an expected last sequence or
// revision.
func isFenceErr(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant:
			return true
		}
	}
	return false
}

// writer returns the writer, or the error every write gets now.
func (l *Ledger) writer(ctx context.Context) (*writer, error) {
	if l.pub.Closed() {
		return nil, ledger.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.w == nil {
		return nil, ErrReadOnly
	}
	if l.w.failed != nil {
		return nil, l.w.failed
	}
	return l.w, nil
}

// fail marks the writer failed with err, which it returns, and hands the published
// state back to the follower: this node's readers go on seeing what any writer appends
// to the stream, as on a node that never led.
func (l *Ledger) fail(w *writer, err error) error {
	if !errors.Is(err, ledger.ErrWriteFailed) {
		err = ledger.WriteFailed(err)
	}
	w.failed = err
	l.mu.Lock()
	l.leading = false
	l.mu.Unlock()
	l.publishView()
	return err
}

// BeginTx opens a transaction. meta.CommitLSN must be after the commit LSN of the last
// committed transaction, synced or not, or BeginTx fails with [ledger.ErrOutOfOrder].
func (l *Ledger) BeginTx(ctx context.Context, meta event.TxMeta) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	w, err := l.writer(ctx)
	if err != nil {
		return err
	}
	if w.inTx {
		return ledger.ErrTxOpen
	}
	if meta.CommitLSN <= w.pending.LastCommitLSN {
		return fmt.Errorf("%w (commit LSN %s, last %s)", ledger.ErrOutOfOrder, meta.CommitLSN, w.pending.LastCommitLSN)
	}
	if w.orphanLast > 0 && meta.CommitLSN != w.orphanLSN {
		return l.fail(w, fmt.Errorf("ledger/jetstream: stream %s ends with the first events (sequences %d to %d) of the transaction committed at %s, which a writer died publishing, but the next transaction replayed is the one committed at %s: the source must replay the unfinished transaction first; restore the publication and configuration the previous writer ran with", l.opts.Stream, w.orphanFirst, w.orphanLast, w.orphanLSN, meta.CommitLSN))
	}
	if err := w.spool.reset(); err != nil {
		return l.fail(w, err)
	}
	w.inTx = true
	w.txMeta = meta
	w.txFirst = w.pending.Head + 1
	return nil
}

// Append spools a copy of e in the open transaction and sets e.Position.
func (l *Ledger) Append(ctx context.Context, e *event.Event) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	w, err := l.writer(ctx)
	if err != nil {
		return err
	}
	if !w.inTx {
		return ledger.ErrNoTx
	}
	pos := w.txFirst + event.Position(w.spool.n)
	if l.opts.Indexer != nil {
		w.keys = l.opts.Indexer(e, w.keys[:0])
		for _, k := range w.keys {
			if !notify.ValidKey(k) {
				clear(w.keys)
				return fmt.Errorf("ledger/jetstream: append event at position %d: indexer returned invalid key %q (keys must be non-empty and contain no NUL byte)", pos, k)
			}
		}
		clear(w.keys)
	}
	old := e.Position
	e.Position = pos
	w.buf = event.AppendBinary(w.buf[:0], e)
	if err := w.spool.add(w.buf); err != nil {
		e.Position = old
		return l.fail(w, err)
	}
	return nil
}

// CommitTx closes the open transaction and publishes its events; it becomes visible at
// the next Sync.
func (l *Ledger) CommitTx(ctx context.Context, endLSN event.LSN) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	w, err := l.writer(ctx)
	if err != nil {
		return err
	}
	if !w.inTx {
		return ledger.ErrNoTx
	}
	ctx, cancel := l.opCtx(ctx)
	defer cancel()
	n := w.spool.n
	lsn := w.txMeta.CommitLSN
	if w.orphanLast > 0 && w.txFirst+event.Position(n)-1 <= w.orphanLast {
		return l.fail(w, fmt.Errorf("ledger/jetstream: the replay of the transaction committed at %s has %d events, but stream %s already holds %d of its events without an end (sequences %d to %d): the replay differs from what the previous writer published; restore the publication and configuration it ran with", lsn, n, l.opts.Stream, w.orphanLast-w.orphanFirst+1, w.orphanFirst, w.orphanLast))
	}
	err = w.spool.each(func(i int, rec []byte) error {
		pos := w.txFirst + event.Position(i)
		id := msgID(lsn, i)
		if l.crashAfter > 0 && i == l.crashAfter {
			if err := l.flush(ctx, w); err != nil {
				return err
			}
			return errCrash
		}
		if pos <= w.orphanLast {
			// Already in the stream from the writer that died: check it is this event.
			m, err := l.stream.GetMsg(ctx, uint64(pos))
			if err != nil {
				return fmt.Errorf("ledger/jetstream: read the unfinished transaction's message at sequence %d: %w", pos, err)
			}
			if got := storedID(m.Header); got != id {
				return fmt.Errorf("ledger/jetstream: stream %s holds message %q at sequence %d where the replay puts %q: the replay differs from what the previous writer published; restore the publication and configuration it ran with", l.opts.Stream, got, pos, id)
			}
			w.lastSeq = pos
			return nil
		}
		if pos != w.lastSeq+1 {
			return fmt.Errorf("ledger/jetstream: the event at position %d would follow sequence %d of stream %s: the writer lost track of the stream; call Lead again", pos, w.lastSeq, l.opts.Stream)
		}
		msg := nats.NewMsg(l.opts.Subject)
		msg.Data = append([]byte(nil), rec...)
		msg.Header.Set(hdrTx, strconv.FormatUint(uint64(lsn), 10))
		msg.Header.Set(hdrID, id)
		if i == n-1 {
			msg.Header.Set(hdrEnd, strconv.FormatUint(uint64(w.txFirst), 10)+" "+strconv.FormatUint(uint64(endLSN), 10))
		}
		if err := l.stage(ctx, w, msg, pos); err != nil {
			return err
		}
		w.lastSeq = pos
		return nil
	})
	if err == nil {
		err = l.commitEarly(w)
	}
	if err != nil {
		return l.fail(w, err)
	}
	w.orphanFirst, w.orphanLast, w.orphanLSN = 0, 0, 0
	if n > 0 {
		w.pending.Head = w.txFirst + event.Position(n) - 1
	}
	w.pending.LastCommitLSN = lsn
	w.pending.LastEndLSN = endLSN
	w.bucketStale = n == 0
	w.inTx = false
	w.dirty = true
	return w.spool.reset()
}

// stage adds msg, the event at position pos, to the open batch, opening one if none is:
// the batch's first message expects the stream's last sequence to be the one before it,
// so that a batch lands exactly where the writer put it or not at all. It sends the
// message held back until now, holds msg back, and closes the batch when it is full.
func (l *Ledger) stage(ctx context.Context, w *writer, msg *nats.Msg, pos event.Position) error {
	b := &w.batch
	if b.n == 0 {
		w.batchN++
		b.id = w.batchPrefix + strconv.FormatUint(w.batchN, 36)
		b.first = pos
		msg.Header.Set(hdrExpectLast, strconv.FormatUint(uint64(pos-1), 10))
	}
	b.n++
	b.bytes += len(msg.Data)
	msg.Header.Set(hdrBatchID, b.id)
	msg.Header.Set(hdrBatchSeq, strconv.Itoa(b.n))
	if b.held != nil {
		if err := l.opts.Conn.PublishMsg(b.held); err != nil {
			return fmt.Errorf("ledger/jetstream: publish the event at position %d to stream %s: %w", pos-1, l.opts.Stream, err)
		}
	}
	b.held = msg
	if b.n >= l.opts.BatchMessages || b.bytes >= maxBatchBytes {
		return l.closeBatch(ctx, w)
	}
	return nil
}

// closeBatch commits the open batch, if any, once the batch before it is acknowledged:
// JetStream checks a batch's expected last sequence when the batch commits, so a batch
// committed only after its predecessor was stored cannot land after another writer's
// messages by chance, and once one batch is refused no later one is committed.
func (l *Ledger) closeBatch(ctx context.Context, w *writer) error {
	b := &w.batch
	if b.held == nil {
		return nil
	}
	if err := l.awaitAcks(ctx, w); err != nil {
		return err
	}
	last := b.first + event.Position(b.n) - 1
	b.held.Header.Set(hdrBatchCommit, "1")
	f, err := l.js.PublishMsgAsync(b.held)
	if err != nil {
		return fmt.Errorf("ledger/jetstream: publish the batch of positions %d to %d to stream %s: %w", b.first, last, l.opts.Stream, err)
	}
	w.inflight = append(w.inflight, inflight{f: f, first: b.first, last: last})
	*b = openBatch{}
	return nil
}

// commitEarly commits the open batch once it holds a quarter of BatchMessages and no batch
// awaits JetStream's acknowledgement any more, without waiting: the servers store it while
// the source decodes the next transactions, and Sync has less left to wait for. While a
// batch is in flight, the transactions committed meanwhile gather in the open batch, so
// batches grow as the servers slow down; the quarter keeps batches large enough that
// their fixed cost (on one server without replicas, a file store each) stays small.
func (l *Ledger) commitEarly(w *writer) error {
	if w.batch.held == nil || w.batch.n < max(l.opts.BatchMessages/4, 1) {
		return nil
	}
	if len(w.inflight) > 0 {
		p := w.inflight[0]
		select {
		case ack := <-p.f.Ok():
			if err := l.checkAck(p, ack); err != nil {
				return err
			}
		case err := <-p.f.Err():
			return l.ackErr(p, err)
		default:
			return nil
		}
		clear(w.inflight[:1])
		w.inflight = w.inflight[1:]
	}
	return l.closeBatch(context.Background(), w) // nothing in flight: it does not wait
}

// flush commits the open batch and waits until JetStream acknowledged every batch.
func (l *Ledger) flush(ctx context.Context, w *writer) error {
	if err := l.closeBatch(ctx, w); err != nil {
		return err
	}
	return l.awaitAcks(ctx, w)
}

// awaitAcks waits for the acknowledgements of the closed batches.
func (l *Ledger) awaitAcks(ctx context.Context, w *writer) error {
	done := 0
	defer func() {
		clear(w.inflight[:done])
		w.inflight = w.inflight[done:]
	}()
	for _, p := range w.inflight {
		select {
		case ack := <-p.f.Ok():
			if err := l.checkAck(p, ack); err != nil {
				return err
			}
		case err := <-p.f.Err():
			return l.ackErr(p, err)
		case <-ctx.Done():
			return fmt.Errorf("ledger/jetstream: wait for stream %s to acknowledge positions %d to %d: %w", l.opts.Stream, p.first, p.last, ctx.Err())
		}
		done++
	}
	return nil
}

// checkAck checks the acknowledgement of batch p.
func (l *Ledger) checkAck(p inflight, ack *jetstream.PubAck) error {
	if ack.Sequence != uint64(p.last) || ack.Duplicate {
		return fmt.Errorf("ledger/jetstream: stream %s stored the events of positions %d to %d ending at sequence %d (duplicate %t): another writer appends to the stream", l.opts.Stream, p.first, p.last, ack.Sequence, ack.Duplicate)
	}
	return nil
}

// ackErr returns the error of batch p that JetStream refused with err.
func (l *Ledger) ackErr(p inflight, err error) error {
	if isFenceErr(err) {
		return ledger.WriteFailed(fmt.Errorf("%w: stream %s refused the events of positions %d to %d because another writer appended there first: %v", ErrFenced, l.opts.Stream, p.first, p.last, err))
	}
	return fmt.Errorf("ledger/jetstream: publish the events of positions %d to %d to stream %s: %w%s", p.first, p.last, l.opts.Stream, err, batchHint(err))
}

// AbortTx drops the open transaction's events, which never reached the stream.
func (l *Ledger) AbortTx(ctx context.Context) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	w, err := l.writer(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	if !w.inTx {
		return ledger.ErrNoTx
	}
	w.inTx = false
	if err := w.spool.reset(); err != nil {
		return l.fail(w, err)
	}
	return nil
}

// Sync waits until JetStream acknowledged every published event (at the stream's
// replication), records the bookkeeping in the state bucket when the end markers do not
// carry it or the last record is old, waits for this node's index to cover the events,
// and makes them visible.
func (l *Ledger) Sync(ctx context.Context) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	w, err := l.writer(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := l.opCtx(ctx)
	defer cancel()
	if err := l.flush(ctx, w); err != nil {
		return l.closedErr(l.fail(w, err))
	}
	if !w.dirty {
		return nil
	}
	st := w.pending
	// The stream's end markers carry the head and LSNs, and Lead scans the messages after
	// the bucket's head: the bucket is written when an empty transaction came last, and
	// every few seconds to keep that scan short.
	if w.bucketStale || time.Since(w.bucketAt) > bucketInterval {
		if err := l.putState(ctx, w, st); err != nil {
			return l.closedErr(err)
		}
		w.bucketStale = false
	}
	if err := l.idx.waitProcessed(ctx, l.ctx, st.Head); err != nil {
		return l.closedErr(l.fail(w, fmt.Errorf("ledger/jetstream: wait for this node's index to reach position %d: %w", st.Head, err)))
	}
	w.durable, w.dirty = st, false
	l.mu.Lock()
	l.pub.Publish(st)
	l.mu.Unlock()
	return nil
}

// putState writes st to the state bucket, fenced by the entry's revision.
func (l *Ledger) putState(ctx context.Context, w *writer, st ledger.State) error {
	b, err := json.Marshal(recordOf(st))
	if err != nil {
		return l.fail(w, err)
	}
	rev, err := l.kv.Update(ctx, stateKey, b, w.kvRev)
	if err != nil {
		if isFenceErr(err) {
			return l.fail(w, fmt.Errorf("%w: the state in %s/%s was rewritten by another writer (Lead on another node): %v", ErrFenced, l.opts.StateBucket, stateKey, err))
		}
		return l.fail(w, fmt.Errorf("ledger/jetstream: record the state in %s/%s: %w", l.opts.StateBucket, stateKey, err))
	}
	w.kvRev, w.bucketAt = rev, time.Now()
	l.mu.Lock()
	l.kvRec, l.kvRev = recordOf(st), rev
	l.mu.Unlock()
	return nil
}

// SetAcked durably records the highest LSN that may be acknowledged to the slot.
func (l *Ledger) SetAcked(ctx context.Context, lsn event.LSN) error {
	return l.setState(ctx, func(st *ledger.State) { st.AckedLSN = lsn })
}

// SetOrigin durably records the database and slot the ledger follows.
func (l *Ledger) SetOrigin(ctx context.Context, o ledger.Origin) error {
	return l.setState(ctx, func(st *ledger.State) { st.Origin = o })
}

// setState applies set to the durable and the pending state and records the durable one,
// without making pending transactions visible.
func (l *Ledger) setState(ctx context.Context, set func(*ledger.State)) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	w, err := l.writer(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := l.opCtx(ctx)
	defer cancel()
	st := w.durable
	set(&st)
	if err := l.putState(ctx, w, st); err != nil {
		return l.closedErr(err)
	}
	w.durable = st
	set(&w.pending)
	l.mu.Lock()
	l.pub.Publish(st)
	l.mu.Unlock()
	return nil
}

// newBatchPrefix returns a random prefix for a writer's batch ids, so that two writers
// (a deposed leader and its successor) never share one.
func newBatchPrefix() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("ledger/jetstream: draw a batch id prefix: %w", err)
	}
	return hex.EncodeToString(b[:]) + "-", nil
}

// JetStream's error codes of a refused atomic batch.
const (
	jsErrBatchDisabled    = 10174
	jsErrBatchIncomplete  = 10176
	jsErrBatchTooLarge    = 10199
	jsErrBatchTooInflight = 10210
)

// batchHint returns advice on a batch JetStream refused, or "".
func batchHint(err error) string {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return ""
	}
	switch apiErr.ErrorCode {
	case jsErrBatchDisabled:
		return "; the stream does not allow atomic batch publish: Open enables it (nats-server 2.12 or newer)"
	case jsErrBatchIncomplete:
		return "; the stream dropped part of the batch (its leader changed, a message was refused, or the batch was idle past the servers' batch timeout)"
	case jsErrBatchTooLarge:
		return "; the servers accept fewer messages per batch (max_batch_size): lower Options.BatchMessages to their limit"
	case jsErrBatchTooInflight:
		return "; the servers have too many batches in flight (max_batch_inflight_per_stream, max_batch_inflight_total)"
	}
	return ""
}
