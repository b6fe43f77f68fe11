package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/walflow/walflow/retry"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/realtime"
)

var consolePNG = flag.String("console-png", "", "write TestConsoleInBrowser's screenshot of the console to `FILE` too (docs/console.png)")

const consoleToken = "console-test-admin-token-5c1d"

// consoleApp is an engine with an operator that parks the events of post 2 (a trigger
// refuses its derived row), an index and the realtime gateway, served with its Handler.
type consoleApp struct {
	t    *testing.T
	dsn  string
	url  string
	eng  *walflow.Engine
	conn *pgx.Conn
}

func startConsoleApp(t *testing.T) *consoleApp {
	t.Helper()
	dsn, conn := pgtest.NewDatabaseWith(t, `CREATE TABLE posts (id int PRIMARY KEY, title text);
		CREATE TABLE comments (id int PRIMARY KEY, post_id int, body text);
		CREATE TABLE comment_counts (id int PRIMARY KEY, n int);
		CREATE FUNCTION refuse_two() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id = 2 THEN RAISE EXCEPTION 'comment_counts row 2 refused'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER refuse_two BEFORE INSERT OR UPDATE ON comment_counts FOR EACH ROW EXECUTE FUNCTION refuse_two();`)
	ctx := t.Context()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true, TemporarySlot: true,
		StatusInterval: 200 * time.Millisecond, ConsoleInterval: 250 * time.Millisecond, AdminToken: consoleToken,
		Tables: []channel.Table{{Name: "posts"}, {Name: "comments"}},
		Operators: []operator.Operator{operator.SQL{Name: "comment_counts", Target: "comment_counts", Entities: []string{"comments"},
			ID:        map[string]string{"comments": "post_id"},
			Query:     `INSERT INTO comment_counts SELECT $1::int, (SELECT count(*) FROM comments WHERE post_id = $1::int) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n`,
			OnFailure: operator.Park}},
		OperatorRetry: retry.Policy{Min: time.Millisecond, Max: time.Millisecond, MaxRetries: 1},
		Indexers:      []index.Indexer{index.Type("by_type")},
		Realtime:      &walflow.RealtimeConfig{Gateway: realtime.GatewayConfig{Authorizer: realtime.AllowAll{}}},
		Logger:        slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(eng.Handler())
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		stop()
		if err := <-done; err != nil {
			t.Errorf("engine: %v", err)
		}
		srv.Close()
		if err := eng.Close(); err != nil {
			t.Errorf("close the engine: %v", err)
		}
	})
	a := &consoleApp{t: t, dsn: dsn, url: srv.URL, eng: eng, conn: conn}
	a.until("the engine streams", func() bool { return eng.Status(ctx).Streaming })
	return a
}

// until polls cond until it holds, failing the test after a minute.
func (a *consoleApp) until(what string, cond func() bool) {
	a.t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			a.t.Fatalf("%s: not within a minute", what)
		}
	}
}

// status reads /status.
func (a *consoleApp) status() walflow.Status {
	a.t.Helper()
	res, err := http.Get(a.url + "/status")
	if err != nil {
		a.t.Fatal(err)
	}
	defer res.Body.Close()
	var st walflow.Status
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		a.t.Fatal(err)
	}
	return st
}

// subscribe keeps an SSE stream of comments open until the test ends.
func (a *consoleApp) subscribe() {
	a.t.Helper()
	ctx, cancel := context.WithCancel(context.WithoutCancel(a.t.Context()))
	req, _ := http.NewRequestWithContext(ctx, "GET", a.url+"/realtime/?channel=comments", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		a.t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		defer res.Body.Close()
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
		}
	})
	a.t.Cleanup(func() { cancel(); wg.Wait() })
}

// write inserts comments every 20 ms (post 1, and every fifth on post 2) until stop is
// called, which waits for the writer and returns how many it wrote. It writes on its own
// connection, which stop's cancellation may close mid-statement.
func (a *consoleApp) write(first int) (stop func() int) {
	a.t.Helper()
	conn, err := pgx.Connect(a.t.Context(), a.dsn)
	if err != nil {
		a.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(a.t.Context())
	var n int
	var wg sync.WaitGroup
	wg.Go(func() {
		defer conn.Close(context.WithoutCancel(ctx))
		for id := first; ctx.Err() == nil; id++ {
			post := 1
			if id%5 == 0 {
				post = 2
			}
			if _, err = conn.Exec(ctx, `INSERT INTO comments VALUES ($1, $2, 'c')`, id, post); err != nil {
				if ctx.Err() != nil {
					err = nil
				}
				return
			}
			n++
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	return func() int {
		cancel()
		wg.Wait()
		if err != nil {
			a.t.Fatalf("write comments: %v", err)
		}
		return n
	}
}

// TestConsoleInBrowser loads the console in Chromium while comments are written: the
// events/s chart gains points and its path changes, the numbers shown equal /status once
// the writes stop, the page logs no error, the actions stay hidden and an action is
// refused without the admin token, and with it the parked rows of post 2 are retried once
// the cause is fixed. It saves a screenshot in the test's artifact directory (go test
// -artifacts, or $WALFLOW_ARTIFACTS), and in -console-png FILE when given.
func TestConsoleInBrowser(t *testing.T) {
	t.Parallel()
	app := startConsoleApp(t)
	app.subscribe()
	stop := app.write(1)
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()

	b := newBrowser(t, nil)
	b.do("open the console", chromedp.Navigate(app.url+"/"))
	b.waitJS("the events/s chart has a line", `document.querySelector('[data-series="events/s"]') !== null`)
	path0 := eval[string](b, `document.querySelector('[data-series="events/s"]').getAttribute("d")`)
	points0 := strings.Count(path0, "L")
	b.waitJS("the events/s chart moves", fmt.Sprintf(`(() => {
		const p = document.querySelector('[data-series="events/s"]');
		return p && p.getAttribute("d") !== %q && (p.getAttribute("d").match(/L/g) || []).length > %d;
	})()`, path0, points0))
	b.waitJS("events/s above 0 while comments are written", `Number(document.querySelector('[data-field="events_per_second"]').dataset.raw) > 0`)
	b.waitJS("the realtime stream counts", `Number(document.querySelector('[data-field="connections"]').dataset.raw) >= 1 &&
		[...document.querySelectorAll('[data-series="p50"]')].length === 1`)
	b.waitJS("the operator shows its parked rows", `(() => {
		const tr = document.querySelector('#consumers tr[data-name="comment_counts"]');
		return tr && tr.children[2].textContent === "parked";
	})()`)
	b.waitJS("the index is listed", `document.querySelector('#consumers tr[data-kind="index"][data-name="by_type"]') !== null`)
	if cfg := eval[string](b, `document.querySelector("#config").textContent`); !strings.Contains(cfg, `"admin_token_set": true`) ||
		strings.Contains(cfg, consoleToken) || strings.Contains(cfg, "password=") && !strings.Contains(cfg, "password=xxxxx") {
		t.Errorf("the configuration shown:\n%s", cfg)
	}

	// Without the token, the actions are hidden, and refused when sent anyway.
	if n := eval[int](b, `[...document.querySelectorAll("#consumers button")].filter(b => b.offsetParent !== null).length`); n != 0 {
		t.Errorf("%d action buttons visible without the admin token", n)
	}
	for _, auth := range []string{"", "Bearer wrong-token-wrong-token"} {
		headers := "{}"
		if auth != "" {
			headers = fmt.Sprintf(`{Authorization: %q}`, auth)
		}
		ctx, cancel := context.WithTimeout(b.Context(), browserWait)
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`fetch("/console/api/operators/comment_counts/retry", {method: "POST", headers: %s, body: "{}"})
			.then(async r => r.status + " " + (await r.json()).error)`, headers), chromedp.EvalAwaitPromise))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(got, "401 this action needs the admin token") {
			t.Errorf("retry with Authorization %q: %s, want 401 with the JSON error", auth, got)
		}
	}

	// The writes stop; the numbers shown become those of /status.
	stopped = true
	written := stop()
	var st walflow.Status
	app.until("the operator catches up", func() bool {
		st = app.status()
		return len(st.Operators) == 1 && uint64(st.Operators[0].Position) == st.LedgerHead && st.LedgerHead >= uint64(written)
	})
	b.waitJS("the page shows the head of /status", fmt.Sprintf(`document.querySelector('[data-field="ledger_head"]').dataset.raw === "%d"`, st.LedgerHead))
	st = app.status()
	page := eval[map[string]string](b, `Object.fromEntries([...document.querySelectorAll("[data-field]")].map(e => [e.dataset.field, e.dataset.raw]))`)
	op := eval[[]string](b, `[...document.querySelectorAll('#consumers tr[data-name="comment_counts"] td')].map(td => td.dataset.raw || td.textContent)`)
	for field, want := range map[string]string{
		"ledger_head": fmt.Sprint(st.LedgerHead), "ledger_tail": fmt.Sprint(st.LedgerTail), "events_appended": fmt.Sprint(st.EventsAppended),
	} {
		if page[field] != want {
			t.Errorf("the page shows %s = %q, /status %q", field, page[field], want)
		}
	}
	if len(op) < 6 || op[3] != fmt.Sprint(st.Operators[0].Position) || op[4] != "0" || !strings.HasPrefix(op[5], fmt.Sprintf("%d events, %d row", st.Operators[0].ParkedEvents, st.Operators[0].ParkedIDs)) {
		t.Errorf("the operator's row %q; /status has position %d, %d parked events in %d rows", op, st.Operators[0].Position, st.Operators[0].ParkedEvents, st.Operators[0].ParkedIDs)
	}
	if st.Operators[0].ParkedEvents == 0 {
		t.Fatal("no parked event: the trigger refusing row 2 did not fire")
	}

	// A wrong token unlocks nothing; the right one shows the actions, and the parked rows
	// are retried once the cause is gone.
	unlock := func(token string) {
		b.do("enter the admin token", chromedp.SendKeys(chromedp.ID("admin-token"), token+"\r"))
	}
	unlock("wrong-token-wrong-token")
	b.waitJS("a wrong token is reported", `document.querySelector("#message").textContent.includes("not the one configured")`)
	unlock(consoleToken)
	b.waitJS("the actions are unlocked", `document.body.classList.contains("admin")`)
	b.do("open the parked rows", chromedp.Click(chromedp.CSS(`#consumers tr[data-name="comment_counts"] button`)))
	b.waitJS("the parked row of post 2 is listed", `[...document.querySelectorAll("#parked tbody tr td:first-child")].some(td => td.textContent === "2")`)
	b.screenshot("console")
	if *consolePNG != "" {
		png := b.png()
		if err := os.WriteFile(*consolePNG, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := app.conn.Exec(t.Context(), `DROP TRIGGER refuse_two ON comment_counts`); err != nil {
		t.Fatal(err)
	}
	b.do("retry the parked row", chromedp.Click(chromedp.CSS(`#parked tbody tr button`)))
	b.waitJS("the retry is reported", `document.querySelector("#message").textContent.startsWith("retry comment_counts: done")`)
	var n, want int
	app.until("row 2 counts its comments", func() bool {
		_ = app.conn.QueryRow(t.Context(), `SELECT n FROM comment_counts WHERE id = 2`).Scan(&n)
		_ = app.conn.QueryRow(t.Context(), `SELECT count(*) FROM comments WHERE post_id = 2`).Scan(&want)
		return n == want && want > 0
	})
	b.waitJS("the operator shows running", `(() => {
		const tr = document.querySelector('#consumers tr[data-name="comment_counts"]');
		return tr && tr.children[2].textContent === "running";
	})()`)
	b.checkProblems()
}
