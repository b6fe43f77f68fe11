package operator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
)

// FailureMode is what an operator does with an event that fails past its retries (or
// fails in a way retries cannot heal).
type FailureMode string

const (
	// Halt stops the operator at the event until a person restarts or skips it. The
	// default.
	Halt FailureMode = "halt"
	// Park sets the event aside for the derived row it failed on, with its error, and goes
	// on with the other rows. The later events of that row are parked behind it, in order,
	// until a person retries ([RequestRetry], [Runner.Retry]) or discards ([Discard]) them.
	Park FailureMode = "park"
)

// park reports whether m is Park, and refuses an unknown mode.
func (m FailureMode) park(name string) (bool, error) {
	switch m {
	case "", Halt:
		return false, nil
	case Park:
		return true, nil
	}
	return false, fmt.Errorf("operator %s: OnFailure %q is not %q or %q", name, string(m), Halt, Park)
}

// parkedTableSQL creates the table of parked events. A row is one event parked for one
// derived row; it is written and deleted in the transactions that move the checkpoint or
// apply the event, so it is never lost nor applied twice.
const parkedTableSQL = `CREATE TABLE IF NOT EXISTS walflow.operator_parked (
	instance text NOT NULL,
	operator text NOT NULL,
	derived_id text NOT NULL,
	position bigint NOT NULL,
	entity text NOT NULL,
	lsn bigint NOT NULL,
	error text,
	parked_at timestamptz NOT NULL DEFAULT now(),
	retry_requested_at timestamptz,
	PRIMARY KEY (instance, operator, derived_id, position))`

// rowError is the failure of an event's effect on one derived row.
type rowError struct {
	id  string
	err error
}

func (e *rowError) Error() string { return e.err.Error() }
func (e *rowError) Unwrap() error { return e.err }

// applyPark runs evs for a parking operator in one transaction that also moves the
// checkpoint to through. An event's effect on a derived row that has parked events is
// parked behind them instead of applied; so is its effect on a row of parks (a row that
// failed now, with its error). On error it returns the index of the failing event, and a
// *rowError when the failure is the effect on one row.
func (r *Runner) applyPark(ctx context.Context, o *opState, evs []event.Event, through event.Position, parks map[string]string) (int, error) {
	tx, err := r.cfg.DB.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := lockOperator(ctx, tx, o.name); err != nil {
		return 0, err
	}
	// Read after the lock: a retry or discard that committed before is seen.
	rows, err := tx.Query(ctx, `SELECT DISTINCT derived_id FROM walflow.operator_parked WHERE instance = $1 AND operator = $2`, r.cfg.Instance, o.name)
	if err != nil {
		return 0, fmt.Errorf("read parked rows: %w", err)
	}
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("read parked rows: %w", err)
	}
	parked := map[string]bool{}
	for _, id := range list {
		parked[id] = true
	}
	var newly []event.Position
	for i := range evs {
		e := &evs[i]
		ids, err := o.ids(e)
		if err != nil {
			return i, err
		}
		for _, id := range ids {
			cause, failed := parks[id]
			if !parked[id] && !failed {
				if err := o.applyID(ctx, tx, e, id); err != nil {
					return i, &rowError{id: id, err: err}
				}
				continue
			}
			var errText *string
			if failed {
				errText = &cause
			}
			if _, err := tx.Exec(ctx, `INSERT INTO walflow.operator_parked (instance, operator, derived_id, position, entity, lsn, error)
				VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
				r.cfg.Instance, o.name, id, int64(e.Position), e.Name, int64(e.LSN), errText); err != nil {
				return i, fmt.Errorf("park the event at position %d for %s row %s: %w", e.Position, o.name, id, err)
			}
			newly = append(newly, e.Position)
		}
	}
	tag, err := tx.Exec(ctx, saveCheckpointSQL, r.checkpointArgs(o, evs, through)...)
	if err != nil {
		return 0, fmt.Errorf("save checkpoint: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return 0, errCheckpointMoved
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	if len(newly) > 0 {
		// Known before the checkpoint is published (process status), even if the
		// refresh below fails.
		o.addParked(newly)
		_ = r.refreshParked(ctx)
	}
	return 0, nil
}

// ParkedRow is a derived row with parked events.
type ParkedRow struct {
	// ID is the derived row's id (the operator's id for the events).
	ID string `json:"id"`
	// Positions are the parked events' ledger positions, in order.
	Positions []event.Position `json:"positions"`
	// FirstError is the failure of the first parked event (the others wait behind it).
	FirstError string `json:"first_error"`
	// Count is len(Positions).
	Count int `json:"count"`
	// ParkedAt is when the first event was parked.
	ParkedAt time.Time `json:"parked_at"`
	// RetryRequested reports a retry requested and not yet run by the running walflow.
	RetryRequested bool `json:"retry_requested,omitempty"`
}

// Parked lists the derived rows of instance's operator name that have parked events, by id.
// It works from any process.
func Parked(ctx context.Context, db *pgxpool.Pool, instance, name string) ([]ParkedRow, error) {
	if err := Migrate(ctx, db); err != nil {
		return nil, err
	}
	rows, err := db.Query(ctx, `SELECT derived_id, array_agg(position ORDER BY position),
			coalesce((array_agg(error ORDER BY position))[1], ''), count(*), min(parked_at), bool_or(retry_requested_at IS NOT NULL)
		FROM walflow.operator_parked WHERE instance = $1 AND operator = $2 GROUP BY derived_id ORDER BY min(position)`, instance, name)
	if err != nil {
		return nil, fmt.Errorf("operator: list the parked events of %s: %w", name, err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ParkedRow, error) {
		var p ParkedRow
		var pos []int64
		err := row.Scan(&p.ID, &pos, &p.FirstError, &p.Count, &p.ParkedAt, &p.RetryRequested)
		for _, x := range pos {
			p.Positions = append(p.Positions, event.Position(x))
		}
		return p, err
	})
}

// RequestRetry asks the running walflow of instance to apply again the parked events of
// operator name's derived row id (every parked row when id is ""), and returns how many
// events it marked. The runner applies a row's parked events within its ControlInterval, in
// position order, in one transaction that also removes them from the parked table, so each
// is applied once; when one fails again they all stay parked, the first with the new error.
// [Parked] shows the outcome: the rows are gone, or no longer RetryRequested.
func RequestRetry(ctx context.Context, db *pgxpool.Pool, instance, name, id string) (int, error) {
	if err := Migrate(ctx, db); err != nil {
		return 0, err
	}
	tag, err := db.Exec(ctx, `UPDATE walflow.operator_parked SET retry_requested_at = now()
		WHERE instance = $1 AND operator = $2 AND ($3 = '' OR derived_id = $3)`, instance, name, id)
	if err != nil {
		return 0, fmt.Errorf("operator: request a retry of %s's parked events: %w", name, err)
	}
	return int(tag.RowsAffected()), nil
}

// Discard deletes the parked events of operator name's derived row id, unapplied, and
// returns their positions. The row misses their effect: a backfill of the operator
// recomputes it. id is required, so that a mistake cannot discard every row.
func Discard(ctx context.Context, db *pgxpool.Pool, instance, name, id string) ([]event.Position, error) {
	if id == "" {
		return nil, fmt.Errorf("operator: discard the parked events of %s: name the derived row (--id ID; walflow operator parked %s lists them)", name, name)
	}
	if err := Migrate(ctx, db); err != nil {
		return nil, err
	}
	var out []event.Position
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := lockOperator(ctx, tx, name); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `DELETE FROM walflow.operator_parked WHERE instance = $1 AND operator = $2 AND derived_id = $3 RETURNING position`, instance, name, id)
		if err != nil {
			return err
		}
		pos, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		for _, p := range pos {
			out = append(out, event.Position(p))
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("operator: discard the parked events of %s row %s: %w", name, id, err)
	}
	slices.Sort(out)
	return out, nil
}

// Parked lists the runner's operator's parked rows.
func (r *Runner) Parked(ctx context.Context, name string) ([]ParkedRow, error) {
	if _, ok := r.byKey[name]; !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	return Parked(ctx, r.cfg.DB, r.cfg.Instance, name)
}

// Retry applies now the parked events of the operator's derived row id (every parked row
// when id is ""), each row's in position order in one transaction with their removal from
// the parked table. A row that fails again stays parked with the new error; Retry returns
// the errors of such rows joined, after trying every row.
func (r *Runner) Retry(ctx context.Context, name, id string) error {
	o, ok := r.byKey[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	if r.cfg.Ledger == nil {
		return errors.New("operator: Config.Ledger is nil; a retry reads the parked events from the ledger")
	}
	if o.applyID == nil {
		return fmt.Errorf("operator %s: a Func operator without ID cannot apply parked events; set its ID and OnFailure Park, or discard them", name)
	}
	rows, err := r.cfg.DB.Query(ctx, `SELECT DISTINCT derived_id FROM walflow.operator_parked WHERE instance = $1 AND operator = $2 AND ($3 = '' OR derived_id = $3)`,
		r.cfg.Instance, name, id)
	if err != nil {
		return fmt.Errorf("operator: retry %s: %w", name, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("operator: retry %s: %w", name, err)
	}
	var errs []error
	for _, id := range ids {
		if err := r.retryRow(ctx, o, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Discard runs [Discard] for the runner's operator, and logs what it discarded.
func (r *Runner) Discard(ctx context.Context, name, id string) ([]event.Position, error) {
	if _, ok := r.byKey[name]; !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	pos, err := Discard(ctx, r.cfg.DB, r.cfg.Instance, name, id)
	if err != nil {
		return nil, err
	}
	r.log.WarnContext(ctx, "discarded parked operator events; their effect was not applied (a backfill of the operator makes the row exact again)",
		slog.String("operator", name), slog.String("id", id), slog.Any("positions", pos))
	_ = r.refreshParked(ctx)
	return pos, nil
}

// retryRow applies the parked events of o's row id in one transaction, deleting them.
func (r *Runner) retryRow(ctx context.Context, o *opState, id string) error {
	var positions []int64
	err := pgx.BeginTxFunc(ctx, r.cfg.DB, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if err := lockOperator(ctx, tx, o.name); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT position FROM walflow.operator_parked WHERE instance = $1 AND operator = $2 AND derived_id = $3 ORDER BY position`,
			r.cfg.Instance, o.name, id)
		if err != nil {
			return err
		}
		if positions, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return err
		}
		for _, p := range positions {
			evs, err := r.cfg.Ledger.ReadKeys(ctx, o.keys, event.Position(p-1), 1)
			if err != nil {
				return fmt.Errorf("read the parked event at position %d from the ledger: %w", p, err)
			}
			if len(evs) != 1 || evs[0].Position != event.Position(p) {
				return fmt.Errorf("the parked event at position %d is not in the ledger; discard it (walflow operator discard %s --id %s) and backfill the operator", p, o.name, id)
			}
			if err := o.applyID(ctx, tx, &evs[0], id); err != nil {
				return fmt.Errorf("the parked event at position %d: %w", p, err)
			}
		}
		_, err = tx.Exec(ctx, `DELETE FROM walflow.operator_parked WHERE instance = $1 AND operator = $2 AND derived_id = $3 AND position = ANY($4)`,
			r.cfg.Instance, o.name, id, positions)
		return err
	})
	defer func() { _ = r.refreshParked(ctx) }()
	if err == nil {
		r.log.InfoContext(ctx, "applied parked operator events", slog.String("operator", o.name), slog.String("id", id), slog.Any("positions", positions))
		return nil
	}
	err = fmt.Errorf("operator %s: retry row %s: %w", o.name, id, err)
	r.log.WarnContext(ctx, "parked operator events failed again; they stay parked", slog.String("operator", o.name), slog.String("id", id), slog.Any("error", err))
	_, uerr := r.cfg.DB.Exec(context.WithoutCancel(ctx), `UPDATE walflow.operator_parked p SET retry_requested_at = NULL,
			error = CASE WHEN p.position = (SELECT min(position) FROM walflow.operator_parked f WHERE f.instance = $1 AND f.operator = $2 AND f.derived_id = $3) THEN $4 ELSE p.error END
		WHERE p.instance = $1 AND p.operator = $2 AND p.derived_id = $3`, r.cfg.Instance, o.name, id, err.Error())
	if uerr != nil {
		r.log.ErrorContext(ctx, "record the error of a retry of parked events", slog.String("operator", o.name), slog.String("id", id), slog.Any("error", uerr))
	}
	return err
}

// retryRequested runs the retries requested from another process (the CLI).
func (r *Runner) retryRequested(ctx context.Context) {
	for _, o := range r.ops {
		if !o.park {
			continue
		}
		rows, err := r.cfg.DB.Query(ctx, `SELECT DISTINCT derived_id FROM walflow.operator_parked WHERE instance = $1 AND operator = $2 AND retry_requested_at IS NOT NULL`,
			r.cfg.Instance, o.name)
		if err != nil {
			return
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return
		}
		for _, id := range ids {
			_ = r.retryRow(ctx, o, id) // logged, and recorded with the row
		}
	}
}

// parkedState is what the runner knows of an operator's parked events, refreshed after
// each change it makes and each control round.
type parkedState struct {
	events, ids int
	positions   []event.Position
}

// addParked adds positions to o's parked events.
func (o *opState) addParked(positions []event.Position) {
	old := o.parkedOf()
	n := &parkedState{events: old.events + len(positions), ids: old.ids, positions: slices.Concat(old.positions, positions)}
	o.parked.Store(n)
}

// refreshParked reads the parked events of the runner's parking operators, and wakes
// process status when they changed.
func (r *Runner) refreshParked(ctx context.Context) error {
	var names []string
	for _, o := range r.ops {
		if o.park {
			names = append(names, o.name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	rows, err := r.cfg.DB.Query(context.WithoutCancel(ctx), `SELECT operator, derived_id, position FROM walflow.operator_parked
		WHERE instance = $1 AND operator = ANY($2) ORDER BY operator, position`, r.cfg.Instance, names)
	if err != nil {
		return fmt.Errorf("operator: read the parked events: %w", err)
	}
	got := map[string]*parkedState{}
	ids := map[string]map[string]bool{}
	var op, id string
	var pos int64
	_, err = pgx.ForEachRow(rows, []any{&op, &id, &pos}, func() error {
		st := got[op]
		if st == nil {
			st = &parkedState{}
			got[op] = st
			ids[op] = map[string]bool{}
		}
		st.events++
		st.positions = append(st.positions, event.Position(pos))
		ids[op][id] = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("operator: read the parked events: %w", err)
	}
	changed := false
	for _, o := range r.ops {
		if !o.park {
			continue
		}
		st := got[o.name]
		if st == nil {
			st = &parkedState{}
		}
		st.ids = len(ids[o.name])
		if !slices.Equal(st.positions, o.parkedOf().positions) {
			changed = true
		}
		o.parked.Store(st)
	}
	if changed {
		r.notify()
	}
	return nil
}

// parkedOf returns o's parked state (never nil).
func (o *opState) parkedOf() *parkedState {
	if p := o.parked.Load(); p != nil {
		return p
	}
	return &parkedState{}
}

// ParkedPositions returns the ledger positions of the events the runner's operators have
// parked, as last read; an event is in it before the checkpoint that passes it is
// published. Process status counts them as not processed (processstatus.Parker).
func (r *Runner) ParkedPositions() []event.Position {
	var out []event.Position
	for _, o := range r.ops {
		if o.park {
			out = append(out, o.parkedOf().positions...)
		}
	}
	return out
}

// keepParking makes an operator configured to halt that still has parked events (it was
// configured to park before) park behind them, so that its rows keep their order until the
// events are retried or discarded, and warns about it. Called before the operators start.
func (r *Runner) keepParking(ctx context.Context) error {
	names := make([]string, 0, len(r.ops))
	for _, o := range r.ops {
		if !o.park {
			names = append(names, o.name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	rows, err := r.cfg.DB.Query(ctx, `SELECT operator, count(*) FROM walflow.operator_parked WHERE instance = $1 AND operator = ANY($2) GROUP BY operator`, r.cfg.Instance, names)
	if err != nil {
		return fmt.Errorf("operator: read the parked events: %w", err)
	}
	var name string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&name, &n}, func() error {
		o := r.byKey[name]
		if o.ids == nil {
			r.log.WarnContext(ctx, "operator has parked events but no ID function to keep its rows in order behind them; discard them (walflow operator discard) and backfill",
				slog.String("operator", name), slog.Int64("parked_events", n))
			return nil
		}
		o.park = true
		r.log.WarnContext(ctx, "operator is configured to halt but has parked events: it parks its rows' later events behind them until they are retried or discarded (walflow operator parked)",
			slog.String("operator", name), slog.Int64("parked_events", n))
		return nil
	})
	if err != nil {
		return fmt.Errorf("operator: read the parked events: %w", err)
	}
	return nil
}

// ParkedCount is how many events an operator has parked, and for how many derived rows.
type ParkedCount struct {
	Operator string `json:"operator"`
	Events   int    `json:"events"`
	IDs      int    `json:"ids"`
}

// ParkedCounts counts the parked events of instance's operators, by operator name; an
// operator without parked events is left out. It works from any process, and creates
// nothing: before walflow first parked an event (the table does not exist yet) it returns
// none.
func ParkedCounts(ctx context.Context, db *pgxpool.Pool, instance string) ([]ParkedCount, error) {
	rows, err := db.Query(ctx, `SELECT operator, count(*), count(DISTINCT derived_id) FROM walflow.operator_parked
		WHERE instance = $1 GROUP BY operator ORDER BY operator`, instance)
	if err != nil {
		return nil, parkedCountsError(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ParkedCount, error) {
		var c ParkedCount
		err := r.Scan(&c.Operator, &c.Events, &c.IDs)
		return c, err
	})
	if err != nil {
		return nil, parkedCountsError(err)
	}
	return out, nil
}

func parkedCountsError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == pgerrcode.UndefinedTable || pe.Code == pgerrcode.InvalidSchemaName) {
		return nil
	}
	return fmt.Errorf("operator: count the parked events: %w", err)
}
