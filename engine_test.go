package walflow_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgschema"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/realtime"
	"github.com/walflow/walflow/source/pgwal"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

const blogSchema = `
	CREATE TABLE posts (id int PRIMARY KEY, title text);
	CREATE TABLE comments (id int PRIMARY KEY, post_id int, body text);
	ALTER TABLE posts REPLICA IDENTITY FULL;
	ALTER TABLE comments REPLICA IDENTITY FULL;`

type blog struct {
	t    *testing.T
	eng  *walflow.Engine
	conn *pgx.Conn
	dsn  string
}

// startBlog runs an engine on a fresh database with the blog schema, comments scoped by
// posts, until the test ends.
func startBlog(t *testing.T) *blog {
	t.Helper()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	ctx := t.Context()
	cfg, _ := pgx.ParseConfig(dsn)
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true,
		Tables: []channel.Table{
			{Name: "posts"},
			{Name: "comments", Scopes: []channel.Scope{mustScope(t, "posts/{post_id}")}},
		},
		StatusInterval: 200 * time.Millisecond,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	return &blog{t: t, eng: eng, conn: conn, dsn: dsn}
}

// runEngine runs eng until the test ends, then checks Run's result and closes it. It
// returns once the engine streams: changes made before the slot exists are not in it.
func runEngine(t *testing.T, eng *walflow.Engine) {
	t.Helper()
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := eng.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !eng.Status(t.Context()).Streaming {
		if time.Now().After(deadline) {
			t.Fatal("engine did not start streaming within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testLogger routes warnings and errors to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func mustScope(t *testing.T, s string) channel.Scope {
	sc, err := channel.ParseScope(s)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func (b *blog) exec(sql string) {
	b.t.Helper()
	if _, err := b.conn.Exec(b.t.Context(), sql); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
}

var fromStart = new(event.Position)

// collect reads n events from a subscription, failing after a deadline.
func collect(t *testing.T, sub *walflow.Subscription, n int) []event.Event {
	t.Helper()
	var out []event.Event
	timeout := time.After(60 * time.Second)
	for len(out) < n {
		select {
		case e, ok := <-sub.Events():
			if !ok {
				t.Fatalf("subscription ended after %d of %d events: %v", len(out), n, sub.Err())
			}
			out = append(out, e)
		case <-timeout:
			t.Fatalf("received %d of %d events", len(out), n)
		}
	}
	return out
}

// summary renders events compactly: "comments update 7".
func summary(evs []event.Event) string {
	var parts []string
	for _, e := range evs {
		id, _ := e.ID("id")
		parts = append(parts, fmt.Sprintf("%s %s %s", e.Name, e.Type, id))
	}
	return strings.Join(parts, ", ")
}

func TestSubscribeChannelKinds(t *testing.T) {
	t.Parallel()
	b := startBlog(t)
	ctx := t.Context()
	subs := map[string]*walflow.Subscription{}
	for _, ch := range []string{"comments", "comments/7", "posts/42/comments", "posts/43/comments", "posts/42"} {
		s, err := b.eng.Subscribe(ctx, &walflow.SubscribeOpts{After: fromStart}, ch)
		if err != nil {
			t.Fatal(err)
		}
		subs[ch] = s
	}
	b.exec(`INSERT INTO posts VALUES (42, 'a'), (43, 'b')`)
	b.exec(`INSERT INTO comments VALUES (7, 42, 'x'), (8, 42, 'y'), (9, 43, 'z')`)
	b.exec(`UPDATE comments SET post_id = 43 WHERE id = 7`) // moves between scopes
	b.exec(`DELETE FROM comments WHERE id = 8`)
	b.exec(`UPDATE posts SET title = 'A' WHERE id = 42`)

	want := map[string]string{
		"comments":          "comments insert 7, comments insert 8, comments insert 9, comments update 7, comments delete 8",
		"comments/7":        "comments insert 7, comments update 7",
		"posts/42/comments": "comments insert 7, comments insert 8, comments update 7, comments delete 8",
		"posts/43/comments": "comments insert 9, comments update 7",
		"posts/42":          "posts insert 42, posts update 42",
	}
	for ch, w := range want {
		got := summary(collect(t, subs[ch], strings.Count(w, ",")+1))
		if got != w {
			t.Errorf("%s:\n got %s\nwant %s", ch, got, w)
		}
	}
	// Nothing more may arrive on the channels: send a marker change and check it is next.
	b.exec(`INSERT INTO comments VALUES (100, 42, 'marker')`)
	if got := summary(collect(t, subs["posts/42/comments"], 1)); got != "comments insert 100" {
		t.Errorf("posts/42/comments: unexpected extra event %s", got)
	}
}

func TestSubscribeErrors(t *testing.T) {
	t.Parallel()
	b := startBlog(t)
	for _, ch := range []string{"", "posts//comments", "posts/42/comments/7", "organizations/1/comments", "posts/42/../43/comments"} {
		if _, err := b.eng.Subscribe(t.Context(), nil, ch); err == nil {
			t.Errorf("Subscribe(%q) accepted", ch)
		} else if !errors.Is(err, channel.ErrInvalid) {
			t.Errorf("Subscribe(%q): error %v does not wrap channel.ErrInvalid", ch, err)
		}
	}
	if _, err := b.eng.Subscribe(t.Context(), nil); err == nil {
		t.Error("Subscribe with no channel accepted")
	}
}

// TestSubscribeResume subscribes while a writer commits, drops the subscription at several
// moments and resumes from its Position, across the catch-up/live seam: the union of what
// was received must be every event of the channel exactly once, in ledger order.
func TestSubscribeResume(t *testing.T) {
	t.Parallel()
	b := startBlog(t)
	ctx := t.Context()
	b.exec(`INSERT INTO posts VALUES (1, 'p')`)

	const writes = 1500
	var wg sync.WaitGroup
	wg.Add(1)
	writerErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		conn, err := pgx.Connect(ctx, b.dsn)
		if err != nil {
			writerErr <- err
			return
		}
		defer conn.Close(context.Background())
		for i := 0; i < writes; {
			n := 1 + i%7
			batch := &pgx.Batch{}
			batch.Queue("BEGIN")
			for j := 0; j < n && i < writes; j++ {
				batch.Queue("INSERT INTO comments VALUES ($1, $2, 'c')", i, 1+i%2)
				i++
			}
			batch.Queue("COMMIT")
			if err := conn.SendBatch(ctx, batch).Close(); err != nil {
				writerErr <- err
				return
			}
		}
	}()

	var got []event.Event
	after := event.Position(0)
	for round := 0; len(got) < writes/2; round++ {
		sctx, cancel := context.WithCancel(ctx)
		start := after
		sub, err := b.eng.Subscribe(sctx, &walflow.SubscribeOpts{After: &start, Buffer: 4}, "posts/1/comments")
		if err != nil {
			t.Fatal(err)
		}
		// Take a few events, then drop the subscription mid-stream.
		take := min(20+round*13, writes/2-len(got))
		for i := 0; i < take; i++ {
			e, ok := <-sub.Events()
			if !ok {
				t.Fatalf("subscription ended: %v", sub.Err())
			}
			got = append(got, e)
			after = e.Position
		}
		cancel()
		<-sub.Done()
	}
	wg.Wait()
	select {
	case err := <-writerErr:
		t.Fatal(err)
	default:
	}
	// Resume one last time and drain to the end.
	sub, err := b.eng.Subscribe(ctx, &walflow.SubscribeOpts{After: &after}, "posts/1/comments")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, collect(t, sub, writes/2-len(got))...)

	seen := map[string]bool{}
	for i, e := range got {
		id, _ := e.ID("id")
		if seen[id.String()] {
			t.Fatalf("comment %s delivered twice", id)
		}
		seen[id.String()] = true
		if post, _ := e.NewRecord.Get("post_id"); post.String() != "1" {
			t.Fatalf("event of post %s on posts/1/comments", post)
		}
		if i > 0 && e.Position <= got[i-1].Position {
			t.Fatalf("out of order: %d after %d", e.Position, got[i-1].Position)
		}
	}
	if len(seen) != writes/2 {
		t.Fatalf("received %d distinct comments, want %d", len(seen), writes/2)
	}
}

func TestEngineRunsOperators(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+`CREATE TABLE counts (id int PRIMARY KEY, n int);`)
	ctx := t.Context()
	cfg, _ := pgx.ParseConfig(dsn)
	counts := operator.SQL{
		Target: "counts", Entities: []string{"comments", "posts"}, ID: map[string]string{"comments": "post_id"},
		Query: `INSERT INTO counts SELECT p.id, (SELECT count(*) FROM comments c WHERE c.post_id = p.id) FROM posts p WHERE p.id = $1
			ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n`,
		DeleteWith: []string{"posts"},
	}
	open := func(tables ...channel.Table) (*walflow.Engine, error) {
		return walflow.Open(ctx, walflow.Config{DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true, StatusInterval: 100 * time.Millisecond,
			Tables: tables, Operators: []operator.Operator{counts},
			Logger: testLogger(t)})
	}
	if _, err := open(channel.Table{Name: "posts"}); err == nil || !strings.Contains(err.Error(), "add comments to tables") {
		t.Fatalf("operator on an unfollowed table: got %v", err)
	}
	eng, err := open(channel.Table{Name: "posts"}, channel.Table{Name: "comments"})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	if _, err := conn.Exec(ctx, `INSERT INTO posts VALUES (1, 'a'); INSERT INTO comments VALUES (1, 1, 'x'), (2, 1, 'y')`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		err := conn.QueryRow(ctx, `SELECT n FROM counts WHERE id = 1`).Scan(&n)
		if err == nil && n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counts never reached 2: %v %v", n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	rec := httptest.NewRecorder()
	eng.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, m := range []string{`walflow_operator_position{operator="counts"}`, `walflow_operator_halted{operator="counts"} 0`, `walflow_operator_retries_total{operator="counts"} 0`} {
		if !strings.Contains(rec.Body.String(), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

// TestProcessStatusWaitsForOperators holds an operator on a latch: the write must not be
// reported processed (nor pass the middleware) until the operator has committed past it.
func TestProcessStatusWaitsForOperators(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, `CREATE TABLE comments (id int PRIMARY KEY, body text, updated_at timestamptz NOT NULL DEFAULT now());
		ALTER TABLE comments REPLICA IDENTITY FULL`)
	ctx := t.Context()
	latch := make(chan struct{})
	var entered sync.Once
	inOperator := make(chan struct{})
	slow := operator.Func{Name: "slow", Entities: []string{"comments"}, Handle: func(ctx context.Context, tx pgx.Tx, e *event.Event) error {
		entered.Do(func() { close(inOperator) })
		select {
		case <-latch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	cfg, _ := pgx.ParseConfig(dsn)
	eng, err := walflow.Open(ctx, walflow.Config{DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true, StatusInterval: 100 * time.Millisecond,
		Tables: []channel.Table{{Name: "comments"}}, Operators: []operator.Operator{slow},
		Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	var updatedAt time.Time
	if err := conn.QueryRow(ctx, `INSERT INTO comments (id, body) VALUES (1, 'x') RETURNING updated_at`).Scan(&updatedAt); err != nil {
		t.Fatal(err)
	}
	lsn, err := processstatus.CurrentLSN(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	stamp := processstatus.HeaderValue("comments", updatedAt)
	micros := updatedAt.UnixMicro()

	handler := eng.Middleware(nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	call := func(header, value string) int {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/posts", nil)
		req.Header.Set(header, value)
		handler.ServeHTTP(rec, req)
		return rec.Code
	}
	select {
	case <-inOperator:
	case <-time.After(30 * time.Second):
		t.Fatal("the operator never received the event")
	}
	// The event is in the ledger and the operator holds it: not processed.
	if eng.Processed("comments", micros) || eng.ProcessedLSN(lsn) {
		t.Fatal("reported processed while the operator has not committed")
	}
	if got := call("X-Walflow-Entity-Timestamp", stamp); got != http.StatusTooEarly {
		t.Fatalf("entity timestamp while held: %d, want 425", got)
	}
	if got := call("X-Walflow-LSN", lsn.String()); got != http.StatusTooEarly {
		t.Fatalf("LSN while held: %d, want 425", got)
	}
	if got := call("X-Walflow-Entity-Timestamp", "comments/not-a-number"); got != http.StatusBadRequest {
		t.Fatalf("malformed header: %d, want 400", got)
	}
	close(latch)
	if err := eng.ProcessStatus().WaitLSN(ctx, lsn); err != nil {
		t.Fatal(err)
	}
	if err := eng.ProcessStatus().Wait(ctx, "comments", micros); err != nil {
		t.Fatal(err)
	}
	if got := call("X-Walflow-Entity-Timestamp", stamp); got != http.StatusOK {
		t.Fatalf("entity timestamp after commit: %d, want 200", got)
	}
	if got := call("X-Walflow-LSN", lsn.String()); got != http.StatusOK {
		t.Fatalf("LSN after commit: %d, want 200", got)
	}
}

func TestEngineGateway(t *testing.T) {
	t.Parallel()
	b := startBlog(t)
	if _, err := b.eng.Gateway(realtime.GatewayConfig{}); err == nil {
		t.Fatal("a gateway without an Authorizer was accepted")
	}
	gw, err := b.eng.Gateway(realtime.GatewayConfig{Authorizer: realtime.AllowAll{}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	defer srv.Close()
	defer gw.Shutdown(context.Background())
	resp, err := http.Get(srv.URL + "?channel=posts/42/comments")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	b.exec(`INSERT INTO posts VALUES (42, 'a'); INSERT INTO comments VALUES (1, 42, 'x')`)
	sc := bufio.NewScanner(resp.Body)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if strings.HasPrefix(sc.Text(), "data: ") && strings.Contains(sc.Text(), `"channel":"posts/42/comments"`) {
			break
		}
	}
	got := strings.Join(lines, "\n")
	if !strings.Contains(got, "event: subscribed") || !strings.Contains(got, "event: insert") {
		t.Fatalf("stream:\n%s", got)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(gw.Collector())
	// The sent counter moves just after the write returns, so it may trail what was read.
	deadline := time.Now().Add(30 * time.Second)
	for {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]float64{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				names[f.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
		if names["walflow_realtime_connections"] == 1 && names["walflow_realtime_messages_sent_total"] >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway metrics %v: want one connection and at least one message", names)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunReportsSourceFailureWhileStarting: a source that fails while Run is still
// creating process status's tables (held up here by another session holding walflow's
// migration lock) makes Run return the source's error, not nil as if stopped by the caller
// (seen with an invalidated slot: `walflow run` exited 0).
func TestRunReportsSourceFailureWhileStarting(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, `CREATE TABLE nokey (x int)`)
	ctx := t.Context()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, pgschema.LockKey); err != nil {
		t.Fatal(err)
	}
	cfg, _ := pgx.ParseConfig(dsn)
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true,
		Tables: []channel.Table{{Name: "nokey"}}, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	runCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = eng.Run(runCtx)
	if runCtx.Err() != nil {
		t.Fatalf("Run kept going after its source failed, until its context ended (returned %v)", err)
	}
	if !errors.Is(err, pgwal.ErrNoPrimaryKey) {
		t.Fatalf("Run returned %v, want the source's error wrapping pgwal.ErrNoPrimaryKey", err)
	}
}
