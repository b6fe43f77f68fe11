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
	Name     string         `json:"name"`
	Position event.Position `json:"position"`
	Halted   bool           `json:"halted"`
	// Error is the failure that halted the operator.
	Error string `json:"error,omitempty"`
	// FailedPosition is the ledger position of the event it halted on.
	FailedPosition event.Position `json:"failed_position,omitempty"`
}

// Statuses reads every operator's state from walflow.operators. It works from any process,
// with or without a running Runner.
func Statuses(ctx context.Context, db *pgxpool.Pool) ([]Status, error) {
	rows, err := db.Query(ctx, `SELECT name, position, halted, coalesce(error, ''), coalesce(failed_position, 0) FROM walflow.operators ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("operator: read walflow.operators: %w (has walflow run in this database yet?)", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Status, error) {
		var s Status
		var pos, failed int64
		err := r.Scan(&s.Name, &pos, &s.Halted, &s.Error, &failed)
		s.Position, s.FailedPosition = event.Position(pos), event.Position(failed)
		return s, err
	})
}

// Restart clears an operator's halt so it resumes at the event it failed on. A running
// Runner in this or another process picks it up within its ControlInterval.
func Restart(ctx context.Context, db *pgxpool.Pool, name string) error {
	tag, err := db.Exec(ctx, `UPDATE walflow.operators SET halted = false, error = NULL, failed_position = NULL, updated_at = now() WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("operator: restart %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %q is not in walflow.operators; check the name with walflow operator status", ErrUnknown, name)
	}
	return nil
}

// Skip moves a halted operator past exactly the event it failed on, and restarts it. It
// returns the skipped position. Skipping leaves that event's effect unapplied: the derived
// rows it touches may need a backfill.
func Skip(ctx context.Context, db *pgxpool.Pool, name string) (event.Position, error) {
	var failed *int64
	var halted bool
	err := db.QueryRow(ctx, `SELECT halted, failed_position FROM walflow.operators WHERE name = $1`, name).Scan(&halted, &failed)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("%w: %q is not in walflow.operators; check the name with walflow operator status", ErrUnknown, name)
	}
	if err != nil {
		return 0, fmt.Errorf("operator: skip %s: %w", name, err)
	}
	if !halted || failed == nil {
		return 0, fmt.Errorf("%w: operator %s is running; skip only moves a halted operator past the event it failed on", ErrNotHalted, name)
	}
	_, err = db.Exec(ctx, `UPDATE walflow.operators SET position = $2, halted = false, error = NULL, failed_position = NULL, updated_at = now() WHERE name = $1 AND halted`, name, *failed)
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
	if err := Restart(ctx, r.cfg.DB, name); err != nil {
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
	pos, err := Skip(ctx, r.cfg.DB, name)
	if err != nil {
		return 0, err
	}
	r.poke()
	return pos, nil
}

// Status reports the runner's operators as stored.
func (r *Runner) Status(ctx context.Context) ([]Status, error) {
	all, err := Statuses(ctx, r.cfg.DB)
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
