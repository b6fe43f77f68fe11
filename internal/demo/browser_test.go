package demo

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/realtime"
)

// chromiumPath is the browser the tests drive: the distribution's Chromium.
const chromiumPath = "/usr/bin/chromium"

// browserWait bounds each wait for the page.
const browserWait = 20 * time.Second

// demoApp is the demo's engine and web app, run in-process on a database of the package's
// cluster, without the writer: the test makes every change itself.
type demoApp struct {
	base string    // http://127.0.0.1:port
	conn *pgx.Conn // the test's connection to the blog
	eng  *walflow.Engine

	// block, while set, makes the server close every new connection, so a browser that
	// lost its WebSocket cannot reconnect.
	block    atomic.Bool
	mu       sync.Mutex
	hijacked map[net.Conn]bool // the WebSocket connections
}

// startDemoApp starts the demo's engine and web app; they stop when the test ends.
func startDemoApp(t *testing.T) *demoApp {
	t.Helper()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, demoSchema); err != nil {
		t.Fatalf("create the blog: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &demoApp{base: "http://" + ln.Addr().String(), conn: conn, hijacked: map[net.Conn]bool{}}

	d := &demo{env: &env{stdout: t.Output(), stderr: t.Output(), getenv: noEnv}, dir: t.TempDir(), slot: conn.Config().Database, dsn: dsn}
	if err := d.configure(ln.Addr().String()); err != nil {
		ln.Close()
		t.Fatal(err)
	}
	eng, err := d.openEngine(ctx)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	app.eng = eng
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runDone := make(chan error, 1)
	go func() { runDone <- eng.Run(runCtx) }()
	web, err := newDemoWeb(eng, dsn)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	web.connStateFunc = app.connState
	webCtx, stopWeb := context.WithCancel(context.WithoutCancel(ctx))
	webDone := make(chan error, 1)
	go func() { webDone <- web.run(webCtx, ln) }()
	t.Cleanup(func() {
		stopWeb()
		if err := <-webDone; err != nil {
			t.Errorf("web app: %v", err)
		}
		stopRun()
		if err := <-runDone; err != nil {
			t.Errorf("engine: %v", err)
		}
		if err := eng.Close(); err != nil {
			t.Errorf("close the engine: %v", err)
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for !eng.Status(ctx).Streaming {
		select {
		case err := <-runDone:
			runDone <- err // for the cleanup
			t.Fatalf("the engine stopped before streaming: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the engine did not start streaming within 30s")
		}
	}
	return app
}

func (a *demoApp) connState(c net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		if a.block.Load() {
			c.Close()
		}
	case http.StateHijacked:
		a.mu.Lock()
		a.hijacked[c] = true
		a.mu.Unlock()
	}
}

// cut closes every WebSocket connection from the server side, without a close frame, as a
// network failure would. It returns how many it closed, counting those already closed by
// their page (a hijacked connection is not tracked by the server any more).
func (a *demoApp) cut() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.hijacked)
	for c := range a.hijacked {
		c.Close()
	}
	clear(a.hijacked)
	return n
}

// exec runs SQL on the blog and returns the first column of its first row, if any.
func (a *demoApp) exec(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var v int
	err := a.conn.QueryRow(t.Context(), sql, args...).Scan(&v)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// browser is a headless Chromium tab on the demo app.
type browser struct {
	t   *testing.T
	ctx context.Context
	app *demoApp

	mu       sync.Mutex
	problems []string // uncaught exceptions and console errors of the pages
}

// newBrowser starts Chromium with a fresh profile; it stops when the test ends.
func newBrowser(t *testing.T, app *demoApp) *browser {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the browser tests need Chromium at %s (%v); run scripts/setup, or as root: apt-get update && apt-get install -y --no-install-recommends chromium", chromiumPath, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox, // the tests run as root, where Chromium's sandbox cannot start
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1000, 900),
	)
	actx, stopAlloc := chromedp.NewExecAllocator(context.WithoutCancel(t.Context()), opts...)
	ctx, stopTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		stopTab()
		stopAlloc() // waits for the browser to exit, before its profile directory is removed
	})
	b := &browser{t: t, ctx: ctx, app: app}
	// The first action starts the browser; it must have no timeout, which would end it.
	if err := chromedp.Listen(ctx, b.listen); err != nil {
		t.Fatalf("start Chromium (%s): %v", chromiumPath, err)
	}
	return b
}

// listen records the pages' uncaught exceptions and console errors.
func (b *browser) listen(ev any) {
	var p string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		p = (&chromedp.ExceptionError{ExceptionDetails: ev.ExceptionDetails}).Error()
	case *runtime.EventConsoleAPICalled:
		if ev.Type != runtime.ConsoleAPICalledTypeError {
			return
		}
		var args []string
		for _, a := range ev.Args {
			args = append(args, string(a.Value)+a.Description)
		}
		p = "console.error: " + strings.Join(args, " ")
	default:
		return
	}
	b.mu.Lock()
	b.problems = append(b.problems, p)
	b.mu.Unlock()
}

// checkProblems fails the test when a page threw or logged an error.
func (b *browser) checkProblems() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		b.t.Errorf("the page reported: %s", p)
	}
	b.problems = nil
}

// do runs actions, failing the test with the page's text when they fail.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.fail(what, err)
	}
}

// waitJS waits until the JavaScript expression is truthy on the current page.
func (b *browser) waitJS(what, expr string) {
	b.t.Helper()
	b.do("wait until "+what, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(browserWait)))
}

// eval evaluates a JavaScript expression on the current page.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.fail("evaluate "+expr, err)
	}
	return v
}

func (b *browser) fail(what string, err error) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
	b.screenshot("failure")
	b.checkProblems()
	b.t.Fatalf("%s: %v\nthe page:\n%s", what, err, text)
}

// screenshot saves the page as a PNG in $WALFLOW_ARTIFACTS, or in a temporary directory.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	dir := os.Getenv("WALFLOW_ARTIFACTS")
	if dir == "" {
		dir = b.t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	path := filepath.Join(dir, fmt.Sprintf("%s_%s.png", b.t.Name(), name))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	b.t.Logf("screenshot: %s", path)
}

// TestDemoInBrowser drives the demo's pages in Chromium while the test changes the blog in
// PostgreSQL: live counts, create-then-redirect once the derived row exists, live comments,
// the deleted banner, a post page opened before its post exists, and a WebSocket cut by
// the server, after which walflow.js resumes without losing or repeating an event.
func TestDemoInBrowser(t *testing.T) {
	t.Parallel()
	app := startDemoApp(t)
	b := newBrowser(t, app)
	seeded := app.exec(t, `INSERT INTO posts (title, body) VALUES ('Seeded', 'From SQL.') RETURNING id`)
	post := fmt.Sprintf(`document.querySelector('#posts [data-post-id="%d"]')`, seeded)

	// The list: a comment written in PostgreSQL changes the derived count on the page.
	b.do("open the list", chromedp.Navigate(app.base+"/"))
	b.waitJS("the seeded post is listed with no comment", post+`?.querySelector(".count").textContent === "0 comments"`)
	b.waitJS("the connection is open", `walflow.state === "open" && document.getElementById("state").textContent === "live"`)
	app.exec(t, `INSERT INTO comments (post_id, body) VALUES ($1, 'Counted live.')`, seeded)
	b.waitJS("the count shows the new comment", post+`.querySelector(".count").textContent === "1 comment"`)
	b.screenshot("list")

	// Create a post: the page waits for the operator's derived row, then opens the post.
	b.do("fill the form",
		chromedp.SendKeys(chromedp.ID("title"), "From the browser"),
		chromedp.SendKeys(chromedp.ID("body"), "Typed by chromedp."))
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	nav, err := chromedp.Run(ctx, chromedp.WaitEvent(page.FrameNavigated,
		func(e page.EventFrameNavigated) bool { return e.Frame != nil && e.Frame.ParentID == "" },
		chromedp.Click(chromedp.ID("publish"))))
	cancel()
	if err != nil {
		b.fail("publish and wait for the post's page", err)
	}
	m := regexp.MustCompile(`^` + regexp.QuoteMeta(app.base) + `/posts/(\d+)$`).FindStringSubmatch(nav.Frame.URL)
	if m == nil {
		b.fail("publish", fmt.Errorf("the browser went to %s, not to a post's page", nav.Frame.URL))
	}
	id, _ := strconv.Atoi(m[1])
	if n := app.exec(t, `SELECT count(*) FROM post_with_comments_counts WHERE id = $1 AND title = 'From the browser'`, id); n != 1 {
		t.Errorf("the page opened post %d before its derived row existed", id)
	}
	b.waitJS("the post is shown", `document.getElementById("post-title").textContent === "From the browser" && !document.getElementById("post").hidden`)

	// Comments arrive live, from PostgreSQL and from the page's form.
	comments := `[...document.querySelectorAll("#comments li")].map((li) => li.textContent)`
	app.exec(t, `INSERT INTO comments (post_id, body) VALUES ($1, 'Written in SQL.')`, id)
	b.waitJS("the SQL comment is shown", comments+`.join("|") === "Written in SQL." && document.getElementById("post-count").textContent === "1 comment"`)
	b.do("write a comment", chromedp.SendKeys(chromedp.ID("comment-body"), "Written in the page."), chromedp.Click(chromedp.ID("send")))
	b.waitJS("the page's comment is shown", comments+`.join("|") === "Written in SQL.|Written in the page." && document.getElementById("post-count").textContent === "2 comments"`)

	// Cut the WebSocket from the server and keep the browser out while three comments are
	// written: once back, it must receive each exactly once, in order.
	eval[chromedp.Void](b, fmt.Sprintf(`
		window.seen = [];
		window.closes = 0;
		walflow.addEventListener("close", () => window.closes++);
		walflow.subscribe("posts/%d/comments", (ev) => window.seen.push([ev.position, ev.type, ev.new_record && ev.new_record.id]));
	`, id))
	app.block.Store(true)
	if app.cut() == 0 {
		t.Fatal("found no WebSocket connection to cut")
	}
	b.waitJS("the page sees the connection lost", `window.closes >= 1 && walflow.state !== "open"`)
	var want []int
	for i := range 3 {
		want = append(want, app.exec(t, `INSERT INTO comments (post_id, body) VALUES ($1, $2) RETURNING id`, id, fmt.Sprintf("While away %d.", i+1)))
	}
	// The operator counts from the ledger, so once the count is 5 the three comments are in
	// the ledger while the browser is still away.
	deadline := time.Now().Add(browserWait)
	for app.exec(t, `SELECT comments_count FROM post_with_comments_counts WHERE id = $1`, id) != 5 {
		if time.Now().After(deadline) {
			t.Fatal("the operator did not count the three comments")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if state := eval[string](b, `walflow.state`); state == "open" {
		t.Fatalf("the page reconnected while the server refused connections (state %s)", state)
	}
	app.block.Store(false)
	b.waitJS("the page is back with the three comments", `walflow.state === "open" && window.seen.length >= 3 && document.getElementById("post-count").textContent === "5 comments"`)
	seen := eval[[][3]int](b, `window.seen.map(([p, type, id]) => [p, type === "insert" ? 1 : 0, id])`)
	var last int
	var got []int
	for _, s := range seen {
		if s[0] <= last {
			t.Errorf("event at position %d came after position %d: a duplicate or out of order (%v)", s[0], last, seen)
		}
		last = s[0]
		if s[1] == 1 {
			got = append(got, s[2])
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the reconnection the page received the inserts of comments %v, want %v once each", got, want)
	}
	b.waitJS("the list has the five comments once each", comments+`.length === 5`)

	// A delete made elsewhere shows the banner.
	app.exec(t, `DELETE FROM posts WHERE id = $1`, id)
	b.waitJS("the deleted banner is shown", `!document.getElementById("deleted").hidden && document.getElementById("send").disabled`)
	b.screenshot("deleted")

	// A post page opened before its post exists waits for it, then renders it.
	const late = 1000
	b.do("open a post that does not exist yet", chromedp.Navigate(fmt.Sprintf("%s/posts/%d", app.base, late)))
	b.waitJS("the page says the post is not there yet", `document.getElementById("waiting").textContent.includes("There is no post 1000") && document.getElementById("post").hidden`)
	app.exec(t, `INSERT INTO posts (id, title, body) VALUES ($1, 'Late arrival', 'Derived after the page opened.')`, late)
	b.waitJS("the late post is rendered", `document.getElementById("post-title").textContent === "Late arrival" && document.getElementById("waiting").hidden`)

	b.checkProblems()
}

// tokenPage is the page of TestWalflowJSTokens: two clients of the JWT gateway at /secure/,
// each with a token provider. a renews its token before exp (refreshBefore 2s); b never
// does, so the gateway closes it with 4001 at exp and it reconnects with a fresh token.
const tokenPage = `<!doctype html>
<title>walflow.js tokens</title>
<script type="module">
import { connect } from "/secure/walflow.js";
for (const [name, ttl, refreshBefore] of [["a", 4, 2000], ["b", 3, -3600000]]) {
  const w = { tokens: 0, log: [] };
  window[name] = w;
  w.client = connect("/secure/", {
    token: async () => { w.tokens++; return (await fetch("/token?who=" + name + "&ttl=" + ttl)).text(); },
    refreshBefore,
  });
  w.client.addEventListener("close", (e) => w.log.push(["close", e.detail.code]));
  w.client.addEventListener("error", (e) => w.log.push(["error", e.detail.error.message]));
  w.client.subscribe("comments", (ev) => w.log.push(["event", ev.new_record.id])).ready.then(() => { w.subscribed = true; });
}
</script>`

// signHS256 returns a JWT of claims signed with secret.
func signHS256(secret []byte, claims map[string]any) string {
	enc := base64.RawURLEncoding
	payload, _ := json.Marshal(claims)
	s := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(payload)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(s))
	return s + "." + enc.EncodeToString(mac.Sum(nil))
}

// TestWalflowJSTokens checks walflow.js's token provider against a JWT gateway in
// Chromium: a client that renews its token with an auth message before exp keeps its
// connection past the first token's exp; one that does not is closed with 4001 and
// reconnects at once with a fresh token. Both still receive every event.
func TestWalflowJSTokens(t *testing.T) {
	t.Parallel()
	app := startDemoApp(t)
	secret := []byte("walflow-browser-test-secret-of-32-bytes!")
	auth, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{HS256Secret: secret, Leeway: -1})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := app.eng.Gateway(realtime.GatewayConfig{Authorizer: auth})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	firstExp := map[string]int64{} // who -> exp of the first token
	mux := http.NewServeMux()
	mux.Handle("/secure/", http.StripPrefix("/secure", gw))
	mux.HandleFunc("GET /token", func(w http.ResponseWriter, r *http.Request) {
		ttl, _ := strconv.Atoi(r.URL.Query().Get("ttl"))
		exp := time.Now().Unix() + int64(ttl)
		who := r.URL.Query().Get("who")
		mu.Lock()
		if _, ok := firstExp[who]; !ok {
			firstExp[who] = exp
		}
		mu.Unlock()
		_, _ = w.Write([]byte(signHS256(secret, map[string]any{"channels": []string{"comments"}, "exp": exp})))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(tokenPage)) })
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := gw.Shutdown(ctx); err != nil {
			t.Errorf("shut the JWT gateway down: %v", err)
		}
		srv.Close()
	})
	b := newBrowser(t, app)

	b.do("open the page", chromedp.Navigate(srv.URL))
	b.waitJS("both clients are subscribed", `a.subscribed && b.subscribed`)
	b.waitJS("b is closed with 4001 at exp and reconnects with a fresh token",
		`b.log.some(([k, code]) => k === "close" && code === 4001) && b.tokens >= 2 && b.client.state === "open"`)
	mu.Lock()
	expA := firstExp["a"]
	mu.Unlock()
	// Past a's first token's exp, its connection is still the first one.
	b.waitJS("a's first token has expired", fmt.Sprintf(`Date.now() > %d`, (expA+1)*1000))
	if got := eval[string](b, `JSON.stringify(a.log) + " " + a.client.state + " " + a.tokens`); !strings.HasPrefix(got, "[] open ") {
		t.Errorf("a (renews its token) after its first token's exp: log, state and tokens %s; want no close, open", got)
	}
	id := app.exec(t, `WITH p AS (INSERT INTO posts (title) VALUES ('t') RETURNING id)
		INSERT INTO comments (post_id, body) SELECT id, 'for both' FROM p RETURNING id`)
	b.waitJS("both receive the comment", fmt.Sprintf(`[a, b].every((w) => w.log.some(([k, id]) => k === "event" && id === %d))`, id))
	if got := eval[string](b, `JSON.stringify(b.log.filter(([k, code]) => k !== "event" && code !== 4001))`); got != "[]" {
		t.Errorf("b: unexpected closes or errors: %s", got)
	}
	b.checkProblems()
}
