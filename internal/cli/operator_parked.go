package cli

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/operator"
)

var operatorParkedCommand = &command{
	name:    "parked",
	args:    "NAME [--config FILE] [--instance SLOT] [--json]",
	params:  []string{"NAME"},
	summary: "List the derived rows whose events an operator parked (on_failure: park).",
	help: `
An operator with on_failure: park does not halt on an event that keeps failing: it parks
the event for the derived row it failed on, with its error, and parks the later events of
that row behind it, in order, while every other row goes on. parked lists those rows: the
row's id, the positions of its parked events, the error of the first and how many there
are. Fix the cause, then run walflow operator retry NAME; or discard a row's events with
walflow operator discard NAME --id ID and backfill.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		instance := instanceFlag(fs)
		asJSON := fs.Bool("json", false, "print the parked rows as JSON")
		return func(ctx context.Context, e *env, args []string) error {
			return operatorParkedMain(ctx, e, *path, *instance, args[0], *asJSON)
		}
	},
}

var operatorRetryCommand = &command{
	name:    "retry",
	args:    "NAME [--id ID] [--config FILE] [--instance SLOT] [--wait D]",
	params:  []string{"NAME"},
	summary: "Apply an operator's parked events again (every parked row, or --id ID).",
	help: `
retry asks the running walflow to apply again the parked events of the row --id names, or
of every parked row. Each row's events are applied in position order in one transaction
that also removes them from walflow.operator_parked, so each is applied once; when one
fails again they all stay parked, the first with the new error. retry waits up to --wait
for the outcome and reports it; the exit code is 1 when a row failed again. When walflow
is not running, the request stays and walflow run carries it out when it starts.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		instance := instanceFlag(fs)
		id := fs.String("id", "", "the derived row `ID` whose events to retry; default: every parked row")
		wait := fs.Duration("wait", 30*time.Second, "how long (`D`) to wait for the running walflow to apply them")
		return func(ctx context.Context, e *env, args []string) error {
			return operatorRetryMain(ctx, e, *path, *instance, args[0], *id, *wait)
		}
	},
}

var operatorDiscardCommand = &command{
	name:    "discard",
	args:    "NAME --id ID [--config FILE] [--instance SLOT]",
	params:  []string{"NAME"},
	summary: "Drop the parked events of one derived row, without applying them.",
	help: `
discard deletes the parked events of the row --id names from walflow.operator_parked: they
are never applied, and the row's next events apply at once. The row misses their effect,
so recompute it with walflow operator backfill NAME afterwards. --id is required, so that
no command discards every row at once.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		instance := instanceFlag(fs)
		id := fs.String("id", "", "the derived row `ID` whose parked events to discard (required)")
		return func(ctx context.Context, e *env, args []string) error {
			return operatorDiscardMain(ctx, e, *path, *instance, args[0], *id)
		}
	},
}

// parkedDoc is walflow operator parked --json.
type parkedDoc struct {
	Instance string               `json:"instance"`
	Operator string               `json:"operator"`
	Parked   []operator.ParkedRow `json:"parked"`
}

func operatorParkedMain(ctx context.Context, e *env, path, instance, name string, asJSON bool) error {
	oc, _, pool, err := openOperator(ctx, e, "operator parked", path, instance, name)
	if err != nil {
		return err
	}
	defer pool.Close()
	rows, err := operator.Parked(ctx, pool, oc.instance, name)
	if err != nil {
		return oc.dbError(err)
	}
	if asJSON {
		if rows == nil {
			rows = []operator.ParkedRow{}
		}
		return printJSON(e.stdout, parkedDoc{Instance: oc.instance, Operator: name, Parked: rows})
	}
	if len(rows) == 0 {
		fmt.Fprintf(e.stdout, "%s has no parked events.\n", name)
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCOUNT\tPOSITIONS\tFIRST ERROR")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", r.ID, r.Count, positionList(r.Positions), strings.Join(strings.Fields(r.FirstError), " "))
	}
	return tw.Flush()
}

// positionList shows positions, the first few and how many more.
func positionList(p []event.Position) string {
	const show = 5
	var parts []string
	for i, x := range p {
		if i == show {
			parts = append(parts, fmt.Sprintf("... (%d more)", len(p)-show))
			break
		}
		parts = append(parts, fmt.Sprint(x))
	}
	return strings.Join(parts, ",")
}

func operatorRetryMain(ctx context.Context, e *env, path, instance, name, id string, wait time.Duration) error {
	oc, _, pool, err := openOperator(ctx, e, "operator retry", path, instance, name)
	if err != nil {
		return err
	}
	defer pool.Close()
	n, err := operator.RequestRetry(ctx, pool, oc.instance, name, id)
	if err != nil {
		return oc.dbError(err)
	}
	if n == 0 {
		if id != "" {
			return fmt.Errorf("%s: %s has no parked events for id %s; walflow operator parked %s lists the parked rows", oc.name, name, id, name)
		}
		fmt.Fprintf(e.stdout, "%s has no parked events; nothing to retry.\n", name)
		return nil
	}
	deadline := time.Now().Add(wait)
	for {
		rows, err := operator.Parked(ctx, pool, oc.instance, name)
		if err != nil {
			return oc.dbError(err)
		}
		pending, failed := 0, []operator.ParkedRow{}
		for _, r := range rows {
			switch {
			case id != "" && r.ID != id:
			case r.RetryRequested:
				pending++
			default:
				failed = append(failed, r)
			}
		}
		if pending == 0 {
			if len(failed) == 0 {
				fmt.Fprintf(e.stdout, "Applied the %d parked events of %s; its rows are caught up.\n", n, name)
				return nil
			}
			for _, r := range failed {
				fmt.Fprintf(e.stderr, "walflow: row %s of %s failed again and stays parked (%d events): %s\n", r.ID, name, r.Count, strings.Join(strings.Fields(r.FirstError), " "))
			}
			return fmt.Errorf("%s: %d of the retried rows of %s failed again; fix the cause and retry, or discard them (walflow operator discard %s --id ID)", oc.name, len(failed), name, name)
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(e.stdout, "Requested a retry of %d parked events of %s; %d rows are not applied yet: is walflow running? walflow run applies them once it runs (check with walflow operator parked %s).\n",
				n, name, pending, name)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func operatorDiscardMain(ctx context.Context, e *env, path, instance, name, id string) error {
	if id == "" {
		return usagef("operator discard: --id is required: name the derived row whose parked events to discard (walflow operator parked %s lists them)", name)
	}
	oc, op, pool, err := openOperator(ctx, e, "operator discard", path, instance, name)
	if err != nil {
		return err
	}
	defer pool.Close()
	pos, err := operator.Discard(ctx, pool, oc.instance, name, id)
	if err != nil {
		return oc.dbError(err)
	}
	if len(pos) == 0 {
		return fmt.Errorf("%s: %s has no parked events for id %s; walflow operator parked %s lists the parked rows", oc.name, name, id, name)
	}
	fmt.Fprintf(e.stdout, "Discarded %d parked events of %s row %s (positions %s).\n", len(pos), name, id, positionList(pos))
	target := op.Target
	if target == "" {
		target = "its target"
	}
	fmt.Fprintf(e.stderr, "walflow: warning: the discarded events were NOT applied, so %s row %s may be wrong; recompute it with walflow operator backfill %s --config %s\n",
		target, id, name, path)
	return nil
}
