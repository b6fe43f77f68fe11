package realtime_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/realtime"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

const blogSchema = `
	CREATE TABLE posts (id int PRIMARY KEY, title text);
	CREATE TABLE comments (id int PRIMARY KEY, post_id int, body text);
	ALTER TABLE posts REPLICA IDENTITY FULL;
	ALTER TABLE comments REPLICA IDENTITY FULL;`

type fixture struct {
	t    *testing.T
	eng  *walflow.Engine
	conn *pgx.Conn
	dsn  string
	gw   *realtime.Gateway
	srv  *httptest.Server
}

// setup runs an engine on a fresh blog database and serves a gateway over it until the test
// ends.
func setup(t *testing.T, cfg realtime.GatewayConfig) *fixture {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, blogSchema); err != nil {
		t.Fatal(err)
	}
	pc, _ := pgx.ParseConfig(dsn)
	scope, err := channel.ParseScope("posts/{post_id}")
	if err != nil {
		t.Fatal(err)
	}
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn, Slot: pc.Database, MemoryLedger: true,
		Tables:         []channel.Table{{Name: "posts"}, {Name: "comments", Scopes: []channel.Scope{scope}}},
		StatusInterval: 200 * time.Millisecond,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	cfg.Ledger, cfg.Router = eng.Ledger(), eng.Router()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	gw, err := realtime.NewGateway(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := gw.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &fixture{t: t, eng: eng, conn: conn, dsn: dsn, gw: gw, srv: srv}
}

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

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func (f *fixture) exec(sql string) {
	f.t.Helper()
	if _, err := f.conn.Exec(f.t.Context(), sql); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
}

// msg is one SSE message.
type msg struct {
	ID, Event, Data string
}

// sse is an open stream read by a small SSE parser.
type sse struct {
	t    *testing.T
	resp *http.Response
	msgs chan msg
}

// get sends a stream request; query holds the channel and other parameters.
func (f *fixture) get(query url.Values, header http.Header) *http.Response {
	f.t.Helper()
	req, err := http.NewRequestWithContext(f.t.Context(), "GET", f.srv.URL+"?"+query.Encode(), nil)
	if err != nil {
		f.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp
}

// open starts a stream that must be accepted.
func (f *fixture) open(query url.Values, header http.Header) *sse {
	f.t.Helper()
	resp := f.get(query, header)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		f.t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	return f.stream(resp)
}

// stream reads an accepted stream's response.
func (f *fixture) stream(resp *http.Response) *sse {
	s := &sse{t: f.t, resp: resp, msgs: make(chan msg, 1024)}
	f.t.Cleanup(s.close)
	go func() {
		defer close(s.msgs)
		_ = readSSE(resp.Body, func(m msg) bool {
			s.msgs <- m
			return true
		})
	}()
	return s
}

func (s *sse) close() { s.resp.Body.Close() }

// next returns the next message; ok is false at the end of the stream.
func (s *sse) next() (msg, bool) {
	s.t.Helper()
	select {
	case m, ok := <-s.msgs:
		return m, ok
	case <-time.After(30 * time.Second):
		s.t.Fatal("no SSE message within 30s")
		return msg{}, false
	}
}

func (s *sse) mustNext() msg {
	s.t.Helper()
	m, ok := s.next()
	if !ok {
		s.t.Fatal("stream ended")
	}
	return m
}

type ack struct {
	Channels []string `json:"channels"`
	Position uint64   `json:"position"`
}

func (s *sse) ack() ack {
	s.t.Helper()
	m := s.mustNext()
	if m.Event != "subscribed" {
		s.t.Fatalf("first message %+v, want subscribed", m)
	}
	var a ack
	if err := json.Unmarshal([]byte(m.Data), &a); err != nil {
		s.t.Fatal(err)
	}
	if m.ID != strconv.FormatUint(a.Position, 10) {
		s.t.Fatalf("ack id %s, position %d", m.ID, a.Position)
	}
	return a
}

type payload struct {
	Channel string `json:"channel"`
	Event   struct {
		Position  uint64         `json:"position"`
		Name      string         `json:"name"`
		Type      string         `json:"type"`
		NewRecord map[string]any `json:"new_record"`
		OldRecord map[string]any `json:"old_record"`
	} `json:"event"`
}

// summary reads n events and renders them: "posts/42 comments insert 7".
func (s *sse) summary(n int) (string, []uint64) {
	s.t.Helper()
	var parts []string
	var ids []uint64
	for range n {
		m := s.mustNext()
		var p payload
		if err := json.Unmarshal([]byte(m.Data), &p); err != nil {
			s.t.Fatalf("%+v: %v", m, err)
		}
		if m.Event != p.Event.Type || m.ID != strconv.FormatUint(p.Event.Position, 10) {
			s.t.Fatalf("message %s/%s does not match its event %+v", m.ID, m.Event, p.Event)
		}
		rec := p.Event.NewRecord
		if rec == nil {
			rec = p.Event.OldRecord
		}
		parts = append(parts, fmt.Sprintf("%s %s %s %v", p.Channel, p.Event.Name, p.Event.Type, rec["id"]))
		ids = append(ids, p.Event.Position)
	}
	return strings.Join(parts, ", "), ids
}

func channels(chs ...string) url.Values { return url.Values{"channel": chs} }

func TestGatewayStream(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}})
	f.exec(`INSERT INTO posts VALUES (1, 'before')`)
	deadline := time.Now().Add(30 * time.Second)
	for f.eng.Ledger().State().Head == 0 {
		if time.Now().After(deadline) {
			t.Fatal("first event never reached the ledger")
		}
		time.Sleep(10 * time.Millisecond)
	}
	head := uint64(f.eng.Ledger().State().Head)
	multi := f.open(channels("comments/7", "posts/42/comments", "posts/42", "comments/7"), nil)
	a := multi.ack()
	if a.Position != head || strings.Join(a.Channels, " ") != "comments/7 posts/42/comments posts/42" {
		t.Fatalf("ack %+v, want head %d and the three channels", a, head)
	}
	whole := f.open(channels("comments"), nil)
	whole.ack()

	f.exec(`INSERT INTO posts VALUES (42, 'a'), (43, 'b')`)
	f.exec(`INSERT INTO comments VALUES (7, 42, 'x'), (8, 42, 'y'), (9, 43, 'z')`)
	f.exec(`UPDATE comments SET post_id = 43 WHERE id = 7`)
	f.exec(`DELETE FROM comments WHERE id = 8`)
	f.exec(`INSERT INTO comments VALUES (100, 42, 'marker')`)

	// comments 7 matches comments/7 and posts/42/comments: sent once, on the first.
	want := "posts/42 posts insert 42, comments/7 comments insert 7, posts/42/comments comments insert 8, " +
		"comments/7 comments update 7, posts/42/comments comments delete 8, posts/42/comments comments insert 100"
	got, ids := multi.summary(6)
	if got != want {
		t.Errorf("multi:\n got %s\nwant %s", got, want)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Errorf("ids not increasing: %v", ids)
		}
	}
	want = "comments comments insert 7, comments comments insert 8, comments comments insert 9, " +
		"comments comments update 7, comments comments delete 8, comments comments insert 100"
	if got, _ := whole.summary(6); got != want {
		t.Errorf("comments:\n got %s\nwant %s", got, want)
	}
	// MessagesSent counts a message once its write returned, which may be after the client
	// read it.
	deadline = time.Now().Add(10 * time.Second)
	for st := f.gw.Stats(); st.Connections != 2 || st.Subscriptions != 4 || st.MessagesSent != 12; st = f.gw.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGatewayResume disconnects repeatedly while a writer commits and resumes with
// Last-Event-ID: the union of what was received is every event once, in order.
func TestGatewayResume(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}})
	const writes = 400
	writerErr := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(t.Context(), f.dsn)
		if err != nil {
			writerErr <- err
			return
		}
		defer conn.Close(context.Background())
		for i := range writes {
			if _, err := conn.Exec(t.Context(), "INSERT INTO comments VALUES ($1, $2, 'c')", i, 1+i%2); err != nil {
				writerErr <- err
				return
			}
		}
		writerErr <- nil
	}()
	var got []uint64
	seen := map[string]bool{}
	q := channels("posts/1/comments")
	q.Set("after", "0")
	var header http.Header
	for round := 0; len(got) < writes/2; round++ {
		s := f.open(q, header)
		a := s.ack()
		if len(got) > 0 && a.Position != got[len(got)-1] {
			t.Fatalf("resumed at %d, want %d", a.Position, got[len(got)-1])
		}
		take := min(10+round*7, writes/2-len(got))
		for range take {
			m := s.mustNext()
			var p payload
			if err := json.Unmarshal([]byte(m.Data), &p); err != nil {
				t.Fatal(err)
			}
			id := fmt.Sprint(p.Event.NewRecord["id"])
			if seen[id] {
				t.Fatalf("comment %s delivered twice", id)
			}
			seen[id] = true
			if len(got) > 0 && p.Event.Position <= got[len(got)-1] {
				t.Fatalf("out of order: %d after %d", p.Event.Position, got[len(got)-1])
			}
			got = append(got, p.Event.Position)
		}
		s.close()
		// Last-Event-ID wins over after=0.
		header = http.Header{"Last-Event-Id": {strconv.FormatUint(got[len(got)-1], 10)}}
	}
	if err := <-writerErr; err != nil {
		t.Fatal(err)
	}
	if len(seen) != writes/2 {
		t.Fatalf("received %d distinct comments, want %d", len(seen), writes/2)
	}
}

// hs256 signs claims with secret.
func hs256(t *testing.T, secret []byte, claims map[string]any) string {
	t.Helper()
	enc := base64.RawURLEncoding
	p, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	signed := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(p)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(signed))
	return signed + "." + enc.EncodeToString(m.Sum(nil))
}

func TestGatewayRejects(t *testing.T) {
	t.Parallel()
	secret := []byte("0123456789abcdef0123456789abcdef")
	auth, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{HS256Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	f := setup(t, realtime.GatewayConfig{Authorizer: auth, MaxChannels: 2})
	tok := hs256(t, secret, map[string]any{"sub": "u1", "channels": []string{"posts/*/comments"}, "exp": time.Now().Add(time.Hour).Unix()})
	withToken := func(q url.Values) url.Values { q.Set("access_token", tok); return q }
	wide := hs256(t, secret, map[string]any{"sub": "u1", "channels": []string{"organizations/*/comments"}, "exp": time.Now().Add(time.Hour).Unix()})
	withWide := func(q url.Values) url.Values { q.Set("access_token", wide); return q }
	for _, tc := range []struct {
		name   string
		query  url.Values
		header http.Header
		status int
		reason string
	}{
		{"no token", channels("posts/1/comments"), nil, http.StatusUnauthorized, "missing token"},
		{"channel not granted", withToken(channels("posts/1/comments", "posts")), nil, http.StatusForbidden, "token does not grant this channel"},
		{"malformed channel", withToken(channels("posts//comments")), nil, http.StatusBadRequest, "empty segment"},
		{"unknown scope not granted", withToken(channels("organizations/1/comments")), nil, http.StatusForbidden, "token does not grant this channel"},
		{"unknown scope", withWide(channels("organizations/1/comments")), nil, http.StatusBadRequest, "organizations"},
		{"too many channels", withToken(channels("posts/1/comments", "posts/2/comments", "posts/3/comments")), nil, http.StatusBadRequest, "at most 2"},
		{"no channel", withToken(url.Values{}), nil, http.StatusBadRequest, "no channel"},
		{"resume after head", withToken(channels("posts/1/comments")), http.Header{"Last-Event-Id": {"1000"}}, http.StatusBadRequest, "is after the ledger head 0: this ledger never had it"},
		{"bad resume", withToken(channels("posts/1/comments")), http.Header{"Last-Event-Id": {"x"}}, http.StatusBadRequest, "not a ledger position"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := f.get(tc.query, tc.header)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.reason) {
				t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, body, tc.status, tc.reason)
			}
			if strings.Contains(string(body), "data:") || strings.Contains(string(body), tok) || strings.Contains(string(body), wide) {
				t.Errorf("body %q carries data or the token", body)
			}
		})
	}
	s := f.open(withToken(channels("posts/1/comments")), nil)
	if a := s.ack(); strings.Join(a.Channels, " ") != "posts/1/comments" {
		t.Fatalf("ack %+v", a)
	}
	if st := f.gw.Stats(); st.Rejected[http.StatusBadRequest] != 6 || st.Rejected[http.StatusServiceUnavailable] != 0 || st.Rejected[http.StatusUnauthorized] != 1 || st.Rejected[http.StatusForbidden] != 2 {
		t.Errorf("rejected %v", st.Rejected)
	}
}

// TestGatewayAuthorizesFirst: a client that may not subscribe learns nothing of the
// ledger or the configured tables, over SSE or WebSocket: a resume position past the head,
// a malformed one or a channel of a scope no table has is answered with the denial, not
// with what the gateway knows; a WebSocket connection without a subscription gets
// heartbeats without the head, and unsubscribing from an unknown scope says only that it
// is not subscribed. Tokens sent twice are refused with what happened.
func TestGatewayAuthorizesFirst(t *testing.T) {
	t.Parallel()
	secret := []byte("0123456789abcdef0123456789abcdef")
	auth, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{HS256Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	f := setup(t, realtime.GatewayConfig{Authorizer: auth, Heartbeat: 50 * time.Millisecond})
	f.exec(`INSERT INTO posts VALUES (1, 'a'), (2, 'b')`)
	eventually(t, "the posts reach the ledger", func() bool { return f.eng.Ledger().State().Head >= 2 })
	head := strconv.FormatUint(uint64(f.eng.Ledger().State().Head), 10)
	tok := hs256(t, secret, map[string]any{"sub": "u1", "channels": []string{"posts/*"}, "exp": time.Now().Add(time.Hour).Unix()})
	other := hs256(t, secret, map[string]any{"sub": "u2", "channels": []string{"posts/*"}, "exp": time.Now().Add(time.Hour).Unix()})
	// secrets are what a denied client must not read in the answer.
	secrets := []string{"ledger head", "scope"}

	t.Run("SSE", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			query  url.Values
			header http.Header
			status int
			body   string
		}{
			{"no token, resume past the head", channels("posts/1"), http.Header{"Last-Event-Id": {"999999999"}}, http.StatusUnauthorized, "missing token\n"},
			{"no token, resume past the head in after", url.Values{"channel": {"posts/1"}, "after": {"999999999"}}, nil, http.StatusUnauthorized, "missing token\n"},
			{"no token, malformed resume", channels("posts/1"), http.Header{"Last-Event-Id": {"x"}}, http.StatusUnauthorized, "missing token\n"},
			{"no token, unknown scope", channels("organizations/1/posts"), nil, http.StatusUnauthorized, "missing token\n"},
			{"bad token, resume past the head", url.Values{"channel": {"posts/1"}, "access_token": {"x.y.z"}}, http.Header{"Last-Event-Id": {"999999999"}}, http.StatusUnauthorized, "malformed token\n"},
			{"token not granting, resume past the head", url.Values{"channel": {"posts"}, "access_token": {tok}}, http.Header{"Last-Event-Id": {"999999999"}}, http.StatusForbidden, "token does not grant this channel\n"},
			{"access_token twice", url.Values{"channel": {"posts/1"}, "access_token": {tok, other}}, nil, http.StatusUnauthorized, "access_token given more than once; send one\n"},
			{"Authorization twice", channels("posts/1"), http.Header{"Authorization": {"Bearer " + tok, "Bearer " + other}}, http.StatusUnauthorized, "Authorization header given more than once; send one\n"},
			{"header and access_token", url.Values{"channel": {"posts/1"}, "access_token": {tok}}, http.Header{"Authorization": {"Bearer " + other}}, http.StatusUnauthorized, "token given both in the Authorization header and in access_token\n"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp := f.get(tc.query, tc.header)
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.status || string(body) != tc.body {
					t.Errorf("got %d %q, want %d %q", resp.StatusCode, body, tc.status, tc.body)
				}
			})
		}
		// Authorized, the same resume position is refused with the head: this ledger is
		// not shared, so it never had that position.
		resp := f.get(url.Values{"channel": {"posts/1"}, "access_token": {tok}}, http.Header{"Last-Event-Id": {"999999999"}})
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := "resume position 999999999 is after the ledger head " + head; resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), want) {
			t.Errorf("authorized, resume past the head: got %d %q, want 400 with %q", resp.StatusCode, body, want)
		}
	})

	t.Run("WebSocket", func(t *testing.T) {
		anon := f.mustDialWS("", nil)
		denied := func(m wsMsg, status int, reason string) {
			t.Helper()
			if m.Status != status || deref(m.Reason) != reason || m.Position != nil {
				t.Errorf("got %+v (reason %s), want status %d, reason %q and no position", m, deref(m.Reason), status, reason)
			}
			for _, s := range append(secrets, head) {
				if strings.Contains(deref(m.Reason), s) {
					t.Errorf("reason %q tells %q", deref(m.Reason), s)
				}
			}
		}
		anon.send(map[string]any{"type": "subscribe", "channel": "posts/1", "after": 999999999, "ref": "past"})
		denied(anon.expect("error", "past"), http.StatusUnauthorized, "missing token")
		anon.send(map[string]any{"type": "subscribe", "channel": "organizations/1/posts", "ref": "scope"})
		denied(anon.expect("error", "scope"), http.StatusUnauthorized, "missing token")
		anon.send(map[string]any{"type": "unsubscribe", "channel": "organizations/1/posts", "ref": "unsub"})
		denied(anon.expect("error", "unsub"), http.StatusBadRequest, "not subscribed to organizations/1/posts")
		// Heartbeats to a connection without a subscription carry no head.
		for beats := 0; beats < 3; {
			select {
			case m := <-anon.msgs:
				if m.Type != "heartbeat" || m.Position != nil {
					t.Fatalf("a connection without a subscription got %+v", m)
				}
				beats++
			case <-time.After(30 * time.Second):
				t.Fatal("no heartbeat")
			}
		}

		for _, tc := range []struct {
			name, query string
			header      http.Header
			status      int
			reason      string
		}{
			{"access_token twice", "access_token=" + tok + "&access_token=" + other, nil, http.StatusUnauthorized, "access_token given more than once; send one"},
			{"header and access_token", "access_token=" + tok, http.Header{"Authorization": {"Bearer " + other}}, http.StatusUnauthorized, "token given both in the Authorization header and in access_token"},
			{"token not granting", "access_token=" + tok, nil, http.StatusForbidden, "token does not grant this channel"},
		} {
			w := f.mustDialWS(tc.query, tc.header)
			w.send(map[string]any{"type": "subscribe", "channel": "posts", "after": 999999999, "ref": "past"})
			denied(w.expect("error", "past"), tc.status, tc.reason)
		}
		// Authorized, the same resume position is refused with the head.
		w := f.mustDialWS("access_token="+tok, nil)
		w.send(map[string]any{"type": "subscribe", "channel": "posts/1", "after": 999999999, "ref": "past"})
		m := w.expect("error", "past")
		if want := "resume position 999999999 is after the ledger head " + head; m.Status != http.StatusBadRequest || !strings.Contains(deref(m.Reason), want) {
			t.Errorf("authorized, resume past the head: %+v (reason %s), want 400 with %q", m, deref(m.Reason), want)
		}
	})
}

// expiring allows every channel until a fixed time.
type expiring time.Time

func (e expiring) Authorize(*http.Request, channel.Channel) realtime.Decision {
	return realtime.Decision{Allow: true, Expires: time.Time(e)}
}

func TestGatewayTokenExpiry(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: expiring(time.Now().Add(1500 * time.Millisecond))})
	s := f.open(channels("posts"), nil)
	a := s.ack()
	f.exec(`INSERT INTO posts VALUES (1, 'a')`)
	// Whether the event beats the expiry depends on the machine's speed; either way the
	// stream must end with the reason and the position of the last event it sent.
	last := a.Position
	for {
		m := s.mustNext()
		if m.Event == "error" {
			want := fmt.Sprintf(`{"reason":"token expired","position":%d}`, last)
			if m.Data != want {
				t.Fatalf("got %+v, want error %s (ack %d)", m, want, a.Position)
			}
			break
		}
		id, err := strconv.ParseUint(m.ID, 10, 64)
		if err != nil {
			t.Fatalf("event without a position: %+v", m)
		}
		last = id
	}
	if m, ok := s.next(); ok {
		t.Fatalf("message after the error: %+v", m)
	}
}

func TestGatewayShutdown(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, Heartbeat: 50 * time.Millisecond})
	a, b := f.open(channels("posts"), nil), f.open(channels("comments"), nil)
	pa, pb := a.ack().Position, b.ack().Position
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := f.gw.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for i, s := range []*sse{a, b} {
		m := s.mustNext()
		want := fmt.Sprintf(`{"reason":"shutdown","position":%d}`, []uint64{pa, pb}[i])
		if m.Event != "error" || m.Data != want {
			t.Errorf("stream %d: got %+v, want error %s", i, m, want)
		}
		if _, ok := s.next(); ok {
			t.Errorf("stream %d: not ended", i)
		}
	}
	resp := f.get(channels("posts"), nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("after Shutdown: %d, want 503", resp.StatusCode)
	}
	st := f.gw.Stats()
	if st.Connections != 0 || st.Disconnects[realtime.DisconnectShutdown] != 2 {
		t.Errorf("stats %+v", st)
	}
}
