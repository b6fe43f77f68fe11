package realtime_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/realtime"
	"github.com/walflow/walflow/snapshot"
)

// answer is the response to a stream request sent from another goroutine.
type answer struct {
	resp *http.Response
	err  error
}

// getAsync sends a stream request from a goroutine: its answer may wait for the head.
func (f *fixture) getAsync(query url.Values, header http.Header) <-chan answer {
	req, err := http.NewRequestWithContext(f.t.Context(), "GET", f.srv.URL+"?"+query.Encode(), nil)
	if err != nil {
		f.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	c := make(chan answer, 1)
	go func() {
		resp, err := f.srv.Client().Do(req)
		c <- answer{resp, err}
	}()
	return c
}

// await returns the answer, which must come within 30s.
func await(t *testing.T, c <-chan answer) *http.Response {
	t.Helper()
	select {
	case a := <-c:
		if a.err != nil {
			t.Fatal(a.err)
		}
		t.Cleanup(func() { a.resp.Body.Close() })
		return a.resp
	case <-time.After(30 * time.Second):
		t.Fatal("no answer within 30s")
		return nil
	}
}

// pos renders a position as Last-Event-ID and after take it.
func pos(p event.Position) string { return strconv.FormatUint(uint64(p), 10) }

// TestResumeAheadOfHead: a resume position after the gateway's ledger head (in a cluster,
// a position another node, further along the shared stream, sent) is waited for. The SSE
// stream and the WebSocket subscription open once the head reaches it and deliver exactly
// the channel's events after it, with no gap and no duplicate; the WebSocket connection's
// other messages and subscriptions go on meanwhile, unsubscribing ends a wait, and
// Shutdown ends the waits with 503.
func TestResumeAheadOfHead(t *testing.T) {
	t.Parallel()
	// Long enough that only the head (or Shutdown) ends a wait in this test.
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, SharedLedger: true, ResumeWait: 10 * time.Minute})
	led := f.eng.Ledger()
	f.exec(`INSERT INTO posts VALUES (1, 'a')`)
	eventually(t, "the first post reaches the ledger", func() bool { return led.State().Head >= 1 })
	head := led.State().Head
	after := head + 2 // the second post inserted below

	sseAnswer := f.getAsync(channels("posts"), http.Header{"Last-Event-Id": {pos(after)}})
	w := f.mustDialWS("", nil)
	w.send(map[string]any{"type": "subscribe", "channel": "posts", "after": after, "ref": "ahead"})
	far := head + 1_000_000
	w.send(map[string]any{"type": "subscribe", "channel": "comments/1", "after": far, "ref": "far"})
	eventually(t, "three subscriptions wait for the head", func() bool { return f.gw.Stats().Waiting == 3 })

	// Meanwhile the connection serves its other messages.
	if p := w.subscribe("comments"); p != uint64(head) {
		t.Fatalf("comments subscribed at %d, want the head %d", p, head)
	}
	w.send(map[string]any{"type": "subscribe", "channel": "posts", "ref": "dup"})
	if m := w.expect("error", "dup"); m.Status != http.StatusBadRequest || !strings.Contains(deref(m.Reason), "already subscribed to posts") {
		t.Fatalf("a second subscribe to a waiting channel: %+v (reason %s)", m, deref(m.Reason))
	}
	w.send(map[string]any{"type": "unsubscribe", "channel": "comments/1", "ref": "u"})
	if m := w.expect("unsubscribed", "u"); m.Channel != "comments/1" || m.pos() != uint64(far) {
		t.Fatalf("unsubscribed while waiting: %+v, want comments/1 at %d", m, far)
	}
	eventually(t, "the unsubscribed wait ends", func() bool { return f.gw.Stats().Waiting == 2 })
	select {
	case a := <-sseAnswer:
		t.Fatalf("SSE answered before the head reached %d: %+v", after, a)
	default:
	}

	f.exec(`INSERT INTO posts VALUES (2, 'b')`)
	f.exec(`INSERT INTO posts VALUES (3, 'c')`)
	f.exec(`INSERT INTO comments VALUES (1, 3, 'x')`)
	f.exec(`INSERT INTO posts VALUES (4, 'd')`)
	resp := await(t, sseAnswer)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("SSE once the head reached %d: %d %s", after, resp.StatusCode, b)
	}
	eventually(t, "the inserts reach the ledger", func() bool { return led.State().Head >= head+4 })
	want := ledgerEventsAfter(t, led, []string{"posts"}, after)
	var wantPos []uint64
	for _, e := range want {
		wantPos = append(wantPos, uint64(e.Position))
	}
	if len(wantPos) == 0 {
		t.Fatalf("no posts event after %d in the ledger", after)
	}

	s := f.stream(resp)
	if a := s.ack(); a.Position != uint64(after) {
		t.Fatalf("SSE ack %+v, want position %d", a, after)
	}
	if _, ids := s.summary(len(wantPos)); !slices.Equal(ids, wantPos) {
		t.Fatalf("SSE events %v, the ledger's posts after %d are %v", ids, after, wantPos)
	}

	var acked bool
	var posts []uint64
	var comments []string
	for !acked || len(posts) < len(wantPos) || len(comments) < 1 {
		m := w.mustNext()
		switch {
		case m.Type == "subscribed" && m.Ref == "ahead":
			if m.Channel != "posts" || m.pos() != uint64(after) {
				t.Fatalf("WebSocket ack %+v, want posts at %d", m, after)
			}
			acked = true
		case m.Type == "event" && m.Channel == "posts":
			if !acked {
				t.Fatalf("event %s before the subscription's ack", m.summary(t))
			}
			posts = append(posts, m.pos())
		case m.Type == "event" && m.Channel == "comments":
			comments = append(comments, m.summary(t))
		default:
			t.Fatalf("unexpected %+v (reason %s)", m, deref(m.Reason))
		}
	}
	if !slices.Equal(posts, wantPos) {
		t.Fatalf("WebSocket events %v, the ledger's posts after %d are %v", posts, after, wantPos)
	}
	if comments[0] != "comments comments insert 1" {
		t.Fatalf("comments %v", comments)
	}

	// Nothing else was sent: the next event of each is the next change.
	f.exec(`INSERT INTO posts VALUES (99, 'marker')`)
	if got, _ := s.summary(1); got != "posts posts insert 99" {
		t.Fatalf("SSE after the backlog: %s", got)
	}
	if got := w.events(1); got[0] != "posts posts insert 99" {
		t.Fatalf("WebSocket after the backlog: %v", got)
	}
	if st := f.gw.Stats(); st.Waiting != 0 || st.Rejected[http.StatusServiceUnavailable] != 0 {
		t.Fatalf("stats %+v", st)
	}

	// Shutdown ends a wait at once.
	waiting := f.getAsync(channels("posts"), http.Header{"Last-Event-Id": {pos(far)}})
	eventually(t, "the request waits for the head", func() bool { return f.gw.Stats().Waiting == 1 })
	reg := prometheus.NewRegistry()
	reg.MustRegister(f.gw.Collector())
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gauge := -1.0
	for _, fam := range families {
		if fam.GetName() == "walflow_realtime_resume_waiting" {
			gauge = fam.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if gauge != 1 {
		t.Fatalf("walflow_realtime_resume_waiting = %v while one request waits; want 1", gauge)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := f.gw.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	resp = await(t, waiting)
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || string(b) != "gateway shutting down\n" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("waiting at Shutdown: %d %q (Retry-After %q), want 503 gateway shutting down", resp.StatusCode, b, resp.Header.Get("Retry-After"))
	}
	if code, _ := w.closed(); code != websocket.StatusGoingAway {
		t.Fatalf("WebSocket closed with %d, want 1001", code)
	}
}

// TestResumeNeverReached: a resume position the ledger's head does not reach within
// ResumeWait (Last-Event-ID, after, or a snapshot token from a node further along) is
// refused with 503 and Retry-After, which clients retry, not with 400; the WebSocket
// connection stays usable.
func TestResumeNeverReached(t *testing.T) {
	t.Parallel()
	const wait = 300 * time.Millisecond
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, SharedLedger: true, ResumeWait: wait})
	led := f.eng.Ledger()
	f.exec(`INSERT INTO posts VALUES (1, 'a')`)
	eventually(t, "the first post reaches the ledger", func() bool { return led.State().Head >= 1 })
	head := led.State().Head
	far := head + 1_000_000
	reason := fmt.Sprintf("resume position %d is after the ledger head %d, which did not reach it within %s; retry later", far, head, wait)
	token := snapshot.Token{After: far, Xmin: 1, Xmax: 1}.String()

	for _, tc := range []struct {
		name   string
		query  url.Values
		header http.Header
	}{
		{"Last-Event-ID", channels("posts"), http.Header{"Last-Event-Id": {pos(far)}}},
		{"after", url.Values{"channel": {"posts"}, "after": {pos(far)}}, nil},
		{"snapshot token", url.Values{"channel": {"posts"}, "snapshot": {token}}, nil},
	} {
		t.Run("SSE "+tc.name, func(t *testing.T) {
			start := time.Now()
			resp := f.get(tc.query, tc.header)
			took := time.Since(start)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" || !strings.Contains(string(b), reason) {
				t.Errorf("got %d %q (Retry-After %q), want 503 with Retry-After 1 and %q", resp.StatusCode, b, resp.Header.Get("Retry-After"), reason)
			}
			if took < wait {
				t.Errorf("answered after %s, before ResumeWait %s", took, wait)
			}
		})
	}

	w := f.mustDialWS("", nil)
	for _, m := range []map[string]any{
		{"type": "subscribe", "channel": "posts", "after": far, "ref": "after"},
		{"type": "subscribe", "channel": "posts/1", "snapshot": token, "ref": "snapshot"},
	} {
		w.send(m)
		got := w.expect("error", m["ref"].(string))
		if got.Status != http.StatusServiceUnavailable || !strings.Contains(deref(got.Reason), reason) {
			t.Errorf("WebSocket %s: %+v (reason %s), want 503 with %q", m["ref"], got, deref(got.Reason), reason)
		}
	}
	// The refused channel can be subscribed again, and the connection goes on.
	p := w.subscribe("posts")
	f.exec(`INSERT INTO posts VALUES (2, 'b')`)
	if got := w.events(1); got[0] != "posts posts insert 2" {
		t.Fatalf("after the refusals: %v (subscribed at %d)", got, p)
	}
	if st := f.gw.Stats(); st.Waiting != 0 || st.Rejected[http.StatusServiceUnavailable] != 5 || st.Rejected[http.StatusBadRequest] != 0 {
		t.Fatalf("stats %+v, want 5 refusals with 503 and nothing waiting", st)
	}
}

// TestResumeWaitHoldsConnection: an SSE request waiting for the head holds one of the
// MaxConnections, so waiting requests cannot pile up beyond the limit, and a client that
// goes away ends its wait and frees the slot.
func TestResumeWaitHoldsConnection(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, SharedLedger: true, MaxConnections: 1, ResumeWait: 10 * time.Minute})
	far := f.eng.Ledger().State().Head + 1_000_000
	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"?channel=posts&after="+pos(far), nil)
	if err != nil {
		t.Fatal(err)
	}
	gone := make(chan error, 1)
	go func() {
		resp, err := f.srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %s", resp.Status)
		}
		gone <- err
	}()
	eventually(t, "the request waits for the head", func() bool { return f.gw.Stats().Waiting == 1 })

	for _, tc := range []struct {
		name   string
		header http.Header
	}{{"stream", nil}, {"another wait", http.Header{"Last-Event-Id": {pos(far)}}}} {
		resp := f.get(channels("posts"), tc.header)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "too many connections (limit 1)") {
			t.Fatalf("%s beside a waiting request: %d %q, want 503 too many connections", tc.name, resp.StatusCode, b)
		}
	}

	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("the cancelled request: %v", err)
	}
	eventually(t, "the wait ends with its request", func() bool { return f.gw.Stats().Waiting == 0 })
	f.open(channels("posts"), nil).ack()
}

// TestResumeAheadUnshared: on a ledger that is not shared (no cluster), a resume position
// after the head names events this ledger never had; it is refused at once with 400, for
// SSE and WebSocket alike, so that the client sees it instead of waiting, and no wait is
// counted.
func TestResumeAheadUnshared(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, ResumeWait: 10 * time.Minute})
	resp := f.get(channels("posts"), http.Header{"Last-Event-Id": {"1000"}})
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "this ledger never had it") || resp.Header.Get("Retry-After") != "" {
		t.Fatalf("SSE resume after the head of an unshared ledger: %d %q (Retry-After %q), want 400 at once", resp.StatusCode, b, resp.Header.Get("Retry-After"))
	}
	w := f.mustDialWS("", nil)
	w.send(map[string]any{"type": "subscribe", "channel": "posts", "after": 1000, "ref": "ahead"})
	if m := w.expect("error", "ahead"); m.Status != http.StatusBadRequest || !strings.Contains(deref(m.Reason), "this ledger never had it") {
		t.Fatalf("WebSocket resume after the head of an unshared ledger: %+v (reason %s), want 400", m, deref(m.Reason))
	}
	if st := f.gw.Stats(); st.Waiting != 0 || st.Rejected[http.StatusBadRequest] != 2 {
		t.Fatalf("stats %+v", st)
	}
}
