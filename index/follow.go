package index

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/walflow/walflow/event"
)

// FollowIntervalDefault is the default [Config.FollowInterval].
const FollowIntervalDefault = 250 * time.Millisecond

// headWaitLog is how often Run, on a shared store, logs that it still waits for its
// ledger to reach the checkpoint another process stored.
const headWaitLog = 10 * time.Second

// errStoreMoved: the shared store's state changed under a read (another process reset or
// rebuilt the indexer), or is ahead of this process's ledger; the caller reads it again.
var errStoreMoved = errors.New("index: the shared store's state moved; read it again")

// Follow makes the runner a follower of indexes that another process (another [Runner]'s
// Run, on the same [SharedStore] and the same ledger) computes, until ctx ends; it returns
// nil then. It fails at once when Config.Store is not a SharedStore, and with [ErrRunning]
// while Run or Follow runs.
//
// Every Config.FollowInterval, Follow reads each indexer's stored state and moves the
// runner's checkpoints to it, but not past its ledger's head (in a shared ledger, this
// process's view may lag the writer's), so that [Runner.Wait], [Runner.Checkpoint] and
// [Runner.Status] (which reports Following) tell what the writer stored; [Runner.Read] and
// [Runner.Positions] read the shared store, up to that checkpoint. Subscribers receive the
// notifications of the positions the writer stored since the last poll, read back with
// EntriesSince: in position order, as from Run, but with each event's values in bytewise
// order rather than in the order the indexer's Func gave them. With SubscribeOpts.Empty,
// every position the checkpoint passes gets a notification, except those retention removed
// before the writer indexed them. A follower that starts, or finds that the writer rebuilt
// an indexer, takes the stored checkpoint without notifying the history before it, as
// [Runner.Subscribe] sends no history.
//
// Follow and Run may alternate on one runner (Run while this process is the writer, Follow
// otherwise), and subscriptions survive the switch: each position is notified once, by
// whichever of them passed it first in this process. When the index is reset or rebuilt
// (walflow index rebuild, or a new Version) while they run, subscribers are sent only the
// positions past the last one this process notified, as the rebuild passes them: no
// position is notified twice. Run resumes from the stored checkpoint, after notifying what
// the writer stored since the last poll. On a shared store, Run never takes a stored
// checkpoint past its ledger's head for a replaced ledger: this process's view of a shared
// ledger may lag, so Run waits, as long as it takes and logging every 10 seconds, for its
// ledger to reach the checkpoint, and computes nothing meanwhile (after replacing a ledger
// by a shorter one, reset the index: walflow index rebuild). A store error does not end
// Follow: it is logged, and the next poll tries again.
func (r *Runner) Follow(ctx context.Context) error {
	ss, ok := r.cfg.Store.(SharedStore)
	if !ok {
		return fmt.Errorf("index: Follow needs a shared store, and Config.Store (%T) is not an index.SharedStore; use index/pg, or call Run", r.cfg.Store)
	}
	if !r.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer r.running.Store(false)
	for _, w := range r.workers {
		w.set(func(w *worker) { w.following = true })
	}
	defer func() {
		for _, w := range r.workers {
			w.set(func(w *worker) { w.phase, w.following = Stopped, false })
		}
	}()
	t := time.NewTicker(r.cfg.FollowInterval)
	defer t.Stop()
	failing := false
	for {
		var err error
		for _, w := range r.workers {
			if err = r.followOnce(ctx, ss, w); err != nil {
				break
			}
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !failing:
			failing = true
			r.log.WarnContext(ctx, "cannot follow the shared index store; retrying", slog.Any("error", err))
		case err == nil && failing:
			failing = false
			r.log.InfoContext(ctx, "following the shared index store again")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// followOnce moves the worker to the indexer's stored state, notifying the positions it
// passes.
func (r *Runner) followOnce(ctx context.Context, ss SharedStore, w *worker) error {
	name := w.ix.Name
	st, ok, err := ss.State(ctx, name)
	if err != nil {
		return fmt.Errorf("index: %s: load the stored checkpoint: %w", name, err)
	}
	if !ok {
		// The writer has not started the indexer yet, or is rebuilding it.
		w.set(func(w *worker) { w.st, w.loaded, w.phase = State{}, false, CatchingUp })
		return nil
	}
	if head := r.cfg.Ledger.State().Head; st.Checkpoint > head {
		// This process's view of a shared ledger lags the writer: a follower passes no
		// event its ledger cannot read yet, so that Read finds every event it indexes.
		st.Checkpoint = max(head, st.Since)
	}
	w.mu.Lock()
	cur, loaded, seen, mark := w.st, w.loaded, w.seen, w.notified
	w.mu.Unlock()
	if !seen {
		// Starting: take the checkpoint as it is, as Subscribe sends no history.
		w.set(func(w *worker) { w.st, w.loaded, w.phase = st, true, r.phaseAt(st.Checkpoint) })
		return nil
	}
	if loaded && st.Version == cur.Version && st.Since <= cur.Checkpoint && st.Checkpoint > cur.Checkpoint {
		return r.moved(r.catchUpStored(ctx, ss, w, cur, st))
	}
	if !loaded || st.Version != cur.Version || st.Checkpoint < cur.Checkpoint {
		// The index was reset or rebuilt: take its checkpoint up to the last position
		// notified, and notify the positions past it as the rebuild passes them.
		at := st
		at.Checkpoint = max(min(st.Checkpoint, mark), st.Since)
		w.set(func(w *worker) { w.st, w.loaded, w.phase = at, true, r.phaseAt(at.Checkpoint) })
		if st.Checkpoint > at.Checkpoint {
			return r.moved(r.catchUpStored(ctx, ss, w, at, st))
		}
		return nil
	}
	if st.Checkpoint > cur.Checkpoint {
		// Retention removed events the writer had not indexed: nothing to notify up to
		// Since.
		jump := st
		jump.Checkpoint = st.Since
		w.set(func(w *worker) { w.st, w.phase = jump, r.phaseAt(jump.Checkpoint) })
		return r.moved(r.catchUpStored(ctx, ss, w, jump, st))
	}
	w.set(func(w *worker) { w.st, w.phase = st, r.phaseAt(st.Checkpoint) })
	return nil
}

// moved is err, or nil when it is errStoreMoved: the next poll reads the moved state.
func (r *Runner) moved(err error) error {
	if errors.Is(err, errStoreMoved) {
		return nil
	}
	return err
}

// phaseAt is the phase of an indexer whose checkpoint is cp.
func (r *Runner) phaseAt(cp event.Position) Phase {
	if cp >= r.cfg.Ledger.State().Head {
		return Live
	}
	return CatchingUp
}

// catchUpStored moves the worker from cur to the stored state st, in steps of at most
// Config.Batch positions, notifying each step's positions, with the values the store holds
// for them, once the worker's checkpoint has passed them.
func (r *Runner) catchUpStored(ctx context.Context, ss SharedStore, w *worker, cur, st State) error {
	name := w.ix.Name
	from := cur.Checkpoint
	for from < st.Checkpoint {
		to := min(st.Checkpoint, from+event.Position(r.cfg.Batch))
		var notes []Notification
		if r.nsubs.Load() > 0 {
			notes = make([]Notification, 0, to-from)
			for p := from + 1; p <= to; p++ {
				notes = append(notes, Notification{Indexer: name, Position: p})
			}
			err := ss.EntriesSince(ctx, name, from, to, func(e Entry) error {
				if e.Position <= from || e.Position > to {
					return fmt.Errorf("the store gave an entry at position %d, outside (%d, %d]", e.Position, from, to)
				}
				n := &notes[e.Position-from-1]
				n.Values = append(n.Values, e.Value)
				return nil
			})
			if err != nil {
				return fmt.Errorf("index: %s: read the entries of positions %d to %d: %w", name, from+1, to, err)
			}
			// The state was read before the entries: read it again, so that a reset
			// between them does not pass as positions without values.
			now, ok, err := ss.State(ctx, name)
			if err != nil {
				return fmt.Errorf("index: %s: load the stored checkpoint: %w", name, err)
			}
			if !ok || now.Version != st.Version || now.Since > from || now.Checkpoint < to {
				return errStoreMoved
			}
		}
		next := st
		next.Checkpoint = to
		if notes := w.advance(func(w *worker) { w.st, w.loaded, w.phase = next, true, r.phaseAt(to) }, notes); len(notes) > 0 {
			r.publish(name, notes)
		}
		from = to
	}
	return nil
}

// waitSharedHead is Run's start on a shared store: it waits, until ctx ends, for the
// ledger to reach the checkpoint another process stored, since this process's view of a
// shared ledger may lag the writer that stored it, logging every headWaitLog that it waits.
func (r *Runner) waitSharedHead(ctx context.Context, w *worker, log *slog.Logger) error {
	ss, ok := r.cfg.Store.(SharedStore)
	if !ok {
		return nil
	}
	name := w.ix.Name
	began := time.Now()
	next := headWaitLog
	for {
		st, ok, err := ss.State(ctx, name)
		if err != nil {
			return fmt.Errorf("index: %s: load checkpoint: %w", name, err)
		}
		head := r.cfg.Ledger.State().Head
		if !ok || st.Version != w.ix.Version || st.Checkpoint <= head {
			return nil
		}
		if waited := time.Since(began); waited >= next {
			next = waited + headWaitLog
			log.WarnContext(ctx, "waiting for the ledger to reach the shared index's checkpoint; nothing is indexed meanwhile (if the ledger was replaced by a shorter one, run walflow index rebuild)",
				slog.Uint64("checkpoint", uint64(st.Checkpoint)), slog.Uint64("head", uint64(head)), slog.Duration("waited", waited))
		}
		wctx, cancel := context.WithTimeout(ctx, r.cfg.FollowInterval)
		err = r.cfg.Ledger.Wait(wctx, head)
		if err == nil && r.cfg.Ledger.State().Head <= head {
			// The ledger has more than this view shows: poll.
			<-wctx.Done()
		}
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("index: %s: wait for the ledger to reach the stored checkpoint %d: %w", name, st.Checkpoint, err)
		}
	}
}

// notifyStored notifies, when Run starts on a shared store from st, what another process
// stored since this runner's checkpoint (its last Follow poll, or what its previous Run
// stored), so that subscriptions go on without a gap.
func (r *Runner) notifyStored(ctx context.Context, w *worker, st State) error {
	ss, ok := r.cfg.Store.(SharedStore)
	if !ok {
		return nil
	}
	w.mu.Lock()
	cur, loaded, seen, mark := w.st, w.loaded, w.seen, w.notified
	w.mu.Unlock()
	if !seen {
		return nil
	}
	if loaded && st.Version == cur.Version && st.Since <= cur.Checkpoint && st.Checkpoint > cur.Checkpoint {
		return r.catchUpStored(ctx, ss, w, cur, st)
	}
	if !loaded || st.Version != cur.Version || st.Checkpoint < cur.Checkpoint {
		// Another process reset and rebuilt the index since this runner last saw it:
		// notify what the rebuild stored past the last position notified.
		at := st
		at.Checkpoint = max(min(st.Checkpoint, mark), st.Since)
		if st.Checkpoint > at.Checkpoint {
			w.set(func(w *worker) { w.st, w.loaded = at, true })
			return r.catchUpStored(ctx, ss, w, at, st)
		}
	}
	return nil
}
