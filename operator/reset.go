package operator

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Reset starts instance's operator op over on the ledger the instance reads now, and makes
// its derived rows exact. It is the way out of a halt wrapping [ErrForeignLedger], such as
// after a resync (the ledger moved aside and started again), and it works whether or not
// walflow is running.
//
// It first stores the operator's checkpoint as position 0, not halted, of no particular
// ledger: a runner of the instance (running now, or started later) then applies every
// event of the ledger it reads from its start (or from the tail retention left) and records
// that ledger with its next checkpoint. Then it runs [Backfill] from the start (opts'
// Restart and Derived are set; BatchSize and Progress are used): every id of the operator's
// entities, and, for an [SQL] operator, the id of every row already in its Target, is
// recomputed from the rows as they are now, and a derived row whose DeleteWith row is gone
// is deleted.
//
// Derived rows are recomputed in place, never emptied first: readers keep the old values
// until each row is recomputed, and other operators writing the same table are left alone.
// A derived row ends equal to its recomputation from the tables: the changes made while
// nothing followed the database reach it through the backfill, the changes since then
// through the ledger, and both take the operator's lock, so whichever recomputes a row last
// does so from the newest rows. Run it once walflow runs on its new ledger (its slot
// exists): a change made before the slot exists and after the backfill read its row would
// be in neither. A Func operator's handler must be idempotent, as for a backfill; rows
// whose source rows are gone are not visited for it.
//
// On an operator that is running on its ledger, Reset amounts to a backfill: the running
// runner keeps its place and overwrites the reset checkpoint with its next one.
//
// Reset also drops the operator's parked events (see Parking in the package documentation):
// their positions count the old ledger, and the backfill recomputes their rows.
//
// When the backfill fails or ctx ends, the checkpoint is reset already: the error says so,
// and running [Backfill] (walflow operator backfill) finishes the work from where it stopped.
func Reset(ctx context.Context, db *pgxpool.Pool, instance string, op Operator, opts *BackfillOpts) error {
	return reset(ctx, db, instance, op, opts, func() {})
}

// reset is Reset, calling stored once the checkpoint is reset.
func reset(ctx context.Context, db *pgxpool.Pool, instance string, op Operator, opts *BackfillOpts, stored func()) error {
	if db == nil {
		return errors.New("operator: Reset needs a pgxpool.Pool on the followed database")
	}
	s, err := op.spec()
	if err != nil {
		return err
	}
	if err := Migrate(ctx, db); err != nil {
		return err
	}
	_, err = db.Exec(ctx, `INSERT INTO walflow.operators (instance, name) VALUES ($1, $2)
		ON CONFLICT (instance, name) DO UPDATE SET position = 0, halted = false, error = NULL, failed_position = NULL,
			ledger = NULL, mark_position = NULL, mark_lsn = NULL, updated_at = now()`, instance, s.name)
	if err != nil {
		return fmt.Errorf("operator: reset %s: store its checkpoint: %w", s.name, err)
	}
	// Parked events count the positions of the ledger the checkpoint counted; the backfill
	// recomputes their rows.
	if _, err := db.Exec(ctx, `DELETE FROM walflow.operator_parked WHERE instance = $1 AND operator = $2`, instance, s.name); err != nil {
		return fmt.Errorf("operator: reset %s: drop its parked events: %w", s.name, err)
	}
	stored()
	bo := BackfillOpts{Restart: true, Derived: true}
	if opts != nil {
		bo.BatchSize, bo.Progress = opts.BatchSize, opts.Progress
	}
	if err := Backfill(ctx, db, op, &bo); err != nil {
		return fmt.Errorf("operator: reset %s: its checkpoint is reset, but its rows are not all recomputed yet; finish with walflow operator backfill %s (it resumes): %w", s.name, s.name, err)
	}
	return nil
}

// Reset runs [Reset] for the runner's operator called name, and resumes it at once.
func (r *Runner) Reset(ctx context.Context, name string, opts *BackfillOpts) error {
	for _, op := range r.cfg.Operators {
		if s, err := op.spec(); err == nil && s.name == name {
			// Resume it on this ledger before the backfill, which may take long: the live
			// events and the backfill batches take turns on the operator's lock.
			return reset(ctx, r.cfg.DB, r.cfg.Instance, op, opts, r.poke)
		}
	}
	return fmt.Errorf("%w: %q", ErrUnknown, name)
}
