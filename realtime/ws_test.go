package realtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/walflow/walflow/realtime"
)

// wsMsg is any gateway message of the WebSocket protocol.
type wsMsg struct {
	Type     string          `json:"type"`
	Ref      string          `json:"ref"`
	Channel  string          `json:"channel"`
	Position *uint64         `json:"position"`
	Status   int             `json:"status"`
	Reason   *string         `json:"reason"`
	Event    json.RawMessage `json:"event"`
}

func (m wsMsg) pos() uint64 {
	if m.Position == nil {
		return 0
	}
	return *m.Position
}

// summary renders an event message: "posts/1/comments comments insert 7".
func (m wsMsg) summary(t *testing.T) string {
	t.Helper()
	var e struct {
		Position  uint64         `json:"position"`
		Name      string         `json:"name"`
		Type      string         `json:"type"`
		NewRecord map[string]any `json:"new_record"`
		OldRecord map[string]any `json:"old_record"`
	}
	if err := json.Unmarshal(m.Event, &e); err != nil {
		t.Fatalf("event of %+v: %v", m, err)
	}
	if e.Position != m.pos() {
		t.Fatalf("message position %d, event position %d", m.pos(), e.Position)
	}
	rec := e.NewRecord
	if rec == nil {
		rec = e.OldRecord
	}
	return fmt.Sprintf("%s %s %s %v", m.Channel, e.Name, e.Type, rec["id"])
}

// wsClient is a test client of the WebSocket protocol.
type wsClient struct {
	t    *testing.T
	c    *websocket.Conn
	msgs chan wsMsg
	err  error // why reading ended, once msgs is closed
}

// dialWS opens a WebSocket connection to the fixture's gateway.
func (f *fixture) dialWS(query string, header http.Header) (*wsClient, *http.Response, error) {
	f.t.Helper()
	return f.dialWSCap(query, header, 1<<16)
}

// dialWSCap is dialWS with a client that reads at most capacity messages ahead of the
// test.
func (f *fixture) dialWSCap(query string, header http.Header, capacity int) (*wsClient, *http.Response, error) {
	f.t.Helper()
	u := "ws" + strings.TrimPrefix(f.srv.URL, "http") + "/?" + query
	c, resp, err := websocket.Dial(f.t.Context(), u, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		return nil, resp, err
	}
	c.SetReadLimit(1 << 20)
	w := &wsClient{t: f.t, c: c, msgs: make(chan wsMsg, capacity)}
	f.t.Cleanup(func() { _ = c.CloseNow() })
	go func() {
		defer close(w.msgs)
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				w.err = err
				return
			}
			var m wsMsg
			if err := json.Unmarshal(data, &m); err != nil {
				w.err = fmt.Errorf("message %s: %w", data, err)
				return
			}
			w.msgs <- m
		}
	}()
	return w, resp, nil
}

func (f *fixture) mustDialWS(query string, header http.Header) *wsClient {
	f.t.Helper()
	w, _, err := f.dialWS(query, header)
	if err != nil {
		f.t.Fatalf("dial: %v", err)
	}
	return w
}

func (w *wsClient) send(v any) {
	w.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.c.Write(w.t.Context(), websocket.MessageText, b); err != nil {
		w.t.Fatalf("send %s: %v", b, err)
	}
}

// next returns the next message other than a heartbeat; ok is false when the connection
// ended.
func (w *wsClient) next() (wsMsg, bool) {
	w.t.Helper()
	for {
		select {
		case m, ok := <-w.msgs:
			if ok && m.Type == "heartbeat" {
				continue
			}
			return m, ok
		case <-time.After(30 * time.Second):
			w.t.Fatal("no WebSocket message within 30s")
			return wsMsg{}, false
		}
	}
}

func (w *wsClient) mustNext() wsMsg {
	w.t.Helper()
	m, ok := w.next()
	if !ok {
		w.t.Fatalf("connection ended: %v", w.err)
	}
	return m
}

// expect reads the next message and checks its type and ref.
func (w *wsClient) expect(typ, ref string) wsMsg {
	w.t.Helper()
	m := w.mustNext()
	if m.Type != typ || m.Ref != ref {
		w.t.Fatalf("got %+v (reason %v), want %s ref %q", m, deref(m.Reason), typ, ref)
	}
	return m
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// subscribe subscribes and waits for the acknowledgement.
func (w *wsClient) subscribe(ch string) uint64 {
	w.t.Helper()
	ref := "s:" + ch
	w.send(map[string]any{"type": "subscribe", "channel": ch, "ref": ref})
	m := w.expect("subscribed", ref)
	if m.Channel != ch || m.Position == nil {
		w.t.Fatalf("ack %+v for %s", m, ch)
	}
	return *m.Position
}

// events reads n messages that must be events, rendered by summary.
func (w *wsClient) events(n int) []string {
	w.t.Helper()
	var out []string
	for range n {
		m := w.mustNext()
		if m.Type != "event" {
			w.t.Fatalf("got %+v (reason %v), want an event", m, deref(m.Reason))
		}
		out = append(out, m.summary(w.t))
	}
	return out
}

// closed waits for the connection to end and returns its close status and reason.
func (w *wsClient) closed() (websocket.StatusCode, string) {
	w.t.Helper()
	for {
		m, ok := w.next()
		if !ok {
			var ce websocket.CloseError
			if errors.As(w.err, &ce) {
				return ce.Code, ce.Reason
			}
			return -1, fmt.Sprint(w.err)
		}
		if m.Type == "event" {
			w.t.Fatalf("event %s while waiting for the close", m.summary(w.t))
		}
	}
}

func TestWebSocketChannels(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, MaxChannels: 3})
	w := f.mustDialWS("", nil)
	p := w.subscribe("posts")
	if e := w.subscribe("posts/1"); e < p {
		t.Fatalf("second ack position %d before first %d", e, p)
	}
	w.subscribe("posts/1/comments")

	f.exec(`INSERT INTO posts VALUES (1, 'one'), (2, 'two')`)
	f.exec(`INSERT INTO comments VALUES (10, 1, 'a'), (11, 2, 'b')`)
	// Each subscription is its own ordered stream: gather per channel.
	got := map[string][]string{}
	for _, s := range w.events(4) {
		ch, _, _ := strings.Cut(s, " ")
		got[ch] = append(got[ch], s)
	}
	want := map[string][]string{
		"posts":            {"posts posts insert 1", "posts posts insert 2"},
		"posts/1":          {"posts/1 posts insert 1"},
		"posts/1/comments": {"posts/1/comments comments insert 10"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}

	// Unsubscribe at any time; the reply says where the subscription stood.
	w.send(map[string]any{"type": "unsubscribe", "channel": "posts", "ref": "u"})
	if m := w.expect("unsubscribed", "u"); m.Channel != "posts" || m.pos() == 0 {
		t.Fatalf("unsubscribed %+v", m)
	}
	f.exec(`UPDATE posts SET title = 'uno' WHERE id = 1`)
	f.exec(`UPDATE posts SET title = 'dos' WHERE id = 2`)
	if got := w.events(1); got[0] != "posts/1 posts update 1" {
		t.Fatalf("after unsubscribe: %v", got)
	}

	// Subscribing again with after replays what the channel missed.
	w.send(map[string]any{"type": "subscribe", "channel": "posts", "after": p, "ref": "again"})
	w.expect("subscribed", "again")
	got2 := w.events(4)
	if want := []string{"posts posts insert 1", "posts posts insert 2", "posts posts update 1", "posts posts update 2"}; !slices.Equal(got2, want) {
		t.Fatalf("resumed: %v, want %v", got2, want)
	}

	// Refusals leave the connection and its subscriptions alone.
	for _, tc := range []struct {
		msg    map[string]any
		reason string
	}{
		{map[string]any{"type": "subscribe", "channel": "posts/1", "ref": "dup"}, "already subscribed"},
		{map[string]any{"type": "subscribe", "channel": "users/1/posts", "ref": "bad"}, "no scope"},
		{map[string]any{"type": "subscribe", "channel": "posts/1/../2", "ref": "trick"}, ""},
		{map[string]any{"type": "subscribe", "channel": "comments/1", "ref": "full"}, "at most 3 channels"},
		{map[string]any{"type": "unsubscribe", "channel": "comments", "ref": "notsub"}, "not subscribed"},
		{map[string]any{"type": "hello", "ref": "unknown"}, "unknown message type"},
		{map[string]any{"ref": "untyped"}, `no "type"`},
	} {
		w.send(tc.msg)
		m := w.expect("error", tc.msg["ref"].(string))
		if m.Status != http.StatusBadRequest || !strings.Contains(deref(m.Reason), tc.reason) {
			t.Errorf("%v: status %d reason %q, want 400 with %q", tc.msg, m.Status, deref(m.Reason), tc.reason)
		}
	}
	if err := w.c.Write(t.Context(), websocket.MessageText, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if m := w.expect("error", ""); m.Status != http.StatusBadRequest {
		t.Fatalf("bad JSON: %+v", m)
	}
	f.exec(`INSERT INTO comments VALUES (12, 1, 'c')`)
	if got := w.events(1); got[0] != "posts/1/comments comments insert 12" {
		t.Fatalf("after refusals: %v", got)
	}
	if s := f.gw.Stats(); s.Connections != 1 || s.Subscriptions != 3 {
		t.Fatalf("stats %+v", s)
	}

	// A binary message ends the connection with 1003.
	if err := w.c.Write(t.Context(), websocket.MessageBinary, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if code, _ := w.closed(); code != websocket.StatusUnsupportedData {
		t.Fatalf("binary message: close %d, want 1003", code)
	}
	eventually(t, "connection counted as ended", func() bool {
		s := f.gw.Stats()
		return s.Connections == 0 && s.Subscriptions == 0 && s.Disconnects[realtime.DisconnectProtocol] == 1
	})
}

func TestWebSocketOrigin(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, AllowedOrigins: []string{"app.example.com", "http://localhost:*"}})
	host := strings.TrimPrefix(f.srv.URL, "http://")
	for _, tc := range []struct {
		origin string
		ok     bool
	}{
		{"", true},
		{"http://" + host, true},
		{"https://app.example.com", true},
		{"http://localhost:3000", true},
		{"https://localhost:3000", false},
		{"https://evil.example.com", false},
		{"https://app.example.com.evil.net", false},
		{"null", false},
	} {
		h := http.Header{}
		if tc.origin != "" {
			h.Set("Origin", tc.origin)
		}
		w, resp, err := f.dialWS("", h)
		if tc.ok {
			if err != nil {
				t.Errorf("origin %q refused: %v", tc.origin, err)
				continue
			}
			w.subscribe("posts")
			continue
		}
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("origin %q: err %v resp %v, want 403", tc.origin, err, resp)
		}
	}
	if _, err := realtime.NewGateway(realtime.GatewayConfig{Ledger: f.eng.Ledger(), Router: f.eng.Router(), Authorizer: realtime.AllowAll{}, AllowedOrigins: []string{"https://x.com/path"}}); err == nil || !strings.Contains(err.Error(), "x.com/path") {
		t.Fatalf("bad origin pattern: %v", err)
	}
}

func TestWebSocketAuth(t *testing.T) {
	t.Parallel()
	secret := []byte(strings.Repeat("k", 32))
	jwt, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{HS256Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	f := setup(t, realtime.GatewayConfig{Authorizer: jwt})
	exp := time.Now().Add(time.Hour).Unix()
	both := hs256(t, secret, map[string]any{"channels": []string{"posts/*", "posts/*/comments"}, "exp": exp})
	one := hs256(t, secret, map[string]any{"channels": []string{"posts/*/comments"}, "exp": exp})

	// Without a token nothing is granted.
	anon := f.mustDialWS("", nil)
	anon.send(map[string]any{"type": "subscribe", "channel": "posts/1", "ref": "a"})
	if m := anon.expect("error", "a"); m.Status != http.StatusUnauthorized {
		t.Fatalf("anonymous: %+v", m)
	}

	w := f.mustDialWS("access_token="+both, nil)
	w.subscribe("posts/1")
	w.subscribe("posts/1/comments")
	w.send(map[string]any{"type": "subscribe", "channel": "posts", "ref": "table"})
	if m := w.expect("error", "table"); m.Status != http.StatusForbidden {
		t.Fatalf("channel outside the token: %+v", m)
	}

	// A narrower token drops what it no longer grants and keeps the rest.
	w.send(map[string]any{"type": "auth", "token": one, "ref": "narrow"})
	m := w.mustNext()
	if m.Type != "unsubscribed" || m.Channel != "posts/1" || m.Status != http.StatusForbidden {
		t.Fatalf("after a narrower token: %+v", m)
	}
	w.expect("authorized", "narrow")
	f.exec(`INSERT INTO posts VALUES (1, 'one')`)
	f.exec(`INSERT INTO comments VALUES (10, 1, 'a')`)
	if got := w.events(1); got[0] != "posts/1/comments comments insert 10" {
		t.Fatalf("after auth: %v", got)
	}
	anon.send(map[string]any{"type": "auth", "token": "x.y.z", "ref": "junk"})
	anon.expect("authorized", "junk")
	anon.send(map[string]any{"type": "subscribe", "channel": "posts/1", "ref": "b"})
	if m := anon.expect("error", "b"); m.Status != http.StatusUnauthorized {
		t.Fatalf("junk token: %+v", m)
	}

	// Expiry closes the connection with 4001, whichever token set it.
	soon := hs256(t, secret, map[string]any{"channels": []string{"posts/*/comments"}, "exp": time.Now().Add(1500 * time.Millisecond).Unix()})
	w.send(map[string]any{"type": "auth", "token": soon, "ref": "soon"})
	w.expect("authorized", "soon")
	if code, reason := w.closed(); code != 4001 || reason != "token expired" {
		t.Fatalf("at expiry: close %d %q, want 4001 token expired", code, reason)
	}
}

func TestWebSocketHeartbeatAndShutdown(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, Heartbeat: 50 * time.Millisecond})
	w := f.mustDialWS("", nil)
	w.subscribe("comments")
	var beats int
	for beats < 3 {
		select {
		case m := <-w.msgs:
			if m.Type != "heartbeat" || m.Position == nil {
				t.Fatalf("idle connection got %+v", m)
			}
			beats++
		case <-time.After(30 * time.Second):
			t.Fatal("no heartbeat")
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := f.gw.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if code, reason := w.closed(); code != websocket.StatusGoingAway || reason != "shutdown" {
		t.Fatalf("shutdown: close %d %q", code, reason)
	}
	if _, resp, err := f.dialWS("", nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial after shutdown: %v %v", err, resp)
	}
}

// TestResync: a resume position older than the ledger's retention is never skipped
// silently, over SSE or WebSocket, whether the events were removed before the client
// asked or while it was reading them.
func TestResync(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, Buffer: 16, MaxChannels: 1})
	// 20 MB of events: more than socket buffers hold, so the streams are still reading the
	// ledger when it is truncated (the clients below read one message at a time).
	f.exec(`INSERT INTO posts SELECT i, repeat('t', 1000) FROM generate_series(0, 19999) i`)
	eventually(t, "the inserts reach the ledger", func() bool { return f.eng.Ledger().State().Head >= 20000 })
	led := f.eng.Ledger()

	// Mid-stream: the stream reads from 0 while the events before it are removed.
	sse := f.open(url.Values{"channel": {"posts"}, "after": {"0"}}, nil)
	if m := sse.mustNext(); m.Event != "subscribed" || m.ID != "0" {
		t.Fatalf("first SSE message %+v", m)
	}
	w, _, err := f.dialWSCap("", nil, 0) // reads only when the test asks
	if err != nil {
		t.Fatal(err)
	}
	w.send(map[string]any{"type": "subscribe", "channel": "posts", "after": 0, "ref": "r"})
	w.expect("subscribed", "r")
	w.events(1)
	sse.summary(1)
	head := led.State().Head
	if err := led.Truncate(t.Context(), head-1); err != nil {
		t.Fatal(err)
	}
	// The streams were at most Buffer events (plus a batch read ahead) in: they get the
	// events already read, then resync at the head.
	for {
		m := sse.mustNext()
		if m.Event == "resync" {
			var a struct {
				Position uint64 `json:"position"`
				Reason   string `json:"reason"`
			}
			if err := json.Unmarshal([]byte(m.Data), &a); err != nil || m.ID != fmt.Sprint(a.Position) || a.Position < uint64(head) || a.Reason == "" {
				t.Fatalf("SSE resync %+v (%v)", m, err)
			}
			break
		}
		if m.Event != "insert" {
			t.Fatalf("SSE before resync: %+v", m)
		}
	}
	for {
		m := w.mustNext()
		if m.Type == "resync" {
			if m.Channel != "posts" || m.pos() < uint64(head) || deref(m.Reason) == "" {
				t.Fatalf("WebSocket resync %+v", m)
			}
			break
		}
		if m.Type != "event" {
			t.Fatalf("WebSocket before resync: %+v", m)
		}
	}
	// Both go on live.
	f.exec(`INSERT INTO posts VALUES (50000, 'live')`)
	if got, _ := sse.summary(1); got != "posts posts insert 50000" {
		t.Fatalf("SSE after resync: %s", got)
	}
	if got := w.events(1); got[0] != "posts posts insert 50000" {
		t.Fatalf("WebSocket after resync: %v", got)
	}

	// Asked after the removal: resync instead of the acknowledgement.
	sse2 := f.open(url.Values{"channel": {"posts"}}, http.Header{"Last-Event-ID": {"5"}})
	if m := sse2.mustNext(); m.Event != "resync" || !strings.Contains(m.Data, "older than the ledger's retention") {
		t.Fatalf("SSE resume below the tail: %+v", m)
	}
	w2 := f.mustDialWS("", nil)
	w2.send(map[string]any{"type": "subscribe", "channel": "posts", "after": 5, "ref": "old"})
	if m := w2.expect("resync", "old"); m.pos() < uint64(head) {
		t.Fatalf("WebSocket resume below the tail: %+v", m)
	}
	if s := f.gw.Stats(); s.Resyncs != 4 {
		t.Fatalf("Resyncs %d, want 4", s.Resyncs)
	}
}

// TestFlushInterval: with FlushInterval, live events are written in batches, every one of
// them, in order, over SSE and WebSocket.
func TestFlushInterval(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, FlushInterval: 20 * time.Millisecond})
	sse := f.open(channels("posts"), nil)
	sse.ack()
	w := f.mustDialWS("", nil)
	w.subscribe("posts")
	for i := range 20 {
		f.exec(fmt.Sprintf(`INSERT INTO posts SELECT g, 't' FROM generate_series(%d, %d) g`, i*10, i*10+9))
	}
	got, _ := sse.summary(200)
	gotWS := w.events(200)
	var want []string
	for i := range 200 {
		want = append(want, fmt.Sprintf("posts posts insert %d", i))
	}
	if got != strings.Join(want, ", ") {
		t.Fatalf("SSE: %s", got)
	}
	if !slices.Equal(gotWS, want) {
		t.Fatalf("WebSocket: %v", gotWS)
	}
}
