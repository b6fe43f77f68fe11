package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/walflow/walflow/cluster"
)

// writeClusterStatus prints the cluster part of a node's status: the leader, each node's
// role, stream position and lag, and where each operator, projector and index runs.
func writeClusterStatus(w io.Writer, c *cluster.Status) {
	fmt.Fprintf(w, "\ncluster (as node %s sees it)\n", c.Node)
	if c.Error != "" {
		fmt.Fprintf(w, "  the node registry could not be read: %s\n", c.Error)
	}
	if c.Leader == "" {
		fmt.Fprintln(w, "  leader: none (a takeover is under way, or PostgreSQL is unreachable)")
	} else {
		fmt.Fprintf(w, "  leader: %s since %s (%s)\n", c.Leader, c.LeaderSince.Format(time.RFC3339), time.Since(c.LeaderSince).Round(time.Second))
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
