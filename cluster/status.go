package cluster

import (
	"cmp"
	"slices"
	"time"
)

// Status is the cluster as one node sees it, for /status and walflow status.
type Status struct {
	// Node is the name of the node that answered; "" when no node answered and walflow
	// status read the registry itself.
	Node string `json:"node"`
	// Leader is the node that streams the replication slot; "" when none does (a
	// takeover is under way, or PostgreSQL is unreachable).
	Leader string `json:"leader,omitempty"`
	// LeaderSince is when Leader became leader.
	LeaderSince time.Time `json:"leader_since,omitzero"`
	// Head is the highest ledger position any node reports.
	Head uint64 `json:"head"`
	// Nodes are the live nodes, sorted by name, each with its lag.
	Nodes []NodeStatus `json:"nodes"`
	// Operators, Projectors and Indexes name the node that runs each operator, projector
	// and custom index, sorted by name; one that runs nowhere (its holder died and nobody
	// has taken it yet) is missing.
	Operators  []Assignment `json:"operators,omitempty"`
	Projectors []Assignment `json:"projectors,omitempty"`
	Indexes    []Assignment `json:"indexes,omitempty"`
	// Error says why the registry could not be read; "" when it was.
	Error string `json:"error,omitempty"`
}

// NodeStatus is a node's registry entry with its lag.
type NodeStatus struct {
	NodeInfo
	// Lag is how many positions the node is behind Status.Head.
	Lag uint64 `json:"lag"`
}

// Assignment says which node runs an operator, projector or index.
type Assignment struct {
	Name string `json:"name"`
	Node string `json:"node"`
}

// NewStatus builds the status that node self reports from the registry's nodes (as
// [Registry.Nodes] returns them, sorted by name). head is the stream's last position as
// self knows it; the highest of it and the nodes' positions is the head.
func NewStatus(self string, nodes []NodeInfo, head uint64) Status {
	st := Status{Node: self, Head: head, Nodes: make([]NodeStatus, 0, len(nodes))}
	for _, n := range nodes {
		st.Head = max(st.Head, n.Position)
	}
	for _, n := range nodes {
		st.Nodes = append(st.Nodes, NodeStatus{NodeInfo: n, Lag: st.Head - n.Position})
		// Two leaders show up only while a deposed one's entry has not expired: the one
		// that led last is the leader.
		if n.Role == RoleLeader && (st.Leader == "" || n.LeaderSince.After(st.LeaderSince)) {
			st.Leader, st.LeaderSince = n.Name, n.LeaderSince
		}
		for _, o := range n.Operators {
			st.Operators = append(st.Operators, Assignment{Name: o, Node: n.Name})
		}
		for _, p := range n.Projectors {
			st.Projectors = append(st.Projectors, Assignment{Name: p, Node: n.Name})
		}
		for _, x := range n.Indexes {
			st.Indexes = append(st.Indexes, Assignment{Name: x, Node: n.Name})
		}
	}
	sortAssignments(st.Operators)
	sortAssignments(st.Projectors)
	sortAssignments(st.Indexes)
	return st
}

func sortAssignments(a []Assignment) {
	slices.SortFunc(a, func(x, y Assignment) int { return cmp.Or(cmp.Compare(x.Name, y.Name), cmp.Compare(x.Node, y.Node)) })
}
