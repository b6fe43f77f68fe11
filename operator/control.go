package operator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
)

// Status is an operator's stored state.
type Status struct {
	// Instance is the walflow instance the checkpoint belongs to (its slot's name; see
	// [Config].Instance).
	Instance string         `json:"instance"`
	Name     string         `json:"name"`
	Position event.Position `json:"position"`
	Halted   bool           `json:"halted"`
	// Error is the failure that halted the operator.
	Error string `json:"error,omitempty"`
	// FailedPosition is the ledger position of the event it halted on; 0 for a halt that
	// is not about one event (a checkpoint of another ledger).
	FailedPosition event.Position `json:"failed_position,omitempty"`
	// Ledger names the ledger whose events Position counts ([LedgerKey]); empty until the
	// operator commits on a ledger that recorded what it follows, and after a reset.
	Ledger string `json:"ledger,omitempty"`
}

// Statuses reads the state of every operator of instance from walflow.operators, by name.
// It works from any process, with or without a running Runner.
func Statuses(ctx context.Context, db *pgxpool.Pool, instance string) ([]Status, error) {
	rows, err := db.Query(ctx, `SELECT instance, name, position, halted, coalesce(error, ''), coalesce(failed_position, 0), coalesce(ledger, '')
		FROM walflow.operators WHERE instance = $1 ORDER BY name`, instance)
	if err != nil {
		return nil, fmt.Errorf("operator: read walflow.operators: %w (has walflow run in this database yet?)", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Status, error) {
		var s Status
		var pos, failed int64
		err := r.Scan(&s.Instance, &s.Name, &pos, &s.Halted, &s.Error, &failed, &s.Ledger)
		s.Position, s.FailedPosition = event.Position(pos), event.Position(failed)
		return s, err
	})
}

// InstanceCount is an instance that keeps operator checkpoints in a database.
type InstanceCount struct {
	// Instance is the instance's name (its slot's); "" for checkpoints kept by a walflow
	// from before instances that no instance has adopted yet.
	Instance string `json:"instance"`
	// Operators is how many checkpoints it keeps.
	Operators int `json:"operators"`
}

// Instances lists the instances that keep checkpoints in walflow.operators, by name.
func Instances(ctx context.Context, db *pgxpool.Pool) ([]InstanceCount, error) {
	rows, err := db.Query(ctx, `SELECT instance, count(*) FROM walflow.operators GROUP BY instance ORDER BY instance`)
	if err != nil {
		return nil, fmt.Errorf("operator: read walflow.operators: %w (has walflow run in this database yet?)", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (InstanceCount, error) {
		var c InstanceCount
		err := r.Scan(&c.Instance, &c.Operators)
		return c, err
	})
}

// notStored is the error for an operator without a row.
func notStored(instance, name string) error {
	return fmt.Errorf("%w: %q is not in walflow.operators for instance %q; check the name with walflow operator status", ErrUnknown, name, instance)
}

// Restart clears the halt of instance's operator name so it resumes at the event it failed
// on. A running Runner of that instance, in this or another process, picks it up within its
// ControlInterval.
func Restart(ctx context.Context, db *pgxpool.Pool, instance, name string) error {
	tag, err := db.Exec(ctx, `UPDATE walflow.operators SET halted = false, error = NULL, failed_position = NULL, updated_at = now()
		WHERE instance = $1 AND name = $2`, instance, name)
	if err != nil {
		return fmt.Errorf("operator: restart %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return notStored(instance, name)
	}
	return nil
}

// Skip moves instance's halted operator name past exactly the event it failed on, and
// restarts it. It returns the skipped position. Skipping leaves that event's effect
// unapplied: the derived rows it touches may need a backfill. An operator halted because
// its checkpoint belongs to another ledger has no such event: Skip refuses it, and [Reset]
// is the way out.
func Skip(ctx context.Context, db *pgxpool.Pool, instance, name string) (event.Position, error) {
	var failed *int64
	var halted bool
	err := db.QueryRow(ctx, `SELECT halted, failed_position FROM walflow.operators WHERE instance = $1 AND name = $2`, instance, name).Scan(&halted, &failed)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, notStored(instance, name)
	}
	if err != nil {
		return 0, fmt.Errorf("operator: skip %s: %w", name, err)
	}
	if !halted {
		return 0, fmt.Errorf("%w: operator %s is running; skip only moves a halted operator past the event it failed on", ErrNotHalted, name)
	}
	if failed == nil {
		return 0, fmt.Errorf("%w: operator %s halted on no event (its checkpoint belongs to another ledger), so there is none to skip; reset it (walflow operator reset %s)", ErrForeignLedger, name, name)
	}
	_, err = db.Exec(ctx, `UPDATE walflow.operators SET position = $3, halted = false, error = NULL, failed_position = NULL, updated_at = now()
		WHERE instance = $1 AND name = $2 AND halted`, instance, name, *failed)
	if err != nil {
		return 0, fmt.Errorf("operator: skip %s: %w", name, err)
	}
	return event.Position(*failed), nil
}

// Restart clears the operator's halt and resumes it now.
func (r *Runner) Restart(ctx context.Context, name string) error {
	if _, ok := r.byKey[name]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	if err := Restart(ctx, r.cfg.DB, r.cfg.Instance, name); err != nil {
		return err
	}
	r.log.InfoContext(ctx, "operator restarted", slog.String("operator", name))
	r.poke()
	return nil
}

// Skip moves the halted operator past the event it failed on and resumes the operator; the
// running Runner logs the skipped event (as it does for a skip made with the CLI).
func (r *Runner) Skip(ctx context.Context, name string) (event.Position, error) {
	o, ok := r.byKey[name]
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	if !o.halted.Load() {
		return 0, fmt.Errorf("%w: operator %s is running; skip only moves a halted operator past the event it failed on", ErrNotHalted, name)
	}
	pos, err := Skip(ctx, r.cfg.DB, r.cfg.Instance, name)
	if err != nil {
		return 0, err
	}
	r.poke()
	return pos, nil
}

// Status reports the runner's operators as stored.
func (r *Runner) Status(ctx context.Context) ([]Status, error) {
	all, err := Statuses(ctx, r.cfg.DB, r.cfg.Instance)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, s := range all {
		if _, ok := r.byKey[s.Name]; ok {
			out = append(out, s)
		}
	}
	return out, nil
}

func (r *Runner) poke() {
	select {
	case r.control <- struct{}{}:
	default:
	}
}

// logSkip logs the event at pos, which a halted operator was moved past without applying it.
func (r *Runner) logSkip(ctx context.Context, o *opState, pos event.Position) {
	attrs := []any{slog.String("operator", o.name), slog.Uint64("position", uint64(pos))}
	if evs, err := r.cfg.Ledger.ReadKeys(ctx, o.keys, pos-1, 1); err == nil && len(evs) == 1 && evs[0].Position == pos {
		if b, err := json.Marshal(&evs[0]); err == nil {
			attrs = append(attrs, slog.String("event", string(b)))
		}
	}
	r.log.WarnContext(ctx, "operator skipped one event; its effect was not applied (a backfill of the operator makes its rows exact again)", attrs...)
}
