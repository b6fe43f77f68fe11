package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/configfile"
	"github.com/walflow/walflow/internal/eventline"
	"github.com/walflow/walflow/internal/pgtest"
)

// WriteEveryDefault is how often the demo's writer changes the blog by default.
const WriteEveryDefault = 700 * time.Millisecond

// Demo settings.
const (
	demoDatabase = "blog"
	demoSlot     = "walflow_demo"
	demoSchema   = `
CREATE TABLE posts (
	id          serial PRIMARY KEY,
	title       text NOT NULL,
	body        text NOT NULL DEFAULT '',
	inserted_at timestamptz NOT NULL DEFAULT now(),
	updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE comments (
	id         serial PRIMARY KEY,
	post_id    int NOT NULL REFERENCES posts ON DELETE CASCADE,
	body       text NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON comments (post_id);
-- Derived: kept up to date by the post_with_comments_counts operator.
CREATE TABLE post_with_comments_counts (
	id             int PRIMARY KEY,
	title          text,
	body           text,
	inserted_at    timestamptz,
	updated_at     timestamptz,
	comments_count int
);
ALTER TABLE posts REPLICA IDENTITY FULL;
ALTER TABLE comments REPLICA IDENTITY FULL;
ALTER TABLE post_with_comments_counts REPLICA IDENTITY FULL;`
	// demoOperator is the operators block of the demo's configuration:
	// post_with_comments_counts, whose MERGE updates a row only when it changes, so a
	// recomputation that changes nothing makes no event.
	demoOperator = `operators:
  post_with_comments_counts:
    entities: [comments, posts]
    id: {comments: post_id, posts: id}
    delete_with: [posts]
    query: |
      MERGE INTO post_with_comments_counts dest
      USING (
          SELECT p.id AS id, p.title AS title, p.body AS body,
                 p.inserted_at AS inserted_at, p.updated_at AS updated_at,
                 (SELECT COUNT(c.id) FROM comments c WHERE c.post_id = p.id) AS comments_count
          FROM posts p
          WHERE p.id = $1
      ) src ON src.id = dest.id
      WHEN NOT MATCHED THEN
        INSERT (id, title, body, inserted_at, updated_at, comments_count)
        VALUES (src.id, src.title, src.body, src.inserted_at, src.updated_at, src.comments_count)
      WHEN MATCHED AND (dest.title, dest.body, dest.inserted_at, dest.updated_at, dest.comments_count)
          IS DISTINCT FROM (src.title, src.body, src.inserted_at, src.updated_at, src.comments_count) THEN
        UPDATE SET title = src.title, body = src.body, inserted_at = src.inserted_at,
                   updated_at = src.updated_at, comments_count = src.comments_count;
`
	demoDerived = "post_with_comments_counts"
)

// demoListen listens on addr for the demo's web page before anything else starts, so a
// port in use fails the demo at once.
func demoListen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("demo: %s is in use by another program; give another with --port N or --http HOST:PORT, or leave both out to get a free port", addr)
	}
	return nil, fmt.Errorf("demo: listen on %s for the web page: %w; give another address with --port N or --http HOST:PORT", addr, err)
}

// Options say how [Run] runs the demo.
type Options struct {
	Stdout, Stderr io.Writer
	// Getenv reads the environment (NO_COLOR is read by the caller, into Color).
	Getenv func(string) string
	// Duration is how long the writer writes; 0 runs until ctx ends.
	Duration time.Duration
	// WriteEvery is the writer's period; 0 turns the writer off.
	WriteEvery time.Duration
	// Keep leaves the cluster running and the ledger on disk at the end, and prints how
	// to resume.
	Keep bool
	// HTTPAddr is where the web page and the engine's HTTP endpoints listen (host:port;
	// port 0 picks a free one).
	HTTPAddr string
	// Color colours the event lines (for a terminal).
	Color bool
}

// env is where the demo writes, and how it reads the environment.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

// Run starts a throwaway PostgreSQL cluster with a small blog, follows it with walflow,
// serves the blog as a web app kept live over the realtime gateway, changes it every
// o.WriteEvery and prints every event, until ctx ends or o.Duration has passed. It
// removes the cluster and the ledger at the end unless o.Keep. Negative durations are
// errors.
func Run(ctx context.Context, o Options) (err error) {
	e := &env{stdout: o.Stdout, stderr: o.Stderr, getenv: o.Getenv}
	duration, writeEvery, keep, httpAddr := o.Duration, o.WriteEvery, o.Keep, o.HTTPAddr
	if duration < 0 || writeEvery < 0 {
		return fmt.Errorf("demo: negative duration (%s) or period (%s)", duration, writeEvery)
	}
	ln, err := demoListen(httpAddr)
	if err != nil {
		return err
	}
	// The web app owns ln once run starts it; until then every failure closes it.
	defer func() {
		if ln != nil {
			ln.Close()
		}
	}()
	if host, _, _ := net.SplitHostPort(ln.Addr().String()); !net.ParseIP(host).IsLoopback() {
		fmt.Fprintf(e.stderr, "walflow demo: warning: the blog on %s, with its forms that write to the database and its channels open to anonymous readers, is reachable from the network\n", ln.Addr())
	}
	out := e.stdout
	fmt.Fprintln(out, "walflow demo: starting a throwaway PostgreSQL cluster…")
	cluster, dir, cleanup, err := startThrowaway(ctx, e, "walflow-demo-*")
	if err != nil || cluster == nil {
		return err
	}
	defer func() {
		if keep && err == nil {
			return
		}
		err = errors.Join(err, cleanup())
	}()

	d := &demo{env: e, cluster: cluster, dir: dir, slot: demoSlot, writeEvery: writeEvery, color: o.Color}
	if err := d.setup(ctx, ln.Addr().String()); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	d.ln, ln = ln, nil
	return d.run(ctx, duration, keep)
}

// demo is one run of walflow demo.
type demo struct {
	env     *env
	cluster *pgtest.Cluster
	dir     string // temporary directory: walflow.yaml and the ledger
	slot    string
	color   bool
	// writeEvery is the writer's period; 0 means no writer.
	writeEvery time.Duration

	dsn        string
	configPath string
	cfg        *configfile.Config
	// ln is where the web app listens; nil makes run listen on the configured address.
	ln net.Listener
}

// startThrowaway starts the demo's throwaway PostgreSQL cluster and makes a temporary
// directory, named after pattern as os.MkdirTemp does. cleanup stops the cluster and
// removes the directory, within a minute of its own even when ctx is done: it must
// outlive the Ctrl-C that ended the demo. When ctx ends while the cluster starts,
// startThrowaway returns no cluster and no error.
func startThrowaway(ctx context.Context, e *env, pattern string) (pg *pgtest.Cluster, dir string, cleanup func() error, err error) {
	pg, err = startCluster(ctx, e.stderr, systemInstaller(e.stderr), pgtest.Start, os.Getenv)
	if err != nil {
		if ctx.Err() != nil {
			return nil, "", nil, nil // interrupted while starting
		}
		return nil, "", nil, fmt.Errorf("demo: %w", err)
	}
	stop := func() error {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		return pg.Stop(cctx)
	}
	dir, err = os.MkdirTemp("", pattern)
	if err != nil {
		return nil, "", nil, errors.Join(fmt.Errorf("demo: %w", err), stop())
	}
	return pg, dir, func() error { return errors.Join(stop(), os.RemoveAll(dir)) }, nil
}

// setup creates the blog and writes the walflow.yaml the engine runs with, with HTTP on addr.
func (d *demo) setup(ctx context.Context, addr string) error {
	if err := d.createBlog(ctx); err != nil {
		return err
	}
	return d.configure(addr)
}

// createBlog creates the blog's database and tables in the cluster, and sets d.dsn.
func (d *demo) createBlog(ctx context.Context) error {
	if err := d.cluster.CreateDatabase(ctx, demoDatabase); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := d.cluster.Exec(ctx, demoDatabase, demoSchema); err != nil {
		return fmt.Errorf("demo: create the blog: %w", err)
	}
	d.dsn = d.cluster.DSN(demoDatabase)
	return nil
}

// configure writes the walflow.yaml of the blog at d.dsn, with HTTP on addr, and loads it.
func (d *demo) configure(addr string) error {
	// The demo runs from an ordinary configuration file, so --keep can hand it to walflow run.
	d.configPath = filepath.Join(d.dir, "walflow.yaml")
	yaml := fmt.Sprintf(`# The configuration walflow demo ran with. Resume with: walflow run --config %s
database_url: %s
slot: %s
ledger:
  dir: ledger
http:
  addr: %q
log:
  level: warn
status_interval: 1s
tables:
  posts:
  comments:
    scopes: ["posts/{post_id}"]
  post_with_comments_counts:
# The demo listens on 127.0.0.1 only, so its channels are open to anonymous readers.
realtime:
  allow_anonymous: true
  anonymous_channels: [posts, "posts/*", "posts/*/comments", comments, "comments/*",
    post_with_comments_counts, "post_with_comments_counts/*"]
%s`, d.configPath, d.dsn, d.slot, addr, demoOperator)
	if err := os.WriteFile(d.configPath, []byte(yaml), 0o600); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	var err error
	d.cfg, err = configfile.Load(d.configPath, d.env.getenv)
	if err != nil {
		return fmt.Errorf("demo: its own configuration is invalid: %w", err)
	}
	return nil
}

// openEngine opens the engine of the configuration, with the realtime gateway and without
// its own HTTP server: the web app serves the engine's handler next to the blog.
func (d *demo) openEngine(ctx context.Context) (*walflow.Engine, error) {
	cfg := d.cfg.Engine
	cfg.Logger = d.cfg.Logger(d.env.stderr)
	cfg.HTTPAddr = ""
	rt, err := d.cfg.Realtime.Resolve(d.env.getenv, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("demo: its own realtime configuration is invalid: %w", err)
	}
	cfg.Realtime = rt
	eng, err := walflow.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("demo: open the engine: %w", err)
	}
	return eng, nil
}

func (d *demo) run(ctx context.Context, duration time.Duration, keep bool) error {
	out := d.env.stdout
	// The web app serves until the writer has stopped; it owns the HTTP address.
	ln := d.ln
	if ln == nil {
		var err error
		if ln, err = demoListen(d.cfg.Engine.HTTPAddr); err != nil {
			return err
		}
	}
	eng, err := d.openEngine(ctx)
	if err != nil {
		ln.Close()
		return err
	}
	defer eng.Close()

	web, err := newDemoWeb(eng, d.dsn)
	if err != nil {
		ln.Close()
		return err
	}
	webCtx, stopWeb := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWeb()
	webDone := make(chan error, 1)
	go func() { webDone <- web.run(webCtx, ln) }()
	webStopped := false
	stopWebApp := func() error {
		if webStopped {
			return nil
		}
		webStopped = true
		stopWeb()
		return <-webDone
	}
	defer stopWebApp()

	// The subscription reads the ledger from its start, so it misses nothing however late it
	// is scheduled; it ends when subCtx does.
	subCtx, stopSub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSub()
	sub, err := eng.Subscribe(subCtx, &walflow.SubscribeOpts{After: new(event.Position)}, "posts", "comments", demoDerived)
	if err != nil {
		return fmt.Errorf("demo: subscribe: %w", err)
	}

	// The engine stops on our signal, after the writer, so its last changes get printed.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	// runDone is closed when Run has returned engineErr: every waiter can see it, and
	// stopping the engine after it ended does not block.
	var engineErr error
	runDone := make(chan struct{})
	go func() { engineErr = eng.Run(runCtx); close(runDone) }()
	stopEngine := func() error {
		stopRun()
		<-runDone
		return engineErr
	}

	if err := waitStreaming(ctx, eng, runDone); err != nil {
		webErr, runErr := stopWebApp(), stopEngine()
		if runErr != nil {
			err = fmt.Errorf("demo: the engine stopped: %w", runErr)
		} else if ctx.Err() != nil {
			err = nil // Ctrl-C while starting
		}
		return errors.Join(err, webErr)
	}
	d.banner(ctx, duration)

	p := &printer{w: out, color: d.color, router: eng.Router(), tableWidth: len(demoDerived), seen: map[uint32]bool{}, done: make(chan struct{})}
	go p.run(sub)

	w := &writer{dsn: d.dsn, log: d.env.stderr, every: d.writeEvery}
	writeCtx, stopWrite := context.WithCancel(ctx)
	writeDone := make(chan struct{})
	go func() { defer close(writeDone); w.run(writeCtx) }()

	started := time.Now()
	var timeout <-chan time.Time
	if duration > 0 {
		timeout = time.After(duration)
	}
	var runErr, webErr error
	engineDone := false
	select {
	case <-ctx.Done():
	case <-timeout:
	case <-runDone:
		runErr, engineDone = engineErr, true
	case webErr = <-webDone:
		webStopped = true
	}
	stopWrite()
	<-writeDone
	webErr = errors.Join(webErr, stopWebApp())

	// Let the engine take in the writer's last transaction, and the operator the derived
	// change it makes, before stopping it.
	if last, ok := w.lastXID(); ok && !engineDone {
		deadline := time.Now().Add(3 * time.Second)
		for !p.saw(last) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		settle(eng, deadline)
	}
	if !engineDone {
		runErr = stopEngine()
	}
	// The ledger is final now: print up to its head, then end the subscription.
	head := eng.Ledger().State().Head
	deadline := time.Now().Add(5 * time.Second)
	for (sub.Position() < head || len(sub.Events()) > 0) && sub.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stopSub()
	<-p.done
	elapsed := time.Since(started)

	fmt.Fprintf(out, "\n%d events in %.1fs; the ledger's head is position %d (commit %s)",
		p.count, elapsed.Seconds(), head, eng.Ledger().State().LastCommitLSN)
	if ops := eng.Operators(); ops != nil {
		for _, o := range ops.Operators() {
			fmt.Fprintf(out, ", the operator %s applied through %d", o.Name, o.Position)
		}
	}
	// The slot confirms what the ledger made durable: show it, now that the engine stopped.
	if st := eng.Status(context.WithoutCancel(ctx)); st.SlotExists {
		fmt.Fprintf(out, ", the slot confirmed %s", st.ConfirmedLSN)
	}
	fmt.Fprintln(out, ".")
	if runErr != nil {
		return fmt.Errorf("demo: the engine stopped: %w", runErr)
	}
	if webErr != nil {
		return webErr
	}
	if err := sub.Err(); err != nil {
		return fmt.Errorf("demo: the subscription stopped: %w", err)
	}
	if keep {
		d.keptNote()
	} else {
		fmt.Fprintln(out, "Removed the cluster and the ledger.")
	}
	return nil
}

// settle waits, until deadline at the latest, for the operators to apply everything in the
// ledger and for the ledger to stop growing: the derived changes come back through the WAL.
func settle(eng *walflow.Engine, deadline time.Time) {
	caughtUp := func(head event.Position) bool {
		for _, o := range eng.Operators().Operators() {
			if o.Position < head && !o.Halted {
				return false
			}
		}
		return true
	}
	for time.Now().Before(deadline) {
		head := eng.Ledger().State().Head
		if !caughtUp(head) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		time.Sleep(200 * time.Millisecond)
		if eng.Ledger().State().Head == head {
			return
		}
	}
}

// waitStreaming waits until the engine streams from its slot: changes made before the slot
// exists would not be seen.
func waitStreaming(ctx context.Context, eng *walflow.Engine, runDone <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for !eng.Status(ctx).Streaming {
		if time.Now().After(deadline) {
			return errors.New("demo: the engine did not start streaming within 30s (see the log above)")
		}
		select {
		case <-runDone:
			return errors.New("demo: the engine stopped before it streamed (see the log above)")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func (d *demo) banner(ctx context.Context, duration time.Duration) {
	c := d.cfg.Engine
	version := "PostgreSQL"
	if conn, err := pgx.Connect(ctx, d.dsn); err == nil {
		var v string
		if conn.QueryRow(ctx, "SHOW server_version").Scan(&v) == nil {
			version += " " + strings.Fields(v + " ")[0] // 15.18, without "(Debian ...)"
		}
		conn.Close(context.WithoutCancel(ctx))
	}
	stop := "Press Ctrl-C to stop."
	if duration > 0 {
		stop = fmt.Sprintf("It stops after %s, or on Ctrl-C.", duration)
	}
	writes := fmt.Sprintf("A writer changes the blog every %.1fs (--write-every).", d.writeEvery.Seconds())
	if d.writeEvery == 0 {
		writes = "No writer (--write-every 0): change the blog in the browser or with psql."
	}
	fmt.Fprintf(d.env.stdout, `
  open        http://%s/   the blog in your browser, live over WebSocket
  database    %s   (%s)
              connect with psql and change posts or comments yourself: it shows up below
  realtime    ws://%s/realtime/   (walflow.js at /realtime/walflow.js; anyone on 127.0.0.1 may read)
  console     http://%s/console/   live charts of the engine (docs/console.md)
  metrics     http://%s/metrics   (and /status, /healthz)
  ledger      %s   (slot %s)
  subscribed  posts, comments, %s   (comments are scoped by posts/{post_id})
  operator    %s: each post with its comment count, recomputed
              from every change of posts and comments (walflow operator status --config %s)

%s
Each line is an event read back from the ledger: position, commit LSN, table, type, what
changed, and the channels it was delivered on.
The %s lines are the operator's work, right after the changes that caused them.
%s

`, c.HTTPAddr, d.dsn, version, c.HTTPAddr, c.HTTPAddr, c.HTTPAddr, c.LedgerDir, c.Slot, demoDerived, demoDerived, d.configPath, writes, demoDerived, stop)
}

func (d *demo) keptNote() {
	stop := fmt.Sprintf("%s -D %s stop", filepath.Join(d.cluster.BinDir(), "pg_ctl"), d.cluster.DataDir())
	if os.Geteuid() == 0 {
		stop = fmt.Sprintf("su postgres -c '%s'", stop)
	}
	fmt.Fprintf(d.env.stdout, `Kept the cluster running and the ledger (--keep):
  database  %s
  resume    walflow run --config %s
  status    walflow status --config %s
  operators walflow operator status --config %s
  remove    %s && rm -rf %s %s
The next walflow demo or pgtest run also removes clusters whose process has exited.
`, d.dsn, d.configPath, d.configPath, d.configPath, stop, filepath.Dir(d.cluster.DataDir()), d.dir)
}

// printer prints a subscription's events, one line each.
type printer struct {
	w          io.Writer
	color      bool
	router     *channel.Router
	tableWidth int // the widest table name, to align the lines
	done       chan struct{}

	mu    sync.Mutex
	seen  map[uint32]bool // transaction ids printed
	count int             // events printed; read after done
}

func (p *printer) run(sub *walflow.Subscription) {
	defer close(p.done)
	var channels []string
	for ev := range sub.Events() {
		channels = p.router.Channels(&ev, channels[:0])
		fmt.Fprintln(p.w, eventline.LineWidth(&ev, p.router.Table(ev.Name), channels, p.color, p.tableWidth))
		p.mu.Lock()
		p.seen[ev.XID] = true
		p.count++
		p.mu.Unlock()
	}
}

// saw reports whether an event of transaction xid was printed.
func (p *printer) saw(xid uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[xid]
}

// writer makes a realistic change to the blog every every. It changes and deletes only the
// posts it wrote (their body is 'Draft.') and their comments, so what a person writes in
// the web app stays; it only adds comments to it.
type writer struct {
	dsn   string
	log   io.Writer
	every time.Duration // 0: the writer does nothing

	mu   sync.Mutex
	last uint32 // transaction id of the last change that wrote a row
	any  bool
}

// demoSteps is the writer's script, one statement per tick, repeated. $1 is a text that
// varies with the round. Besides commenting on the newest post, whoever wrote it, the
// writer touches only its own posts (mine) and their comments, and its last step leaves
// at most six of its posts, so the blog does not grow without end.
var demoSteps = []struct {
	sql   string
	texts []string
}{
	{`INSERT INTO posts (title, body) VALUES ($1, 'Draft.')`,
		[]string{"Hello, WAL", "Slots and their lag", "Replaying from position 0", "Channels, explained"}},
	{`INSERT INTO comments (post_id, body) SELECT max(id), $1 FROM posts HAVING max(id) IS NOT NULL`,
		[]string{"First!", "Which PostgreSQL version?", "Nice write-up.", "+1"}},
	{`INSERT INTO posts (title, body) VALUES ($1, 'Draft.')`,
		[]string{"Logical decoding 101", "One ledger, many readers", "Exactly once, in order", "Scopes in practice"}},
	{`WITH mine AS (SELECT id FROM posts WHERE body = 'Draft.')
	  UPDATE posts SET title = $1, updated_at = now() WHERE id = (SELECT min(id) FROM mine)`,
		[]string{"Hello, write-ahead log", "Slots, lag and you", "Replay from any position", "Channels, in depth"}},
	{`WITH mine AS (SELECT id FROM posts WHERE body = 'Draft.')
	  UPDATE comments SET post_id = (SELECT max(id) FROM mine), updated_at = now()
	  WHERE id = (SELECT min(id) FROM comments WHERE post_id IN (SELECT id FROM mine) AND post_id <> (SELECT max(id) FROM mine))`, nil},
	{`INSERT INTO comments (post_id, body) SELECT min(id), $1 FROM posts WHERE body = 'Draft.' HAVING min(id) IS NOT NULL`,
		[]string{"Survives a crash?", "Great, thanks", "What about TOAST?", "Bookmarked."}},
	{`UPDATE comments SET body = $1, updated_at = now()
	  WHERE id = (SELECT max(id) FROM comments WHERE post_id IN (SELECT id FROM posts WHERE body = 'Draft.'))`,
		[]string{"Yes, it does.", "Great, thanks!", "Kept, never NULL.", "Bookmarked!"}},
	{`DELETE FROM comments WHERE id = (SELECT min(id) FROM comments WHERE post_id IN (SELECT id FROM posts WHERE body = 'Draft.'))`, nil},
	{`WITH mine AS (SELECT id FROM posts WHERE body = 'Draft.')
	  DELETE FROM posts WHERE id = (SELECT min(id) FROM mine)
	     OR id IN (SELECT id FROM mine ORDER BY id DESC OFFSET 6)`, nil},
}

func (w *writer) run(ctx context.Context) {
	if w.every == 0 {
		return
	}
	conn, err := pgx.Connect(ctx, w.dsn)
	if err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(w.log, "walflow demo: writer: connect: %v\n", err)
		}
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tick := time.NewTicker(w.every)
	defer tick.Stop()
	for i := 0; ; i++ {
		step := demoSteps[i%len(demoSteps)]
		var args []any
		if step.texts != nil {
			args = append(args, step.texts[i/len(demoSteps)%len(step.texts)])
		}
		if err := w.change(ctx, conn, step.sql, args); err != nil {
			if ctx.Err() != nil {
				return
			}
			fmt.Fprintf(w.log, "walflow demo: writer: %v\n", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// change runs one statement in its own transaction and remembers the transaction id when
// it wrote a row.
func (w *writer) change(ctx context.Context, conn *pgx.Conn, sql string, args []any) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		return err
	}
	var xid *string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id_if_assigned()::text`).Scan(&xid); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	if xid != nil {
		if v, err := strconv.ParseUint(*xid, 10, 64); err == nil {
			w.mu.Lock()
			w.last, w.any = uint32(v), true // events carry the 32-bit xid
			w.mu.Unlock()
		}
	}
	return nil
}

// lastXID returns the transaction id of the last change that wrote a row.
func (w *writer) lastXID() (uint32, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.any
}
