package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/walflow/walflow/operator"
)

var operatorBackfillCommand = &command{
	name:    "backfill",
	args:    "NAME [--config FILE] [--batch N] [--restart]",
	params:  []string{"NAME"},
	summary: "Recompute every derived row of an operator from the rows that exist now.",
	help: `
backfill runs the operator's query for every id found in its entities (posts' ids, the
post_ids of comments...), in batches of --batch ids, each batch in one transaction. Use it
after adding an operator to tables that already have rows, after changing its query,
after a TRUNCATE, or after walflow operator skip. Derived rows whose source row is gone
(an id no longer in a delete_with entity) are deleted first.

It is safe while walflow run keeps the operator live: a backfill batch and a live batch of
the same operator never overlap, and the one that comes last computes from the newest
rows. It is resumable: stopped by Ctrl-C or a crash, the next backfill continues after the
last committed batch (--restart starts over). Progress goes to stderr: a bar on a
terminal, a line every 2 seconds otherwise.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		batch := fs.Int("batch", operator.BackfillBatchDefault, "recompute `N` ids per transaction")
		restart := fs.Bool("restart", false, "start over instead of resuming an interrupted backfill")
		return func(ctx context.Context, e *env, args []string) error {
			return operatorBackfillMain(ctx, e, *path, args[0], *batch, *restart)
		}
	},
}

func operatorBackfillMain(ctx context.Context, e *env, path, name string, batch int, restart bool) error {
	if batch < 1 {
		return usagef("operator backfill: --batch %d is not a batch size; give a number of ids from 1, like %d", batch, operator.BackfillBatchDefault)
	}
	oc, op, pool, err := openOperator(ctx, e, "operator backfill", path, "", name)
	if err != nil {
		return err
	}
	defer pool.Close()
	started := time.Now()
	err = operator.Backfill(ctx, pool, op, &operator.BackfillOpts{
		BatchSize: batch,
		Progress:  newProgressPrinter(e.stderr, isTerminal(e.stderr), "ids"),
		Restart:   restart,
	})
	if err != nil {
		if errors.Is(err, operator.ErrBackfillRunning) {
			return fmt.Errorf("%s: another backfill of %s is running (in this or another process); wait for it or stop it, then run this again", oc.name, name)
		}
		// The command's name already says which backfill failed.
		var be *operator.BackfillError
		if errors.As(err, &be) {
			err = be.Err
		}
		return fmt.Errorf("%s: %w", oc.name, err)
	}
	fmt.Fprintf(e.stdout, "Backfilled %s in %s: every %s row was recomputed from %s.\n",
		name, roundElapsed(time.Since(started)), op.Target, strings.Join(op.Entities, " and "))
	return nil
}

// roundElapsed keeps a tenth of a second below a minute and whole seconds above.
func roundElapsed(d time.Duration) time.Duration {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}
