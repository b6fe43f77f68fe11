package faulttest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/clustertest"
	"github.com/walflow/walflow/internal/pgtest"
)

// clusterKillsEnv sets how many times TestClusterFaults SIGKILLs the leader; the full run
// is clusterKillsFull.
const (
	clusterKillsEnv     = "WALFLOW_CLUSTER_KILLS"
	clusterKillsFull    = 10
	clusterNATSDownTime = 20 * time.Second
)

// TestClusterFaults runs three walflow run children as one cluster on a three-server
// JetStream cluster, with a writer committing throughout. It SIGKILLs the leader
// WALFLOW_CLUSTER_KILLS times (default 10) at random moments, restarting it each time,
// and stops one NATS server for 20 s once. At the end the stream holds every committed
// change exactly once, in commit order; the SQL operator's derived table equals its
// recomputation; and an SSE client started on each node, which resumes with after= on
// the next node whenever its stream ends, received every event of its channel once, in
// order. It logs the takeover times (SIGKILL to another node streaming).
func TestClusterFaults(t *testing.T) {
	t.Parallel()
	kills := clusterKillsFull
	if s := os.Getenv(clusterKillsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q is not a positive number of kills", clusterKillsEnv, s)
		}
		kills = n
	}
	ctx := t.Context()
	bin := buildCommand(t, "github.com/walflow/walflow/cmd/walflow", "walflow")
	dsn, conn := pgtest.NewDatabaseWith(t, clustertest.Schema)
	lc, err := cluster.StartLocalCluster(ctx, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lc.Shutdown)
	slot := dbName(t, dsn)

	nodes := clustertest.NewNodes(t, t.TempDir(), 3, clustertest.Options{
		DSN: dsn, Slot: slot, URLs: lc.URLs(), Heartbeat: 500 * time.Millisecond, NodeTTL: 3 * time.Second,
	})
	t.Cleanup(func() {
		for _, n := range nodes {
			n.Kill()
		}
		if t.Failed() {
			for _, n := range nodes {
				n.LogTail(t, 60)
			}
		}
	})
	for _, n := range nodes {
		n.Start(t, bin)
	}
	leader := clustertest.WaitLeader(t, nodes, nil, 2*time.Minute)
	t.Logf("%s leads", leader.Name)

	// Realtime clients, one starting on each node.
	cctx, stopClients := context.WithCancel(ctx)
	var cwg sync.WaitGroup
	clients := make([]*sseClient, len(nodes))
	for i := range nodes {
		c := &sseClient{nodes: nodes, at: i}
		clients[i] = c
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			c.run(cctx)
		}()
	}
	defer func() {
		stopClients()
		cwg.Wait()
	}()

	// The writer commits until told to stop.
	w := clustertest.StartWriter(ctx, conn)
	defer func() { _ = w.Stop() }()

	var takeovers []time.Duration
	natsAt := kills / 2
	for k := range kills {
		clustertest.WaitNodes(t, nodes, 2*time.Minute)
		time.Sleep(time.Duration(300+rand.IntN(1500)) * time.Millisecond)
		killed, next, d := clustertest.KillLeader(t, nodes, 2*time.Minute)
		takeovers = append(takeovers, d)
		indexesOn := "?"
		if st, err := next.Status(ctx); err == nil && st.Cluster != nil && len(st.Cluster.Indexes) > 0 {
			indexesOn = st.Cluster.Indexes[0].Node // as of the nodes' last heartbeats
		}
		t.Logf("kill %d: %s killed, %s leads after %s (writer at %d transactions; the index runs on %s)", k+1, killed.Name, next.Name, d.Round(time.Millisecond), w.Count(), indexesOn)
		killed.Start(t, bin)
		if k == natsAt {
			s := lc.Servers()[rand.IntN(3)]
			s.Stop()
			t.Logf("NATS server %s stopped for %s", s.Name(), clusterNATSDownTime)
			time.Sleep(clusterNATSDownTime)
			if err := s.Restart(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	want, txs := w.Changes()
	t.Logf("writer committed %d transactions, %d changes", txs, len(want))

	// Every node reaches the stream's end; the stream holds every committed change once,
	// in commit order.
	clustertest.WaitHeads(t, nodes, uint64(len(want)), 2*time.Minute)
	clustertest.CheckStream(t, lc.URLs(), "", want)

	// The derived table equals its recomputation.
	poll(t, 2*time.Minute, "sums to equal its recomputation", func() (bool, string, error) {
		var diff int
		err := conn.QueryRow(ctx, clustertest.SumsDiffQuery).Scan(&diff)
		return diff == 0, fmt.Sprintf("%d rows differ", diff), err
	})

	// The custom index, computed by one node at a time into the shared store and moved
	// at each death of its holder, equals its recomputation from the stream: every
	// event's value once.
	for _, n := range nodes {
		poll(t, 2*time.Minute, n.Name+"'s index to reach the head", func() (bool, string, error) {
			st, err := n.Status(ctx)
			if err != nil || len(st.Indexes) != 1 {
				return false, fmt.Sprintf("status: %v, %d indexes", err, len(st.Indexes)), nil
			}
			return st.Indexes[0].Checkpoint >= event.Position(len(want)), fmt.Sprintf("checkpoint %d of %d", st.Indexes[0].Checkpoint, len(want)), nil
		})
	}
	var entries []string
	byGrp := index.Field("by_grp", "grp")
	for _, e := range clustertest.ReadEvents(t, lc.URLs(), "") {
		vs := byGrp.Func(&e, nil)
		slices.Sort(vs)
		for _, v := range vs {
			entries = append(entries, fmt.Sprintf("%s@%d", v, e.Position))
		}
	}
	var stored []string
	rows, err := conn.Query(ctx, `SELECT convert_from(value, 'UTF8'), position FROM walflow.index_entries WHERE indexer = $1 ORDER BY position, value`, slot+"/by_grp")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v string
		var p int64
		if err := rows.Scan(&v, &p); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, fmt.Sprintf("%s@%d", v, p))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(stored, entries) {
		t.Fatalf("the index holds %d entries, its recomputation from the stream %d; first difference at %d",
			len(stored), len(entries), firstDiff(stored, entries))
	}
	t.Logf("the index by_grp holds %d entries, equal to its recomputation from the stream", len(stored))

	// Every realtime client got every event once, in order, across node deaths.
	for i, c := range clients {
		poll(t, 2*time.Minute, fmt.Sprintf("client %d to receive every event", i), func() (bool, string, error) {
			n := c.received()
			return n >= len(want), fmt.Sprintf("%d of %d events", n, len(want)), nil
		})
		evs, resumes := c.result()
		if !slices.Equal(evs, want) {
			for j := range min(len(evs), len(want)) {
				if evs[j] != want[j] {
					t.Fatalf("client %d: event %d is %q, want %q", i, j+1, evs[j], want[j])
				}
			}
			t.Fatalf("client %d got %d events, want %d", i, len(evs), len(want))
		}
		t.Logf("client %d: %d events, resumed %d times; first ends: %q", i, len(evs), resumes, c.ends)
	}
	med, mx := clustertest.Median(takeovers)
	t.Logf("takeover after SIGKILL: median %s, max %s, over %d kills", med.Round(time.Millisecond), mx.Round(time.Millisecond), len(takeovers))
}

// firstDiff is the first index at which a and b differ.
func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// sseClient follows the items channel over SSE, starting on node at; when its stream
// ends (its node died) it resumes after the last position it received on the next live
// node.
type sseClient struct {
	nodes []*clustertest.Node
	at    int

	mu      sync.Mutex
	events  []string
	last    event.Position
	resumes int      // streams opened with a resume position
	ends    []string // why the first streams ended
}

func (c *sseClient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.events)
}

func (c *sseClient) result() ([]string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events), c.resumes
}

func (c *sseClient) run(ctx context.Context) {
	for ctx.Err() == nil {
		n := c.nodes[c.at]
		err := c.follow(ctx, n) // any end, error or not, is resumed on the next node
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		if len(c.ends) < 5 {
			c.ends = append(c.ends, fmt.Sprintf("%s: %v", n.Name, err))
		}
		c.mu.Unlock()
		c.at = (c.at + 1) % len(c.nodes)
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// follow reads one SSE stream from node n until it ends.
func (c *sseClient) follow(ctx context.Context, n *clustertest.Node) error {
	c.mu.Lock()
	after := c.last
	c.mu.Unlock()
	url := "http://" + n.Addr + "/realtime/?channel=items&after=" + strconv.FormatUint(uint64(after), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if after > 0 {
		c.mu.Lock()
		c.resumes++
		c.mu.Unlock()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var id event.Position
	var typ string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			p, err := strconv.ParseUint(strings.TrimPrefix(line, "id: "), 10, 64)
			if err != nil {
				return err
			}
			id = event.Position(p)
		case strings.HasPrefix(line, "event: "):
			typ = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && typ != "subscribed" && typ != "error":
			var msg struct {
				Event struct {
					Type      string          `json:"type"`
					NewRecord json.RawMessage `json:"new_record"`
					OldRecord json.RawMessage `json:"old_record"`
				} `json:"event"`
			}
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &msg); err != nil {
				return err
			}
			rec := msg.Event.NewRecord
			if msg.Event.Type == "delete" {
				rec = msg.Event.OldRecord
			}
			var row struct {
				ID int64 `json:"id"`
			}
			if err := json.Unmarshal(rec, &row); err != nil {
				return err
			}
			// A position at or before the last one is a duplicate: it is kept, so that the
			// comparison with the stream fails.
			c.mu.Lock()
			c.last = max(c.last, id)
			c.events = append(c.events, fmt.Sprintf("%s %d", msg.Event.Type, row.ID))
			c.mu.Unlock()
		case strings.HasPrefix(line, "data: ") && typ == "error":
			return errors.New(line)
		}
	}
	return sc.Err()
}
