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

var operatorResetCommand = &command{
	name:    "reset",
	args:    "NAME [--config FILE] [--batch N]",
	params:  []string{"NAME"},
	summary: "Rebuild an operator's rows and start it over on the ledger walflow reads now.",
	help: `
reset is the way out for an operator whose checkpoint belongs to another ledger, as after a
resync (the ledger directory moved aside and walflow started again): its checkpoint counts
the events of the old ledger, so it halted instead of skipping the new one's.

It stores the operator's checkpoint as the start of the ledger walflow reads now (a running
walflow resumes it within a second and applies that ledger's events from its first one),
then backfills it from the start: every id of its entities and every row already in its
target table is recomputed from the rows as they are now, and derived rows whose
delete_with row is gone are deleted. Rows are recomputed in place, never emptied first, so
readers keep the old values until each one is recomputed; at the end every derived row
equals its recomputation, including rows changed while walflow was stopped.

Run it after walflow run started on its new ledger: the slot must exist, so that every
change the backfill does not see reaches the ledger. If it is interrupted, the checkpoint
is reset already: finish with walflow operator backfill NAME, which resumes.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		batch := fs.Int("batch", operator.BackfillBatchDefault, "recompute `N` ids per transaction")
		return func(ctx context.Context, e *env, args []string) error {
			return operatorResetMain(ctx, e, *path, args[0], *batch)
		}
	},
}

func operatorResetMain(ctx context.Context, e *env, path, name string, batch int) error {
	if batch < 1 {
		return usagef("operator reset: --batch %d is not a batch size; give a number of ids from 1, like %d", batch, operator.BackfillBatchDefault)
	}
	oc, op, pool, err := openOperator(ctx, e, "operator reset", path, "", name)
	if err != nil {
		return err
	}
	defer pool.Close()
	var slotExists bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, oc.instance).Scan(&slotExists); err != nil {
		return fmt.Errorf("%s: look up slot %s: %w", oc.name, oc.instance, err)
	}
	if !slotExists {
		return fmt.Errorf("%s: slot %s does not exist; start walflow first (walflow run --config %s), so that the slot records every change the backfill does not see, then reset %s",
			oc.name, oc.instance, path, name)
	}
	started := time.Now()
	err = operator.Reset(ctx, pool, oc.instance, op, &operator.BackfillOpts{
		BatchSize: batch,
		Progress:  newProgressPrinter(e.stderr, isTerminal(e.stderr), "ids"),
	})
	if err != nil {
		if errors.Is(err, operator.ErrBackfillRunning) {
			return fmt.Errorf("%s: a backfill of %s is running (in this or another process); wait for it or stop it, then run this again", oc.name, name)
		}
		return err // it names the operator and what to do
	}
	fmt.Fprintf(e.stdout, "Reset %s in %s: it starts over on the ledger walflow reads now, and every %s row was recomputed from %s and from the rows already in %s.\n",
		name, roundElapsed(time.Since(started)), op.Target, strings.Join(op.Entities, " and "), op.Target)
	fmt.Fprintf(e.stdout, "A running walflow resumes it within %s; otherwise the next walflow run does.\n", operator.ControlIntervalDefault)
	return nil
}
