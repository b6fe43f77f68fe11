package index

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// FeedCapacity bounds how many events' values a runner keeps from its feed (see
// [Runner.Feed]) for indexers to take: an indexer further behind than that reads the
// ledger instead.
const FeedCapacity = 1 << 16

// Feed returns a ledger that writes to l and, as each event is appended, computes every
// indexer's values from it while it is in memory. The runner's indexers then take those
// values instead of reading the events back from the ledger and decoding them again, as
// long as they keep up; an indexer that falls behind the feed, that starts, or that
// rebuilds reads the ledger. Either way, it stores the same entries.
//
// Give the returned ledger to the writer (the source) in place of l. Values become
// available to the indexers once Sync has made their events durable, never before, and an
// aborted transaction's values are dropped. The feed keeps no reference to an event after
// Append returns: values are copied. A transaction larger than [FeedCapacity] events is
// not fed; its events are read back.
func (r *Runner) Feed(l ledger.Ledger) ledger.Ledger {
	return &feedLedger{Ledger: l, r: r, f: &r.feed}
}

// feedEntry is one event's values, per worker in the runner's order. bad is nil unless a
// Func failed on the event; bad[i] is set when worker i's did (the worker then reads the
// event back and reports the failure itself).
type feedEntry struct {
	pos    event.Position
	values [][]string
	bad    []bool
}

// feed holds the values of durable and about-to-be-durable events, at consecutive
// positions, for the workers to take.
type feed struct {
	mu      sync.Mutex
	entries []feedEntry // consecutive positions, oldest first
}

// publish adds entries, which follow the feed's last one or replace the feed when they do
// not (positions after a failed Sync are appended again).
func (f *feed) publish(es []feedEntry) {
	if len(es) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.entries); n > 0 && f.entries[n-1].pos+1 != es[0].pos {
		f.entries = f.entries[:0]
	}
	f.entries = append(f.entries, es...)
	if over := len(f.entries) - FeedCapacity; over > 0 {
		// Drop the oldest quarter at once, so that trimming is amortized.
		drop := max(over, FeedCapacity/4)
		f.entries = append(f.entries[:0], f.entries[drop:]...)
	}
}

// drop forgets every entry after position head: their events were not made durable.
func (f *feed) drop(head event.Position) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.entries) > 0 && f.entries[len(f.entries)-1].pos > head {
		f.entries = f.entries[:len(f.entries)-1]
	}
}

// take appends to dst worker i's entries for the positions after `after` up to head, at
// most limit of them, and reports whether it could: false when the feed does not hold the
// position after `after`, or worker i's Func failed on it.
func (f *feed) take(i int, after, head event.Position, limit int, dst []feedEntry) ([]feedEntry, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.entries) == 0 {
		return dst, false
	}
	first := f.entries[0].pos
	if after+1 < first || after+1 > f.entries[len(f.entries)-1].pos {
		return dst, false
	}
	start := int(after + 1 - first)
	for _, e := range f.entries[start:] {
		if e.pos > head || len(dst) == limit || (e.bad != nil && e.bad[i]) {
			break
		}
		dst = append(dst, e)
	}
	return dst, len(dst) > 0
}

// feedLedger is the ledger the writer appends to when the runner is fed.
type feedLedger struct {
	ledger.Ledger
	r *Runner
	f *feed

	tx        []feedEntry // the open transaction's
	committed []feedEntry // committed transactions', waiting for Sync
	overflow  bool        // the open transaction is too large to feed
	scratch   []string
}

func (l *feedLedger) BeginTx(ctx context.Context, meta event.TxMeta) error {
	if err := l.Ledger.BeginTx(ctx, meta); err != nil {
		return err
	}
	l.tx, l.overflow = l.tx[:0], false
	return nil
}

func (l *feedLedger) Append(ctx context.Context, e *event.Event) error {
	if err := l.Ledger.Append(ctx, e); err != nil {
		return err
	}
	if l.overflow {
		return nil
	}
	if len(l.tx)+len(l.committed) >= FeedCapacity {
		l.overflow, l.tx = true, l.tx[:0]
		return nil
	}
	ent := feedEntry{pos: e.Position, values: make([][]string, len(l.r.workers))}
	for i, w := range l.r.workers {
		vs, err := w.values(e, l.scratch[:0])
		l.scratch = vs
		if err != nil {
			if ent.bad == nil {
				ent.bad = make([]bool, len(l.r.workers))
			}
			ent.bad[i] = true
			continue
		}
		if len(vs) > 0 {
			// The event's strings may point into the writer's buffers, which are reused.
			cp := make([]string, len(vs))
			for j, v := range vs {
				cp[j] = strings.Clone(v)
			}
			ent.values[i] = cp
		}
	}
	clear(l.scratch)
	l.tx = append(l.tx, ent)
	return nil
}

func (l *feedLedger) CommitTx(ctx context.Context, endLSN event.LSN) error {
	if err := l.Ledger.CommitTx(ctx, endLSN); err != nil {
		return err
	}
	if l.overflow {
		// The feed would have a hole: indexers read this transaction back, and what was
		// committed before it must not be published after it.
		l.committed = l.committed[:0]
	} else {
		l.committed = append(l.committed, l.tx...)
	}
	l.tx, l.overflow = l.tx[:0], false
	return nil
}

func (l *feedLedger) AbortTx(ctx context.Context) error {
	l.tx, l.overflow = l.tx[:0], false
	return l.Ledger.AbortTx(ctx)
}

// Sync publishes the committed values before the underlying Sync makes their events
// visible, so that an indexer woken by the new head finds them; take never hands out an
// entry past the head, and a failed Sync withdraws them.
func (l *feedLedger) Sync(ctx context.Context) error {
	l.f.publish(l.committed)
	l.committed = l.committed[:0]
	err := l.Ledger.Sync(ctx)
	if err != nil {
		l.f.drop(l.Ledger.State().Head)
	}
	return err
}

// storeFed stores the entries of fed, values the feed computed at append, as one batch,
// exactly as the worker stores the events it reads back, and returns the new state.
func (r *Runner) storeFed(ctx context.Context, w *worker, st State, fed []feedEntry, head event.Position) (State, error) {
	name := w.ix.Name
	notify := r.nsubs.Load() > 0
	var entries []Entry
	var notes []Notification
	for _, e := range fed {
		for _, v := range e.values[w.i] {
			entries = append(entries, Entry{Value: v, Position: e.pos})
		}
		if notify {
			notes = append(notes, Notification{Indexer: name, Position: e.pos, Values: cloneOrNil(e.values[w.i])})
		}
	}
	st.Checkpoint = fed[len(fed)-1].pos
	if err := r.cfg.Store.Write(ctx, Batch{Indexer: name, Entries: entries, State: st}); err != nil {
		return st, fmt.Errorf("index: %s: write entries through position %d: %w", name, st.Checkpoint, err)
	}
	phase := CatchingUp
	if st.Checkpoint >= head {
		phase = Live
	}
	if notes := w.advance(func(w *worker) { w.st, w.phase = st, phase }, notes); len(notes) > 0 {
		r.publish(name, notes)
	}
	w.fed.Add(uint64(len(fed)))
	return st, nil
}
