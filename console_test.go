package walflow_test

import (
	"context"
	"encoding/json"
	"github.com/walflow/walflow/retry"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/alert"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/projector"
	"github.com/walflow/walflow/realtime"
)

const (
	testDBPassword  = "db-pass-3f9a7c"
	testAdminToken  = "admin-token-8d2e4b1a77"
	testJWTSecret   = "jwt-secret-0123456789abcdef0123456789abcdef"
	testJWKSKey     = "jwks-key-55aa"
	consoleOperator = "counts"
)

// serve answers one request with h.
func serve(h http.Handler, method, target, token, body string) *httptest.ResponseRecorder {
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, target, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	} else {
		r = httptest.NewRequest(method, target, nil)
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

// TestConsoleConfigRedactsSecrets: /console/api/config shows the settings and none of the
// secrets: the database password (URL and key=value forms), the admin token, the JWT
// secret, a key in a JWKS URL.
func TestConsoleConfigRedactsSecrets(t *testing.T) {
	t.Parallel()
	jwtAuth, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{HS256Secret: []byte(testJWTSecret), Issuer: "https://issuer.example",
		JWKSURLs: []string{"https://idp.example.com/jwks.json?key=" + testJWKSKey}})
	if err != nil {
		t.Fatal(err)
	}
	for _, dsn := range []string{
		"postgres://app:" + testDBPassword + "@db.example:5432/app?sslmode=disable",
		"host=db.example user=app password=" + testDBPassword + " dbname=app",
	} {
		eng, err := walflow.Open(t.Context(), walflow.Config{
			DatabaseURL: dsn, MemoryLedger: true, TemporarySlot: true, AdminToken: testAdminToken,
			Tables:    []channel.Table{{Name: "comments"}},
			Operators: []operator.Operator{operator.SQL{Name: consoleOperator, Target: "counts", Entities: []string{"comments"}, Query: "SELECT $1::int", OnFailure: operator.Park}},
			Realtime:  &walflow.RealtimeConfig{Gateway: realtime.GatewayConfig{Authorizer: jwtAuth}},
			Alerts:    alert.Budgets{SlotRetainedWAL: 1 << 30, Lag: alert.Lag{Events: 5000, Age: time.Minute}},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = eng.Close() })
		rec := serve(eng.Handler(), "GET", "/console/api/config", "", "")
		body := rec.Body.String()
		if rec.Code != 200 {
			t.Fatalf("GET /console/api/config: %d %s", rec.Code, body)
		}
		for _, secret := range []string{testDBPassword, testAdminToken, testJWTSecret, testJWKSKey} {
			if strings.Contains(body, secret) {
				t.Errorf("the config shows the secret %q:\n%s", secret, body)
			}
		}
		var c walflow.ConsoleConfig
		if err := json.Unmarshal(rec.Body.Bytes(), &c); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(c.DatabaseURL, "db.example") || !strings.Contains(c.DatabaseURL, "xxxxx") {
			t.Errorf("database_url %q: want the host kept and the password as xxxxx", c.DatabaseURL)
		}
		if !c.AdminTokenSet || c.Ledger != "memory" || c.Alerts.LagEvents != 5000 || c.Alerts.LagAge != "1m0s" {
			t.Errorf("config %+v: want admin_token_set, the memory ledger and the lag budgets", c)
		}
		if len(c.Operators) != 1 || c.Operators[0].Name != consoleOperator || c.Operators[0].OnFailure != "park" || c.Operators[0].Query != "SELECT $1::int" {
			t.Errorf("operators %+v", c.Operators)
		}
		if r := c.Realtime; r == nil || r.Authorizer != "jwt" || r.JWT == nil || !r.JWT.HS256Secret || r.JWT.Issuer != "https://issuer.example" ||
			len(r.JWT.JWKSURLs) != 1 || r.JWT.JWKSURLs[0] != "https://idp.example.com/jwks.json?xxxxx" {
			t.Errorf("realtime %+v: want the JWT settings with the secret reported as set", r)
		}
	}
}

// TestConsoleActionsNeedAdminToken: the actions and the parked list answer 403 with a JSON
// error when no admin token is configured, and 401 when it is configured but not sent as a
// bearer token (a cookie or a wrong token does not do).
func TestConsoleActionsNeedAdminToken(t *testing.T) {
	t.Parallel()
	open := func(token string) http.Handler {
		eng, err := walflow.Open(t.Context(), walflow.Config{
			DatabaseURL: "postgres://app@127.0.0.1:1/app", MemoryLedger: true, TemporarySlot: true, AdminToken: token,
			Tables:    []channel.Table{{Name: "comments"}},
			Operators: []operator.Operator{operator.SQL{Name: consoleOperator, Target: "counts", Entities: []string{"comments"}, Query: "SELECT $1::int"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = eng.Close() })
		return eng.Handler()
	}
	requests := []struct{ method, path, body string }{
		{"POST", "/console/api/operators/counts/restart", ""},
		{"POST", "/console/api/operators/counts/skip", ""},
		{"POST", "/console/api/operators/counts/retry", `{"id": "1"}`},
		{"POST", "/console/api/operators/counts/discard", `{"id": "1"}`},
		{"GET", "/console/api/operators/counts/parked", ""},
	}
	check := func(h http.Handler, r *http.Request, want int, why string) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		var e walflow.ConsoleError
		if rec.Code != want || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error == "" {
			t.Errorf("%s %s %s: %d %s, want %d with a JSON error", why, r.Method, r.URL.Path, rec.Code, rec.Body.String(), want)
		}
	}
	off, on := open(""), open(testAdminToken)
	for _, q := range requests {
		r := httptest.NewRequest(q.method, q.path, strings.NewReader(q.body))
		r.Header.Set("Authorization", "Bearer "+testAdminToken)
		check(off, r, http.StatusForbidden, "no admin token configured")
		check(on, httptest.NewRequest(q.method, q.path, strings.NewReader(q.body)), http.StatusUnauthorized, "no token sent")
		r = httptest.NewRequest(q.method, q.path, strings.NewReader(q.body))
		r.Header.Set("Authorization", "Bearer "+testAdminToken+"x")
		check(on, r, http.StatusUnauthorized, "a wrong token")
		r = httptest.NewRequest(q.method, q.path, strings.NewReader(q.body))
		r.Header.Set("Authorization", testAdminToken)
		check(on, r, http.StatusUnauthorized, "the token without Bearer")
		r = httptest.NewRequest(q.method, q.path, strings.NewReader(q.body))
		r.AddCookie(&http.Cookie{Name: "token", Value: testAdminToken})
		check(on, r, http.StatusUnauthorized, "the token in a cookie")
	}
	var s walflow.ConsoleSession
	if rec := serve(on, "GET", "/console/api/session", testAdminToken, ""); json.Unmarshal(rec.Body.Bytes(), &s) != nil || !s.Admin || !s.AdminTokenSet {
		t.Errorf("session with the token: %s", rec.Body.String())
	}
	if rec := serve(on, "GET", "/console/api/session", "", ""); json.Unmarshal(rec.Body.Bytes(), &s) != nil || s.Admin || !s.AdminTokenSet {
		t.Errorf("session without the token: %s", rec.Body.String())
	}
	if rec := serve(on, "POST", "/console/api/operators/nope/restart", testAdminToken, ""); rec.Code != http.StatusNotFound {
		t.Errorf("restart of an unknown operator with the token: %d %s, want 404", rec.Code, rec.Body.String())
	}
	if _, err := walflow.Open(t.Context(), walflow.Config{DatabaseURL: "postgres://app@127.0.0.1:1/app", MemoryLedger: true, AdminToken: "short"}); err == nil ||
		!strings.Contains(err.Error(), "AdminToken") {
		t.Errorf("a 5-character admin token: %v, want an error naming AdminToken", err)
	}
	if _, err := walflow.Open(t.Context(), walflow.Config{DatabaseURL: "postgres://app@127.0.0.1:1/app", MemoryLedger: true,
		Realtime: &walflow.RealtimeConfig{Path: "/console/stream", Gateway: realtime.GatewayConfig{Authorizer: realtime.AllowAll{}}}}); err == nil ||
		!strings.Contains(err.Error(), "under the console's /console/") {
		t.Errorf("a realtime path under /console/: %v, want an error", err)
	}
	for _, path := range []string{"/", "/console/", "/console/console.js", "/console/chart.js", "/console/console.css"} {
		if rec := serve(on, "GET", path, "", ""); rec.Code != 200 || rec.Body.Len() == 0 {
			t.Errorf("GET %s: %d", path, rec.Code)
		}
	}
}

// TestConsoleHistoryAndActions: while rows are written, the history gains samples whose
// numbers are those of /status once the writes stop; an operator halted on a failing row
// shows as halted and a projector as live, a skip without the token is refused, a restart with it retries the
// event (and halts again) and a skip with it moves the operator on.
func TestConsoleHistoryAndActions(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+`CREATE TABLE counts (id int PRIMARY KEY, n int);
		CREATE FUNCTION refuse_two() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id = 2 THEN RAISE EXCEPTION 'counts row 2 refused'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER refuse_two BEFORE INSERT OR UPDATE ON counts FOR EACH ROW EXECUTE FUNCTION refuse_two();`)
	ctx := t.Context()
	cfg, _ := pgx.ParseConfig(dsn)
	eng, err := walflow.Open(ctx, walflow.Config{DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true, StatusInterval: 100 * time.Millisecond,
		ConsoleInterval: 50 * time.Millisecond, AdminToken: testAdminToken,
		Tables: []channel.Table{{Name: "posts"}, {Name: "comments"}},
		Operators: []operator.Operator{operator.SQL{Name: consoleOperator, Target: "counts", Entities: []string{"comments"}, ID: map[string]string{"comments": "post_id"},
			Query: `INSERT INTO counts SELECT $1::int, (SELECT count(*) FROM comments c WHERE c.post_id = $1::int) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n`}},
		OperatorRetry: retry.Policy{Min: time.Millisecond, Max: time.Millisecond, MaxRetries: 1},
		Projectors: []projector.Projector{{Name: "seen", Entities: []string{"comments"},
			Handle: func(context.Context, event.Event) error { return nil }}},
		Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	h := eng.Handler()
	history := func(after uint64) walflow.ConsoleHistory {
		t.Helper()
		rec := serve(h, "GET", "/console/api/history?after="+itoa(after), "", "")
		var hist walflow.ConsoleHistory
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &hist) != nil {
			t.Fatalf("history: %d %s", rec.Code, rec.Body.String())
		}
		return hist
	}
	status := func() walflow.Status {
		t.Helper()
		var st walflow.Status
		if rec := serve(h, "GET", "/status", "", ""); json.Unmarshal(rec.Body.Bytes(), &st) != nil {
			t.Fatalf("status: %s", rec.Body.String())
		}
		return st
	}
	first := history(0)
	if first.IntervalMS != 50 || first.WindowSeconds != 3600 {
		t.Errorf("history interval %d ms, window %d s; want 50 and 3600", first.IntervalMS, first.WindowSeconds)
	}
	var last uint64
	if n := len(first.Samples); n > 0 {
		last = first.Samples[n-1].Seq
	}
	for i := 1; i <= 20; i++ {
		if _, err := conn.Exec(ctx, `INSERT INTO comments VALUES ($1, 1, 'x')`, i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO comments VALUES (100, 2, 'refused')`); err != nil {
		t.Fatal(err)
	}
	// The samples after last arrive in order, and one of them saw events flow.
	var moved bool
	var latest walflow.ConsoleSample
	waitTrue(t, "the history matches /status with the operator halted", func() bool {
		for _, s := range history(last).Samples {
			if s.Seq != last+1 {
				t.Fatalf("sample %d after %d: the history has a gap", s.Seq, last)
			}
			last, latest = s.Seq, s
			moved = moved || s.EventsPerSecond > 0
		}
		st := status()
		return len(latest.Consumers) == 2 && latest.Consumers[0].State == "halted" &&
			latest.LedgerHead == st.LedgerHead && latest.EventsAppended == st.EventsAppended &&
			latest.Consumers[0].Position == uint64(st.Operators[0].Position) && latest.Streaming == st.Streaming &&
			len(st.Projectors) == 1 && latest.Consumers[1] == walflow.ConsoleConsumer{Kind: walflow.ConsumerProjector, Name: "seen",
			Position: uint64(st.Projectors[0].Position), LagEvents: st.Projectors[0].Lag, State: "live"}
	})
	if !moved {
		t.Error("no sample had events/s > 0 while 21 rows were written")
	}
	if latest.LedgerHead < 21 || latest.Consumers[0].LagEvents != latest.LedgerHead-latest.Consumers[0].Position {
		t.Errorf("latest sample %+v: want the head at least 21 and the operator's lag = head - position", latest)
	}
	if rec := serve(h, "POST", "/console/api/operators/counts/skip", "", ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("skip without the token: %d %s, want 401", rec.Code, rec.Body.String())
	}
	if eng.Operators().Operators()[0].Halted != true {
		t.Fatal("a refused skip moved the operator")
	}
	// A restart retries the failing event, which halts the operator a second time.
	if rec := serve(h, "POST", "/console/api/operators/counts/restart", testAdminToken, ""); rec.Code != 200 {
		t.Fatalf("restart with the token: %d %s", rec.Code, rec.Body.String())
	}
	waitTrue(t, "the restarted operator halts again", func() bool {
		return strings.Contains(serve(h, "GET", "/metrics", "", "").Body.String(), `walflow_operator_halts_total{operator="counts"} 2`) &&
			eng.Operators().Operators()[0].Halted
	})
	rec := serve(h, "POST", "/console/api/operators/counts/skip", testAdminToken, "")
	var res walflow.ConsoleActionResult
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &res) != nil || res.Skipped == 0 {
		t.Fatalf("skip with the token: %d %s", rec.Code, rec.Body.String())
	}
	if _, err := conn.Exec(ctx, `INSERT INTO comments VALUES (101, 1, 'after')`); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "the operator runs again and counts comment 101", func() bool {
		var n int
		_ = conn.QueryRow(ctx, `SELECT n FROM counts WHERE id = 1`).Scan(&n)
		return n == 21 && !eng.Operators().Operators()[0].Halted
	})
	if rec := serve(h, "POST", "/console/api/operators/counts/skip", testAdminToken, ""); rec.Code != http.StatusConflict {
		t.Errorf("skip of a running operator: %d %s, want 409", rec.Code, rec.Body.String())
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
