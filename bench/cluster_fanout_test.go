package bench

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/internal/pgtest"
)

var (
	clusterFanoutClients  = flag.Int("clusterfanout.clients", envInt("WALFLOW_BENCH_CLUSTER_FANOUT_CLIENTS", 1500), "BenchmarkClusterFanout's SSE clients in all, spread evenly over the channels (and over the nodes) (env WALFLOW_BENCH_CLUSTER_FANOUT_CLIENTS)")
	clusterFanoutChannels = flag.Int("clusterfanout.channels", 10, "BenchmarkClusterFanout's channels (posts/N/comments)")
	clusterFanoutRate     = flag.Int("clusterfanout.rate", envInt("WALFLOW_BENCH_CLUSTER_FANOUT_RATE", 200), "BenchmarkClusterFanout's committed events per second, over all channels (env WALFLOW_BENCH_CLUSTER_FANOUT_RATE)")
	clusterFanoutDuration = flag.Duration("clusterfanout.duration", 20*time.Second, "how long BenchmarkClusterFanout commits events in each shape")
)

// clusterFanoutShape is one shape of [BenchmarkClusterFanout]: the same clients and events
// served by Nodes gateway nodes.
type clusterFanoutShape struct {
	Nodes      int
	Expected   int64 // deliveries due
	Received   int64
	P50, P99   time.Duration // commit → receipt over all deliveries
	Max        time.Duration
	Elapsed    time.Duration // from the first scheduled commit to the last delivery
	MsgsPerSec float64
	NodesCPU   time.Duration // CPU time of every walflow process during the run
	SelfCPU    time.Duration // CPU time of this process: clients, writers and the NATS servers
	MachineCPU time.Duration // CPU time of every process during the run
}

// CPUPerMsg is the walflow processes' CPU time per delivered message.
func (s clusterFanoutShape) CPUPerMsg() time.Duration {
	if s.Received == 0 {
		return 0
	}
	return s.NodesCPU / time.Duration(s.Received)
}

// BenchmarkClusterFanout measures realtime fan-out spread over three gateway nodes against
// one node at the same total load: the same SSE clients (-clusterfanout.clients, 1,500 by
// default, on 10 scoped channels) and the same committed events (-clusterfanout.rate, 200
// events/s, for -clusterfanout.duration, 20 s), once with every client on one `walflow run`
// node and once with a third of them on each of three nodes. The nodes are child processes
// of one cluster (Config.Cluster) whose ledger is an R3 stream on three embedded JetStream
// servers in this process; each shape has its own database, slot and stream. For each shape
// it reports messages/s, p50 and p99 latency from commit to receipt, and the walflow
// processes' CPU per delivered message, and the ratios of three nodes to one. It fails only
// on a lost, duplicated, misordered or wrong-channel message. Every process shares this
// machine's cores, so spreading cannot add CPU here: see docs/cluster.md.
func BenchmarkClusterFanout(b *testing.B) {
	opts := fanoutOpts{Clients: *clusterFanoutClients, Channels: *clusterFanoutChannels, Rate: *clusterFanoutRate, Duration: *clusterFanoutDuration}
	if opts.Channels <= 0 || opts.Clients < opts.Channels || opts.Rate <= 0 || opts.Duration <= 0 {
		b.Fatalf("cluster fan-out: need clients ≥ channels > 0 and a positive rate and duration; have %+v", opts)
	}
	raiseFileLimit(b, 2*opts.Clients+200)
	ctx := b.Context()
	bin := buildWalflow(b)
	lc, err := cluster.StartLocalCluster(ctx, b.TempDir(), 3)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(lc.Shutdown)
	var one, three clusterFanoutShape
	round := 0
	for b.Loop() {
		round++
		one = clusterFanout(b, bin, lc.URLs(), 1, fmt.Sprintf("fanout1_%d", round), opts)
		three = clusterFanout(b, bin, lc.URLs(), 3, fmt.Sprintf("fanout3_%d", round), opts)
	}
	b.ReportMetric(0, "ns/op")
	for _, s := range []clusterFanoutShape{one, three} {
		p := fmt.Sprintf("%dnode-", s.Nodes)
		b.ReportMetric(s.MsgsPerSec, p+"msgs/s")
		b.ReportMetric(ms(s.P99), p+"p99-ms")
		b.ReportMetric(float64(s.CPUPerMsg().Nanoseconds())/1000, p+"cpu-µs/msg")
	}
	b.ReportMetric(three.MsgsPerSec/one.MsgsPerSec, "msgs/s-ratio")
	b.ReportMetric(ms(three.P99)/ms(one.P99), "p99-ratio")
	b.ReportMetric(float64(three.CPUPerMsg())/float64(one.CPUPerMsg()), "cpu/msg-ratio")
	b.Logf("for docs/cluster.md: %s SSE clients on %d channels, %s events/s for %s (%s deliveries per shape):\n%s\n%s\n%s\n%s",
		thousands(opts.Clients), opts.Channels, thousands(opts.Rate), opts.Duration, thousands(int(one.Expected)),
		clusterFanoutHeader, one.row(), three.row(), ratioRow(one, three))
}

const clusterFanoutHeader = "| gateway nodes | msgs/s | p50 | p99 | walflow CPU per message | walflow CPU | machine CPU |\n|---|---|---|---|---|---|---|"

func (s clusterFanoutShape) row() string {
	return fmt.Sprintf("| %d | %s | %s | %s | %.1f µs | %.1f s | %.1f s |", s.Nodes, thousands(int(s.MsgsPerSec)),
		readableMs(ms(s.P50)), readableMs(ms(s.P99)), float64(s.CPUPerMsg().Nanoseconds())/1000,
		s.NodesCPU.Seconds(), s.MachineCPU.Seconds())
}

func ratioRow(one, three clusterFanoutShape) string {
	return fmt.Sprintf("| 3 ÷ 1 | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |", three.MsgsPerSec/one.MsgsPerSec,
		ms(three.P50)/ms(one.P50), ms(three.P99)/ms(one.P99), float64(three.CPUPerMsg())/float64(one.CPUPerMsg()),
		three.NodesCPU.Seconds()/one.NodesCPU.Seconds(), three.MachineCPU.Seconds()/one.MachineCPU.Seconds())
}

// clusterFanout runs one shape: n walflow nodes on a fresh database and a stream of their
// own, opts.Clients SSE clients spread over them, events committed at opts.Rate for
// opts.Duration. It waits until every client has received every event of its channel.
func clusterFanout(b *testing.B, bin string, urls []string, n int, name string, opts fanoutOpts) clusterFanoutShape {
	b.Helper()
	ctx := b.Context()
	res := clusterFanoutShape{Nodes: n}
	dsn := pgtest.NewDatabase(b)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, fanoutSchema); err != nil {
		b.Fatalf("create schema: %v", err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO posts SELECT g, 'post ' || g FROM generate_series(1, $1::int) g", opts.Channels); err != nil {
		b.Fatal(err)
	}
	chans := make([]string, opts.Channels)
	for i := range chans {
		chans[i] = fmt.Sprintf("posts/%d/comments", i+1)
	}

	dir := b.TempDir()
	nodes := make([]*walflowNode, n)
	for i := range nodes {
		nodes[i] = startWalflowNode(b, bin, dir, dsn, name, fmt.Sprintf("node-%d", i+1), urls, opts.Clients)
	}
	b.Cleanup(func() {
		for _, nd := range nodes {
			nd.stop(b)
		}
	})
	waitWalflowNodes(b, nodes, 2*time.Minute)
	addrs := make([]string, n)
	for i, nd := range nodes {
		addrs[i] = nd.addr
	}

	events := int(float64(opts.Rate) * opts.Duration.Seconds())
	run := newFanoutRun(chans, events)
	defer run.close()
	start := time.Now()
	if err := run.connect(ctx, addrs, "/realtime/", opts.Clients); err != nil {
		b.Fatalf("connect %d clients to %d nodes: %v", opts.Clients, n, err)
	}
	b.Logf("%d node(s): %d clients subscribed in %s", n, opts.Clients, time.Since(start).Round(time.Millisecond))

	nodesCPU := func() time.Duration {
		var t time.Duration
		for _, nd := range nodes {
			c, err := pidCPU(nd.cmd.Process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			t += c
		}
		return t
	}
	busy, self, walflowCPU := machineBusy(), processCPU(), nodesCPU()
	first := time.Now()
	perChannel, err := commitEvents(ctx, dsn, opts.Channels, opts.Rate, events, first)
	if err != nil {
		b.Fatalf("commit events: %v", err)
	}
	for i := range run.clients {
		res.Expected += int64(perChannel[i%opts.Channels])
	}
	waitErr := run.wait(ctx, perChannel)
	res.NodesCPU, res.SelfCPU, res.MachineCPU = nodesCPU()-walflowCPU, processCPU()-self, machineBusy()-busy
	run.close()

	var last time.Time
	var problems []string
	for i, c := range run.clients {
		res.Received += c.received.Load()
		res.Max = max(res.Max, c.maxLatency)
		if c.lastAt.After(last) {
			last = c.lastAt
		}
		if c.problem != "" && len(problems) < 5 {
			problems = append(problems, fmt.Sprintf("client %d (%s on %s): %s", i, chans[c.ch], addrs[i%n], c.problem))
		}
	}
	res.P50, res.P99 = run.hist.quantile(0.50), run.hist.quantile(0.99)
	res.Elapsed = last.Sub(first)
	res.MsgsPerSec = float64(res.Received) / res.Elapsed.Seconds()
	b.Logf("%d node(s): %s of %s deliveries, p50 %.1f ms, p99 %.1f ms, max %.1f ms, %s msgs/s over %.2fs; CPU: walflow nodes %.1fs (%.1f µs/msg), this process (clients, writers, NATS servers) %.1fs, machine %.1fs",
		n, thousands(int(res.Received)), thousands(int(res.Expected)), ms(res.P50), ms(res.P99), ms(res.Max),
		thousands(int(res.MsgsPerSec)), res.Elapsed.Seconds(), res.NodesCPU.Seconds(),
		float64(res.CPUPerMsg().Nanoseconds())/1000, res.SelfCPU.Seconds(), res.MachineCPU.Seconds())
	if waitErr != nil {
		problems = append(problems, waitErr.Error())
	}
	if lost := res.Expected - res.Received; lost != 0 {
		problems = append(problems, fmt.Sprintf("%d of %d deliveries lost (negative: extra)", lost, res.Expected))
	}
	if k := run.failed.Load(); k > 0 {
		problems = append(problems, fmt.Sprintf("%d clients saw a duplicated, misordered, wrong-channel or unexpected message, or lost their stream", k))
	}
	if len(problems) > 0 {
		for _, nd := range nodes {
			logTailFile(b, nd.logPath, 30)
		}
		b.Fatalf("cluster fan-out on %d nodes:\n%s", n, strings.Join(problems, "\n"))
	}
	for _, nd := range nodes {
		nd.stop(b)
	}
	return res
}

// walflowNode is a running `walflow run` of a cluster.
type walflowNode struct {
	name    string
	addr    string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// startWalflowNode writes the node's walflow.yaml (the fan-out tables, an anonymous realtime
// gateway on posts/*/comments, the cluster on urls with stream and slot name) and starts
// `walflow run` on it.
func startWalflowNode(b *testing.B, bin, dir, dsn, name, node string, urls []string, clients int) *walflowNode {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	nd := &walflowNode{name: node, addr: addr, logPath: filepath.Join(dir, node+".log"), exited: make(chan struct{})}
	config := filepath.Join(dir, node+".yaml")
	yaml := fmt.Sprintf(`database_url: %q
slot: %s
http: {addr: %q}
log: {level: warn}
ledger: {dir: %q}
tables:
  posts: {}
  comments: {scopes: ["posts/{post_id}"]}
realtime:
  allow_anonymous: true
  anonymous_channels: ["posts/*/comments"]
  max_connections: %d
cluster:
  node: %s
  urls: ["%s"]
  replicas: 3
  stream: %s
`, dsn, name, addr, filepath.Join(dir, node+"-ledger"), clients+100, node, strings.Join(urls, `", "`), name)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(nd.logPath)
	if err != nil {
		b.Fatal(err)
	}
	nd.cmd = exec.Command(bin, "run", "--config", config)
	nd.cmd.Env = withoutPGEnv()
	nd.cmd.Stdout, nd.cmd.Stderr = f, f
	if err := nd.cmd.Start(); err != nil {
		f.Close()
		b.Fatalf("start %s: %v", node, err)
	}
	go func() {
		_ = nd.cmd.Wait()
		f.Close()
		close(nd.exited)
	}()
	return nd
}

// stop ends the node with SIGTERM, and SIGKILL after a minute.
func (nd *walflowNode) stop(b *testing.B) {
	select {
	case <-nd.exited:
		return
	default:
	}
	_ = nd.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-nd.exited:
	case <-time.After(time.Minute):
		b.Logf("%s did not stop within a minute of SIGTERM; killed", nd.name)
		_ = nd.cmd.Process.Kill()
		<-nd.exited
	}
}

// waitWalflowNodes waits until every node answers /status with a leader and every node live.
func waitWalflowNodes(b *testing.B, nodes []*walflowNode, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var states []string
		ready := 0
		for _, nd := range nodes {
			select {
			case <-nd.exited:
				logTailFile(b, nd.logPath, 30)
				b.Fatalf("%s exited", nd.name)
			default:
			}
			st, err := nodeStatus(b.Context(), nd.addr)
			switch {
			case err != nil:
				states = append(states, nd.name+": "+err.Error())
			case st.Cluster == nil || st.Cluster.Leader == "" || len(st.Cluster.Nodes) < len(nodes):
				states = append(states, fmt.Sprintf("%s: cluster %+v", nd.name, st.Cluster))
			default:
				ready++
			}
		}
		if ready == len(nodes) {
			return
		}
		if time.Now().After(deadline) {
			for _, nd := range nodes {
				logTailFile(b, nd.logPath, 30)
			}
			b.Fatalf("the nodes were not ready within %s: %s", timeout, strings.Join(states, "; "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func nodeStatus(ctx context.Context, addr string) (walflow.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return walflow.FetchStatus(ctx, addr)
}

// pidCPU is the CPU time, user and system, the process pid used so far, from /proc/PID/stat.
func pidCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3, state; utime and stime are fields 14 and 15
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	const clockTicks = 100 // USER_HZ
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// logTailFile logs the last n lines of a child's log file.
func logTailFile(tb testing.TB, path string, n int) {
	tb.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	tb.Logf("--- %s, last %d lines ---\n%s", filepath.Base(path), min(n, len(lines)), strings.Join(lines[max(0, len(lines)-n):], "\n"))
}

// buildWalflow builds cmd/walflow into a temporary directory, without -race.
func buildWalflow(tb testing.TB) string {
	tb.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			goBin, err = filepath.Join(root, "bin", "go"), nil
		}
	}
	if err != nil {
		tb.Fatalf("the go command is needed to build walflow: %v; put it in PATH", err)
	}
	bin := filepath.Join(tb.TempDir(), "walflow")
	ctx, cancel := context.WithTimeout(tb.Context(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/walflow/walflow/cmd/walflow").CombinedOutput(); err != nil {
		tb.Fatalf("go build walflow: %v\n%s", err, out)
	}
	return bin
}
