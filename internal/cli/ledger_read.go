package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/eventline"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/operator"
)

var ledgerCommand = &command{
	name:    "ledger",
	args:    "COMMAND [flags]",
	summary: "Read the ledger's events: all, a channel's, or an index value's; migrate a pebble ledger.",
	help: `
The ledger commands open the ledger directory (ledger.dir) and the index directory beside
it (ledger.dir + ".index") themselves. A ledger of the disk backend is opened read-only,
beside a running walflow; the index directory (and a ledger of the pebble backend) only
while walflow run is stopped: a running walflow holds it, and the command says so
(ledger read --index then asks the running walflow, given the admin token).`,
	subs: []*command{ledgerReadCommand, ledgerMigrateCommand},
}

var ledgerReadCommand = &command{
	name:    "read",
	args:    "[--index NAME --value V | --channel C] [--after P] [--limit N] [--json] [--config FILE]",
	summary: "Print events in ledger order: all, a channel's, or those of one value of an index.",
	help: `
read prints the ledger's events in position order, one line each (position, commit LSN,
table, type, what changed, channels), or one JSON object per line with --json:

  --index NAME --value V   the events the index NAME (indexes: in the configuration) gave
                           the value V, like --index by_post --value 1
  --channel C              the events delivered on channel C, like posts/1/comments
  neither                  every event

It starts after position --after (by default at the oldest event retention kept) and
stops after --limit events (0: no limit). An index is first brought up to the ledger's
head: read indexes the events walflow run had not indexed yet (and builds an index added
to the configuration since), so the answer is complete. read opens the files directly: it
reads a disk ledger as it was when read started, beside a running walflow. With --index
beside a running walflow, whose index store only it may open, read asks it over HTTP
(http.addr) with the admin token (http.admin_token_env or _file, the same for both), and
prints what the running walflow has indexed so far; without an admin token, stop walflow
run first (as for a pebble ledger). With a cluster: section, read reads the cluster's
stream, and --index the index store the nodes share, through its stored checkpoint.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		idx := fs.String("index", "", "read the events of one value of the index `NAME`")
		value := fs.String("value", "", "the index value `V` whose events to read (with --index)")
		ch := fs.String("channel", "", "read the events of channel `C`")
		after := fs.String("after", "", "start after ledger position `P` (default: the oldest event kept)")
		limit := fs.Int("limit", 0, "print at most `N` events; 0 prints them all")
		asJSON := fs.Bool("json", false, "print one JSON event per line")
		return func(ctx context.Context, e *env, _ []string) error {
			set := map[string]bool{}
			fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
			q := readQuery{index: *idx, value: *value, channel: *ch, limit: *limit, json: *asJSON}
			switch {
			case set["index"] && !set["value"]:
				return usagef("ledger read: --index %s needs --value V, the value whose events to read", *idx)
			case set["value"] && !set["index"]:
				return usagef("ledger read: --value needs --index NAME, the index the value is in")
			case set["index"] && *idx == "":
				return usagef("ledger read: --index is empty; give the name of an index of the configuration, like by_user")
			case set["index"] && set["channel"]:
				return usagef("ledger read: give --index or --channel, not both")
			case set["channel"] && *ch == "":
				return usagef("ledger read: --channel is empty; give a channel like posts or posts/1/comments")
			case *limit < 0:
				return usagef("ledger read: --limit %d is negative; give a number of events, or 0 for no limit", *limit)
			}
			if set["after"] {
				pos, err := event.ParsePosition(*after)
				if err != nil {
					return usagef("ledger read: --after %q is not a ledger position; give a decimal position like 1042 (0: the beginning)", *after)
				}
				q.after = &pos
			}
			return ledgerReadMain(ctx, e, *path, q)
		}
	},
}

// readQuery is what walflow ledger read reads.
type readQuery struct {
	index, value string          // with index set: the events of one index value
	channel      string          // or, with channel set: the events of one channel
	after        *event.Position // nil: the ledger's tail
	limit        int             // 0: no limit
	json         bool
}

// readPage is how many events ledger read reads at a time.
const readPage = 1000

func ledgerReadMain(ctx context.Context, e *env, path string, q readQuery) error {
	const cmd = "ledger read"
	c, err := loadConfig(path, e.getenv)
	if err != nil {
		return err
	}
	if q.index != "" || q.value != "" {
		if _, err := findIndex(cmd, c, path, q.index); err != nil {
			return err
		}
	}
	f, err := openLocal(ctx, cmd, c, path, q.index != "", q.channel != "")
	var remote *indexClient
	if iu := (*inUseError)(nil); q.index != "" && errors.As(err, &iu) && iu.what == "index" {
		// A running walflow holds the index store: ask it, with the admin token.
		if remote, err = newIndexClient(cmd, c, e.getenv, iu); err != nil {
			return err
		}
		f, err = openLocal(ctx, cmd, c, path, false, q.channel != "")
	}
	if err != nil {
		return err
	}
	defer f.Close()

	var read func(after event.Position, n int) ([]event.Event, error)
	what := "events"
	switch {
	case remote != nil:
		read = func(after event.Position, n int) ([]event.Event, error) {
			return remote.read(ctx, q.index, q.value, after, n)
		}
		what = fmt.Sprintf("events of %s %s", q.index, strconv.Quote(q.value))
	case q.index != "" && f.clu != nil:
		// The node holding the indexes' lock computes them into the shared store: read
		// what it stored, through its checkpoint (never past this process's view of the
		// stream).
		st, ok, err := f.store.State(ctx, q.index)
		if err != nil {
			return fmt.Errorf("%s: read the state of %s in the index store: %w", cmd, q.index, err)
		}
		if !ok {
			return fmt.Errorf("%s: the index %s is not built in the cluster's index store yet: a walflow run node computes it (or walflow index rebuild %s --config %s)", cmd, q.index, q.index, path)
		}
		through := min(st.Checkpoint, f.led.State().Head)
		if through < f.led.State().Head {
			fmt.Fprintf(e.stderr, "The index %s has indexed the stream through position %d of %d; later events are not listed.\n", q.index, through, f.led.State().Head)
		}
		read = func(after event.Position, n int) ([]event.Event, error) {
			return readStored(ctx, f, q.index, q.value, after, through, n)
		}
		what = fmt.Sprintf("events of %s %s", q.index, strconv.Quote(q.value))
	case q.index != "":
		r, err := f.runner(c.Engine.Indexers)
		if err != nil {
			return err
		}
		var progress operator.ProgressFunc
		if isTerminal(e.stderr) {
			progress = newProgressPrinter(e.stderr, true, "events")
		}
		if err := f.catchUp(ctx, r, progress); err != nil {
			return err
		}
		read = func(after event.Position, n int) ([]event.Event, error) {
			return r.Read(ctx, q.index, q.value, after, n)
		}
		what = fmt.Sprintf("events of %s %s", q.index, strconv.Quote(q.value))
	case q.channel != "":
		keys := []string{q.channel}
		read = func(after event.Position, n int) ([]event.Event, error) {
			return f.led.ReadKeys(ctx, keys, after, n)
		}
		what = "events on channel " + q.channel
	default:
		read = func(after event.Position, n int) ([]event.Event, error) {
			return f.led.Read(ctx, after, n)
		}
	}

	w := bufio.NewWriter(e.stdout)
	p := eventPrinter{w: w, f: f, json: q.json, color: !q.json && isTerminal(e.stdout) && e.getenv("NO_COLOR") == ""}
	p.tableWidth = eventline.TableWidth
	for _, t := range c.Engine.Tables {
		p.tableWidth = max(p.tableWidth, utf8.RuneCountInString(t.Name))
	}
	from := f.led.State().Tail
	if q.after != nil {
		from = *q.after
	}
	count, after := 0, from
	for q.limit == 0 || count < q.limit {
		n := readPage
		if q.limit > 0 {
			n = min(n, q.limit-count)
		}
		evs, err := read(after, n)
		if err != nil {
			w.Flush()
			if te := (*ledger.TruncatedError)(nil); errors.As(err, &te) {
				return usagef("%s: --after %d is before the ledger's tail: retention removed the events up to position %d; give --after %d or later", cmd, from, te.Tail, te.Tail)
			}
			return fmt.Errorf("%s: %w", cmd, err)
		}
		for i := range evs {
			p.print(&evs[i])
		}
		count += len(evs)
		if len(evs) < n {
			break
		}
		after = evs[len(evs)-1].Position
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if count == 0 && !q.json {
		fmt.Fprintf(e.stderr, "No %s after position %d (the ledger head is %d).\n", what, from, f.led.State().Head)
	}
	return nil
}

// storedSpan is how many events readStored reads from the ledger at a time.
const storedSpan = 256

// readStored returns up to n events after position after, through position through, that
// the index store gives value in index: positions from the store, events from the ledger.
func readStored(ctx context.Context, f *localFiles, index, value string, after, through event.Position, n int) ([]event.Event, error) {
	if tail := f.led.State().Tail; after < tail {
		return nil, &ledger.TruncatedError{After: after, Tail: tail}
	}
	ps, err := f.store.Positions(ctx, index, value, after, n)
	if err != nil {
		return nil, fmt.Errorf("read %s %q in the index store: %w", index, value, err)
	}
	var out, buf []event.Event
	for _, p := range ps {
		if p > through {
			break
		}
		for len(buf) > 0 && buf[0].Position < p {
			buf = buf[1:]
		}
		if len(buf) == 0 {
			if buf, err = f.led.Read(ctx, p-1, int(min(storedSpan, through-p+1))); err != nil {
				return nil, err
			}
		}
		if len(buf) == 0 || buf[0].Position != p {
			return nil, fmt.Errorf("the event at position %d, which the index %s gives %q, is not in the stream; rebuild the index (walflow index rebuild %s)", p, index, value, index)
		}
		out = append(out, buf[0])
	}
	return out, nil
}

// eventPrinter writes events as lines for people, or as JSON lines.
type eventPrinter struct {
	w          io.Writer
	f          *localFiles
	json       bool
	color      bool
	tableWidth int
	buf        []byte
	channels   []string
}

func (p *eventPrinter) print(ev *event.Event) {
	if p.json {
		p.buf = append(ev.AppendJSON(p.buf[:0]), '\n')
		p.w.Write(p.buf)
		return
	}
	p.channels = p.f.router.Channels(ev, p.channels[:0])
	fmt.Fprintln(p.w, eventline.LineWidth(ev, p.f.router.Table(ev.Name), p.channels, p.color, p.tableWidth))
}
