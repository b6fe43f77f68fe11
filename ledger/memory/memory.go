package memory

import (
	"context"
	"fmt"
	"github.com/walflow/walflow/ledger/internal/keymerge"
	"sort"
	"sync"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/notify"
)

// Options configures a memory ledger.
type Options struct {
	// Indexer gives each event its index keys; nil indexes nothing.
	Indexer ledger.Indexer
}

// Ledger is an in-memory [ledger.Ledger]. Create it with [New].
type Ledger struct {
	indexer ledger.Indexer
	pub     *notify.Publisher

	// mu guards events, index, base and closed. Readers hold it shared; the writer and
	// Truncate take it exclusively to change events and index, and Close to drop them.
	mu     sync.RWMutex
	events [][]byte                    // events[i] is the event at position base+i+1
	index  map[string][]event.Position // key → ascending positions, all after base
	base   event.Position              // the tail: the last removed position
	closed bool

	// Writer state, used by the writer goroutine only.
	pending ledger.State // the state once the committed, unsynced transactions are synced
	dirty   bool         // pending differs from the published state
	inTx    bool
	txMeta  event.TxMeta
	txStart event.Position
	txKeys  map[string]struct{} // keys the open transaction added positions to
	keys    []string
	buf     []byte
}

var _ ledger.Ledger = (*Ledger)(nil)

// New returns an empty in-memory ledger. opts may be nil.
func New(opts *Options) *Ledger {
	if opts == nil {
		opts = &Options{}
	}
	return &Ledger{
		indexer: opts.Indexer,
		pub:     notify.New(ledger.State{}),
		index:   map[string][]event.Position{},
		txKeys:  map[string]struct{}{},
	}
}

// BeginTx opens a transaction. meta.CommitLSN must be after the commit LSN of the last
// committed transaction, synced or not, or BeginTx fails with [ledger.ErrOutOfOrder].
func (l *Ledger) BeginTx(ctx context.Context, meta event.TxMeta) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.inTx {
		return ledger.ErrTxOpen
	}
	if meta.CommitLSN <= l.pending.LastCommitLSN {
		return fmt.Errorf("%w (commit LSN %s, last %s)", ledger.ErrOutOfOrder, meta.CommitLSN, l.pending.LastCommitLSN)
	}
	l.inTx = true
	l.txMeta = meta
	l.txStart = l.pending.Head + 1
	clear(l.txKeys)
	return nil
}

// Append adds a copy of e to the open transaction and sets e.Position.
func (l *Ledger) Append(ctx context.Context, e *event.Event) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !l.inTx {
		return ledger.ErrNoTx
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ledger.ErrClosed
	}
	pos := l.base + event.Position(len(l.events)+1)
	old := e.Position
	e.Position = pos
	l.keys = l.keys[:0]
	if l.indexer != nil {
		l.keys = l.indexer(e, l.keys)
	}
	for _, k := range l.keys {
		if !notify.ValidKey(k) {
			e.Position = old
			clear(l.keys)
			return fmt.Errorf("ledger: append event at position %d: indexer returned invalid key %q (keys must be non-empty and contain no NUL byte)", pos, k)
		}
	}
	l.buf = event.AppendBinary(l.buf[:0], e)
	l.events = append(l.events, append([]byte(nil), l.buf...))
	for _, k := range l.keys {
		ps := l.index[k]
		if n := len(ps); n > 0 && ps[n-1] == pos {
			continue // the indexer gave this key twice
		}
		l.index[k] = append(ps, pos)
		l.txKeys[k] = struct{}{}
	}
	clear(l.keys)
	return nil
}

// CommitTx closes the open transaction, whose commit record ends at endLSN; it becomes
// visible at the next Sync.
func (l *Ledger) CommitTx(ctx context.Context, endLSN event.LSN) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !l.inTx {
		return ledger.ErrNoTx
	}
	l.mu.RLock()
	head := l.base + event.Position(len(l.events))
	l.mu.RUnlock()
	l.pending.Head = head
	l.pending.LastCommitLSN = l.txMeta.CommitLSN
	l.pending.LastEndLSN = endLSN
	l.inTx = false
	l.dirty = true
	return nil
}

// AbortTx drops the open transaction's events and index entries.
func (l *Ledger) AbortTx(ctx context.Context) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if !l.inTx {
		return ledger.ErrNoTx
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ledger.ErrClosed
	}
	// Truncate never reaches an open transaction (it stops at the published head).
	keep := int(l.txStart - 1 - l.base)
	clear(l.events[keep:])
	l.events = l.events[:keep]
	for k := range l.txKeys {
		ps := l.index[k]
		i := sort.Search(len(ps), func(i int) bool { return ps[i] >= l.txStart })
		if i == 0 {
			delete(l.index, k)
		} else {
			l.index[k] = ps[:i]
		}
	}
	clear(l.txKeys)
	l.inTx = false
	return nil
}

// Sync publishes every committed transaction to readers and wakes Wait.
func (l *Ledger) Sync(ctx context.Context) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.dirty {
		l.pub.Publish(l.pending)
		l.dirty = false
	}
	return nil
}

// SetAcked records the highest LSN that may be acknowledged to the slot.
func (l *Ledger) SetAcked(ctx context.Context, lsn event.LSN) error {
	return l.setState(ctx, func(st *ledger.State) { st.AckedLSN = lsn })
}

// SetOrigin records the database and slot the ledger follows.
func (l *Ledger) SetOrigin(ctx context.Context, o ledger.Origin) error {
	return l.setState(ctx, func(st *ledger.State) { st.Origin = o })
}

// setState applies set to both the pending and the published state: acknowledgements and
// the origin take effect at once, without making pending transactions visible.
func (l *Ledger) setState(ctx context.Context, set func(*ledger.State)) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	set(&l.pending)
	st := l.pub.State()
	set(&st)
	l.pub.Publish(st)
	return nil
}

// State returns the published (synced) state.
func (l *Ledger) State() ledger.State { return l.pub.State() }

// Truncate drops every event at or before through (clamped to the head) with its index
// entries, and makes through the tail. It is safe for concurrent use with the writer and
// readers.
func (l *Ledger) Truncate(ctx context.Context, through event.Position) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ledger.ErrClosed
	}
	through = min(through, l.pub.Head())
	if through <= l.base {
		return nil
	}
	n := int(through - l.base)
	clear(l.events[:n]) // let the removed events be collected
	l.events = l.events[n:]
	for k, ps := range l.index {
		i := sort.Search(len(ps), func(i int) bool { return ps[i] > through })
		if i == len(ps) {
			delete(l.index, k)
		} else if i > 0 {
			l.index[k] = ps[i:]
		}
	}
	l.base = through
	l.pub.SetTail(through)
	return nil
}

// Read returns up to limit events after position after, up to the head. It fails with a
// [*ledger.TruncatedError] when after is before the tail.
func (l *Ledger) Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, ledger.ErrClosed
	}
	if err := l.pub.CheckTail(after); err != nil {
		return nil, err
	}
	head := l.pub.Head()
	if limit <= 0 || after >= head {
		return nil, nil
	}
	end := head
	if uint64(limit) < uint64(head-after) {
		end = after + event.Position(limit)
	}
	out := make([]event.Event, 0, int(end-after))
	for p := after + 1; p <= end; p++ {
		e, err := l.decode(p)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// ReadKeys returns up to limit events after position after that carry any of keys, in
// position order, each once, up to the head. It fails with a [*ledger.TruncatedError] when
// after is before the tail.
func (l *Ledger) ReadKeys(ctx context.Context, keys []string, after event.Position, limit int) ([]event.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, k := range keys {
		if !notify.ValidKey(k) {
			return nil, fmt.Errorf("ledger: read keys: invalid key %q (keys are non-empty and contain no NUL byte)", k)
		}
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, ledger.ErrClosed
	}
	if err := l.pub.CheckTail(after); err != nil {
		return nil, err
	}
	head := l.pub.Head()
	if limit <= 0 || after >= head || len(keys) == 0 {
		return nil, nil
	}
	lists := make([][]event.Position, len(keys))
	for i, k := range keys {
		lists[i] = l.index[k]
	}
	ps := keymerge.Positions(lists, after, head, limit)
	var out []event.Event
	for _, p := range ps {
		e, err := l.decode(p)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// decode decodes the event at p; l.mu must be held.
func (l *Ledger) decode(p event.Position) (event.Event, error) {
	e, err := event.DecodeBinary(l.events[p-1-l.base])
	if err != nil {
		return event.Event{}, fmt.Errorf("ledger: read event at position %d: %w", p, err)
	}
	return e, nil
}

// Wait blocks until the head is past after, ctx ends or the ledger is closed.
func (l *Ledger) Wait(ctx context.Context, after event.Position) error {
	return l.pub.Wait(ctx, after)
}

// Close drops everything. Later calls return [ledger.ErrClosed], and so do waits in
// progress.
func (l *Ledger) Close() error {
	if !l.pub.Close() {
		return ledger.ErrClosed
	}
	l.mu.Lock()
	l.closed = true
	l.events, l.index = nil, nil
	l.mu.Unlock()
	return nil
}
