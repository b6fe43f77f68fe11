package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/configfile"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/projector"
)

var projectorCommand = &command{
	name:    "projector",
	args:    "COMMAND [flags]",
	summary: "Show, reset or restart the projectors stored in the database.",
	help: `
Projectors (package projector, walflow.Config.Projectors) are Go code that an application
runs with its engine, so walflow run does not run them and these commands cannot either.
Their positions live in the walflow.projectors table of the followed database: these
commands read and change that table, from any machine that reaches the database, whether
the application runs or not. They know only the projectors stored there: not those of a
runner with another store (Config.ProjectorStore, a SavepointStore).`,
	subs: []*command{projectorStatusCommand, projectorResetCommand, projectorRestartCommand},
}

var projectorStatusCommand = &command{
	name:    "status",
	args:    "[--config FILE] [--json]",
	summary: "Show each stored projector's position, lag, and why it halted.",
	help: `
status lists the rows of walflow.projectors: each projector's position (every event at or
before it is applied), its lag behind the ledger head, where it runs (the database session
of the process holding its lock: pid and client address), whether it is halted, the error that
halted it and the position of the event it failed on; for a projector in sequence mode,
how far it has read (seen) and the next number each sequence expects. The ledger head comes
from the running walflow at http.addr (its /status, which also gives the live position of
the projectors it runs), or from the ledger directory when no walflow answers and none holds
it, and is unknown otherwise. When walflow.projectors does not exist, no projector has run
against this database yet: status says so and exits 0.

The --json document has the keys ledger_head (null when unknown), ledger_head_from,
table_exists and projectors, a list by name of objects with the keys name, position,
running_position (null unless the running walflow reports the projector), lag_events (null
when the head is unknown), seen, sequence (null outside sequence mode), halted, error
("" when not halted), failed_position (0 when not halted), version (the number of saves
and resets of the stored checkpoint), ledger (the system/database/slot its position counts,
"" when unknown) and runs_in (null when no process runs it, else pid, address and since:
the session holding its lock).`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		asJSON := fs.Bool("json", false, "print the projectors as JSON")
		return func(ctx context.Context, e *env, _ []string) error {
			return projectorStatusMain(ctx, e, *path, *asJSON)
		}
	},
}

var projectorResetCommand = &command{
	name:    "reset",
	args:    "NAME [--config FILE]",
	params:  []string{"NAME"},
	summary: "Send a projector back to the start of the ledger, clearing any halt.",
	help: `
reset stores a zero checkpoint for the projector in walflow.projectors (position 0, not
halted, its sequence numbers forgotten) and bumps its version. The projector then replays
the whole ledger (from its tail, when retention removed the oldest events) into its read
model, so the application must clear that read model first (truncate its tables), or the
handler must be idempotent; reset does not touch the read model.

The safe order: stop the application, clear the read model, reset, start the application.
An application running the projector meanwhile keeps its position in memory: its next save
(after the next events it applies) fails with a version conflict, and the runner then loads
the reset checkpoint and replays from the start, without a restart. Until then it may still
apply events over the cleared read model (a HandleTx projector's conflicting batch rolls
back; a Handle projector's was applied). A projector halted in a running application stays
halted until the application restarts, or calls Runner.Restart or Runner.Reset.`,
	flags: nameFlags(projectorResetMain),
}

var projectorRestartCommand = &command{
	name:    "restart",
	args:    "NAME [--config FILE]",
	params:  []string{"NAME"},
	summary: "Clear a halted projector so it retries the event it failed on.",
	help: `
restart clears the projector's halt in walflow.projectors, as Runner.Restart does, and
keeps its position: it retries the event it failed on and goes on from there. A running
application does not watch the table for a halted projector: the projector resumes when the
application next starts, or calls Runner.Restart. Fix what made the event fail first (the
handler, the read model), or the projector halts again after its retries.`,
	flags: nameFlags(projectorRestartMain),
}

// projectorCmd is a projector command's configuration and its store.
type projectorCmd struct {
	name  string // "projector status", for errors
	cfg   *configfile.Config
	path  string
	pool  *pgxpool.Pool
	store *projector.PostgresStore
}

// openProjectorCmd loads the configuration of a projector command and opens a pool on the
// followed database (it connects on first use); the caller closes it.
func openProjectorCmd(ctx context.Context, e *env, name, path string) (*projectorCmd, error) {
	c, err := loadConfig(path, e.getenv)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, c.Engine.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &projectorCmd{name: name, cfg: c, path: path, pool: pool, store: projector.NewPostgresStore(pool)}, nil
}

func (pc *projectorCmd) Close() { pc.pool.Close() }

// errNoProjectorTable is returned by list when walflow.projectors does not exist.
var errNoProjectorTable = errors.New("no projector table")

// list returns the stored checkpoints, or errNoProjectorTable.
func (pc *projectorCmd) list(ctx context.Context) ([]projector.NamedCheckpoint, error) {
	cps, err := pc.store.List(ctx)
	if isUndefinedTable(err) {
		return nil, errNoProjectorTable
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pc.name, err)
	}
	return cps, nil
}

// find returns the stored checkpoint of the projector called name, or an error naming
// the stored projectors.
func (pc *projectorCmd) find(ctx context.Context, name string) (projector.NamedCheckpoint, error) {
	cps, err := pc.list(ctx)
	if errors.Is(err, errNoProjectorTable) {
		return projector.NamedCheckpoint{}, fmt.Errorf("%s: walflow.projectors does not exist in the database of %s: no projector has run against this database, so there is no %s", pc.name, pc.path, name)
	}
	if err != nil {
		return projector.NamedCheckpoint{}, err
	}
	names := make([]string, len(cps))
	for i, cp := range cps {
		if cp.Name == name {
			return cp, nil
		}
		names[i] = cp.Name
	}
	if len(names) == 0 {
		return projector.NamedCheckpoint{}, usagef("%s: unknown projector %q: walflow.projectors in the database of %s is empty, no projector has run against it yet", pc.name, name, pc.path)
	}
	return projector.NamedCheckpoint{}, unknownName(pc.name, "projector", "projectors", name, "in walflow.projectors", names)
}

// projectorStatusDoc is walflow projector status --json.
type projectorStatusDoc struct {
	// LedgerHead is null when neither the running walflow nor the ledger could be read.
	LedgerHead *event.Position `json:"ledger_head"`
	// LedgerHeadFrom says where the head comes from, or why it is unknown.
	LedgerHeadFrom string `json:"ledger_head_from"`
	// TableExists is false before any projector ran against the database.
	TableExists bool              `json:"table_exists"`
	Projectors  []projectorStatus `json:"projectors"`
}

// projectorStatus is one row of walflow projector status. Every key is always present.
type projectorStatus struct {
	Name string `json:"name"`
	// Position is the stored resume position: every event at or before it is applied.
	Position event.Position `json:"position"`
	// RunningPosition is the projector's position in the running walflow's /status; null
	// when no running walflow reports it. It may be ahead of Position: a projector saves
	// after each batch it applies, not after events it filters out.
	RunningPosition *event.Position `json:"running_position"`
	// LagEvents is the ledger head minus RunningPosition, or minus Position when there is
	// none; null when the head is unknown.
	LagEvents *uint64 `json:"lag_events"`
	// Seen is how far the projector had read (sequence mode: events up to it may wait in
	// the reorder buffer).
	Seen event.Position `json:"seen"`
	// Sequence maps each table (or table/stream) to the next number it expects; null
	// outside sequence mode.
	Sequence map[string]int64 `json:"sequence"`
	Halted   bool             `json:"halted"`
	// Error is what halted the projector; "" when it is not halted.
	Error string `json:"error"`
	// FailedPosition is the position of the event it halted on; 0 when not halted.
	FailedPosition event.Position `json:"failed_position"`
	// Version counts the saves and resets of the stored checkpoint.
	Version int64 `json:"version"`
	// Ledger names the ledger the position counts (system, database, slot); "" when
	// unknown.
	Ledger string `json:"ledger"`
	// RunsIn is the database session holding the projector's lock, that of the process
	// running it; null when no process runs it (or its runner takes no locks).
	RunsIn *projector.Holder `json:"runs_in"`
}

func projectorStatusMain(ctx context.Context, e *env, path string, asJSON bool) error {
	pc, err := openProjectorCmd(ctx, e, "projector status", path)
	if err != nil {
		return err
	}
	defer pc.Close()
	cps, err := pc.list(ctx)
	exists := !errors.Is(err, errNoProjectorTable)
	if exists && err != nil {
		return err
	}
	var holders map[string]projector.Holder
	if exists {
		if holders, err = pc.store.Holders(ctx); err != nil {
			return fmt.Errorf("%s: %w", pc.name, err)
		}
	}
	head := projectorHead(ctx, pc.cfg)
	doc := projectorStatusDoc{LedgerHeadFrom: head.from, TableExists: exists, Projectors: []projectorStatus{}}
	if head.known {
		doc.LedgerHead = &head.head
	}
	for _, cp := range cps {
		s := projectorStatus{Name: cp.Name, Position: cp.Position, Seen: cp.Seen, Sequence: cp.Sequence, Halted: cp.Halted,
			Error: cp.Error, FailedPosition: cp.FailedPosition, Version: cp.Version, Ledger: cp.Ledger}
		if h, ok := holders[cp.Name]; ok {
			s.RunsIn = &h
		}
		at := cp.Position
		if p, ok := head.running[cp.Name]; ok {
			s.RunningPosition = &p
			at = p
		}
		if head.known {
			lag := uint64(head.head - min(head.head, at))
			s.LagEvents = &lag
		}
		doc.Projectors = append(doc.Projectors, s)
	}
	if asJSON {
		return printJSON(e.stdout, &doc)
	}
	writeProjectorStatus(e.stdout, &doc)
	return nil
}

// writeProjectorStatus prints the projectors for people.
func writeProjectorStatus(w io.Writer, doc *projectorStatusDoc) {
	if !doc.TableExists {
		fmt.Fprintln(w, "No projector has run against this database: walflow.projectors does not exist yet.")
		fmt.Fprintln(w, "An application creates it when it first runs projectors (walflow.Config.Projectors).")
		return
	}
	if len(doc.Projectors) == 0 {
		fmt.Fprintln(w, "No projector has run against this database: walflow.projectors is empty.")
		return
	}
	writeLedgerHead(w, doc.LedgerHead, doc.LedgerHeadFrom)
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "PROJECTOR\tPOSITION\tLAG\tRUNS IN\tHALTED\tFAILED AT\tERROR")
	var halted, running bool
	var seq []projectorStatus
	for _, s := range doc.Projectors {
		pos, lag, runs, h, failed := s.Position.String(), "-", "-", "no", "-"
		if s.RunsIn != nil {
			runs = fmt.Sprintf("pid %d", s.RunsIn.PID)
			if s.RunsIn.Address != "" {
				runs += " from " + s.RunsIn.Address
			}
		}
		if s.RunningPosition != nil && *s.RunningPosition != s.Position {
			pos = fmt.Sprintf("%d (running: %d)", s.Position, *s.RunningPosition)
			running = true
		}
		if s.LagEvents != nil {
			lag = strconv.FormatUint(*s.LagEvents, 10)
		}
		if s.Halted {
			h, halted = "yes", true
			failed = s.FailedPosition.String()
		}
		msg := strings.Join(strings.Fields(s.Error), " ")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, pos, lag, runs, h, failed, msg)
		if s.Sequence != nil {
			seq = append(seq, s)
		}
	}
	_ = tw.Flush()
	if running {
		fmt.Fprintln(w, "\nrunning: the position in the running walflow, not saved yet (a projector saves after the events it applies).")
	}
	if len(seq) > 0 {
		fmt.Fprintln(w, "\nSequence mode: read up to SEEN; the next number each sequence expects.")
		tw = tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
		fmt.Fprintln(tw, "PROJECTOR\tSEEN\tNEXT")
		for _, s := range seq {
			var next []string
			for _, k := range slices.Sorted(maps.Keys(s.Sequence)) {
				next = append(next, fmt.Sprintf("%s %d", k, s.Sequence[k]))
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\n", s.Name, s.Seen, strings.Join(next, ", "))
		}
		_ = tw.Flush()
	}
	if halted {
		fmt.Fprintln(w, "\nA halted projector waits. Fix the cause of its error, then run")
		fmt.Fprintln(w, "  walflow projector restart NAME   to retry the event it failed on, or")
		fmt.Fprintln(w, "  walflow projector reset NAME     to replay the ledger from the start (clear its read model first).")
	}
}

// projectorHeadView is the ledger head for projector status, and the projectors' positions
// in the running walflow.
type projectorHeadView struct {
	head    event.Position
	known   bool
	from    string // where head came from, or why it is unknown
	running map[string]event.Position
}

// projectorHead reads the ledger head, and the live projector positions: from the running
// walflow's /status, else from the ledger directory when no process holds it.
func projectorHead(ctx context.Context, c *configfile.Config) projectorHeadView {
	v := projectorHeadView{running: map[string]event.Position{}}
	if c.Engine.HTTPAddr != "" {
		url := "http://" + c.Engine.HTTPAddr + "/status"
		if st, err := getStatus(ctx, url); err == nil {
			v.head, v.known, v.from = event.Position(st.LedgerHead), true, "the running walflow at "+url
			for _, p := range st.Projectors {
				v.running[p.Name] = p.Position
			}
			return v
		}
	}
	led, why := openLedgerForHead(ctx, c)
	if led == nil {
		v.from = why
		return v
	}
	defer led.Close()
	v.head, v.known, v.from = led.State().Head, true, "the ledger "+c.Engine.LedgerDir
	return v
}

// openLedgerForHead opens the ledger files when no running walflow answered, for the
// status commands' ledger head; nil and the reason when it cannot.
func openLedgerForHead(ctx context.Context, c *configfile.Config) (ledger.Ledger, string) {
	noEngine := "no walflow answers on " + shownAddr(c.Engine.HTTPAddr)
	if c.Engine.MemoryLedger {
		return nil, noEngine + " and the ledger is in memory"
	}
	dir := c.Engine.LedgerDir
	if _, err := os.Stat(dir); err != nil {
		return nil, noEngine + " and the ledger " + dir + " does not exist yet"
	}
	_, led, err := openDiskLedger(ctx, c)
	var re *routerError
	switch {
	case errors.As(err, &re):
		return nil, "the tables do not make a router: " + re.err.Error()
	case err != nil:
		if holder, ok := lockHolder(dir, err); ok {
			return nil, noEngine + " and the ledger " + dir + " is held by " + holder + ", a walflow without http.addr"
		}
		return nil, noEngine + " and the ledger " + dir + " could not be opened: " + err.Error()
	}
	return led, ""
}

func projectorResetMain(ctx context.Context, e *env, path, name string) error {
	pc, err := openProjectorCmd(ctx, e, "projector reset", path)
	if err != nil {
		return err
	}
	defer pc.Close()
	cp, err := pc.find(ctx, name)
	if err != nil {
		return err
	}
	if err := pc.store.Reset(ctx, name); err != nil {
		return fmt.Errorf("%s: %w", pc.name, err)
	}
	was := fmt.Sprintf("position %d", cp.Position)
	if cp.Halted {
		was += fmt.Sprintf(", halted at %d", cp.FailedPosition)
	}
	fmt.Fprintf(e.stdout, "Reset %s (was %s): it replays the ledger from the start (from its tail, if retention removed the oldest events).\n", name, was)
	fmt.Fprintln(e.stdout, "Its read model must be cleared by the application first, or its handler be idempotent.")
	fmt.Fprintln(e.stdout, "An application running it replays after its next save fails with a version conflict; a halted one waits for the application's restart.")
	return nil
}

func projectorRestartMain(ctx context.Context, e *env, path, name string) error {
	pc, err := openProjectorCmd(ctx, e, "projector restart", path)
	if err != nil {
		return err
	}
	defer pc.Close()
	cp, err := pc.find(ctx, name)
	if err != nil {
		return err
	}
	if !cp.Halted {
		fmt.Fprintf(e.stdout, "%s is not halted (position %d); nothing to restart.\n", name, cp.Position)
		return nil
	}
	// As Runner.Restart: the same checkpoint without the halt, saved against the version
	// read, so that a concurrent change is not overwritten.
	failed := cp.FailedPosition
	cp.Halted, cp.Error, cp.FailedPosition = false, "", 0
	err = pc.store.Save(ctx, name, cp.Checkpoint)
	if errors.Is(err, projector.ErrConflict) {
		return fmt.Errorf("%s: %s changed while it was being restarted (its application runs it, or it was reset); run walflow projector status and try again", pc.name, name)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", pc.name, err)
	}
	fmt.Fprintf(e.stdout, "Restarted %s: it retries the event at position %d, where it halted, and goes on from there.\n", name, failed)
	fmt.Fprintln(e.stdout, "A running application resumes it when it next starts, or calls Runner.Restart; it does not watch the table.")
	return nil
}
