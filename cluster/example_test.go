package cluster_test

import (
	"fmt"
	"time"

	"github.com/walflow/walflow/cluster"
)

// A node's view of a three-node cluster: the leader, each node's lag, and where the
// operators run.
func ExampleNewStatus() {
	since := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	st := cluster.NewStatus("node-2", []cluster.NodeInfo{
		{Name: "node-1", Role: cluster.RoleLeader, LeaderSince: since, Position: 1200, Operators: []string{"post_stats"}},
		{Name: "node-2", Role: cluster.RoleStandby, Position: 1195, Projectors: []string{"search"}},
		{Name: "node-3", Role: cluster.RoleStandby, Position: 1200},
	}, 1195)
	fmt.Println("leader:", st.Leader, "since", st.LeaderSince.Format(time.TimeOnly))
	for _, n := range st.Nodes {
		fmt.Println(n.Name, n.Role, "lag", n.Lag)
	}
	fmt.Println(st.Operators, st.Projectors)
	// Output:
	// leader: node-1 since 10:00:00
	// node-1 leader lag 0
	// node-2 standby lag 5
	// node-3 standby lag 0
	// [{post_stats node-1}] [{search node-2}]
}

// A node of a three-machine cluster, each machine running an embedded NATS server routed
// to the others'.
func ExampleConfig() {
	cfg := cluster.Config{
		NodeName: "node-1",
		Server: &cluster.ServerConfig{
			Listen:        "0.0.0.0:4222",
			ClusterListen: "0.0.0.0:6222",
			Routes:        []string{"10.0.0.1:6222", "10.0.0.2:6222", "10.0.0.3:6222"},
			StoreDir:      "/var/lib/walflow/nats",
		},
	}.WithDefaults()
	fmt.Println(cfg.Validate(), cfg.Replicas, cfg.Server.Sync, cfg.Stream)
	// Output: <nil> 3 always walflow
}
