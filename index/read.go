package index

import (
	"context"
	"fmt"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Reading events by position: positions closer than readGap are read with one ledger
// read of the stretch between them, at most readSpan events long.
const (
	readGap  = 16
	readSpan = 4096
)

// Positions returns up to limit positions after after of the events the indexer gave
// value, in order. It fails with a [*ledger.TruncatedError] when after is before the
// ledger's tail, as a ledger read does. While the indexer rebuilds, the index is partial:
// [Runner.Status] tells how far it is. On a [SharedStore], it returns no position past
// the ledger's head, nor past the checkpoint this runner last loaded or indexed (another
// process may store positions this process's ledger does not hold yet).
func (r *Runner) Positions(ctx context.Context, indexer, value string, after event.Position, limit int) ([]event.Position, error) {
	w, err := r.worker(indexer)
	if err != nil {
		return nil, err
	}
	if tail := r.cfg.Ledger.State().Tail; after < tail {
		return nil, fmt.Errorf("index: read %s %q: %w", indexer, value, &ledger.TruncatedError{After: after, Tail: tail})
	}
	if limit <= 0 {
		return nil, nil
	}
	ps, err := r.cfg.Store.Positions(ctx, indexer, value, after, limit)
	if err != nil {
		return nil, fmt.Errorf("index: read %s %q: %w", indexer, value, err)
	}
	if _, shared := r.cfg.Store.(SharedStore); shared {
		// Another process may have stored positions past what this process's ledger
		// holds, or past what this runner has passed (and notified).
		last := r.cfg.Ledger.State().Head
		w.mu.Lock()
		if w.loaded {
			last = min(last, w.st.Checkpoint)
		}
		w.mu.Unlock()
		for len(ps) > 0 && ps[len(ps)-1] > last {
			ps = ps[:len(ps)-1]
		}
	}
	return ps, nil
}

// Read returns up to limit events after position after that the indexer gave value, in
// position order: the positions come from the index, the events from the ledger. It fails
// like [Runner.Positions], and with an error wrapping [ledger.ErrTruncated] when retention
// removes the events while they are read.
func (r *Runner) Read(ctx context.Context, indexer, value string, after event.Position, limit int) ([]event.Event, error) {
	ps, err := r.Positions(ctx, indexer, value, after, limit)
	if err != nil || len(ps) == 0 {
		return nil, err
	}
	out := make([]event.Event, 0, len(ps))
	for i := 0; i < len(ps); {
		// Gather the positions close enough to read as one stretch.
		j := i + 1
		for j < len(ps) && ps[j]-ps[j-1] < readGap && ps[j]-ps[i] < readSpan {
			j++
		}
		from, to := ps[i], ps[j-1]
		evs, err := r.cfg.Ledger.Read(ctx, from-1, int(to-from+1))
		if err != nil {
			return nil, fmt.Errorf("index: read %s %q: events %d to %d: %w", indexer, value, from, to, err)
		}
		k := 0
		for _, p := range ps[i:j] {
			for k < len(evs) && evs[k].Position < p {
				k++
			}
			if k == len(evs) || evs[k].Position != p {
				return nil, fmt.Errorf("index: read %s %q: the event at position %d is not in the ledger; if the ledger was replaced, reset the indexer to rebuild it", indexer, value, p)
			}
			out = append(out, evs[k])
		}
		i = j
	}
	return out, nil
}

// Status is an indexer's progress.
type Status struct {
	// Indexer is the indexer's name.
	Indexer string `json:"name"`
	// Phase is stopped, catching_up or live.
	Phase Phase `json:"phase"`
	// Checkpoint is the last position indexed; it is stored with the entries.
	Checkpoint event.Position `json:"checkpoint"`
	// Since is the position the index's history starts after (see [State.Since]).
	Since event.Position `json:"since"`
	// Head is the ledger's head.
	Head event.Position `json:"head"`
	// Lag is how many events the indexer has still to index: Head - Checkpoint.
	Lag uint64 `json:"lag_events"`
	// Stored reports whether the store holds the indexer's state; false before its first
	// run, or once its data was deleted.
	Stored bool `json:"built"`
	// Fed counts the events this process indexed from values computed while the event was
	// appended (see [Runner.Feed]); ReadBack those it read back from the ledger and decoded
	// (catching up, rebuilding, or when not fed). Both count from the runner's creation.
	Fed      uint64 `json:"fed_events"`
	ReadBack uint64 `json:"read_back_events"`
	// Following reports that [Runner.Follow] runs: another process computes the indexer,
	// and this one follows its checkpoint in the shared store. False while Run computes
	// it, or neither runs.
	Following bool `json:"following"`
}

// Status returns every indexer's progress, in Config.Indexers order. While neither Run nor
// Follow runs, it reports the stored checkpoints.
func (r *Runner) Status(ctx context.Context) ([]Status, error) {
	head := r.cfg.Ledger.State().Head
	out := make([]Status, 0, len(r.workers))
	for _, w := range r.workers {
		w.mu.Lock()
		s := Status{Indexer: w.ix.Name, Phase: w.phase, Checkpoint: w.st.Checkpoint, Since: w.st.Since, Stored: w.loaded,
			Fed: w.fed.Load(), ReadBack: w.readBack.Load(), Following: w.following}
		w.mu.Unlock()
		if s.Phase == Stopped {
			// Not running: the store is the truth (its data may have been deleted).
			st, ok, err := r.cfg.Store.State(ctx, w.ix.Name)
			if err != nil {
				return nil, fmt.Errorf("index: status of %s: %w", w.ix.Name, err)
			}
			s.Checkpoint, s.Since, s.Stored = st.Checkpoint, st.Since, ok
		}
		s.Head = head
		if head > s.Checkpoint {
			s.Lag = uint64(head - s.Checkpoint)
		}
		out = append(out, s)
	}
	return out, nil
}
