package walflow_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/alert"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/operator"
)

// TestLagBudgetAlert runs an operator that a lock held by the test keeps from committing:
// its lag crosses the events and seconds budgets, which turns /readyz to 503 with the
// reasons, walflow_alert_active to 1, logs one WARN per budget and shows in Status; once
// the lock is released it catches up and each alert recovers with one INFO.
func TestLagBudgetAlert(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+`CREATE TABLE counts (id int PRIMARY KEY, n int);`)
	ctx := t.Context()
	cfg, _ := pgx.ParseConfig(dsn)
	logs := &syncbuf.Buffer{}
	counts := operator.SQL{Name: "counts", Target: "counts", Entities: []string{"comments"}, ID: map[string]string{"comments": "post_id"},
		Query: `INSERT INTO counts SELECT $1, (SELECT count(*) FROM comments WHERE post_id = $1) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n`}
	eng, err := walflow.Open(ctx, walflow.Config{DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true,
		StatusInterval: 100 * time.Millisecond, Tables: []channel.Table{{Name: "posts"}, {Name: "comments"}},
		Operators: []operator.Operator{counts},
		Alerts:    alert.Budgets{Lag: alert.Lag{Events: 3}, Overrides: map[string]alert.Lag{"counts": {Age: time.Second}}},
		Logger:    slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	srv := httptest.NewServer(eng.Handler())
	t.Cleanup(srv.Close)
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not happen within 60s; logs:\n%s", what, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	logged := func(msg, alertName string) int {
		n := 0
		for l := range strings.SplitSeq(logs.String(), "\n") {
			if strings.Contains(l, msg) && strings.Contains(l, `"alert":"`+alertName+`"`) && strings.Contains(l, `"name":"counts"`) {
				n++
			}
		}
		return n
	}
	metric := func(alertName string) string {
		_, body := get("/metrics")
		prefix := `walflow_alert_active{alert="` + alertName + `",kind="operator",name="counts"} `
		for l := range strings.SplitSeq(body, "\n") {
			if v, ok := strings.CutPrefix(l, prefix); ok {
				return v
			}
		}
		return "absent"
	}

	// Within budget: ready, and the budgets' series are 0.
	waitFor("ready", func() bool { code, _ := get("/readyz"); return code == http.StatusOK })
	waitFor("the series of the budgets", func() bool { return metric("lag_events") == "0" && metric("lag_seconds") == "0" })

	lock, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback(ctx) }()
	if _, err := lock.Exec(ctx, `LOCK TABLE counts IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	other, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	for i := range 6 {
		if _, err := other.Exec(ctx, `INSERT INTO comments VALUES ($1, 1, 'x')`, i+1); err != nil {
			t.Fatal(err)
		}
	}

	var body string
	waitFor("503 with both reasons", func() bool {
		var code int
		code, body = get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, `"lag_events"`) && strings.Contains(body, `"lag_seconds"`)
	})
	behind := regexp.MustCompile(`operator counts is [4-6] events behind the ledger head \(budget 3\)`)
	var rd walflow.Readiness
	if err := json.Unmarshal([]byte(body), &rd); err != nil {
		t.Fatalf("/readyz body is not a Readiness: %v\n%s", err, body)
	}
	if rd.Ready || !rd.Streaming || len(rd.Alerts) != 2 || !behind.MatchString(strings.Join(rd.Reasons, "\n")) {
		t.Fatalf("/readyz = %+v", rd)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d while streaming over budget; it reports streaming only", code)
	}
	if m := metric("lag_events"); m != "1" {
		t.Errorf("walflow_alert_active lag_events = %s, want 1", m)
	}
	if st := eng.Status(ctx); len(st.Alerts) != 2 || st.Alerts[0].Name != "counts" || !st.Alerts[0].Active {
		t.Errorf("Status.Alerts = %+v", st.Alerts)
	}
	// More evaluations over budget log nothing more.
	time.Sleep(500 * time.Millisecond)
	if n, m := logged("over budget", "lag_events"), logged("over budget", "lag_seconds"); n != 1 || m != 1 {
		t.Fatalf("over budget logged %d times for lag_events, %d for lag_seconds, want once each:\n%s", n, m, logs.String())
	}
	if !strings.Contains(logs.String(), `"level":"WARN","msg":"over budget","component":"alerts","alert":"lag_events","kind":"operator","name":"counts"`) {
		t.Errorf("the crossing is not a WARN naming the operator:\n%s", logs.String())
	}

	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("ready again", func() bool { code, _ := get("/readyz"); return code == http.StatusOK })
	if m := metric("lag_events"); m != "0" {
		t.Errorf("walflow_alert_active lag_events = %s after recovery, want 0", m)
	}
	time.Sleep(500 * time.Millisecond)
	if n, m := logged("back within budget", "lag_events"), logged("back within budget", "lag_seconds"); n != 1 || m != 1 {
		t.Fatalf("recovery logged %d times for lag_events, %d for lag_seconds, want once each:\n%s", n, m, logs.String())
	}
	if !strings.Contains(logs.String(), `"level":"INFO","msg":"back within budget","component":"alerts","alert":"lag_events","kind":"operator","name":"counts"`) {
		t.Errorf("the recovery is not an INFO naming the operator:\n%s", logs.String())
	}
	if n := logged("over budget", "lag_events"); n != 1 {
		t.Errorf("over budget logged %d times in all, want once", n)
	}
	if st := eng.Status(ctx); len(st.Alerts) != 0 {
		t.Errorf("Status.Alerts after recovery = %+v", st.Alerts)
	}
}

func TestAlertsConfigValidated(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cfg  walflow.Config
		want string
	}{
		{walflow.Config{DatabaseURL: "postgres://x@127.0.0.1/db", MemoryLedger: true, Alerts: alert.Budgets{SlotRetainedWAL: -1}}, "Alerts.SlotRetainedWAL is -1"},
		{walflow.Config{DatabaseURL: "postgres://x@127.0.0.1/db", MemoryLedger: true, Alerts: alert.Budgets{Lag: alert.Lag{Age: time.Millisecond}}}, "Alerts.Lag.Age is 1ms"},
		{walflow.Config{DatabaseURL: "postgres://x@127.0.0.1/db", MemoryLedger: true, SlotFailover: true, TemporarySlot: true}, "SlotFailover and TemporarySlot"},
	} {
		eng, err := walflow.Open(t.Context(), c.cfg)
		if err == nil {
			_ = eng.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open = %v, want an error containing %q", err, c.want)
		}
	}
}

// TestLagBudgetNotCrossedAtRestart restarts an engine whose operator is caught up on a
// ledger of several events: before the operator's checkpoint is read its position is
// unknown, and must not count as a lag from 0 (which logged a crossing and a recovery at
// every start).
func TestLagBudgetNotCrossedAtRestart(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+`CREATE TABLE counts (id int PRIMARY KEY, n int);`)
	ctx := t.Context()
	pc, _ := pgx.ParseConfig(dsn)
	dir := t.TempDir()
	counts := operator.SQL{Name: "counts", Target: "counts", Entities: []string{"comments"}, ID: map[string]string{"comments": "post_id"},
		Query: `INSERT INTO counts SELECT $1, (SELECT count(*) FROM comments WHERE post_id = $1) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n`}
	open := func(logs *syncbuf.Buffer) *walflow.Engine {
		eng, err := walflow.Open(ctx, walflow.Config{DatabaseURL: dsn, Slot: pc.Database, LedgerDir: dir,
			StatusInterval: 20 * time.Millisecond, Tables: []channel.Table{{Name: "posts"}, {Name: "comments"}},
			Operators: []operator.Operator{counts}, Alerts: alert.Budgets{Lag: alert.Lag{Events: 2}},
			Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
		if err != nil {
			t.Fatal(err)
		}
		return eng
	}
	first := open(&syncbuf.Buffer{}) // its budget may be crossed while the inserts arrive
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(runCtx) }()
	for !first.Status(ctx).Streaming {
		time.Sleep(10 * time.Millisecond)
	}
	for i := range 5 {
		if _, err := conn.Exec(ctx, `INSERT INTO comments VALUES ($1, 1, 'x')`, i+1); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := first.Status(ctx)
		if st.LedgerHead >= 5 && len(st.Operators) == 1 && uint64(st.Operators[0].Position) == st.LedgerHead {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the operator did not catch up within 60s: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	logs := &syncbuf.Buffer{}
	second := open(logs)
	runEngine(t, second)
	// Many evaluations, the first ones racing the operator's start.
	deadline = time.Now().Add(60 * time.Second)
	for {
		st := second.Status(ctx)
		if len(st.Operators) == 1 && st.Operators[0].Position >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the operator did not resume within 60s: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if strings.Contains(logs.String(), "over budget") {
		t.Fatalf("the restart crossed the budget:\n%s", logs.String())
	}
}

// TestSlotRetainedWALAlert sets a budget the slot's retained WAL, as PostgreSQL measures
// it, always crosses: /readyz and Status name the slot.
func TestSlotRetainedWALAlert(t *testing.T) {
	t.Parallel()
	dsn, _ := pgtest.NewDatabaseWith(t, blogSchema)
	pc, _ := pgx.ParseConfig(dsn)
	eng, err := walflow.Open(t.Context(), walflow.Config{DatabaseURL: dsn, Slot: pc.Database, MemoryLedger: true, TemporarySlot: true,
		StatusInterval: 50 * time.Millisecond, Tables: []channel.Table{{Name: "posts"}},
		Alerts: alert.Budgets{SlotRetainedWAL: 1}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	srv := httptest.NewServer(eng.Handler())
	t.Cleanup(srv.Close)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		var rd walflow.Readiness
		err = json.NewDecoder(resp.Body).Decode(&rd)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusServiceUnavailable && len(rd.Alerts) == 1 {
			a := rd.Alerts[0]
			if a.Alert != alert.SlotRetainedWAL || a.Kind != alert.KindSlot || a.Name != pc.Database || a.Value <= 1 || a.Budget != 1 ||
				!strings.Contains(a.Reason, "slot "+pc.Database+" retains") {
				t.Fatalf("alert = %+v", a)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %+v, want 503 naming the slot", resp.StatusCode, rd)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := eng.Status(t.Context()); len(st.Alerts) != 1 || st.Alerts[0].Alert != alert.SlotRetainedWAL {
		t.Fatalf("Status.Alerts = %+v", st.Alerts)
	}
}
