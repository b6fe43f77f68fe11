package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/internal/configfile"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/source/pgwal"
)

// writeClusterStatus prints the cluster part of a node's status: the leader, each node's
// role, stream position and lag, and where each operator, projector and index runs.
func writeClusterStatus(w io.Writer, c *cluster.Status) {
	if c.Node == "" {
		fmt.Fprintln(w, "\ncluster (from the node registry: no node answered)")
	} else {
		fmt.Fprintf(w, "\ncluster (as node %s sees it)\n", c.Node)
	}
	if c.Error != "" {
		fmt.Fprintf(w, "  the node registry could not be read: %s\n", c.Error)
	}
	switch {
	case c.Leader == "" && c.Error != "":
		fmt.Fprintln(w, "  leader: unknown (the registry could not be read)")
	case c.Leader == "" && c.Node == "" && len(c.Nodes) == 0:
		fmt.Fprintln(w, "  leader: none (no node is live)")
	case c.Leader == "":
		fmt.Fprintln(w, "  leader: none (a takeover is under way, or PostgreSQL is unreachable)")
	default:
		fmt.Fprintf(w, "  leader: %s since %s (%s)\n", c.Leader, c.LeaderSince.Format(time.RFC3339), time.Since(c.LeaderSince).Round(time.Second))
	}
	if len(c.Nodes) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tROLE\tPOSITION\tLAG\tHTTP\tRUNS")
	for _, n := range c.Nodes {
		var runs []string
		for _, o := range n.Operators {
			runs = append(runs, "operator "+o)
		}
		for _, p := range n.Projectors {
			runs = append(runs, "projector "+p)
		}
		for _, x := range n.Indexes {
			runs = append(runs, "index "+x)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\t%s\n", n.Name, n.Role, n.Position, n.Lag, dash(n.HTTPAddr), dash(strings.Join(runs, ", ")))
	}
	_ = tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// clusterSource says, for the human form, where the status of a configuration with a
// cluster: section came from when this machine's node did not answer at http.addr.
type clusterSource struct {
	local string // why this machine's node was not the one shown
	// node and url name the node that answered; "" when none did.
	node, url string
	// failed lists the nodes asked that did not answer with this slot's status.
	failed []string
	// stream names the stream read (and its NATS servers) when no node answered.
	stream string
}

// write prints the header of the status: which node answered, or that the figures come
// from the stream and the database.
func (s *clusterSource) write(w io.Writer, running bool) {
	fmt.Fprintln(w, s.local+".")
	for _, f := range s.failed {
		fmt.Fprintf(w, "Nor did %s.\n", f)
	}
	if running {
		fmt.Fprintf(w, "Node %s answered at %s: the status below is that node's.\n\n", s.node, s.url)
		return
	}
	fmt.Fprintf(w, "No node answered: the figures come from %s and the database (slot measured in PostgreSQL, operators as stored in walflow.operators).\n\n", s.stream)
}

// fetchClusterStatus is the status of a configuration with a cluster: section (read from
// path) when this machine's node does not answer at http.addr. It reads the cluster's
// node registry and asks the live nodes' /status in turn, the leader first and then by
// name, showing the first that follows this configuration's slot. When none answers, it
// builds the status itself without starting anything: the ledger from the stream opened
// read-only, the slot measured in PostgreSQL, the operators as stored in walflow.operators
// and the cluster part from the registry. It never creates the stream, the buckets, a slot
// or a publication, and never leads.
func fetchClusterStatus(ctx context.Context, c *configfile.Config, path string) (walflow.Status, statusSource, error) {
	slot := cmp.Or(c.Engine.Slot, pgwal.SlotDefault)
	src := &clusterSource{local: "This machine's node did not answer at " + c.Engine.HTTPAddr}
	if c.Engine.HTTPAddr == "" {
		src.local = "This machine's node serves no HTTP (http.addr is off)"
	}
	cf, err := dialCluster("status", c, path)
	if err != nil {
		return walflow.Status{}, statusSource{}, &clusterUnreadError{local: src.local, err: err}
	}
	cc := *c.Engine.Cluster
	cc.Logger = slog.New(slog.DiscardHandler)
	rctx, cancel := context.WithTimeout(ctx, natsTimeout)
	nodes, regErr := cluster.ReadNodes(rctx, cf.nc, cc.WithDefaults())
	cancel()

	// Ask the live nodes: the leader first (the latest, should a deposed one linger), then
	// by name.
	asked := slices.Clone(nodes)
	slices.SortStableFunc(asked, func(a, b cluster.NodeInfo) int {
		return cmp.Or(cmp.Compare(rank(a), rank(b)), b.LeaderSince.Compare(a.LeaderSince))
	})
	for _, n := range asked {
		if n.HTTPAddr == "" || n.HTTPAddr == c.Engine.HTTPAddr {
			continue
		}
		url := "http://" + n.HTTPAddr + "/status"
		st, err := getStatus(ctx, url)
		var he *httpStatusError
		switch {
		case errors.As(err, &he):
			src.failed = append(src.failed, fmt.Sprintf("node %s at %s, which answered %s", n.Name, url, he.msg))
		case err != nil:
			src.failed = append(src.failed, fmt.Sprintf("node %s at %s (%v)", n.Name, url, err))
		case st.Slot != slot:
			src.failed = append(src.failed, fmt.Sprintf("node %s at %s, which follows slot %s, not %s", n.Name, url, st.Slot, slot))
		default:
			cf.close()
			src.node, src.url = n.Name, url
			return st, statusSource{running: true, where: url, cluster: src}, nil
		}
	}

	// No node answers: the stream, the database and the registry as they are. Opening the
	// stream reads it whole, so it comes only now. The channel index lets the stored
	// operators' positions move past events of other tables; it is built only when there
	// are operators to show.
	withChannels := len(c.Engine.Operators) > 0
	f, err := openClusterOn(ctx, cf, "status", c, path, false, withChannels)
	if err != nil {
		return walflow.Status{}, statusSource{}, &clusterUnreadError{local: src.local, err: err}
	}
	defer f.Close()
	src.stream = fmt.Sprintf("the stream %s at %s", cf.stream, cf.urls)
	st := walflow.MeasureSlot(ctx, c.Engine.DatabaseURL, slot)
	ls := f.led.State()
	st.LedgerHead, st.LedgerTail = uint64(ls.Head), uint64(ls.Tail)
	st.LastCommitLSN, st.AckedLSN = ls.LastCommitLSN, max(ls.AckedLSN, ls.LastEndLSN)
	cs := cluster.NewStatus("", nodes, uint64(ls.Head))
	if regErr != nil {
		cs.Error = regErr.Error()
		if errors.Is(regErr, cluster.ErrNoRegistry) {
			cs.Error += "; walflow run creates it"
		}
	}
	st.Cluster = &cs
	out := statusSource{cluster: src}
	if withChannels {
		// A pool that never connects: the runner only names the configured operators.
		lazy, err := pgxpool.New(ctx, c.Engine.DatabaseURL)
		if err != nil {
			return walflow.Status{}, statusSource{}, fmt.Errorf("status: database_url in %s: %w", path, err)
		}
		r, err := operator.New(operator.Config{DB: lazy, Instance: slot, Ledger: f.led, Operators: c.Engine.Operators, Logger: slog.New(slog.DiscardHandler)})
		lazy.Close()
		if err != nil {
			return walflow.Status{}, statusSource{}, fmt.Errorf("status: operators in %s: %w", path, err)
		}
		st.Operators = r.Operators()
		out.opsErr = storedOperators(ctx, c, f.led, &st)
	}
	return st, out, nil
}

// clusterUnreadError is status's failure to read the cluster (its NATS servers, its
// stream) once this machine's node did not answer: it says both.
type clusterUnreadError struct {
	local string // "This machine's node did not answer at ..."
	err   error  // openCluster's, which starts with "status: "
}

func (e *clusterUnreadError) Error() string {
	return "status: " + strings.ToLower(e.local[:1]) + e.local[1:] + ", and the cluster could not be read: " + strings.TrimPrefix(e.err.Error(), "status: ")
}

func (e *clusterUnreadError) Unwrap() error { return e.err }

// rank orders the nodes to ask: the leader first.
func rank(n cluster.NodeInfo) int {
	if n.Role == cluster.RoleLeader {
		return 0
	}
	return 1
}
