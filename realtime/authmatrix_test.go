package realtime_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/realtime"
)

// authAttempt is one request the gateway must refuse.
type authAttempt struct {
	name    string
	channel string // requested channel
	// rawQuery, for SSE, is the stream's query as sent instead of channel=<channel>.
	rawQuery string
	token    string
	// via is where the token goes: "" (nowhere), "header", "query", "both" (header and
	// query), "two headers", "two params", or "auth" (a WebSocket auth message).
	via    string
	status int
	sse    bool // attempted over SSE
	ws     bool // attempted over WebSocket
}

// TestAuthMatrix makes every kind of forbidden request, over SSE and WebSocket, for every
// kind of channel, while events are committed to those channels: each is refused with
// its status before any event flows, while an allowed client subscribed at the same time
// receives every event; the gateway sends no event but the allowed client's, and logs no
// token.
func TestAuthMatrix(t *testing.T) {
	t.Parallel()
	secret := []byte(strings.Repeat("s", 32))
	logs := &syncbuf.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	auth, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{HS256Secret: secret, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	f := setup(t, realtime.GatewayConfig{Authorizer: auth, Logger: logger})
	f.exec(`INSERT INTO posts VALUES (42, 'a'), (43, 'b')`)
	eventually(t, "the posts reach the ledger", func() bool { return f.eng.Ledger().State().Head >= 2 })

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Unix()
	kinds := []string{"posts", "posts/42", "posts/42/comments"}
	grant := func(patterns ...string) map[string]any {
		return map[string]any{"sub": "u1", "channels": patterns, "exp": exp}
	}
	valid := hs256(t, secret, grant(kinds...))
	narrow := hs256(t, secret, grant("posts/42", "posts/42/comments"))
	tokens := []struct {
		name   string
		token  string
		status int
	}{
		{"expired", hs256(t, secret, map[string]any{"channels": kinds, "exp": time.Now().Add(-time.Hour).Unix()}), http.StatusUnauthorized},
		{"wrong signature", hs256(t, []byte(strings.Repeat("o", 32)), grant(kinds...)), http.StatusUnauthorized},
		{"alg none", signJWT(t, "none", grant(kinds...), func([]byte) []byte { return nil }), http.StatusUnauthorized},
		{"another scope", hs256(t, secret, grant("posts/43", "posts/43/comments")), http.StatusForbidden},
		{"RS256 with only HS256 configured", signJWT(t, "RS256", grant(kinds...), func(signed []byte) []byte {
			d := sha256.Sum256(signed)
			sig, err := rsa.SignPKCS1v15(nil, rsaKey, crypto.SHA256, d[:])
			if err != nil {
				t.Fatal(err)
			}
			return sig
		}), http.StatusUnauthorized},
		{"sub * in the patterns", hs256(t, secret, map[string]any{"sub": "*", "channels": []string{"{sub}", "posts/{sub}", "posts/{sub}/comments"}, "exp": exp}), http.StatusForbidden},
		{"sub with a slash in the pattern", hs256(t, secret, map[string]any{"sub": "42/comments", "channels": []string{"posts/{sub}"}, "exp": exp}), http.StatusForbidden},
		{"garbage", "x.y.z", http.StatusUnauthorized},
	}

	var attempts []authAttempt
	for _, k := range kinds {
		attempts = append(attempts,
			authAttempt{name: "no token", channel: k, status: http.StatusUnauthorized, sse: true, ws: true},
			authAttempt{name: "valid token in header and query", channel: k, token: valid, via: "both", status: http.StatusUnauthorized, sse: true, ws: true},
			authAttempt{name: "two Authorization headers", channel: k, token: valid, via: "two headers", status: http.StatusUnauthorized, sse: true, ws: true},
			authAttempt{name: "two access_token parameters", channel: k, token: valid, via: "two params", status: http.StatusUnauthorized, sse: true, ws: true},
		)
		for _, tok := range tokens {
			for _, via := range []string{"header", "query", "auth"} {
				attempts = append(attempts, authAttempt{name: tok.name, channel: k, token: tok.token, via: via, status: tok.status, sse: via != "auth", ws: true})
			}
		}
	}
	// Channel tricks with a token for posts/42 and its comments only.
	for _, a := range []authAttempt{
		{name: "another post", channel: "posts/43/comments", status: http.StatusForbidden, sse: true, ws: true},
		{name: "dot-dot", channel: "posts/42/../43/comments", status: http.StatusBadRequest, sse: true, ws: true},
		{name: "encoded slash in the id", channel: "posts/42%2F43/comments", status: http.StatusForbidden, sse: true, ws: true},
		{name: "encoded dot-dot in the id", channel: "posts/42%2F..%2F43/comments", status: http.StatusForbidden, sse: true, ws: true},
		{name: "wildcard id", channel: "posts/*/comments", status: http.StatusForbidden, sse: true, ws: true},
		{name: "wildcard direct", channel: "posts/*", status: http.StatusForbidden, sse: true, ws: true},
		{name: "wildcard", channel: "*", status: http.StatusBadRequest, sse: true, ws: true},
		{name: "encoded slashes as one segment", channel: "posts%2F43%2Fcomments", status: http.StatusBadRequest, ws: true},
		{name: "encoded slashes in the query", rawQuery: "channel=posts%2F43%2Fcomments", status: http.StatusForbidden, sse: true},
		{name: "double-encoded slashes in the query", rawQuery: "channel=posts%252F43%252Fcomments", status: http.StatusBadRequest, sse: true},
		{name: "double-encoded slash in the query's id", rawQuery: "channel=posts/42%252F43/comments", status: http.StatusForbidden, sse: true},
		{name: "an allowed and a forbidden channel", rawQuery: "channel=posts/42/comments&channel=posts/43/comments", status: http.StatusForbidden, sse: true},
	} {
		for _, via := range []string{"header", "query", "auth"} {
			a.token, a.via = narrow, via
			a.sse = a.sse && via != "auth"
			attempts = append(attempts, a)
		}
	}
	// A wildcard never matches an id holding a slash.
	attempts = append(attempts, authAttempt{name: "wildcard over an encoded slash", channel: "posts/42%2F43/comments",
		token: hs256(t, secret, grant("posts/*/comments")), via: "header", status: http.StatusForbidden, sse: true, ws: true})

	// The allowed clients, subscribed to the three channels before the attempts.
	allowedSSE := f.open(channels(kinds...), http.Header{"Authorization": {"Bearer " + valid}})
	sseStart := allowedSSE.ack().Position
	allowedWS := f.mustDialWS("access_token="+valid, nil)
	wsStart := map[string]uint64{}
	for _, k := range kinds {
		wsStart[k] = allowedWS.subscribe(k)
	}
	// The last transaction marks each channel's last event; the allowed clients read up to
	// them.
	const marker = `:"marker"`
	sseDone := make(chan []received, 1)
	go func() {
		var got []received
		defer func() { sseDone <- got }()
		for m := range allowedSSE.msgs {
			id, err := strconv.ParseUint(m.ID, 10, 64)
			if err != nil {
				return
			}
			got = append(got, received{id, m.Data})
			// The comment is the transaction's last event.
			if strings.Contains(m.Data, `"new_record":{"id":-1,`) {
				return
			}
		}
	}()
	wsDone := make(chan map[string][]received, 1)
	go func() {
		got := map[string][]received{}
		defer func() { wsDone <- got }()
		marked := 0
		for m := range allowedWS.msgs {
			if m.Type != "event" {
				continue
			}
			got[m.Channel] = append(got[m.Channel], received{m.pos(), string(m.Event)})
			if strings.Contains(string(m.Event), marker) {
				if marked++; marked == len(kinds) {
					return
				}
			}
		}
	}()

	// The writer commits to every channel, one transaction during each attempt.
	kick := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		writerDone <- func() error {
			conn, err := pgx.Connect(t.Context(), f.dsn)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			for n := 1; ; n++ {
				if _, ok := <-kick; !ok {
					return nil
				}
				_, err := conn.Exec(t.Context(), fmt.Sprintf(`BEGIN;
					UPDATE posts SET title = 'v%[1]d' WHERE id = 42;
					INSERT INTO comments VALUES (%[1]d, 42, 'c'), (%[1]d + 100000, 43, 'd');
					INSERT INTO posts VALUES (%[1]d + 1000, 'p');
					COMMIT`, n))
				if err != nil {
					return err
				}
			}
		}()
	}()

	commit := func() {
		select {
		case kick <- struct{}{}:
		case err := <-writerDone:
			t.Fatalf("writer: %v", err)
		}
	}
	var denied []*wsClient
	var sseAttempts, wsAttempts int
	for _, a := range attempts {
		if a.sse {
			commit()
			sseAttempts++
			attemptSSE(t, f, a)
		}
		if a.ws {
			commit()
			wsAttempts++
			denied = append(denied, attemptWS(t, f, a))
		}
	}
	close(kick)
	if err := <-writerDone; err != nil {
		t.Fatalf("writer: %v", err)
	}
	f.exec(`BEGIN; UPDATE posts SET title = 'marker' WHERE id = 42; INSERT INTO comments VALUES (-1, 42, 'marker'); COMMIT`)

	// The allowed clients got every event of their channels, from their acknowledgement on.
	var sseGot []received
	select {
	case sseGot = <-sseDone:
	case <-time.After(30 * time.Second):
		t.Fatal("the allowed SSE client did not receive the marker within 30s")
	}
	var wsGot map[string][]received
	select {
	case wsGot = <-wsDone:
	case <-time.After(30 * time.Second):
		t.Fatal("the allowed WebSocket client did not receive the marker within 30s")
	}
	router := f.eng.Router()
	want := ledgerEventsAfter(t, f.eng.Ledger(), kinds, event.Position(sseStart))
	if diff := diffResumed(sseGot, want, func(e *event.Event) string {
		matched := router.Channels(e, nil)
		ch := kinds[slices.IndexFunc(kinds, func(k string) bool { return slices.Contains(matched, k) })]
		return `{"channel":` + strconv.Quote(ch) + `,"event":` + string(e.AppendJSON(nil)) + `}`
	}); diff != "" {
		t.Errorf("allowed SSE client: %s", diff)
	}
	delivered := len(sseGot)
	for _, k := range kinds {
		want := ledgerEventsAfter(t, f.eng.Ledger(), []string{k}, event.Position(wsStart[k]))
		if diff := diffResumed(wsGot[k], want, func(e *event.Event) string { return string(e.AppendJSON(nil)) }); diff != "" {
			t.Errorf("allowed WebSocket client, %s: %s", k, diff)
		}
		if k == "posts/42" && len(want) != sseAttempts+wsAttempts+1 {
			t.Errorf("%s: %d events during %d attempts, want one per attempt and the marker", k, len(want), sseAttempts+wsAttempts)
		}
		delivered += len(wsGot[k])
	}

	// The gateway sent no other event: the refused requests got none.
	eventually(t, "the gateway counted the allowed client's events", func() bool {
		return f.gw.Stats().MessagesSent >= uint64(delivered)
	})
	st := f.gw.Stats()
	if st.MessagesSent != uint64(delivered) {
		t.Errorf("the gateway sent %d events, the allowed clients received %d: %d went to refused requests",
			st.MessagesSent, delivered, st.MessagesSent-uint64(delivered))
	}
	if st.Subscriptions != 2*len(kinds) || st.SubscriptionsTotal != uint64(2*len(kinds)) {
		t.Errorf("%d subscriptions (%d ever), want the allowed clients' %d", st.Subscriptions, st.SubscriptionsTotal, 2*len(kinds))
	}
	if n := st.Rejected[400] + st.Rejected[401] + st.Rejected[403]; n != uint64(sseAttempts+wsAttempts) {
		t.Errorf("rejected %v, want %d in all", st.Rejected, sseAttempts+wsAttempts)
	}
	for i, w := range denied {
		for {
			var m wsMsg
			select {
			case m = <-w.msgs:
			default:
			}
			if m.Type == "" {
				break
			}
			if m.Type != "heartbeat" {
				t.Errorf("refused WebSocket connection %d got %+v after its error", i, m)
			}
		}
	}
	t.Logf("%d SSE and %d WebSocket attempts refused; the allowed clients received %d events", sseAttempts, wsAttempts, delivered)

	// No token in the logs, whole or in part.
	out := logs.String()
	if !strings.Contains(out, `msg="stream rejected"`) || !strings.Contains(out, `msg="subscription rejected"`) || !strings.Contains(out, `msg="subscription denied"`) {
		t.Fatalf("the logs lack the rejections:\n%s", out)
	}
	all := []string{valid, narrow}
	for _, tok := range tokens {
		all = append(all, tok.token)
	}
	for _, tok := range all {
		for _, part := range append(strings.Split(tok, "."), tok) {
			if len(part) >= 16 && strings.Contains(out, part) {
				t.Errorf("the logs contain (part of) a token: %q", part)
			}
		}
	}
}

// attemptSSE opens a stream that must be refused with a.status before any data.
func attemptSSE(t *testing.T, f *fixture, a authAttempt) {
	t.Helper()
	q := a.rawQuery
	if q == "" {
		q = "channel=" + url.QueryEscape(a.channel)
	}
	req, err := http.NewRequestWithContext(t.Context(), "GET", f.srv.URL+"?"+q, nil)
	if err != nil {
		t.Fatal(err)
	}
	setToken(req.Header, req.URL, a)
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("SSE %s %s: %v", a.name, a.channel, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != a.status || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") ||
		strings.Contains(string(body), "data:") || strings.Contains(string(body), "event:") {
		t.Errorf("SSE %s, %s%s (token via %q): %d %s %q, want %d without data",
			a.name, a.channel, a.rawQuery, a.via, resp.StatusCode, resp.Header.Get("Content-Type"), body, a.status)
	}
}

// attemptWS subscribes on a new connection and checks that the subscription is refused
// with a.status. The connection stays open, to check later that it got no event.
func attemptWS(t *testing.T, f *fixture, a authAttempt) *wsClient {
	t.Helper()
	h, u := http.Header{}, &url.URL{}
	setToken(h, u, a)
	w := f.mustDialWS(u.RawQuery, h)
	if a.via == "auth" {
		w.send(map[string]any{"type": "auth", "token": a.token, "ref": "auth"})
		w.expect("authorized", "auth")
	}
	// A resumed subscription is authorized like a new one.
	w.send(map[string]any{"type": "subscribe", "channel": a.channel, "after": 0, "ref": "sub"})
	m := w.mustNext()
	if m.Type != "error" || m.Ref != "sub" || m.Status != a.status {
		t.Errorf("WebSocket %s, %s (token via %q): %+v (reason %s), want error %d", a.name, a.channel, a.via, m, deref(m.Reason), a.status)
	}
	return w
}

// setToken puts a's token where a.via says.
func setToken(h http.Header, u *url.URL, a authAttempt) {
	q := url.Values{}
	switch a.via {
	case "header":
		h.Set("Authorization", "Bearer "+a.token)
	case "query":
		q.Set(realtime.AccessTokenParam, a.token)
	case "both":
		h.Set("Authorization", "Bearer "+a.token)
		q.Set(realtime.AccessTokenParam, a.token)
	case "two headers":
		h.Add("Authorization", "Bearer "+a.token)
		h.Add("Authorization", "Bearer "+a.token)
	case "two params":
		q.Add(realtime.AccessTokenParam, a.token)
		q.Add(realtime.AccessTokenParam, a.token)
	}
	if len(q) > 0 {
		if u.RawQuery != "" {
			u.RawQuery += "&"
		}
		u.RawQuery += q.Encode()
	}
}

// signJWT builds a token with the alg header and the signature sign returns.
func signJWT(t *testing.T, alg string, claims map[string]any, sign func(signed []byte) []byte) string {
	t.Helper()
	enc := base64.RawURLEncoding
	h, err := json.Marshal(map[string]string{"alg": alg, "typ": "JWT"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	signed := enc.EncodeToString(h) + "." + enc.EncodeToString(p)
	return signed + "." + enc.EncodeToString(sign([]byte(signed)))
}
