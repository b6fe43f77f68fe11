package cluster_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/source/pgwal"
)

// A node's view of a three-node cluster: the leader, each node's lag, and where the
// operators, projectors and indexes run.
func ExampleNewStatus() {
	since := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	st := cluster.NewStatus("node-2", []cluster.NodeInfo{
		{Name: "node-1", Role: cluster.RoleLeader, LeaderSince: since, Position: 1200, Operators: []string{"post_stats"}},
		{Name: "node-2", Role: cluster.RoleStandby, Position: 1195, Projectors: []string{"search"}},
		{Name: "node-3", Role: cluster.RoleStandby, Position: 1200, Indexes: []string{"by_user", "tags"}},
	}, 1195)
	fmt.Println("leader:", st.Leader, "since", st.LeaderSince.Format(time.TimeOnly))
	for _, n := range st.Nodes {
		fmt.Println(n.Name, n.Role, "lag", n.Lag)
	}
	fmt.Println(st.Operators, st.Projectors, st.Indexes)
	// Output:
	// leader: node-1 since 10:00:00
	// node-1 leader lag 0
	// node-2 standby lag 5
	// node-3 standby lag 0
	// [{post_stats node-1}] [{search node-2}] [{by_user node-3} {tags node-3}]
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

// One node of a cluster: the registry heartbeat, and a replication source that contends for
// the slot through the Elector. lead stands for the shared ledger's Lead method, and sink
// for that ledger.
func ExampleElector() {
	ctx := context.Background()
	cfg := cluster.Config{URLs: []string{"nats://10.0.0.1:4222"}, NodeName: "node-1"}.WithDefaults()
	if err := cfg.Validate(); err != nil {
		log.Fatal(err)
	}
	conn, err := cluster.Connect(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	reg, err := cluster.OpenRegistry(ctx, conn.NC, cfg)
	if err != nil {
		log.Fatal(err)
	}
	lead := func(context.Context) error { return nil }
	src, err := pgwal.New(pgwal.Config{
		ConnString: "postgres://walflow@db:5432/app",
		Standby:    cluster.NewElector(reg).Standby(lead),
	})
	if err != nil {
		log.Fatal(err)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// The heartbeat publishes the source's replication connection; the source waits
		// for it before it contends.
		return reg.Run(ctx, func() cluster.NodeInfo {
			role, since, pid := cluster.SourceRole(src.Stats())
			return cluster.NodeInfo{Role: role, LeaderSince: since, ReplicationPID: pid, HTTPAddr: "10.0.0.1:9187"}
		})
	})
	var sink pgwal.Sink // the shared ledger
	g.Go(func() error { return src.Run(ctx, sink) })
	if err := g.Wait(); err != nil {
		log.Fatal(err)
	}
}
