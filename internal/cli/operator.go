package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/configfile"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/source/pgwal"
)

var operatorCommand = &command{
	name:    "operator",
	args:    "COMMAND [flags]",
	summary: "Show, restart, skip or backfill the configured operators.",
	help: `
Operators keep derived tables up to date from the ledger (operators: in the configuration
file). Each one's checkpoint lives in the walflow.operators table of the followed database,
so these commands work from any machine that reaches the database, whether walflow run is
running or not; a running walflow picks up a restart or a skip within a second.

An operator whose event keeps failing is halted: fix the cause (the query, a constraint,
the derived table), then restart it to retry that event, or skip the event and backfill.
An operator whose checkpoint belongs to another ledger (after a resync) is halted too:
reset it. An operator with on_failure: park parks such an event for its derived row
instead, and goes on with the other rows: list, retry or discard the parked events.

Checkpoints are kept per instance, the slot's name, so several walflows (each with its own
slot and ledger) share a database. These commands act on the instance of the configured
slot; status, restart and skip take --instance SLOT to act on another one.`,
	subs: []*command{operatorStatusCommand, operatorRestartCommand, operatorSkipCommand, operatorBackfillCommand, operatorResetCommand,
		operatorParkedCommand, operatorRetryCommand, operatorDiscardCommand},
}

// configFlag declares --config on fs.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", configfile.ConfigFileDefault, "the configuration `FILE`")
}

// nameFlags are the flags of a command on one NAME with --config: run gets the
// configuration file and the name.
func nameFlags(run func(ctx context.Context, e *env, path, name string) error) func(*flag.FlagSet) execFunc {
	return func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		return func(ctx context.Context, e *env, args []string) error {
			return run(ctx, e, *path, args[0])
		}
	}
}

// instanceFlags are the flags of an operator command on one NAME with --config and
// --instance: run gets the configuration file, the instance ("" for the configured slot's)
// and the name.
func instanceFlags(run func(ctx context.Context, e *env, path, instance, name string) error) func(*flag.FlagSet) execFunc {
	return func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		instance := instanceFlag(fs)
		return func(ctx context.Context, e *env, args []string) error {
			return run(ctx, e, *path, *instance, args[0])
		}
	}
}

// instanceFlag declares --instance on fs.
func instanceFlag(fs *flag.FlagSet) *string {
	return fs.String("instance", "", "the walflow instance (its `SLOT` name) whose operators to act on; default: the configured slot's")
}

var operatorStatusCommand = &command{
	name:    "status",
	args:    "[--config FILE] [--instance SLOT] [--json]",
	summary: "Show each operator's position, lag, and why it halted.",
	help: `
status reads walflow.operators in the followed database: each operator's checkpoint (the
ledger position through which its effects are committed), whether it is halted, the error
that halted it and the position of the event it failed on. The lag is the ledger head
minus the position; the head comes from the running walflow (http.addr), or from the
ledger directory when walflow is stopped, and is unknown otherwise. The exit code is 1
when walflow.operators cannot be read, for example before walflow run first started the
operators.

It shows the operators of one instance: the configured slot's, or the one --instance
names, and lists the other instances that keep operators in the database.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		instance := instanceFlag(fs)
		asJSON := fs.Bool("json", false, "print the operators as JSON")
		return func(ctx context.Context, e *env, _ []string) error {
			return operatorStatusMain(ctx, e, *path, *instance, *asJSON)
		}
	},
}

var operatorRestartCommand = &command{
	name:    "restart",
	args:    "NAME [--config FILE] [--instance SLOT]",
	params:  []string{"NAME"},
	summary: "Clear a halted operator so it retries the event it failed on.",
	help: `
restart clears the operator's halt in walflow.operators. It then retries the event it
failed on and goes on from there: at once in a running walflow (within a second), or when
walflow run next starts. Fix what made the event fail first, or the operator halts again
after its retries.`,
	flags: instanceFlags(operatorRestartMain),
}

var operatorSkipCommand = &command{
	name:    "skip",
	args:    "NAME [--config FILE] [--instance SLOT]",
	params:  []string{"NAME"},
	summary: "Move a halted operator past the event it failed on, without applying it.",
	help: `
skip moves the halted operator's checkpoint past exactly the event it failed on and
restarts it. That event's effect is never applied, so the derived rows it would have
changed may be wrong: run walflow operator backfill NAME afterwards to recompute them.`,
	flags: instanceFlags(operatorSkipMain),
}

// operatorCmd is an operator command's configuration and the operator it names.
type operatorCmd struct {
	name string // "operator status", for errors
	cfg  *configfile.Config
	path string
	// instance is the instance acted on; own says it is the configured slot's.
	instance string
	own      bool
}

// loadOperatorCmd loads the configuration of an operator command.
func loadOperatorCmd(e *env, name, path string) (*operatorCmd, error) {
	c, err := loadConfig(path, e.getenv)
	if err != nil {
		return nil, err
	}
	slot := cmp.Or(c.Engine.Slot, pgwal.SlotDefault)
	return &operatorCmd{name: name, cfg: c, path: path, instance: slot, own: true}, nil
}

// selectInstance makes the command act on instance, when not "".
func (oc *operatorCmd) selectInstance(instance string) {
	if instance != "" && instance != oc.instance {
		oc.instance, oc.own = instance, false
	}
}

// names lists the configured operators.
func (oc *operatorCmd) names() []string {
	var names []string
	for _, o := range oc.cfg.Engine.Operators {
		if s, ok := o.(operator.SQL); ok {
			names = append(names, s.Name)
		}
	}
	return names
}

// find returns the configured operator called name, or a usage error listing the names.
func (oc *operatorCmd) find(name string) (operator.SQL, error) {
	for _, o := range oc.cfg.Engine.Operators {
		if s, ok := o.(operator.SQL); ok && s.Name == name {
			return s, nil
		}
	}
	names := oc.names()
	if len(names) == 0 {
		return operator.SQL{}, usagef("%s: %s configures no operators; add an operators: block (walflow.example.yaml shows one)", oc.name, oc.path)
	}
	return operator.SQL{}, unknownName(oc.name, "operator", "operators", name, "in "+oc.path, names)
}

// pool opens a pool on the followed database. It connects on first use.
// openOperator loads the configuration for command cmd, finds the named operator and opens
// a pool on the database; the caller closes the pool. With another instance than the
// configured slot's, the name need not be in the configuration.
func openOperator(ctx context.Context, e *env, cmd, path, instance, name string) (*operatorCmd, operator.SQL, *pgxpool.Pool, error) {
	oc, err := loadOperatorCmd(e, cmd, path)
	if err != nil {
		return nil, operator.SQL{}, nil, err
	}
	oc.selectInstance(instance)
	op := operator.SQL{Name: name}
	if oc.own {
		if op, err = oc.find(name); err != nil {
			return nil, operator.SQL{}, nil, err
		}
	}
	pool, err := oc.pool(ctx)
	if err != nil {
		return nil, operator.SQL{}, nil, err
	}
	return oc, op, pool, nil
}

func (oc *operatorCmd) pool(ctx context.Context) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, oc.cfg.Engine.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", oc.name, err)
	}
	return pool, nil
}

// dbError explains a failure to use walflow.operators.
func (oc *operatorCmd) dbError(err error) error {
	if isUndefinedTable(err) {
		return fmt.Errorf("%s: walflow.operators does not exist yet in the database of %s; walflow run creates it when it first runs with operators configured", oc.name, oc.path)
	}
	return fmt.Errorf("%s: %w", oc.name, err)
}

// isUndefinedTable reports whether err says the walflow schema or the table read (walflow.operators,
// walflow.projectors) is missing.
func isUndefinedTable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000") // undefined_table, invalid_schema_name
}

// stored returns the operator's row of walflow.operators; ok is false when it has none.
func (oc *operatorCmd) stored(ctx context.Context, pool *pgxpool.Pool, name string) (st operator.Status, ok bool, err error) {
	all, err := operator.Statuses(ctx, pool, oc.instance)
	if err != nil {
		return st, false, oc.dbError(err)
	}
	for _, s := range all {
		if s.Name == name {
			return s, true, nil
		}
	}
	return st, false, nil
}

// notStarted is the error for a configured operator without a checkpoint.
func (oc *operatorCmd) notStarted(name string) error {
	return fmt.Errorf("%s: %s has no checkpoint in walflow.operators for instance %q yet: walflow run has not started it, so it is not halted", oc.name, name, oc.instance)
}

// operatorStatus is one line of walflow operator status.
type operatorStatus struct {
	operator.Status
	// Position (in Status) is the ledger position through which the operator has applied
	// every event of its entities: Checkpoint, or later when the events after Checkpoint
	// are all of other tables (a checkpoint moves only with the operator's own events).
	// Checkpoint is its row of walflow.operators.
	Checkpoint event.Position `json:"checkpoint"`
	// LagEvents is the ledger head minus Position; null when the head is unknown.
	LagEvents *uint64 `json:"lag_events"`
	// Configured says whether the configuration file has the operator; a stored one that
	// it lacks was removed or renamed.
	Configured bool `json:"configured"`
	// Started says whether walflow.operators has its row (walflow run started it).
	Started bool `json:"started"`
}

// operatorStatusDoc is walflow operator status --json.
type operatorStatusDoc struct {
	// Instance is the instance shown: the configured slot's, or --instance.
	Instance string `json:"instance"`
	// LedgerHead is null when neither the running walflow nor the ledger could be read.
	LedgerHead     *event.Position  `json:"ledger_head"`
	LedgerHeadFrom string           `json:"ledger_head_from"`
	Operators      []operatorStatus `json:"operators"`
	// OtherInstances are the other instances keeping operators in the database.
	OtherInstances []operator.InstanceCount `json:"other_instances"`
}

func operatorStatusMain(ctx context.Context, e *env, path, instance string, asJSON bool) error {
	oc, err := loadOperatorCmd(e, "operator status", path)
	if err != nil {
		return err
	}
	oc.selectInstance(instance)
	pool, err := oc.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	stored, err := operator.Statuses(ctx, pool, oc.instance)
	if err != nil {
		return oc.dbError(err)
	}
	instances, err := operator.Instances(ctx, pool)
	if err != nil {
		return oc.dbError(err)
	}
	byName := map[string]operator.Status{}
	for _, s := range stored {
		byName[s.Name] = s
	}
	var configured []string
	if oc.own {
		configured = oc.names()
	}
	var list []operatorStatus
	for _, name := range configured {
		s, ok := byName[name]
		if !ok {
			s = operator.Status{Name: name}
		}
		list = append(list, operatorStatus{Status: s, Checkpoint: s.Position, Configured: true, Started: ok})
	}
	for _, s := range stored {
		if !slices.Contains(configured, s.Name) {
			list = append(list, operatorStatus{Status: s, Checkpoint: s.Position, Started: true})
		}
	}
	doc := operatorStatusDoc{Instance: oc.instance, Operators: []operatorStatus{}, OtherInstances: []operator.InstanceCount{}}
	for _, c := range instances {
		if c.Instance != oc.instance {
			doc.OtherInstances = append(doc.OtherInstances, c)
		}
	}
	view := ledgerView{from: "the ledger of instance " + strconv.Quote(oc.instance) + " is not the configured one"}
	if oc.own {
		view = readLedger(ctx, oc.cfg, list)
	}
	doc.LedgerHeadFrom = view.from
	if view.known {
		doc.LedgerHead = &view.head
	}
	for _, st := range list {
		if p, ok := view.through[st.Name]; ok && st.Started && p > st.Position {
			st.Position = p
		}
		if view.known && st.Started {
			lag := uint64(view.head - min(view.head, st.Position))
			st.LagEvents = &lag
		}
		doc.Operators = append(doc.Operators, st)
	}
	if asJSON {
		return printJSON(e.stdout, &doc)
	}
	writeOperatorStatus(e.stdout, &doc, oc)
	return nil
}

// writeOperatorStatus prints the operators for people.
func writeOperatorStatus(w io.Writer, doc *operatorStatusDoc, oc *operatorCmd) {
	path := oc.path
	if oc.own {
		fmt.Fprintf(w, "instance: %s (the slot of %s)\n", doc.Instance, path)
	} else {
		fmt.Fprintf(w, "instance: %s (not the slot of %s: its operators are shown as stored)\n", doc.Instance, path)
	}
	writeLedgerHead(w, doc.LedgerHead, doc.LedgerHeadFrom)
	defer writeOtherInstances(w, doc.OtherInstances)
	if len(doc.Operators) == 0 {
		if oc.own {
			fmt.Fprintf(w, "No operators: %s configures none and walflow.operators has none for this instance.\n", path)
		} else {
			fmt.Fprintln(w, "No operators: walflow.operators has none for this instance.")
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "OPERATOR\tPOSITION\tLAG\tHALTED\tFAILED AT\tERROR")
	var halted, unstarted, unconfigured bool
	for _, s := range doc.Operators {
		name, pos, lag, h, failed := s.Name, "-", "-", "-", "-"
		if !s.Configured {
			name += "*"
			unconfigured = true
		}
		if s.Started {
			pos = s.Position.String()
			h = "no"
		} else {
			unstarted = true
		}
		if s.LagEvents != nil {
			lag = strconv.FormatUint(*s.LagEvents, 10)
		}
		if s.Halted {
			h, halted = "yes", true
		}
		if s.FailedPosition != 0 {
			failed = s.FailedPosition.String()
		}
		msg := strings.Join(strings.Fields(s.Error), " ")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", name, pos, lag, h, failed, msg)
	}
	_ = tw.Flush()
	if unstarted {
		fmt.Fprintln(w, "\nAn operator without a position has not been started yet: walflow run starts it.")
	}
	if unconfigured && oc.own {
		fmt.Fprintf(w, "\n* not in %s: its checkpoint is left from an operator that was removed or renamed.\n", path)
	}
	if halted {
		fmt.Fprintln(w, "\nA halted operator waits. Fix the cause of its error, then run")
		fmt.Fprintln(w, "  walflow operator restart NAME   to retry the event it failed on, or")
		fmt.Fprintln(w, "  walflow operator skip NAME      to drop that event (then walflow operator backfill NAME).")
		fmt.Fprintln(w, "One halted on no event (its checkpoint belongs to another ledger) needs")
		fmt.Fprintln(w, "  walflow operator reset NAME     to rebuild its rows and start it on this ledger.")
	}
}

// writeOtherInstances lists the other instances that keep operators in the database.
func writeOtherInstances(w io.Writer, others []operator.InstanceCount) {
	if len(others) == 0 {
		return
	}
	fmt.Fprintln(w, "\nOther instances keep operators in this database (show one with --instance SLOT):")
	for _, c := range others {
		name := c.Instance
		if name == "" {
			name = `"" (kept before instances; the first instance with operators of these names adopts them)`
		}
		fmt.Fprintf(w, "  %s: %d operators\n", name, c.Operators)
	}
}

// ledgerView is what operator status learns from the ledger.
type ledgerView struct {
	head  event.Position
	known bool   // head is known
	from  string // where head came from, or why it is unknown
	// through is, per operator, the position through which it has applied every event of
	// its entities, when the ledger tells more than the checkpoint.
	through map[string]event.Position
}

// readLedger reads the ledger's head and how far the operators really are: from the
// running walflow's /status, or from the ledger directory when no walflow answers.
func readLedger(ctx context.Context, c *configfile.Config, ops []operatorStatus) ledgerView {
	v := ledgerView{through: map[string]event.Position{}}
	if c.Engine.HTTPAddr != "" {
		url := "http://" + c.Engine.HTTPAddr + "/status"
		if st, err := getStatus(ctx, url); err == nil {
			v.head, v.known, v.from = event.Position(st.LedgerHead), true, "the running walflow at "+url
			for _, o := range st.Operators {
				v.through[o.Name] = o.Position
			}
			return v
		}
	}
	led, why := openLedgerForHead(ctx, c)
	if led == nil {
		v.from = why
		return v
	}
	dir := c.Engine.LedgerDir
	defer led.Close()
	v.head, v.known, v.from = led.State().Head, true, "the ledger "+dir
	entities := map[string][]string{}
	for _, o := range c.Engine.Operators {
		if s, ok := o.(operator.SQL); ok {
			for _, ent := range s.Entities {
				entities[s.Name] = append(entities[s.Name], event.TableName(ent))
			}
		}
	}
	for _, o := range ops {
		keys := entities[o.Name]
		if !o.Started || keys == nil {
			continue
		}
		if p, ok := appliedThrough(ctx, led, keys, o.Checkpoint); ok {
			v.through[o.Name] = p
		}
	}
	return v
}

// appliedThrough is the position through which an operator of the entities keys, whose
// checkpoint is checkpoint, has applied every event: just before the next event of its
// entities, or the head when there is none. ok is false when the ledger cannot say.
func appliedThrough(ctx context.Context, led ledger.Ledger, keys []string, checkpoint event.Position) (event.Position, bool) {
	evs, err := led.ReadKeys(ctx, keys, checkpoint, 1)
	switch {
	case err != nil:
		return 0, false
	case len(evs) == 0:
		return led.State().Head, true
	default:
		return evs[0].Position - 1, true
	}
}

func operatorRestartMain(ctx context.Context, e *env, path, instance, name string) error {
	oc, _, pool, err := openOperator(ctx, e, "operator restart", path, instance, name)
	if err != nil {
		return err
	}
	defer pool.Close()
	st, ok, err := oc.stored(ctx, pool, name)
	if err != nil {
		return err
	}
	if !ok {
		return oc.notStarted(name)
	}
	if !st.Halted {
		fmt.Fprintf(e.stdout, "%s is not halted (position %d); nothing to restart.\n", name, st.Position)
		return nil
	}
	if err := operator.Restart(ctx, pool, oc.instance, name); err != nil {
		return oc.dbError(err)
	}
	fmt.Fprintf(e.stdout, "Restarted %s: it retries the event at position %d, where it halted, and goes on from there.\n", name, st.FailedPosition)
	fmt.Fprintf(e.stdout, "A running walflow resumes it within %s; otherwise the next walflow run does.\n", operator.ControlIntervalDefault)
	return nil
}

func operatorSkipMain(ctx context.Context, e *env, path, instance, name string) error {
	oc, op, pool, err := openOperator(ctx, e, "operator skip", path, instance, name)
	if err != nil {
		return err
	}
	defer pool.Close()
	st, ok, err := oc.stored(ctx, pool, name)
	if err != nil {
		return err
	}
	if !ok {
		return oc.notStarted(name)
	}
	pos, err := operator.Skip(ctx, pool, oc.instance, name)
	if errors.Is(err, operator.ErrNotHalted) {
		return fmt.Errorf("%s: %s is not halted (position %d); skip only moves a halted operator past the event it failed on", oc.name, name, st.Position)
	}
	if errors.Is(err, operator.ErrForeignLedger) {
		return fmt.Errorf("%s: %s halted on no event: its checkpoint belongs to another ledger, so there is none to skip; rebuild it with walflow operator reset %s --config %s", oc.name, name, name, oc.path)
	}
	if err != nil {
		return oc.dbError(err)
	}
	fmt.Fprintf(e.stdout, "Skipped position %d of %s: it resumes with the events after it.\n", pos, name)
	if st.Error != "" {
		fmt.Fprintf(e.stdout, "That event had failed with: %s\n", strings.Join(strings.Fields(st.Error), " "))
	}
	target := op.Target
	if target == "" {
		target = "its target" // another instance's operator, not in the configuration
	}
	fmt.Fprintf(e.stderr, "walflow: warning: the effect of the event at position %d was NOT applied, so rows of %s it would have changed may be wrong; recompute them with walflow operator backfill %s --config %s\n",
		pos, target, name, path)
	return nil
}
