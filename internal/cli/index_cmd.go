package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/configfile"
)

var indexCommand = &command{
	name:    "index",
	args:    "COMMAND [flags]",
	summary: "Rebuild the configured indexes or show how far they are.",
	help: `
Indexes (indexes: in the configuration file) are kept beside the ledger, in ledger.dir +
".index", and walflow run keeps them up to date. Their data can always be rebuilt from the
ledger. These commands open the ledger and index directories themselves, so they work
only while walflow run is stopped: a running walflow holds both, and the command says so.
index status asks a running walflow's /status instead. With a cluster: section they work
on the cluster's stream and its index store in the database, beside running nodes.`,
	subs: []*command{indexRebuildCommand, indexStatusCommand},
}

var indexRebuildCommand = &command{
	name:    "rebuild",
	args:    "NAME [--config FILE]",
	params:  []string{"NAME"},
	summary: "Delete an index's data and rebuild it from the ledger.",
	help: `
rebuild deletes the index's entries and checkpoint, then indexes the whole ledger again (from
its tail, when retention removed the oldest events) and prints the number of entries and
the checkpoint it reached. Progress goes to stderr: a bar on a terminal, a line every 2
seconds otherwise. Stopped by Ctrl-C, the index is left partial, and walflow run (or the
next rebuild) finishes it. Stop walflow run first. With a cluster: section, rebuild resets
the index in the shared store; the node computing the indexes rebuilds it while rebuild
waits, or, when no node holds the indexes' lock, rebuild takes it and rebuilds the index.`,
	flags: nameFlags(indexRebuildMain),
}

var indexStatusCommand = &command{
	name:    "status",
	args:    "[--config FILE] [--json]",
	summary: "Show each index's checkpoint and lag behind the ledger head.",
	help: `
status shows each configured index's checkpoint (the last ledger position it has indexed)
and its lag behind the ledger head. While walflow runs, they come from its /status at
http.addr, and the phase is live (the head is indexed) or catching_up. Otherwise status
reads the index store (phase stopped); an index never built shows no checkpoint: walflow
run, ledger read --index or index rebuild builds it. With a cluster: section and no node answering,
status reads the shared store's checkpoints and the stream's head.

The --json document has the keys ledger_head, ledger_tail, ledger_head_from (where the
figures come from; operator status and projector status use the same key) and indexes, a
list of objects with the keys name, phase, checkpoint, lag_events, since and built.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		asJSON := fs.Bool("json", false, "print the indexes as JSON")
		return func(ctx context.Context, e *env, _ []string) error {
			return indexStatusMain(ctx, e, *path, *asJSON)
		}
	},
}

func indexRebuildMain(ctx context.Context, e *env, path, name string) error {
	const cmd = "index rebuild"
	c, err := loadConfig(path, e.getenv)
	if err != nil {
		return err
	}
	ix, err := findIndex(cmd, c, path, name)
	if err != nil {
		return err
	}
	f, err := openLocal(ctx, cmd, c, path, true, false)
	if err != nil {
		return err
	}
	defer f.Close()
	started := time.Now()
	progress := newProgressPrinter(e.stderr, isTerminal(e.stderr), "events")
	by := ""
	if f.clu != nil {
		if by, err = f.rebuildInCluster(ctx, ix, progress); err != nil {
			return err
		}
	} else {
		r, err := f.runner([]index.Indexer{ix})
		if err != nil {
			return err
		}
		if err := f.store.Reset(ctx, name); err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		if err := f.catchUp(ctx, r, progress); err != nil {
			return err
		}
	}
	st, _, err := f.store.State(ctx, name)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	var entries, values int
	last := ""
	err = f.store.Entries(ctx, name, func(en index.Entry) error {
		if entries == 0 || en.Value != last {
			values++
			last = en.Value
		}
		entries++
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if by != "" {
		fmt.Fprintf(e.stdout, "Rebuilt %s in %s (computed by %s): %d entries under %d values, checkpoint %d.\n",
			name, roundElapsed(time.Since(started)), by, entries, values, st.Checkpoint)
	} else {
		fmt.Fprintf(e.stdout, "Rebuilt %s in %s: %d entries under %d values, checkpoint %d (the ledger head).\n",
			name, roundElapsed(time.Since(started)), entries, values, st.Checkpoint)
	}
	if st.Since > 0 {
		fmt.Fprintf(e.stdout, "Retention had removed the events up to position %d, so the index starts after it.\n", st.Since)
	}
	return nil
}

// indexStatusDoc is walflow index status --json.
type indexStatusDoc struct {
	LedgerHead event.Position `json:"ledger_head"`
	LedgerTail event.Position `json:"ledger_tail"`
	// LedgerHeadFrom says where the head and the figures come from: the running walflow's
	// /status, or the index store (the key every status command uses).
	LedgerHeadFrom string        `json:"ledger_head_from"`
	Indexes        []indexStatus `json:"indexes"`
}

// indexStatus is one index's line of walflow index status.
type indexStatus struct {
	Name string `json:"name"`
	// Phase is stopped when read from the index store; from a running walflow, live when
	// the index has indexed the head and catching_up otherwise, or not_running when the
	// running walflow lacks the index (its configuration differs).
	Phase string `json:"phase"`
	// Checkpoint is the last ledger position indexed; 0 while not built.
	Checkpoint event.Position `json:"checkpoint"`
	// LagEvents is the ledger head minus Checkpoint.
	LagEvents uint64 `json:"lag_events"`
	// Since is where the index's history starts: retention had removed the events up to
	// it when it was built. 0 for the whole history.
	Since event.Position `json:"since"`
	// Built says whether the index store holds the index; false before its first build.
	Built bool `json:"built"`
}

func indexStatusMain(ctx context.Context, e *env, path string, asJSON bool) error {
	const cmd = "index status"
	c, err := loadConfig(path, e.getenv)
	if err != nil {
		return err
	}
	if len(c.Engine.Indexers) == 0 {
		return usagef("%s: %s configures no indexes; add an indexes: block, like indexes: {by_user: {field: user_id}} (walflow.example.yaml shows one)", cmd, path)
	}
	doc, ok := runningIndexes(ctx, c)
	if !ok {
		if doc, err = storedIndexes(ctx, cmd, c, path); err != nil {
			return err
		}
	}
	if asJSON {
		return printJSON(e.stdout, &doc)
	}
	writeIndexStatus(e.stdout, &doc)
	return nil
}

// storedIndexes reads the indexes' checkpoints from the index store, while no walflow runs.
func storedIndexes(ctx context.Context, cmd string, c *configfile.Config, path string) (indexStatusDoc, error) {
	f, err := openLocal(ctx, cmd, c, path, true, false)
	if err != nil {
		return indexStatusDoc{}, err
	}
	defer f.Close()
	r, err := f.runner(c.Engine.Indexers)
	if err != nil {
		return indexStatusDoc{}, err
	}
	sts, err := r.Status(ctx)
	if err != nil {
		return indexStatusDoc{}, fmt.Errorf("%s: %w", cmd, err)
	}
	st := f.led.State()
	from := "the index store " + indexDir(c)
	if f.clu != nil {
		from = f.clu.source()
	}
	doc := indexStatusDoc{LedgerHead: st.Head, LedgerTail: st.Tail, LedgerHeadFrom: from, Indexes: []indexStatus{}}
	for _, s := range sts {
		doc.Indexes = append(doc.Indexes, indexStatus{Name: s.Indexer, Phase: s.Phase.String(), Checkpoint: s.Checkpoint,
			LagEvents: s.Lag, Since: s.Since, Built: s.Stored})
	}
	return doc, nil
}

// runningIndexes reads the indexes' progress from the /status of the walflow running at
// http.addr; ok is false when none answers.
func runningIndexes(ctx context.Context, c *configfile.Config) (doc indexStatusDoc, ok bool) {
	if c.Engine.HTTPAddr == "" {
		return doc, false
	}
	url := "http://" + c.Engine.HTTPAddr + "/status"
	st, err := getStatus(ctx, url)
	if err != nil {
		return doc, false
	}
	doc = indexStatusDoc{LedgerHead: event.Position(st.LedgerHead), LedgerTail: event.Position(st.LedgerTail),
		LedgerHeadFrom: "the running walflow at " + url, Indexes: []indexStatus{}}
	byName := map[string]index.Status{}
	names := indexNames(c)
	for _, s := range st.Indexes {
		byName[s.Indexer] = s
		// The configured indexes first, in order, then those only the running walflow has.
		if !slices.Contains(names, s.Indexer) {
			names = append(names, s.Indexer)
		}
	}
	for _, n := range names {
		s, ok := byName[n]
		if !ok {
			// Configured, but not in the running walflow: its configuration differs.
			doc.Indexes = append(doc.Indexes, indexStatus{Name: n, Phase: "not_running"})
			continue
		}
		doc.Indexes = append(doc.Indexes, indexStatus{Name: n, Phase: s.Phase.String(), Checkpoint: s.Checkpoint,
			LagEvents: s.Lag, Since: s.Since, Built: s.Stored})
	}
	return doc, true
}

// writeIndexStatus prints the indexes for people.
func writeIndexStatus(w io.Writer, doc *indexStatusDoc) {
	fmt.Fprintf(w, "ledger head: position %d (from %s)\n\n", doc.LedgerHead, doc.LedgerHeadFrom)
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tCHECKPOINT\tLAG\tPHASE\tSINCE")
	unbuilt := false
	for _, s := range doc.Indexes {
		cp, lag, since := "-", "-", "-"
		if s.Built {
			cp, lag = s.Checkpoint.String(), strconv.FormatUint(s.LagEvents, 10)
			if s.Since > 0 {
				since = s.Since.String()
			}
		} else {
			unbuilt = true
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, cp, lag, s.Phase, since)
	}
	_ = tw.Flush()
	if unbuilt {
		fmt.Fprintln(w, "\nAn index without a checkpoint is not built yet: walflow run, walflow ledger read --index")
		fmt.Fprintln(w, "or walflow index rebuild builds it.")
	}
}
