package disk

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// migratePage is how many events Migrate reads at a time, and syncs.
const migratePage = 10_000

// Migrate copies the ledger src (of another backend, such as ledger/pebble) into a new
// disk ledger in dir, which must not exist: every event it still holds at the same
// position, one transaction per commit LSN, and its state (head, tail, LSNs, origin). It
// returns the new ledger's state, which equals src's. progress, when set, is called after
// each page of events with the last position copied. An interrupted Migrate leaves dir
// behind, incomplete: remove it before trying again.
func Migrate(ctx context.Context, src ledger.Ledger, dir string, opts *Options, progress func(event.Position)) (ledger.State, error) {
	st := src.State()
	if _, err := os.Stat(dir); err == nil {
		return ledger.State{}, fmt.Errorf("ledger: migrate to %s: it exists already; remove it or give a new directory", dir)
	} else if !errors.Is(err, os.ErrNotExist) {
		return ledger.State{}, fmt.Errorf("ledger: migrate to %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ledger.State{}, fmt.Errorf("ledger: migrate to %s: %w", dir, err)
	}
	// The new ledger starts after src's tail, at the same positions.
	start := ledger.State{Head: st.Tail, Tail: st.Tail}
	if err := writeFileAtomic(dir, metaName, encodeMeta(start)); err != nil {
		return ledger.State{}, fmt.Errorf("ledger: migrate to %s: %w", dir, err)
	}
	l, err := Open(ctx, dir, opts)
	if err != nil {
		return ledger.State{}, fmt.Errorf("ledger: migrate: %w", err)
	}
	got, err := migrate(ctx, src, l, st, progress)
	if cerr := l.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return ledger.State{}, fmt.Errorf("ledger: migrate to %s: %w", dir, err)
	}
	return got, nil
}

func migrate(ctx context.Context, src ledger.Ledger, l *Ledger, st ledger.State, progress func(event.Position)) (ledger.State, error) {
	var lsn event.LSN // commit LSN of the open transaction; 0 when none is open
	commit := func() error {
		end := lsn // the end LSN of a transaction before the last is not kept; its commit LSN bounds it
		if lsn == st.LastCommitLSN {
			end = st.LastEndLSN
		}
		lsn = 0
		return l.CommitTx(ctx, end)
	}
	for after := st.Tail; after < st.Head; {
		es, err := src.Read(ctx, after, migratePage)
		if err != nil {
			return ledger.State{}, fmt.Errorf("read the source ledger after position %d: %w", after, err)
		}
		if len(es) == 0 {
			return ledger.State{}, fmt.Errorf("the source ledger ends at position %d, before its head %d", after, st.Head)
		}
		for i := range es {
			e := &es[i]
			if lsn != 0 && e.LSN != lsn {
				if err := commit(); err != nil {
					return ledger.State{}, err
				}
			}
			if lsn == 0 {
				if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: e.LSN, XID: e.XID}); err != nil {
					return ledger.State{}, fmt.Errorf("event at position %d: %w", e.Position, err)
				}
				lsn = e.LSN
			}
			want := e.Position
			if err := l.Append(ctx, e); err != nil {
				return ledger.State{}, err
			}
			if e.Position != want {
				return ledger.State{}, fmt.Errorf("the event at position %d was copied to position %d", want, e.Position)
			}
		}
		after = es[len(es)-1].Position
		// Sync whole transactions only: the open one is synced with the next page.
		if err := l.Sync(ctx); err != nil {
			return ledger.State{}, err
		}
		if progress != nil {
			progress(after)
		}
	}
	if lsn != 0 {
		if err := commit(); err != nil {
			return ledger.State{}, err
		}
	}
	if l.pending.LastCommitLSN < st.LastCommitLSN {
		// Transactions without events after the last event: one empty one keeps their LSNs.
		if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: st.LastCommitLSN}); err != nil {
			return ledger.State{}, err
		}
		if err := l.CommitTx(ctx, st.LastEndLSN); err != nil {
			return ledger.State{}, err
		}
	}
	if err := l.Sync(ctx); err != nil {
		return ledger.State{}, err
	}
	if !st.Origin.IsZero() {
		if err := l.SetOrigin(ctx, st.Origin); err != nil {
			return ledger.State{}, err
		}
	}
	if st.AckedLSN != 0 {
		if err := l.SetAcked(ctx, st.AckedLSN); err != nil {
			return ledger.State{}, err
		}
	}
	if got := l.State(); got != st {
		return ledger.State{}, fmt.Errorf("the copy's state %+v differs from the source's %+v", got, st)
	}
	return l.State(), nil
}
