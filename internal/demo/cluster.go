package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
)

// KillEveryDefault is how often walflow demo --cluster kills the leader by default.
const KillEveryDefault = 20 * time.Second

// ClusterOptions configures [RunCluster].
type ClusterOptions struct {
	Stdout, Stderr io.Writer
	// Getenv reads the environment.
	Getenv func(string) string
	// Duration is how long the demo runs; 0 runs until ctx ends.
	Duration time.Duration
	// WriteEvery is the writer's period; 0 turns the writer off.
	WriteEvery time.Duration
	// KillEvery is how often the demo SIGKILLs the leader (and starts it again as a
	// standby); 0 never does.
	KillEvery time.Duration
	// Exe is the walflow binary each node runs (walflow run). Default: this program.
	Exe string
}

// clusterNodes is how many walflow nodes and NATS servers the cluster demo runs.
const clusterNodes = 3

// demoNode is one walflow run process of the cluster demo.
type demoNode struct {
	name, addr, config, logPath string
	cmd                         *exec.Cmd
	exited                      chan struct{}
}

// RunCluster starts a throwaway PostgreSQL cluster with the demo's blog, a three-server
// NATS JetStream cluster in this process, and three walflow run processes forming one
// walflow cluster on them. It prints which node leads and each node's stream position,
// and every o.KillEvery it SIGKILLs the leader, shows another node taking over, and
// starts the killed node again. It stops everything and removes its files when ctx ends
// or o.Duration has passed.
func RunCluster(ctx context.Context, o ClusterOptions) (err error) {
	if o.Duration < 0 || o.WriteEvery < 0 || o.KillEvery < 0 {
		return fmt.Errorf("demo: negative duration (%s), write period (%s) or kill period (%s)", o.Duration, o.WriteEvery, o.KillEvery)
	}
	exe := o.Exe
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("demo: find the walflow binary to run the nodes with: %w", err)
		}
	}
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	e := &env{stdout: o.Stdout, stderr: o.Stderr, getenv: o.Getenv}
	out := e.stdout
	fmt.Fprintln(out, "walflow demo --cluster: starting a throwaway PostgreSQL cluster…")
	pg, dir, cleanup, err := startThrowaway(ctx, e, "walflow-demo-cluster-*")
	if err != nil || pg == nil {
		return err
	}
	defer func() { err = errors.Join(err, cleanup()) }()
	d := &demo{env: e, cluster: pg, dir: dir, slot: demoSlot, writeEvery: o.WriteEvery}
	if err := d.createBlog(ctx); err != nil {
		return err
	}

	fmt.Fprintln(out, "walflow demo --cluster: starting three NATS servers with JetStream…")
	lc, err := cluster.StartLocalCluster(ctx, filepath.Join(dir, "nats"), clusterNodes)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("demo: %w", err)
	}
	defer lc.Shutdown()

	nodes := make([]*demoNode, clusterNodes)
	for i := range nodes {
		n, err := d.writeNodeConfig(i+1, lc.URLs())
		if err != nil {
			return err
		}
		nodes[i] = n
	}
	defer func() {
		for _, n := range nodes {
			n.stop()
		}
	}()
	for _, n := range nodes {
		if err := n.start(exe); err != nil {
			return err
		}
	}
	d.clusterBanner(nodes, lc.URLs(), o)

	w := &writer{dsn: d.dsn, every: o.WriteEvery, log: e.stderr}
	wctx, stopWriter := context.WithCancel(ctx)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		w.run(wctx)
	}()
	defer func() {
		stopWriter()
		<-writerDone
	}()
	return watchCluster(ctx, out, nodes, exe, o.KillEvery)
}

// writeNodeConfig writes the walflow.yaml of node i, on a free port of 127.0.0.1.
func (d *demo) writeNodeConfig(i int, urls []string) (*demoNode, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo: find a free port for node %d: %w", i, err)
	}
	addr := ln.Addr().String()
	ln.Close()
	n := &demoNode{name: fmt.Sprintf("node-%d", i), addr: addr,
		config: filepath.Join(d.dir, fmt.Sprintf("node-%d.yaml", i)), logPath: filepath.Join(d.dir, fmt.Sprintf("node-%d.log", i))}
	yaml := fmt.Sprintf(`# Node %d of walflow demo --cluster.
database_url: %s
slot: %s
http:
  addr: %q
log:
  level: info
status_interval: 1s
tables:
  posts:
  comments:
    scopes: ["posts/{post_id}"]
  post_with_comments_counts:
realtime:
  allow_anonymous: true
  anonymous_channels: [posts, "posts/*", "posts/*/comments", comments, "comments/*",
    post_with_comments_counts, "post_with_comments_counts/*"]
cluster:
  node: %s
  urls: ["%s"]
  replicas: 3
  heartbeat: 500ms
  node_ttl: 2s
%s`, i, d.dsn, d.slot, addr, n.name, strings.Join(urls, `", "`), demoOperator)
	if err := os.WriteFile(n.config, []byte(yaml), 0o600); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	return n, nil
}

func (d *demo) clusterBanner(nodes []*demoNode, urls []string, o ClusterOptions) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n  database    %s\n  nats        %s\n", d.dsn, strings.Join(urls, " "))
	for _, n := range nodes {
		fmt.Fprintf(&b, "  %s      http://%s/status   (realtime at /realtime/, config %s, log %s)\n", n.name, n.addr, n.config, n.logPath)
	}
	b.WriteString("\nOne node streams the slot into the shared JetStream stream; the others stand by and serve\n" +
		"readers from the stream. ")
	if o.KillEvery > 0 {
		fmt.Fprintf(&b, "Once every node is up, every %s the demo kills the leader with SIGKILL (--kill-every)\nand starts it again: watch another node take over, resuming from the slot.\n", o.KillEvery)
	} else {
		b.WriteString("Kill the leader yourself (kill -9 with the pid printed below) to watch another\nnode take over; the demo starts it again.\n")
	}
	if o.WriteEvery > 0 {
		fmt.Fprintf(&b, "A writer changes the blog every %.1fs.", o.WriteEvery.Seconds())
	}
	if o.Duration > 0 {
		fmt.Fprintf(&b, " It stops after %s, or on Ctrl-C.\n\n", o.Duration)
	} else {
		b.WriteString(" Press Ctrl-C to stop.\n\n")
	}
	fmt.Fprint(d.env.stdout, b.String())
}

// start starts the node's walflow run, its output in its log file.
func (n *demoNode) start(exe string) error {
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	cmd := exec.Command(exe, "run", "--config", n.config)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("demo: start %s (%s run): %w", n.name, exe, err)
	}
	n.cmd, n.exited = cmd, make(chan struct{})
	exited := n.exited
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(exited)
	}()
	return nil
}

// alive reports whether the node's process runs.
func (n *demoNode) alive() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// kill SIGKILLs the node and waits for it to exit.
func (n *demoNode) kill() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}

// stop asks the node to stop (SIGTERM), and kills it after 10s.
func (n *demoNode) stop() {
	if !n.alive() {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		n.kill()
	}
}

// status reads the node's /status.
func (n *demoNode) status(ctx context.Context) (walflow.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return walflow.FetchStatus(ctx, n.addr)
}

// watchCluster prints the leader whenever it changes and the nodes' positions every few
// seconds, kills the leader every killEvery (counted from when every node is up, and only
// while every node is up), and starts a node that
// exited again once another node leads (or after 15s), until ctx ends.
func watchCluster(ctx context.Context, out io.Writer, nodes []*demoNode, exe string, killEvery time.Duration) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var nextKill time.Time // zero until every node is up
	stamp := func() string { return time.Now().Format("15:04:05.000") }
	leader := ""
	allUp := false
	var killedAt time.Time
	var killedName string
	down := map[*demoNode]time.Time{} // exited nodes, since when
	lastSummary := time.Time{}
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(out, "%s stopping the nodes…\n", stamp())
			return nil
		case <-tick.C:
		}
		if killEvery > 0 && allUp && nextKill.IsZero() {
			nextKill = time.Now().Add(killEvery)
		}
		if !nextKill.IsZero() && time.Now().After(nextKill) && allUp && leader != "" {
			nextKill = time.Now().Add(killEvery)
			for _, n := range nodes {
				if n.name == leader && n.alive() {
					fmt.Fprintf(out, "%s kill -9 %d: %s, the leader, is killed\n", stamp(), n.cmd.Process.Pid, n.name)
					n.kill()
					killedAt, killedName, leader = time.Now(), n.name, ""
					down[n] = time.Now()
				}
			}
		}
		var parts []string
		now := ""
		up := 0
		for _, n := range nodes {
			if !n.alive() {
				parts = append(parts, n.name+" down")
				if _, ok := down[n]; !ok {
					down[n] = time.Now()
					if n.name == leader {
						fmt.Fprintf(out, "%s %s, the leader, has exited\n", stamp(), n.name)
						killedAt, killedName, leader = time.Now(), n.name, ""
					}
				}
				continue
			}
			st, err := n.status(ctx)
			if err != nil {
				parts = append(parts, n.name+" starting")
				continue
			}
			up++
			role := "standby"
			if st.Streaming {
				role, now = "LEADER", n.name
			}
			parts = append(parts, fmt.Sprintf("%s %s @%d", n.name, role, st.LedgerHead))
		}
		allUp = up == len(nodes)
		if now != "" && now != leader {
			pid := 0
			for _, n := range nodes {
				if n.name == now && n.cmd != nil {
					pid = n.cmd.Process.Pid
				}
			}
			if killedName != "" && !killedAt.IsZero() {
				fmt.Fprintf(out, "%s %s leads (pid %d): took over %.1fs after %s was killed, resuming from the slot\n", stamp(), now, pid, time.Since(killedAt).Seconds(), killedName)
				killedAt = time.Time{}
			} else {
				fmt.Fprintf(out, "%s %s leads (pid %d)\n", stamp(), now, pid)
			}
			leader = now
		}
		for n, since := range down {
			// Start it again once another node leads, so that the takeover is another's.
			if leader != "" || time.Since(since) > 15*time.Second {
				if err := n.start(exe); err != nil {
					return err
				}
				delete(down, n)
				fmt.Fprintf(out, "%s %s started again (pid %d); it joins as a standby\n", stamp(), n.name, n.cmd.Process.Pid)
			}
		}
		if time.Since(lastSummary) >= 5*time.Second {
			lastSummary = time.Now()
			fmt.Fprintf(out, "%s %s\n", stamp(), strings.Join(parts, " | "))
		}
	}
}
