package jetstream

import (
	"context"
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

// maxInFlight bounds the published messages awaiting JetStream's acknowledgement.
const maxInFlight = 2048

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

	inflight []inflight

	// orphan is the unterminated tail Lead found: messages orphanFirst..orphanLast of
	// the transaction committed at orphanLSN, whose writer died before its end.
	orphanFirst, orphanLast event.Position
	orphanLSN               event.LSN

	// lastSeq is the last sequence the writer published (or found in the stream), and
	// lastID its message id: every publish expects both, so that once one message of a
	// deposed writer is refused, every later one is too (the id chain breaks).
	lastSeq event.Position
	lastID  string

	keys []string
	buf  []byte
}

type inflight struct {
	f   jetstream.PubAckFuture
	pos event.Position
}

// msgID is the Nats-Msg-Id of the i-th event of the transaction committed at lsn.
func msgID(lsn event.LSN, i int) string {
	return strconv.FormatUint(uint64(lsn), 10) + "/" + strconv.Itoa(i)
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
	w := &writer{spool: spool{dir: l.opts.SpoolDir, limit: l.opts.SpoolMemory}}
	if w.spool.dir == "" {
		w.spool.dir = os.TempDir()
	}
	w.lastSeq = last
	if last > tail {
		m, err := l.stream.GetMsg(ctx, uint64(last))
		if err != nil {
			return nil, 0, fmt.Errorf("ledger/jetstream: read the last message (sequence %d) of stream %s: %w", last, l.opts.Stream, err)
		}
		w.lastID = m.Header.Get(jetstream.MsgIDHeader)
	}
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

// jsErrWrongLastMsgID is JetStream's error code for a failed Nats-Expected-Last-Msg-Id.
const jsErrWrongLastMsgID = 10070

// isFenceErr reports whether err is JetStream's refusal of an expected last sequence,
// message id or revision.
func isFenceErr(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant, jsErrWrongLastMsgID:
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
			if err := l.awaitAcks(ctx, w, 0); err != nil {
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
			if got := m.Header.Get(jetstream.MsgIDHeader); got != id {
				return fmt.Errorf("ledger/jetstream: stream %s holds message %q at sequence %d where the replay puts %q: the replay differs from what the previous writer published; restore the publication and configuration it ran with", l.opts.Stream, got, pos, id)
			}
			w.lastSeq, w.lastID = pos, id
			return nil
		}
		msg := nats.NewMsg(l.opts.Subject)
		msg.Data = append([]byte(nil), rec...)
		msg.Header.Set(hdrTx, strconv.FormatUint(uint64(lsn), 10))
		if i == n-1 {
			msg.Header.Set(hdrEnd, strconv.FormatUint(uint64(w.txFirst), 10)+" "+strconv.FormatUint(uint64(endLSN), 10))
		}
		if pos != w.lastSeq+1 {
			return fmt.Errorf("ledger/jetstream: the event at position %d would follow sequence %d of stream %s: the writer lost track of the stream; call Lead again", pos, w.lastSeq, l.opts.Stream)
		}
		opts := []jetstream.PublishOpt{jetstream.WithMsgID(id), jetstream.WithExpectLastSequence(uint64(w.lastSeq))}
		if w.lastID != "" {
			opts = append(opts, jetstream.WithExpectLastMsgID(w.lastID))
		}
		f, err := l.js.PublishMsgAsync(msg, opts...)
		if err != nil {
			return fmt.Errorf("ledger/jetstream: publish the event at position %d to stream %s: %w", pos, l.opts.Stream, err)
		}
		w.lastSeq, w.lastID = pos, id
		w.inflight = append(w.inflight, inflight{f, pos})
		if len(w.inflight) >= maxInFlight {
			return l.awaitAcks(ctx, w, maxInFlight/2)
		}
		return nil
	})
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

// awaitAcks waits for the acknowledgements of the oldest in-flight messages until at most
// keep are left.
func (l *Ledger) awaitAcks(ctx context.Context, w *writer, keep int) error {
	done := 0
	defer func() {
		clear(w.inflight[:done])
		w.inflight = w.inflight[done:]
	}()
	for len(w.inflight)-done > keep {
		p := w.inflight[done]
		select {
		case ack := <-p.f.Ok():
			if ack.Sequence != uint64(p.pos) || ack.Duplicate {
				return fmt.Errorf("ledger/jetstream: stream %s stored the event of position %d at sequence %d (duplicate %t): another writer appends to the stream", l.opts.Stream, p.pos, ack.Sequence, ack.Duplicate)
			}
		case err := <-p.f.Err():
			if isFenceErr(err) {
				return ledger.WriteFailed(fmt.Errorf("%w: stream %s refused the event of position %d because another writer appended there first: %v", ErrFenced, l.opts.Stream, p.pos, err))
			}
			return fmt.Errorf("ledger/jetstream: publish the event at position %d to stream %s: %w", p.pos, l.opts.Stream, err)
		case <-ctx.Done():
			return fmt.Errorf("ledger/jetstream: wait for stream %s to acknowledge position %d: %w", l.opts.Stream, p.pos, ctx.Err())
		}
		done++
	}
	return nil
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
	if err := l.awaitAcks(ctx, w, 0); err != nil {
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
