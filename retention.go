package walflow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Retention timing. The first round waits a little so that operators and process status
// have loaded their positions, which hold the ledger back until then.
const (
	retentionIntervalDefault = time.Minute
	retentionFirstDelay      = 10 * time.Second
)

// retain removes the events older than Config.Retention every retention interval, until
// ctx ends. A failed round is logged and retried at the next one: retention only bounds
// the ledger's size, and a missed round is made up by the next.
func (e *Engine) retain(ctx context.Context) {
	if e.cfg.Retention < 0 {
		return
	}
	t := time.NewTimer(min(retentionFirstDelay, e.retentionEvery))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !e.leading() {
			// In a cluster the leader removes the events for every node.
			t.Reset(e.retentionEvery)
			continue
		}
		if err := e.truncate(ctx, time.Now().Add(-e.cfg.Retention)); err != nil && ctx.Err() == nil {
			e.log.WarnContext(ctx, "ledger retention failed; retrying at the next round", slog.Any("error", err))
		}
		e.retentionRounds.Add(1)
		t.Reset(e.retentionEvery)
	}
}

// truncate removes the events that committed before cutoff, but none that an operator has
// not committed or process status has not scanned.
func (e *Engine) truncate(ctx context.Context, cutoff time.Time) error {
	st := e.led.State()
	cut, err := e.retentionCut(ctx, st, cutoff)
	if err != nil || cut <= st.Tail {
		return err
	}
	// Process status reads the ledger from its position on (also after a restart, from the
	// position it saved, which it lifts to the tail).
	through := min(cut, e.tracker.Position())
	if e.ops != nil && through > st.Tail {
		// An operator resumes after its stored checkpoint; Checkpoint stores the progress
		// operators made in memory only, so that it does not hold the ledger back forever.
		cp, err := e.ops.Checkpoint(ctx)
		if err != nil {
			return fmt.Errorf("walflow: retention: %w", err)
		}
		through = min(through, cp)
	}
	low, ok, err := e.indexesCheckpoint(ctx)
	if err != nil {
		// Unknown checkpoints hold the whole round back: the next round tries again.
		return fmt.Errorf("walflow: retention: skipped this round: %w", err)
	}
	if ok {
		through = min(through, low)
	}
	if low, ok := e.projectorsPosition(); ok {
		through = min(through, low)
	}
	if through <= st.Tail {
		e.log.DebugContext(ctx, "ledger retention held back by operators, process status, indexes or projectors",
			slog.Uint64("retention_cut", uint64(cut)), slog.Uint64("tail", uint64(st.Tail)))
		return nil
	}
	if err := e.led.Truncate(ctx, through); err != nil {
		return fmt.Errorf("walflow: retention: %w", err)
	}
	e.log.InfoContext(ctx, "ledger truncated by retention",
		slog.Uint64("tail", uint64(through)), slog.Uint64("events_removed", uint64(through-st.Tail)),
		slog.Uint64("retention_cut", uint64(cut)), slog.Uint64("head", uint64(st.Head)))
	return nil
}

// retentionCut returns the last position in st whose event committed before cutoff, or
// st.Tail when there is none. Events are in commit order, so their commit timestamps
// ascend (but for the server clock stepping back, which only moves the cut a little): a
// binary search reads a few dozen events.
func (e *Engine) retentionCut(ctx context.Context, st ledger.State, cutoff time.Time) (event.Position, error) {
	lo, hi := st.Tail, st.Head // the cut is in [lo, hi]
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		evs, err := e.led.Read(ctx, mid-1, 1)
		if errors.Is(err, ledger.ErrTruncated) {
			// Truncated meanwhile (by the application, through Ledger): retry next round.
			return st.Tail, nil
		}
		if err != nil {
			return 0, fmt.Errorf("walflow: retention: find the events older than %s: %w", cutoff.Format(time.RFC3339), err)
		}
		if len(evs) == 0 {
			return 0, fmt.Errorf("walflow: retention: the ledger has no event at position %d, below its head %d", mid, st.Head)
		}
		if evs[0].Timestamp.Before(cutoff) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}
