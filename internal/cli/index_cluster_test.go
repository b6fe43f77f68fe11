package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/clustershare"
	"github.com/walflow/walflow/internal/pgtest"
)

// clusterConfig writes a walflow.yaml of the blog with the indexes by_post and by_type and
// a cluster: section on the NATS servers urls, followed by the lines extra (an operators:
// block, say), and returns its path.
func clusterConfig(t *testing.T, dsn, slot string, urls []string, stream string, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "walflow.yaml")
	config := fmt.Sprintf(`database_url: %s
slot: %s
http: {addr: ""}
ledger: {dir: data}
tables:
  posts:
  comments:
    scopes: ["posts/{post_id}"]
indexes:
  by_post: {field: post_id}
  by_type: {type: true}
cluster:
  node: node-1
  urls: ["%s"]
  replicas: 1
  stream: %s
%s`, dsn, slot, strings.Join(urls, `", "`), stream, strings.Join(extra, ""))
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestClusterIndexCommands runs one cluster node (an engine with Config.Cluster) on a
// NATS server and checks the commands on the cluster's data: ledger read reads the stream
// (all events, a channel's, an index value's from the shared store), index rebuild beside
// the node that computes the index waits for that node to rebuild it (computing nothing
// itself, and the node indexing each event once), and with no node running index status
// reads the shared store and index rebuild takes the indexes' lock and rebuilds it itself.
// Every answer equals its recomputation from the stream's events.
func TestClusterIndexCommands(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	lc := startOneNATS(t)
	slot := conn.Config().Database
	path := clusterConfig(t, dsn, slot, lc.URLs(), "blog")

	// The node, as walflow run starts it, but counting the events by_post indexes.
	cfg := quietEngineConfig(t, path)
	var (
		mu      sync.Mutex
		indexed = map[event.Position]int{}
	)
	cfg.Indexers = slices.Clone(cfg.Indexers)
	byPost := cfg.Indexers[0]
	counted := byPost
	counted.Func = func(e *event.Event, dst []string) []string {
		mu.Lock()
		indexed[e.Position]++
		mu.Unlock()
		return byPost.Func(e, dst)
	}
	cfg.Indexers[0] = counted
	eng, err := walflow.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	until, stop := runEngineInTest(t, eng, "the node", 90*time.Second)
	until("the node streams", func() bool { return eng.Status(ctx).Streaming })
	writeBlogChanges(t, conn)
	indexedHead := func() bool {
		head := eng.Ledger().State().Head
		sts, err := eng.Indexes().Status(ctx)
		if err != nil || head < 7 {
			return false
		}
		for _, s := range sts {
			if !s.Stored || s.Checkpoint < head {
				return false
			}
		}
		return true
	}
	until("the node has indexed the 7 events", indexedHead)
	events, err := eng.Ledger().Read(ctx, 0, 100)
	if err != nil || len(events) != 7 {
		t.Fatalf("the stream holds %d events (%v); want 7", len(events), err)
	}

	cli := func(args ...string) result {
		t.Helper()
		r := runCLI(ctx, noEnv, append(args, "--config", path)...)
		if r.code != ExitOK {
			t.Fatalf("walflow %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		return r
	}
	jsonOf := func(evs []event.Event) string {
		var b []byte
		for i := range evs {
			b = append(evs[i].AppendJSON(b), '\n')
		}
		return string(b)
	}
	// valueOf recomputes the events by_post gives value.
	valueOf := func(value string) []event.Event {
		var out []event.Event
		for _, e := range events {
			if slices.Contains(byPost.Func(&e, nil), value) {
				out = append(out, e)
			}
		}
		return out
	}
	checkReads := func(when string) {
		t.Helper()
		if r := cli("ledger", "read", "--json"); r.stdout != jsonOf(events) {
			t.Errorf("%s: ledger read --json printed\n%s\nwant the stream's events\n%s", when, r.stdout, jsonOf(events))
		}
		for _, value := range []string{"1", "2"} {
			want := valueOf(value)
			if len(want) < 2 {
				t.Fatalf("post %s has %d events; the test wants more", value, len(want))
			}
			if r := cli("ledger", "read", "--json", "--index", "by_post", "--value", value); r.stdout != jsonOf(want) {
				t.Errorf("%s: ledger read --index by_post --value %s printed\n%s\nwant\n%s", when, value, r.stdout, jsonOf(want))
			}
		}
	}
	checkReads("beside the node")
	onChannel, err := eng.Ledger().ReadKeys(ctx, []string{"posts/2/comments"}, 0, 100)
	if err != nil || len(onChannel) == 0 {
		t.Fatalf("channel posts/2/comments: %d events, %v", len(onChannel), err)
	}
	if r := cli("ledger", "read", "--json", "--channel", "posts/2/comments"); r.stdout != jsonOf(onChannel) {
		t.Errorf("ledger read --channel printed\n%s\nwant\n%s", r.stdout, jsonOf(onChannel))
	}

	// Rebuild beside the node: the node, which holds the indexes' lock and is live (no event
	// comes), rebuilds the index, and the command waits for it.
	mu.Lock()
	clear(indexed)
	mu.Unlock()
	r := cli("index", "rebuild", "by_post")
	if want := "computed by the node holding the lock walflow.indexes/" + slot; !strings.Contains(r.stdout, want) {
		t.Errorf("index rebuild beside the node printed\n%s\nwant %q", r.stdout, want)
	}
	mu.Lock()
	for _, e := range events {
		if indexed[e.Position] != 1 {
			t.Errorf("after the rebuild, the node indexed the event at %d %d times; want once", e.Position, indexed[e.Position])
		}
	}
	mu.Unlock()
	until("the node follows the rebuilt index", indexedHead)
	checkReads("after the node's rebuild")

	// No node runs: status reads the shared store, rebuild takes the lock and rebuilds.
	if err := stop(); err != nil {
		t.Fatalf("the node: %v", err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	r = cli("index", "status")
	for _, want := range []string{"ledger head: position 7 (from the stream blog at " + lc.URLs()[0], "by_post   7", "by_type   7"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("index status printed\n%s\nwant %q", r.stdout, want)
		}
	}
	r = cli("index", "rebuild", "by_post")
	rebuilt := "computed by this command, holding the lock walflow.indexes/" + slot + "): 6 entries under 2 values, checkpoint 7."
	if !strings.Contains(r.stdout, rebuilt) {
		t.Errorf("index rebuild with no node printed\n%s\nwant %q", r.stdout, rebuilt)
	}
	checkReads("after the command's rebuild")

	// Another session holds the indexes' lock (a node that would compute): rebuild resets
	// the index and computes nothing while the lock is held, then takes the lock once it
	// is free and rebuilds the index itself.
	lockConn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := clustershare.TryLock(ctx, lockConn, clustershare.IndexesLock(slot)); err != nil || !ok {
		t.Fatalf("take the indexes' lock: %v, %v", ok, err)
	}
	done := make(chan result, 1)
	go func() { done <- runCLI(ctx, noEnv, "index", "rebuild", "by_post", "--config", path) }()
	stateOf := func() (bool, event.Position) {
		var stored bool
		var cp int64
		err := conn.QueryRow(ctx, `SELECT stored, checkpoint FROM walflow.index_state WHERE indexer = $1`, slot+"/by_post").Scan(&stored, &cp)
		if err != nil {
			t.Fatal(err)
		}
		return stored, event.Position(cp)
	}
	until("the command to reset the index", func() bool { stored, _ := stateOf(); return !stored })
	time.Sleep(1500 * time.Millisecond) // the command tries the lock every second meanwhile
	if stored, cp := stateOf(); stored {
		t.Fatalf("while another session held the lock, the command rebuilt the index (checkpoint %d)", cp)
	}
	select {
	case r := <-done:
		t.Fatalf("index rebuild ended while another session held the lock: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	default:
	}
	if err := lockConn.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r = <-done
	if r.code != ExitOK || !strings.Contains(r.stdout, rebuilt) {
		t.Errorf("index rebuild once the lock was free: exit %d\nstdout:\n%s\nstderr:\n%s\nwant %q", r.code, r.stdout, r.stderr, rebuilt)
	}
	checkReads("after the command's rebuild once the lock was free")
}

// TestClusterCommandErrors: unreachable NATS servers, or a stream no node created, give an
// error naming them and the fix; status says that no node answered first.
func TestClusterCommandErrors(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := "postgres://app@127.0.0.1:1/app"
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	down := clusterConfig(t, dsn, "walflow", []string{"nats://" + addr}, "walflow")
	for _, args := range [][]string{{"ledger", "read"}, {"index", "status"}, {"index", "rebuild", "by_post"}} {
		r := runCLI(ctx, noEnv, append(args, "--config", down)...)
		want := "walflow: " + args[0] + " " + args[1] + ": cannot reach the cluster's NATS servers at nats://" + addr + " (cluster in " + down + ")"
		if r.code != ExitFailure || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "or fix cluster.urls") {
			t.Errorf("walflow %s with NATS down: exit %d\nstderr:\n%s\nwant %q", strings.Join(args, " "), r.code, r.stderr, want)
		}
	}
	// status, finding no node, reads the cluster; bounded, as a status that waited for
	// NATS would hang.
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	noNode := "walflow: status: this machine's node serves no HTTP (http.addr is off), and the cluster could not be read: "
	r := runCLI(sctx, noEnv, "status", "--config", down)
	want := noNode + "cannot reach the cluster's NATS servers at nats://" + addr + " (cluster in " + down + ")"
	if r.code != ExitFailure || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "or fix cluster.urls") {
		t.Errorf("walflow status with NATS down: exit %d\nstderr:\n%s\nwant %q", r.code, r.stderr, want)
	}
	lc := startOneNATS(t)
	missing := clusterConfig(t, dsn, "walflow", lc.URLs(), "nothing_here")
	r = runCLI(sctx, noEnv, "status", "--config", missing)
	want = noNode + "the ledger stream nothing_here does not exist on the NATS servers at " + lc.URLs()[0] + " yet; walflow run --config " + missing + " creates it"
	if r.code != ExitFailure || !strings.Contains(r.stderr, want) {
		t.Errorf("status of a missing stream: exit %d\nstderr:\n%s\nwant %q", r.code, r.stderr, want)
	}
	r = runCLI(ctx, noEnv, "ledger", "read", "--config", missing)
	want = "walflow: ledger read: the ledger stream nothing_here does not exist on the NATS servers at " + lc.URLs()[0] + " yet; walflow run --config " + missing + " creates it"
	if r.code != ExitFailure || !strings.Contains(r.stderr, want) {
		t.Errorf("ledger read of a missing stream: exit %d\nstderr:\n%s\nwant %q", r.code, r.stderr, want)
	}
}

// streamedCluster starts a NATS server and a cluster node of the blog on it, has the node
// stream 6 events into the stream blog, stops the node (and waits until its locks are
// free), and returns the database's
// connection, the configuration's path and the server's URLs.
func streamedCluster(t *testing.T) (conn *pgx.Conn, path string, urls []string) {
	t.Helper()
	return streamedClusterWith(t, blogSchema, "", nil)
}

// streamedClusterWith is streamedCluster on a database of the SQL schema, with the lines
// extra added to the configuration, that calls running (when not nil) once the node has
// streamed the events, before it stops.
func streamedClusterWith(t *testing.T, schema, extra string, running func(eng *walflow.Engine)) (conn *pgx.Conn, path string, urls []string) {
	t.Helper()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, schema)
	lc := startOneNATS(t)
	slot := conn.Config().Database
	path = clusterConfig(t, dsn, slot, lc.URLs(), "blog", extra)
	eng, stop := runNode(t, path, nil)
	if _, err := conn.Exec(ctx, `INSERT INTO posts (title) VALUES ('a'), ('b'), ('c'), ('d'), ('e'), ('f')`); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the stream holds the 6 events", func() bool { return eng.Ledger().State().Head >= 6 })
	if running != nil {
		running(eng)
	}
	stop()
	// The server ends the stopped node's lock sessions soon after it closed them.
	waitUntil(t, "the server frees the stopped node's locks", func() bool {
		for _, key := range []string{clustershare.IndexesLock(slot), clustershare.OperatorsLock(slot)} {
			if held, err := clustershare.Held(ctx, conn, key); err != nil || held {
				return false
			}
		}
		return true
	})
	return conn, path, lc.URLs()
}

// runNode opens and runs a cluster node of the configuration at path, as walflow run does
// (with its logs discarded, and set, when not nil, changing its configuration first),
// waits until it streams the slot (it leads), and returns the engine and a function that stops and
// closes it, failing the test when the node stopped with an error. The test's cleanup
// stops it too.
func runNode(t *testing.T, path string, set func(*walflow.Config)) (eng *walflow.Engine, stop func()) {
	t.Helper()
	ctx := t.Context()
	cfg := quietEngineConfig(t, path)
	if set != nil {
		set(&cfg)
	}
	eng, err := walflow.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	who := "the node " + cfg.Cluster.NodeName
	until, stopRun := runEngineInTest(t, eng, who, 90*time.Second)
	var once sync.Once
	stop = func() {
		once.Do(func() {
			if err := stopRun(); err != nil {
				t.Errorf("%s: %v", who, err)
			}
			if err := eng.Close(); err != nil {
				t.Errorf("close %s: %v", who, err)
			}
		})
	}
	t.Cleanup(stop)
	until("the node streams", func() bool { return eng.Status(ctx).Streaming })
	return eng, stop
}

// waitUntil polls cond until it holds, failing the test after 90 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	pollUntil(t, what, 90*time.Second, notEnded, cond)
}

// TestClusterRebuildKeepsLock: index rebuild, computing an index itself in a cluster,
// keeps the indexes' lock for as long as the rebuild lasts, past the lock connection's
// idle_session_timeout, and stops with an error naming the lock when its connection ends.
// It does not run in parallel: it shortens the timeout of every lock this process takes.
func TestClusterRebuildKeepsLock(t *testing.T) {
	const idle = 2 * time.Second
	defer clustershare.SetLockIdleTimeout(idle)()
	ctx := t.Context()
	conn, path, _ := streamedCluster(t)
	slot := conn.Config().Database
	c, err := loadConfig(path, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	until := func(what string, cond func() bool) {
		t.Helper()
		pollUntil(t, what, 90*time.Second, notEnded, cond)
	}

	// slow indexes by_post at 3 events a second: a rebuild of the 6 events outlasts the
	// idle timeout.
	byPost := c.Engine.Indexers[0]
	slow := byPost
	slow.Func = func(e *event.Event, dst []string) []string {
		time.Sleep(idle / 6)
		return byPost.Func(e, dst)
	}
	f, err := openCluster(ctx, "index rebuild", c, path, true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type rebuilt struct {
		by  string
		err error
	}
	rebuild := func() <-chan rebuilt {
		done := make(chan rebuilt, 1)
		go func() {
			by, err := f.rebuildInCluster(ctx, slow, nil)
			done <- rebuilt{by, err}
		}()
		return done
	}
	key := clustershare.IndexesLock(slot)
	held := func() bool {
		h, err := clustershare.Held(ctx, conn, key)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}

	started := time.Now()
	done := rebuild()
	until("the command takes the lock", held)
	var r rebuilt
	for waiting := true; waiting; {
		select {
		case r = <-done:
			waiting = false
		case <-time.After(50 * time.Millisecond):
			if !held() {
				t.Fatalf("the lock was freed %v after the rebuild started, while it ran", time.Since(started))
			}
		}
	}
	if r.err != nil || r.by != "this command, holding the lock "+key {
		t.Fatalf("rebuild = %q, %v", r.by, r.err)
	}
	if d := time.Since(started); d < idle {
		t.Fatalf("the rebuild took %v, not longer than the idle timeout %v: it tests nothing", d, idle)
	}

	// The lock's connection ends mid-rebuild: the rebuild stops with an error.
	until("the server frees the lock of the finished rebuild", func() bool { return !held() })
	done = rebuild()
	until("the command takes the lock again", held)
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_catalog.pg_locks
		WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())`); err != nil {
		t.Fatal(err)
	}
	r = <-done
	want := "index rebuild: rebuild by_post: the lock " + key + " was lost"
	if r.err == nil || !strings.Contains(r.err.Error(), want) {
		t.Fatalf("rebuild whose lock connection ended = %q, %v; want an error containing %q", r.by, r.err, want)
	}
}

// TestClusterReadsLeaveStream: the read commands on a cluster's data, run with a
// configuration whose cluster.replicas differs from the stream's, leave the stream's
// configuration as the nodes set it.
func TestClusterReadsLeaveStream(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	_, path, urls := streamedCluster(t)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	other := strings.Replace(string(b), "replicas: 1", "replicas: 3", 1)
	if other == string(b) {
		t.Fatal("the configuration has no replicas: 1 to change")
	}
	if err := os.WriteFile(path, []byte(other), 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(urls[0])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	config := func() natsjs.StreamConfig {
		t.Helper()
		s, err := js.Stream(ctx, "blog")
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config
	}
	before := config()
	for _, args := range [][]string{{"ledger", "read"}, {"ledger", "read", "--channel", "posts"}, {"index", "status"}} {
		r := runCLI(ctx, noEnv, append(args, "--config", path)...)
		if r.code != ExitOK {
			t.Errorf("walflow %s with replicas 3: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		if after := config(); after.Replicas != before.Replicas || after.Duplicates != before.Duplicates || after.AllowAtomicPublish != before.AllowAtomicPublish {
			t.Errorf("walflow %s changed the stream's configuration: %+v, was %+v", strings.Join(args, " "), after, before)
		}
	}
}
