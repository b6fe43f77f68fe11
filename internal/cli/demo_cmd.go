package cli

import (
	"context"
	"flag"
	"net"
	"strconv"

	"github.com/walflow/walflow/internal/demo"
)

var demoCommand = &command{
	name:    "demo",
	args:    "[--duration D] [--write-every D] [--keep] [--http ADDR | --port N] | --cluster [--kill-every D]",
	summary: "Start a throwaway PostgreSQL with a small blog, show it live in your browser and print walflow's events.",
	help: `
demo needs the PostgreSQL server binaries, not a running server; when they are missing it
installs them (apt-get install postgresql-15) if it runs as root with apt-get, and otherwise
stops with the command to run. It starts a private cluster on a free port of 127.0.0.1,
creates a blog (posts and comments, comments scoped by posts/{post_id}), follows it with
walflow into a disk ledger in a temporary directory, and changes the blog every 0.7 s (--write-every). The operator
post_with_comments_counts keeps a derived table of posts with their comment counts up to
date, and that table is followed too, so its rows' changes show up as events right after
the changes that caused them. Every event is printed as it comes back from the ledger,
with the channels it was delivered on. You may connect to the printed database URL and
make changes yourself: they show up too.

It also serves the blog as a small web app on the printed http://127.0.0.1 address (a free
port, or the one of --port; --http gives the whole address, and one not on 127.0.0.1 opens
the blog and its writes to whoever can reach it): the posts with their live comment
counts, a page per post with its comments arriving live, and forms to write and delete, all kept up to date by walflow.js over the realtime
gateway's WebSocket (mounted at /realtime/, open to anyone who can reach 127.0.0.1). The
writer only ever changes or deletes the posts it wrote itself.

Ctrl-C (or --duration) stops everything and removes the cluster and the ledger.

With --cluster it runs a walflow cluster on this machine instead (docs/cluster.md): three
NATS servers with JetStream in the demo's process and three walflow run processes (this
binary) sharing the ledger on a JetStream stream, each serving /status and the realtime
gateway on its own printed address. It prints which node leads and each node's stream
position; every --kill-every (20s) it kills the leader with SIGKILL and shows another node
taking over, resuming from the slot, then starts the killed node again as a standby. Kill
the leader yourself with kill -9 (the pids are printed) to see the same.`,
	flags: func(fs *flag.FlagSet) execFunc {
		d := fs.Duration("duration", 0, "stop after writing for `D`, a duration like 30s (default: until Ctrl-C)")
		every := fs.Duration("write-every", demo.WriteEveryDefault, "make a change to the blog every `D`; 0 turns the writer off")
		keep := fs.Bool("keep", false, "leave the cluster running and the ledger on disk at the end, and print how to resume")
		httpAddr := fs.String("http", "", "serve the web page and the HTTP endpoints on this `ADDR` (host:port; default: a free port of 127.0.0.1)")
		port := fs.String("port", "", "serve the web page and the HTTP endpoints on this port `N` of 127.0.0.1 (default: a free one)")
		clustered := fs.Bool("cluster", false, "run three walflow nodes and three NATS servers as a cluster, and show takeovers")
		killEvery := fs.Duration("kill-every", demo.KillEveryDefault, "with --cluster, SIGKILL the leader every `D`; 0 never")
		return func(ctx context.Context, e *env, _ []string) error {
			if *clustered {
				set := map[string]bool{}
				fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
				for _, name := range []string{"keep", "http", "port"} {
					if set[name] {
						return usagef("demo: --%s does not apply with --cluster, whose nodes each listen on a free port of 127.0.0.1; leave it out", name)
					}
				}
				if *d < 0 || *every < 0 || *killEvery < 0 {
					return usagef("demo: --duration, --write-every and --kill-every take durations like 30s, not negative ones")
				}
				return demo.RunCluster(ctx, demo.ClusterOptions{Stdout: e.stdout, Stderr: e.stderr, Getenv: e.getenv,
					Duration: *d, WriteEvery: *every, KillEvery: *killEvery})
			}
			killSet := false
			fs.Visit(func(f *flag.Flag) { killSet = killSet || f.Name == "kill-every" })
			if killSet {
				return usagef("demo: --kill-every applies to --cluster only; add --cluster, or leave it out")
			}
			addr, err := demoHTTPAddr(fs, *httpAddr, *port)
			if err != nil {
				return err
			}
			if *d < 0 {
				return usagef("demo: --duration %s is negative; give a duration like 30s, or none to run until Ctrl-C", *d)
			}
			if *every < 0 {
				return usagef("demo: --write-every %s is negative; give a duration like 2s, or 0 to turn the writer off", *every)
			}
			return demo.Run(ctx, demo.Options{
				Stdout: e.stdout, Stderr: e.stderr, Getenv: e.getenv,
				Duration: *d, WriteEvery: *every, Keep: *keep, HTTPAddr: addr,
				Color: isTerminal(e.stdout) && e.getenv("NO_COLOR") == "",
			})
		}
	},
}

// demoHTTPAddr is the address the demo's web page and HTTP endpoints listen on, from the
// --http and --port flags: 127.0.0.1:0 (a free port) when neither was given.
func demoHTTPAddr(fs *flag.FlagSet, httpAddr, port string) (string, error) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case set["http"] && set["port"]:
		return "", usagef("demo: --http and --port both give the web page's address; give one: --port N for 127.0.0.1:N, or --http HOST:PORT")
	case set["port"]:
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", usagef("demo: --port %q is not a TCP port; give a number from 1 to 65535, or leave --port out to get a free one", port)
		}
		return net.JoinHostPort("127.0.0.1", port), nil
	case set["http"]:
		_, p, err := net.SplitHostPort(httpAddr)
		if err != nil {
			return "", usagef("demo: --http %q is not an address: %v; give HOST:PORT, like 127.0.0.1:8080 (or :8080 for every interface)", httpAddr, err)
		}
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
			return "", usagef("demo: --http %q has no valid port %q; give a number from 1 to 65535 (0 picks a free one), like 127.0.0.1:8080", httpAddr, p)
		}
		return httpAddr, nil
	}
	return "127.0.0.1:0", nil
}
