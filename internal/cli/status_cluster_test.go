package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/internal/pgtest"
	ledgerjs "github.com/walflow/walflow/ledger/jetstream"
)

func TestWriteStatusCluster(t *testing.T) {
	t.Parallel()
	since := time.Now().Add(-90 * time.Second).UTC()
	cs := cluster.NewStatus("node-2", []cluster.NodeInfo{
		{Name: "node-1", Role: cluster.RoleLeader, LeaderSince: since, Position: 1200, HTTPAddr: "10.0.0.1:9187", Operators: []string{"post_stats"}},
		{Name: "node-2", Role: cluster.RoleStandby, Position: 1195, Projectors: []string{"search"}},
	}, 1195)
	var b bytes.Buffer
	writeStatus(&b, walflow.Status{Slot: "walflow", SlotExists: true, Cluster: &cs}, statusSource{running: true, where: "http://127.0.0.1:9187/status"})
	for _, re := range []string{
		`streaming +no: this node stands by, node-1 streams the slot`,
		`cluster \(as node node-2 sees it\)`,
		`leader: node-1 since ` + regexp.QuoteMeta(since.Format(time.RFC3339)) + ` \(1m3\ds\)`,
		`node-1 +leader +1200 +0 +10\.0\.0\.1:9187 +operator post_stats\n`,
		`node-2 +standby +1195 +5 +- +projector search\n`,
	} {
		if !regexp.MustCompile(re).MatchString(b.String()) {
			t.Errorf("status does not match %s:\n%s", re, b.String())
		}
	}
}

// TestClusterStatusAsksOtherNode: with this machine's node down, status asks the nodes of
// the registry, the leader first, and shows the status of the first that answers with
// this slot's, saying that this machine's node did not answer and which node did; a node
// of another slot is passed over.
func TestClusterStatusAsksOtherNode(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	lc := startOneNATS(t)
	slot := conn.Config().Database
	path := clusterConfig(t, dsn, slot, lc.URLs(), "blog")
	down, err := freeAddr() // nothing listens there: this machine's node is down
	if err != nil {
		t.Fatal(err)
	}
	setHTTPAddr(t, path, down)

	eng, stop := runNode(t, path, func(cfg *walflow.Config) {
		cc := *cfg.Cluster
		cc.NodeName = "node-2"
		cfg.Cluster = &cc
		cfg.HTTPAddr = "127.0.0.1:0"
	})
	var addr string
	waitUntil(t, "node-2 is in the registry as the leader, with its HTTP address", func() bool {
		st := eng.Status(ctx)
		for _, n := range st.Cluster.Nodes {
			if n.Name == "node-2" && n.Role == cluster.RoleLeader && n.HTTPAddr != "" {
				addr = n.HTTPAddr
				return true
			}
		}
		return false
	})
	if _, err := conn.Exec(ctx, `INSERT INTO posts (title) VALUES ('a'), ('b')`); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the stream holds the 2 events", func() bool { return eng.Ledger().State().Head >= 2 })

	// A standby that sorts before node-2 and would answer with a status of this slot: the
	// leader is asked first, so it is never asked.
	var asked atomic.Int32
	var fakeSlot atomic.Pointer[string]
	fakeSlot.Store(&slot)
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		asked.Add(1)
		_ = json.NewEncoder(w).Encode(walflow.Status{Slot: *fakeSlot.Load(), LedgerHead: 999})
	}))
	t.Cleanup(fake.Close)
	fakeNode(t, lc.URLs(), "a-node", strings.TrimPrefix(fake.URL, "http://"))

	url := "http://" + addr + "/status"
	r := runCLI(ctx, noEnv, "status", "--config", path)
	for _, want := range []string{
		"This machine's node did not answer at " + down + ".\n",
		"Node node-2 answered at " + url + ": the status below is that node's.\n",
		"cluster (as node node-2 sees it)",
	} {
		if r.code != ExitOK || !strings.Contains(r.stdout, want) {
			t.Errorf("status with this machine's node down: exit %d\nstdout:\n%s\nstderr:\n%s\nwant %q", r.code, r.stdout, r.stderr, want)
		}
	}
	r = runCLI(ctx, noEnv, "status", "--json", "--config", path)
	var st walflow.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != ExitOK {
		t.Fatalf("status --json: exit %d, %v\nstdout:\n%s\nstderr:\n%s", r.code, err, r.stdout, r.stderr)
	}
	if st.Slot != slot || st.Cluster == nil || st.Cluster.Node != "node-2" || st.Cluster.Leader != "node-2" || st.LedgerHead < 2 || st.LedgerHead == 999 {
		t.Errorf("status --json printed %+v (cluster %+v); want node-2's status", st, st.Cluster)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("the standby a-node was asked %d times before the leader answered", n)
	}

	// node-2 stops (and leaves the registry): the standby answers.
	stop()
	fakeURL := fake.URL + "/status"
	r = runCLI(ctx, noEnv, "status", "--config", path)
	for _, re := range []string{
		`(?m)^Node a-node answered at ` + regexp.QuoteMeta(fakeURL) + `: the status below is that node's\.$`,
		`(?m)^ledger head +position 999$`,
	} {
		if r.code != ExitOK || !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("status with only a-node up: exit %d\nstdout:\n%s\nstderr:\n%s\nwant %s", r.code, r.stdout, r.stderr, re)
		}
	}
	// The standby follows another slot: it is not shown, and status reads the stream.
	other := "other_slot"
	fakeSlot.Store(&other)
	r = runCLI(ctx, noEnv, "status", "--config", path)
	for _, re := range []string{
		`(?m)^Nor did node a-node at ` + regexp.QuoteMeta(fakeURL) + `, which follows slot other_slot, not ` + slot + `\.$`,
		`(?m)^No node answered: the figures come from the stream blog at `,
		`(?m)^ledger head +position 2$`,
		`(?m)^  a-node +standby +0 +2 +` + regexp.QuoteMeta(strings.TrimPrefix(fake.URL, "http://")) + ` +-$`,
	} {
		if r.code != ExitOK || !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("status with only a-node up, of another slot: exit %d\nstdout:\n%s\nstderr:\n%s\nwant %s", r.code, r.stdout, r.stderr, re)
		}
	}
}

// setHTTPAddr sets http.addr in the configuration at path, written by clusterConfig.
func setHTTPAddr(t *testing.T, path, addr string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), `http: {addr: ""}`, `http: {addr: "`+addr+`"}`, 1)
	if s == string(b) {
		t.Fatal(`the configuration has no http: {addr: ""} to change`)
	}
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fakeNode keeps a standby's entry named name, serving HTTP at httpAddr, in the registry
// of the NATS servers urls until the test ends.
func fakeNode(t *testing.T, urls []string, name, httpAddr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	cfg := cluster.Config{URLs: urls, NodeName: name, Replicas: 1, Logger: slog.New(slog.DiscardHandler)}.WithDefaults()
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := cluster.OpenRegistry(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = reg.Run(ctx, func() cluster.NodeInfo {
			return cluster.NodeInfo{Role: cluster.RoleStandby, HTTPAddr: httpAddr}
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		nc.Close()
	})
	if err := reg.Beat(ctx); err != nil {
		t.Fatal(err)
	}
}

// postTitles is an operator of the blog that keeps post_titles, as an operators: block,
// and the table's schema.
const (
	postTitles = `operators:
  post_titles:
    entities: [posts]
    id: {posts: id}
    query: INSERT INTO post_titles (id, title) SELECT id, title FROM posts WHERE id = $1 ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title
`
	postTitlesSchema = `CREATE TABLE post_titles (id int PRIMARY KEY, title text NOT NULL);`
)

// TestClusterStatusWithoutNode: with no node running, status reads the figures from the
// stream (opened read-only) and the database: the ledger head and last commit LSN the
// node wrote, the slot as PostgreSQL has it, the operators as stored. It creates nothing:
// the streams and buckets on NATS, the slots and the publications stay as they were. With
// the registry's bucket gone it still shows them, with the registry's error.
func TestClusterStatusWithoutNode(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn, path, urls := streamedClusterWith(t, blogSchema+postTitlesSchema, postTitles, func(eng *walflow.Engine) {
		waitUntil(t, "the operator has applied the 6 events", func() bool {
			ops := eng.Status(ctx).Operators
			return len(ops) == 1 && ops[0].Position >= 6
		})
	})
	slot := conn.Config().Database
	nc, err := nats.Connect(urls[0])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	led, err := ledgerjs.Open(ctx, ledgerjs.Options{Conn: nc, Stream: "blog", ReadOnly: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	written := led.State()
	_ = led.Close()
	if written.Head != 6 || written.LastCommitLSN == 0 {
		t.Fatalf("the stream's state is %+v; want the node's 6 events", written)
	}
	var checkpoint int64
	if err := conn.QueryRow(ctx, `SELECT position FROM walflow.operators WHERE instance = $1 AND name = 'post_titles'`, slot).Scan(&checkpoint); err != nil {
		t.Fatal(err)
	}
	// What exists: the streams (the buckets among them) with their configurations, and the
	// database's slots and publications.
	existing := func() string {
		t.Helper()
		var b strings.Builder
		for info := range js.ListStreams(ctx).Info() {
			c, err := json.Marshal(info.Config)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "stream %s\n", c)
		}
		rows, err := conn.Query(ctx, `SELECT 'slot ' || slot_name || ' ' || plugin || ' ' || confirmed_flush_lsn::text FROM pg_replication_slots
			WHERE database = current_database() UNION ALL SELECT 'publication ' || pubname FROM pg_publication ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return b.String() + strings.Join(lines, "\n")
	}
	before := existing()
	if !strings.Contains(before, `"name":"KV_walflow_nodes"`) || !strings.Contains(before, "slot "+slot+" ") {
		t.Fatalf("before status, the bucket walflow_nodes or the slot is missing:\n%s", before)
	}
	var confirmed string
	if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}

	statusJSON := func() walflow.Status {
		t.Helper()
		r := runCLI(ctx, noEnv, "status", "--json", "--config", path)
		var st walflow.Status
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != ExitOK {
			t.Fatalf("status --json with no node: exit %d, %v\nstdout:\n%s\nstderr:\n%s", r.code, err, r.stdout, r.stderr)
		}
		if st.Slot != slot || !st.SlotExists || st.SlotError != "" || st.ConfirmedLSN.String() != confirmed || st.SlotActive {
			t.Errorf("status --json shows the slot %+v; want %s, inactive, confirmed at %s", st, slot, confirmed)
		}
		if st.LedgerHead != uint64(written.Head) || st.LastCommitLSN != written.LastCommitLSN {
			t.Errorf("status --json shows the ledger head %d, last commit LSN %s; the node wrote %d, %s", st.LedgerHead, st.LastCommitLSN, written.Head, written.LastCommitLSN)
		}
		if len(st.Operators) != 1 || st.Operators[0].Name != "post_titles" || int64(st.Operators[0].Position) != checkpoint || checkpoint != 6 {
			t.Errorf("status --json shows the operators %+v; want post_titles at its stored checkpoint %d (6)", st.Operators, checkpoint)
		}
		if st.Cluster == nil || st.Cluster.Node != "" || st.Cluster.Leader != "" || len(st.Cluster.Nodes) != 0 {
			t.Errorf("status --json shows the cluster %+v; want no node", st.Cluster)
		}
		return st
	}
	if st := statusJSON(); st.Cluster != nil && st.Cluster.Error != "" {
		t.Errorf("status --json: the registry could not be read: %s", st.Cluster.Error)
	}
	r := runCLI(ctx, noEnv, "status", "--config", path)
	for _, re := range []string{
		`(?m)^This machine's node serves no HTTP \(http\.addr is off\)\.$`,
		`(?m)^No node answered: the figures come from the stream blog at ` + regexp.QuoteMeta(urls[0]) + ` and the database \(slot measured in PostgreSQL, operators as stored in walflow\.operators\)\.$`,
		`(?m)^ledger head +position 6$`,
		`(?m)^operator post_titles +position 6, 0 behind the head$`,
		`(?m)^cluster \(from the node registry: no node answered\)\n  leader: none \(no node is live\)$`,
	} {
		if r.code != ExitOK || !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("status with no node: exit %d\nstdout:\n%s\nstderr:\n%s\nwant %s", r.code, r.stdout, r.stderr, re)
		}
	}
	if after := existing(); after != before {
		t.Errorf("status changed what exists on NATS and in PostgreSQL:\n%s\nwas\n%s", after, before)
	}

	// The registry's bucket is gone: the figures still come from the stream, with the
	// registry's error, and the bucket stays gone.
	if err := js.DeleteKeyValue(ctx, "walflow_nodes"); err != nil {
		t.Fatal(err)
	}
	before = existing()
	want := `cluster: the node registry does not exist (bucket "walflow_nodes"): no node has run with it yet; walflow run creates it`
	if st := statusJSON(); st.Cluster == nil || st.Cluster.Error != want {
		t.Errorf("status --json without the registry shows the cluster %+v; want the error %q", st.Cluster, want)
	}
	r = runCLI(ctx, noEnv, "status", "--config", path)
	if r.code != ExitOK || !strings.Contains(r.stdout, "  the node registry could not be read: "+want+"\n  leader: unknown (the registry could not be read)\n") {
		t.Errorf("status without the registry: exit %d\nstdout:\n%s\nstderr:\n%s\nwant the registry's error %q", r.code, r.stdout, r.stderr, want)
	}
	if after := existing(); after != before {
		t.Errorf("status without the registry changed what exists on NATS and in PostgreSQL:\n%s\nwas\n%s", after, before)
	}
}
