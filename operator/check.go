package operator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgconn"
)

// check prepares, on one connection of the followed database, every SQL operator's query
// and delete statement, and a select of each entity's id column, so that a statement
// PostgreSQL cannot parse or plan (a syntax error, a missing table or column) and an id
// mapping naming a column the table lacks fail the start, naming the operator, instead of
// the first event. Preparing runs nothing.
func (r *Runner) check(ctx context.Context) error {
	var n int
	for _, o := range r.ops {
		n += len(o.checks)
	}
	if n == 0 {
		return nil
	}
	conn, err := r.cfg.DB.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("operator: connect to check the operators' queries: %w", err)
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	for _, o := range r.ops {
		for _, c := range o.checks {
			// The unnamed statement: the next Prepare or query replaces it.
			if _, err := pc.Prepare(ctx, "", c.sql, nil); err != nil {
				return checkError(o.name, c, err)
			}
		}
	}
	return nil
}

// checkError says which of the operator's statements did not prepare, and what to fix.
func checkError(op string, c stmt, err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return fmt.Errorf("operator %s: check its %s: %w", op, c.what, err)
	}
	if c.idColumn {
		return fmt.Errorf("operator %s: %s: %w; map the entity to a column it has (id under operators.%s in walflow.yaml, or SQL.ID in Go); if the column was renamed, fix the query too",
			op, c.what, err, op)
	}
	return fmt.Errorf("operator %s: its %s does not prepare: %w%s; fix it (operators.%s.query in walflow.yaml, or SQL.Query in Go) and start again",
		op, c.what, err, describeQuery(c.sql, int(pe.Position)), op)
}

// warnHalted logs each operator that is halted as the runner starts: it applies nothing
// until a person restarts or skips it, and a restart of walflow does not do that.
func (r *Runner) warnHalted(ctx context.Context) {
	st, err := r.Status(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.log.WarnContext(ctx, "read the operators' status", slog.Any("error", err))
		}
		return
	}
	for _, s := range st {
		if !s.Halted {
			continue
		}
		r.log.WarnContext(ctx, "operator is still halted from an earlier run and applies nothing until restarted; fix the cause, then walflow operator restart NAME (or walflow operator skip NAME to drop the failed event)",
			slog.String("operator", s.Name), slog.Uint64("failed_position", uint64(s.FailedPosition)),
			slog.String("error", s.Error),
			slog.String("restart", "walflow operator restart "+s.Name), slog.String("skip", "walflow operator skip "+s.Name))
	}
}
