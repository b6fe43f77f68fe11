package cluster

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// newRegistries starts one embedded server and opens the registry as each named node.
func newRegistries(t *testing.T, ttl time.Duration, names ...string) []*Registry {
	t.Helper()
	ctx := testContext(t, time.Minute)
	lc := startOneServer(t, ctx)
	var regs []*Registry
	for _, name := range names {
		reg, _ := openTestRegistry(t, ctx, Config{URLs: lc.URLs(), NodeName: name, Replicas: 1, Heartbeat: 100 * time.Millisecond, NodeTTL: ttl})
		regs = append(regs, reg)
	}
	return regs
}

// waitNodes polls reg until the names of the live nodes are want.
func waitNodes(t *testing.T, ctx context.Context, reg *Registry, want ...string) []NodeInfo {
	t.Helper()
	var names []string
	for {
		nodes, err := reg.Nodes(ctx)
		names = names[:0]
		for _, n := range nodes {
			names = append(names, n.Name)
		}
		if err == nil && slices.Equal(names, want) {
			return nodes
		}
		select {
		case <-ctx.Done():
			t.Fatalf("nodes %v (err %v), want %v", names, err, want)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestRegistryHeartbeats(t *testing.T) {
	t.Parallel()
	regs := newRegistries(t, time.Second, "b", "a")
	ctx := testContext(t, time.Minute)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() {
		done <- regs[0].Run(runCtx, func() NodeInfo {
			return NodeInfo{Role: RoleLeader, LeaderSince: time.Unix(100, 0).UTC(), Position: 42, ReplicationPID: 7, Operators: []string{"op"}}
		})
	}()
	go func() {
		done <- regs[1].Run(runCtx, func() NodeInfo { return NodeInfo{Role: RoleStandby, Position: 40, HTTPAddr: "127.0.0.1:1"} })
	}()
	nodes := waitNodes(t, ctx, regs[1], "a", "b")
	b := nodes[1]
	if b.Role != RoleLeader || b.Position != 42 || b.ReplicationPID != 7 || !b.LeaderSince.Equal(time.Unix(100, 0)) || b.UpdatedAt.IsZero() || !slices.Equal(b.Operators, []string{"op"}) {
		t.Fatalf("node b: %+v", b)
	}
	st := NewStatus("a", nodes, 0)
	if st.Leader != "b" || st.Head != 42 || st.Nodes[0].Lag != 2 || st.Nodes[1].Lag != 0 || len(st.Operators) != 1 || st.Operators[0] != (Assignment{Name: "op", Node: "b"}) {
		t.Fatalf("status: %+v", st)
	}
	// A node that stops leaves at once.
	stop()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	waitNodes(t, ctx, regs[0])
	// A Beat after Run returned writes on the node's connection, not on Run's closed one.
	if err := regs[0].Beat(ctx); err != nil {
		t.Fatalf("Beat after Run returned: %v", err)
	}
	waitNodes(t, ctx, regs[1], "b")
}

// TestRegistryEntryExpires writes one heartbeat and no more, as a frozen or cut-off node
// would, and waits for its entry to expire.
func TestRegistryEntryExpires(t *testing.T) {
	t.Parallel()
	regs := newRegistries(t, 500*time.Millisecond, "frozen", "watcher")
	ctx := testContext(t, time.Minute)
	bctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := regs[0].Beat(bctx); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("Beat before Run = %v, want an error once its context ends", err)
	}
	if err := regs[0].Put(ctx, NodeInfo{Role: RoleLeader}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitNodes(t, ctx, regs[1], "frozen")
	waitNodes(t, ctx, regs[1])
	t.Logf("entry expired %s after its heartbeat (NodeTTL 500ms)", time.Since(start).Round(time.Millisecond))
}

// openTestRegistry connects to the cluster of cfg (filled with its defaults), closed when
// the test ends, and opens its registry as node cfg.NodeName.
func openTestRegistry(t *testing.T, ctx context.Context, cfg Config) (*Registry, *Conn) {
	t.Helper()
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	conn, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	reg, err := OpenRegistry(ctx, conn.NC, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return reg, conn
}

// TestReadNodes: ReadNodes reads the entries Registry.Nodes reads, and with no bucket fails
// with ErrNoRegistry without creating one.
func TestReadNodes(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	lc := startOneServer(t, ctx)
	cfg := Config{URLs: lc.URLs(), NodeName: "reader", Replicas: 1}.WithDefaults()
	conn, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	js, err := jetstream.New(conn.NC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ReadNodes(ctx, conn.NC, cfg); !errors.Is(err, ErrNoRegistry) || !strings.Contains(err.Error(), `bucket "walflow_nodes"`) {
		t.Fatalf("ReadNodes without the bucket: %v; want ErrNoRegistry naming the bucket", err)
	}
	if _, err := js.KeyValue(ctx, cfg.Bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("after ReadNodes, looking the bucket up: %v; want it still missing", err)
	}

	node := cfg
	node.NodeName = "node-1"
	reg, err := OpenRegistry(ctx, conn.NC, node)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(ctx, NodeInfo{Role: RoleLeader, HTTPAddr: "127.0.0.1:9187", Position: 3}); err != nil {
		t.Fatal(err)
	}
	nodes, err := ReadNodes(ctx, conn.NC, cfg)
	if err != nil || len(nodes) != 1 || nodes[0].Name != "node-1" || nodes[0].Role != RoleLeader || nodes[0].HTTPAddr != "127.0.0.1:9187" || nodes[0].Position != 3 || nodes[0].UpdatedAt.IsZero() {
		t.Fatalf("ReadNodes = %+v, %v; want node-1's entry", nodes, err)
	}
}

// startOneServer starts one in-process NATS server with JetStream, on loopback, shut down
// when the test ends.
func startOneServer(t *testing.T, ctx context.Context) *LocalCluster {
	t.Helper()
	lc, err := StartLocalCluster(ctx, t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lc.Shutdown)
	return lc
}
