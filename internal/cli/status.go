package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/configfile"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/source/pgwal"
)

var statusCommand = &command{
	name:    "status",
	args:    "[--config FILE] [--json]",
	summary: "Show the slot, its lag and the ledger of the configured engine.",
	help: `
status asks the running engine (GET http://<http.addr>/status). When none answers, it opens
the ledger itself and measures the slot in PostgreSQL. It prints the slot (active or not),
its confirmed LSN, the WAL it retains and how far it lags, the ledger's head position and
last commit LSN, each operator of this instance (the configured slot's: several walflows,
each with its own slot and ledger, may share a database) with its position, from the
running engine or else as stored in walflow.operators (as walflow operator status shows
it), and, from a running engine, every budget of alerts that is crossed. An operator's
position is the ledger position through which it has applied every event of its entities;
its checkpoint (walflow operator status --json) is what walflow.operators stores, which
moves only with its own events, so the position may be ahead of it. The exit code is 1
when the slot could not be read, or when the walflow answering on http.addr follows
another slot.

With a cluster: section, status never opens a node. When this machine's node does not
answer on http.addr, it reads the cluster's node registry and asks the live nodes' HTTP
addresses, the leader first and then by name: the first that follows the same slot
answers, and the output names it. When none answers, it builds the status without
starting anything: the ledger from the stream opened read-only, the slot measured in
PostgreSQL, the operators as stored in walflow.operators and the nodes from the registry
(with the error when it cannot be read); it creates no stream, bucket, slot or
publication. NATS servers that cannot be reached, or a missing stream, fail (exit 1).

The --json document is the engine's /status (walflow.Status): the slot, the ledger and the
operators, and from a running engine its indexes and projectors, under the keys that
walflow index status --json and walflow projector status --json use (name, phase,
checkpoint or position, lag_events).`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := fs.String("config", configfile.ConfigFileDefault, "the configuration `FILE`")
		asJSON := fs.Bool("json", false, "print the status as JSON")
		return func(ctx context.Context, e *env, _ []string) error { return statusMain(ctx, e, *path, *asJSON) }
	},
}

// statusSource says where a status came from, for the human form.
type statusSource struct {
	running bool   // from the running engine's /status
	where   string // its URL, or the ledger directory
	opsErr  error  // why the stored operators could not be read, when not running
	cluster *clusterSource
}

func statusMain(ctx context.Context, e *env, path string, asJSON bool) error {
	c, err := loadConfig(path, e.getenv)
	if err != nil {
		return err
	}
	st, src, err := fetchStatus(ctx, c, path)
	if err != nil {
		return err
	}
	if asJSON {
		if err := printJSON(e.stdout, st); err != nil {
			return err
		}
	} else {
		writeStatus(e.stdout, st, src)
	}
	if st.SlotError != "" {
		return fmt.Errorf("status: slot %s: %s", st.Slot, st.SlotError)
	}
	return nil
}

// fetchStatus asks the running engine, or else opens the ledger and measures the slot.
// With a cluster: section, it asks the cluster's other nodes, or else reads the stream
// (see fetchClusterStatus).
func fetchStatus(ctx context.Context, c *configfile.Config, path string) (walflow.Status, statusSource, error) {
	if c.Engine.HTTPAddr != "" {
		url := "http://" + c.Engine.HTTPAddr + "/status"
		st, err := getStatus(ctx, url)
		if err == nil {
			if slot := cmp.Or(c.Engine.Slot, pgwal.SlotDefault); st.Slot != slot {
				return walflow.Status{}, statusSource{}, fmt.Errorf("status: the walflow at %s follows slot %s, but this configuration's slot is %s: it is another instance; give each instance its own http.addr", url, st.Slot, slot)
			}
			return st, statusSource{running: true, where: url}, nil
		}
		var he *httpStatusError
		if errors.As(err, &he) {
			// Something answers on the address but is not a healthy walflow.
			return walflow.Status{}, statusSource{}, err
		}
	}
	if c.Engine.Cluster != nil {
		return fetchClusterStatus(ctx, c, path)
	}
	cfg := c.Engine
	cfg.HTTPAddr = ""
	cfg.Logger = slog.New(slog.DiscardHandler)
	where := cfg.LedgerDir
	if !cfg.MemoryLedger {
		if _, err := os.Stat(cfg.LedgerDir); errors.Is(err, os.ErrNotExist) {
			// Nothing ran yet: do not create the directory just to say it is empty.
			cfg.MemoryLedger = true
			where += " (does not exist yet)"
		}
	} else {
		where = "memory (empty: the engine is not running)"
	}
	eng, err := walflow.Open(ctx, cfg)
	if err != nil {
		return walflow.Status{}, statusSource{}, fmt.Errorf("status: no engine answers on %s, and opening its ledger failed (an engine running without http.addr holds it): %w", shownAddr(c.Engine.HTTPAddr), err)
	}
	st := eng.Status(ctx)
	src := statusSource{where: where}
	src.opsErr = storedOperators(ctx, c, eng.Ledger(), &st)
	if err := eng.Close(); err != nil {
		return walflow.Status{}, statusSource{}, fmt.Errorf("status: close the ledger: %w", err)
	}
	return st, src, nil
}

// storedOperators sets the operators of a status read while walflow is not running to
// their stored state in walflow.operators for this instance (st.Slot), as walflow operator
// status shows it: the position is the checkpoint, or later when the ledger's events after
// it are all of other tables. It leaves them at position 0 when no walflow has run in the
// database, and returns why they could not be read otherwise.
func storedOperators(ctx context.Context, c *configfile.Config, led ledger.Ledger, st *walflow.Status) error {
	if len(st.Operators) == 0 {
		return nil
	}
	pool, err := pgxpool.New(ctx, c.Engine.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	stored, err := operator.Statuses(ctx, pool, st.Slot)
	if isUndefinedTable(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for i := range st.Operators {
		o := &st.Operators[i]
		for _, s := range stored {
			if s.Name != o.Name {
				continue
			}
			o.Position, o.Halted = s.Position, s.Halted
			keys := make([]string, len(o.Entities))
			for j, ent := range o.Entities {
				keys[j] = event.TableName(ent)
			}
			if p, ok := appliedThrough(ctx, led, keys, s.Position); ok {
				o.Position = max(o.Position, p)
			}
		}
	}
	return nil
}

// shownAddr names the HTTP address in errors.
func shownAddr(addr string) string {
	if addr == "" {
		return "http (http.addr is off)"
	}
	return addr
}

// httpStatusError is a /status answer that is not a walflow status.
type httpStatusError struct {
	url string
	msg string
}

func (e *httpStatusError) Error() string {
	return fmt.Sprintf("status: %s answered %s; is http.addr another program's address?", e.url, e.msg)
}

// getStatus fetches a running engine's /status.
func getStatus(ctx context.Context, url string) (walflow.Status, error) {
	body, status, err := fetch(ctx, url, 1<<20)
	if err != nil {
		return walflow.Status{}, err
	}
	if status != "" {
		return walflow.Status{}, &httpStatusError{url: url, msg: status}
	}
	var st walflow.Status
	if err := json.Unmarshal(body, &st); err != nil || st.Slot == "" {
		return walflow.Status{}, &httpStatusError{url: url, msg: "something that is not a walflow status"}
	}
	return st, nil
}

// writeStatus prints the status for people.
func writeStatus(w io.Writer, st walflow.Status, src statusSource) {
	switch {
	case src.cluster != nil:
		src.cluster.write(w, src.running)
	case src.running:
		fmt.Fprintf(w, "walflow is running (status from %s)\n\n", src.where)
	default:
		fmt.Fprintf(w, "walflow is not running (ledger %s, slot measured in PostgreSQL)\n\n", src.where)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	switch {
	case st.SlotError != "":
		row("slot", st.Slot+"  (could not be read; the error follows)")
	case !st.SlotExists:
		row("slot", st.Slot+"  (does not exist: walflow run creates it)")
	default:
		state := "inactive: no walflow is streaming from it"
		if st.SlotActive {
			state = "active"
		}
		if st.SlotWALStatus != "" {
			state += ", wal_status " + st.SlotWALStatus
		}
		row("slot", st.Slot+"  ("+state+")")
		row("confirmed LSN", st.ConfirmedLSN.String())
		row("retained WAL", bytesWithUnit(st.RetainedWAL))
		row("lag", bytesWithUnit(st.SlotLagBytes))
	}
	row("ledger head", "position "+strconv.FormatUint(st.LedgerHead, 10))
	row("last commit LSN", st.LastCommitLSN.String())
	if src.running {
		streaming := "no (see the engine's logs)"
		switch {
		case st.Streaming:
			streaming = "yes"
		case st.Cluster != nil && st.Cluster.Leader != "":
			streaming = "no: this node stands by, " + st.Cluster.Leader + " streams the slot"
		}
		row("streaming", streaming)
		row("events", fmt.Sprintf("%d received, %d appended since start", st.EventsReceived, st.EventsAppended))
		row("reconnects", strconv.FormatUint(st.Reconnects, 10))
	}
	if src.opsErr != nil {
		row("operators", "could not be read: "+src.opsErr.Error())
	}
	for _, o := range st.Operators {
		state := fmt.Sprintf("position %d, %d behind the head", o.Position, st.LedgerHead-min(st.LedgerHead, uint64(o.Position)))
		if o.Halted {
			state += ", HALTED: see walflow operator status"
		}
		row("operator "+o.Name, state)
	}
	for _, a := range st.Alerts {
		row("ALERT "+a.Alert, a.Reason)
	}
	_ = tw.Flush()
	if st.Cluster != nil {
		writeClusterStatus(w, st.Cluster)
	}
}

// bytesWithUnit writes a byte count in binary units with the exact count: "1.5 MiB
// (1572864 bytes)", or "512 bytes".
func bytesWithUnit(n int64) string {
	exact := strconv.FormatInt(n, 10) + " bytes"
	if n < 1024 && n > -1024 {
		return exact
	}
	return humanBytes(n) + " (" + exact + ")"
}

// humanBytes writes a byte count in binary units: 0 B, 512 B, 1.5 KiB, 12.0 MiB.
func humanBytes(n int64) string {
	const units = "KMGTPE"
	neg := n < 0
	if neg {
		n = -n
	}
	var s string
	if n < 1024 {
		s = strconv.FormatInt(n, 10) + " B"
	} else {
		v, i := float64(n)/1024, 0
		for v >= 1024 && i < len(units)-1 {
			v /= 1024
			i++
		}
		s = strconv.FormatFloat(v, 'f', 1, 64) + " " + string(units[i]) + "iB"
	}
	if neg {
		return "-" + s
	}
	return s
}

// fetch GETs url from a running walflow within 10 seconds and returns up to limit bytes of
// its body, or its status line when it is not 200 OK.
func fetch(ctx context.Context, url string, limit int64) (body []byte, status string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, "", err
	}
	// No keep-alive: the connection closes with the response and leaves no goroutine.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, resp.Status, nil
	}
	return body, "", nil
}

// printJSON writes v as indented JSON, the form of every --json output.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeLedgerHead writes the header line of the status commands: the ledger head and where
// it came from, or why it is unknown.
func writeLedgerHead(w io.Writer, head *event.Position, from string) {
	if head != nil {
		fmt.Fprintf(w, "ledger head: position %d (from %s)\n\n", *head, from)
	} else {
		fmt.Fprintf(w, "ledger head: unknown (%s), so the lag is too\n\n", from)
	}
}
