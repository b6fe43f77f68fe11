package walflow_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/realtime"
	"github.com/walflow/walflow/snapshot"
)

// waitPosition waits until the ledger holds an event of table with id, and returns it.
func waitEvent(t *testing.T, eng *walflow.Engine, table, id string) event.Event {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		evs, err := eng.Ledger().Read(t.Context(), 0, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if v, ok := e.ID("id"); ok && e.Name == table && v.String() == id {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no event of %s %s in the ledger", table, id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rowIDs(p *walflow.SnapshotPage) string {
	var ids []string
	for _, r := range p.Rows {
		v, _ := r.Get("id")
		ids = append(ids, v.String())
	}
	return strings.Join(ids, ",")
}

// TestSnapshotInFlightTransaction: a transaction open when the snapshot is taken and
// committed after it is not in the rows, and a subscriber from the token receives it; one
// committed before is in the rows and not received, even though it lies after the token's
// position (the visibility, not the position, tells them apart).
func TestSnapshotInFlightTransaction(t *testing.T) {
	t.Parallel()
	b := startBlog(t)
	ctx := t.Context()
	b.exec(`INSERT INTO posts VALUES (42, 'a')`)
	b.exec(`INSERT INTO comments VALUES (2, 42, 'before')`)
	before := waitEvent(t, b.eng, "comments", "2")

	inflight, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer inflight.Close(context.Background())
	tx, err := inflight.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO comments VALUES (1, 42, 'in flight')`); err != nil {
		t.Fatal(err)
	}
	// A later transaction committed before the snapshot puts xmax past the open one, which
	// the snapshot then lists as in flight (xip).
	b.exec(`INSERT INTO comments VALUES (4, 42, 'committed while 1 is open')`)

	page, err := b.eng.Snapshot(ctx, "posts/42/comments", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := rowIDs(page); got != "2,4" {
		t.Fatalf("snapshot rows %s, want 2,4 (1 is not committed)", got)
	}
	if len(page.Token.Xip) == 0 {
		t.Fatalf("token %s lists no transaction in flight", page.Token)
	}
	if page.Token.After >= before.Position {
		t.Fatalf("token position %d is after comment 2's event %d: the test would not exercise visibility", page.Token.After, before.Position)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	b.exec(`INSERT INTO comments VALUES (3, 42, 'after')`)

	// The token goes through its text form, as a browser's would.
	tok, err := snapshot.ParseToken(page.Token.String())
	if err != nil {
		t.Fatal(err)
	}
	sub, err := b.eng.Subscribe(ctx, &walflow.SubscribeOpts{Snapshot: &tok}, "posts/42/comments")
	if err != nil {
		t.Fatal(err)
	}
	if got := summary(collect(t, sub, 2)); got != "comments insert 1, comments insert 3" {
		t.Fatalf("events from the token: %s, want comments insert 1, comments insert 3", got)
	}
}

// TestSnapshotPages: pages follow the primary key in one snapshot (a change between pages
// is not seen), cover direct, scoped and unscoped channels, and carry the same token; rows
// read as their events' new_record.
func TestSnapshotPages(t *testing.T) {
	t.Parallel()
	b := startBlog(t)
	ctx := t.Context()
	b.exec(`INSERT INTO posts VALUES (42, 'a'), (43, 'b')`)
	b.exec(`INSERT INTO comments SELECT i, 42 + i % 2, 'c' || i FROM generate_series(1, 25) i`)
	waitEvent(t, b.eng, "comments", "25")

	var ids []string
	opts := &walflow.SnapshotOpts{Limit: 5}
	var tok string
	for n := 0; ; n++ {
		p, err := b.eng.Snapshot(ctx, "posts/43/comments", opts)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			tok = p.Token.String()
			// Changed after the first page: the later pages still show the snapshot.
			b.exec(`UPDATE comments SET body = 'changed' WHERE id = 11; DELETE FROM comments WHERE id = 13`)
		} else if p.Token.String() != tok {
			t.Fatalf("page %d token %s, first page's %s", n, p.Token, tok)
		}
		for _, r := range p.Rows {
			v, _ := r.Get("body")
			if s := v.String(); strings.Contains(s, "changed") {
				t.Fatalf("page %d sees a change made after the snapshot: %v", n, r)
			}
		}
		ids = append(ids, rowIDs(p))
		if p.Next == "" {
			break
		}
		opts.Cursor = p.Next
	}
	if got := strings.Join(ids, "|"); got != "1,3,5,7,9|11,13,15,17,19|21,23,25" {
		t.Fatalf("pages %s", got)
	}
	if _, err := b.eng.Snapshot(ctx, "posts/43/comments", opts); !errors.Is(err, snapshot.ErrCursorExpired) {
		t.Fatalf("the last page's cursor again: %v, want ErrCursorExpired", err)
	}

	direct, err := b.eng.Snapshot(ctx, "comments/11", nil)
	if err != nil {
		t.Fatal(err)
	}
	var ev event.Event
	for deadline := time.Now().Add(60 * time.Second); ev.Type != event.Update; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the update of comment 11 did not reach the ledger")
		}
		for _, e := range readAll(t, b.eng) {
			if v, ok := e.ID("id"); ok && e.Name == "comments" && v.String() == "11" {
				ev = e
			}
		}
	}
	got, _ := json.Marshal(direct.Rows)
	want, _ := json.Marshal([]event.Record{ev.NewRecord})
	if string(got) != string(want) {
		t.Fatalf("direct snapshot %s, want the last event's new_record %s", got, want)
	}
	all, err := b.eng.Snapshot(ctx, "comments", &walflow.SnapshotOpts{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Rows) != 24 || all.Next != "" {
		t.Fatalf("unscoped snapshot: %d rows, next %q; want 24 and none", len(all.Rows), all.Next)
	}
	if _, err := b.eng.Snapshot(ctx, "comments", &walflow.SnapshotOpts{Cursor: "nonsense"}); !errors.Is(err, snapshot.ErrBadRequest) {
		t.Fatalf("bad cursor: %v", err)
	}
	if _, err := b.eng.Snapshot(ctx, "users/1/comments", nil); !errors.Is(err, snapshot.ErrBadRequest) {
		t.Fatalf("scope the table does not have: %v", err)
	}
}

func readAll(t *testing.T, eng *walflow.Engine) []event.Event {
	evs, err := eng.Ledger().Read(t.Context(), 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// denyPost43 allows every channel but those of post 43.
type denyPost43 struct{}

func (denyPost43) Authorize(_ *http.Request, c channel.Channel) realtime.Decision {
	if strings.HasPrefix(c.String(), "posts/43") {
		return realtime.Decision{Status: http.StatusForbidden, Reason: "not your post"}
	}
	return realtime.Decision{Allow: true}
}

// countingSnapshots counts the snapshots the gateway asks for.
type countingSnapshots struct {
	eng *walflow.Engine
	n   atomic.Int64
}

func (c *countingSnapshots) Snapshot(ctx context.Context, ch string, o *snapshot.Opts) (*snapshot.Page, error) {
	c.n.Add(1)
	return c.eng.Snapshot(ctx, ch, o)
}

// TestSnapshotEndpointAuthorization: the snapshot endpoint is authorized as a subscription,
// before the channel is checked or the database read.
func TestSnapshotEndpointAuthorization(t *testing.T) {
	t.Parallel()
	b := startBlog(t)
	b.exec(`INSERT INTO posts VALUES (42, 'a'), (43, 'b'); INSERT INTO comments VALUES (1, 42, 'x'), (2, 43, 'y')`)
	snaps := &countingSnapshots{eng: b.eng}
	gw, err := b.eng.Gateway(realtime.GatewayConfig{Authorizer: denyPost43{}, Snapshots: snaps})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	defer srv.Close()
	defer gw.Shutdown(context.Background())
	get := func(q string) (int, string) {
		resp, err := http.Get(srv.URL + "/snapshot?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sb strings.Builder
		_, _ = fmt.Fprint(&sb, readBody(resp))
		return resp.StatusCode, sb.String()
	}
	for _, q := range []string{"channel=posts/43/comments", "channel=posts/43", "channel=posts/43/nothing"} {
		if st, body := get(q); st != http.StatusForbidden || !strings.Contains(body, "not your post") {
			t.Errorf("%s: %d %s, want 403", q, st, body)
		}
	}
	if n := snaps.n.Load(); n != 0 {
		t.Fatalf("%d snapshots read for refused requests", n)
	}
	if st, body := get("channel=posts/42/comments&limit=0"); st != http.StatusBadRequest {
		t.Errorf("limit 0: %d %s", st, body)
	}
	if st, body := get("channel=posts/42/comments&channel=comments"); st != http.StatusBadRequest {
		t.Errorf("two channels: %d %s", st, body)
	}
	st, body := get("channel=posts/42/comments")
	if st != http.StatusOK {
		t.Fatalf("allowed channel: %d %s", st, body)
	}
	var page struct {
		Channel string            `json:"channel"`
		Rows    []json.RawMessage `json:"rows"`
		Token   string            `json:"token"`
	}
	if err := json.Unmarshal([]byte(body), &page); err != nil {
		t.Fatal(err)
	}
	if page.Channel != "posts/42/comments" || len(page.Rows) != 1 || !strings.HasPrefix(page.Token, "s1.") {
		t.Fatalf("page %s", body)
	}
	// An empty channel has rows [], not null, which a browser would have to special-case.
	if st, body := get("channel=posts/44/comments"); st != http.StatusOK || !strings.Contains(body, `"rows":[]`) {
		t.Fatalf("empty channel: %d %s", st, body)
	}
	// A stream from the token is refused for a channel the token may not be used with.
	resp, err := http.Get(srv.URL + "?channel=comments&channel=posts&snapshot=" + page.Token)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a token with two channels: %d", resp.StatusCode)
	}
}

func readBody(resp *http.Response) string {
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String()
		}
	}
}

// TestSnapshotWebSocket: a WebSocket subscription with a snapshot token receives the
// changes after the snapshot and not the ones in its rows.
func TestSnapshotWebSocket(t *testing.T) {
	t.Parallel()
	b := startBlog(t)
	ctx := t.Context()
	b.exec(`INSERT INTO posts VALUES (42, 'a')`)
	b.exec(`INSERT INTO comments VALUES (1, 42, 'in the rows')`)
	waitEvent(t, b.eng, "comments", "1")
	page, err := b.eng.Snapshot(ctx, "posts/42/comments", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rowIDs(page) != "1" || page.Token.After >= waitEvent(t, b.eng, "comments", "1").Position {
		t.Fatalf("rows %s, token %s: want row 1 and a token before its event", rowIDs(page), page.Token)
	}
	b.exec(`INSERT INTO comments VALUES (2, 42, 'after')`)
	gw, err := b.eng.Gateway(realtime.GatewayConfig{Authorizer: realtime.AllowAll{}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	defer srv.Close()
	defer gw.Shutdown(context.Background())
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	sub, _ := json.Marshal(map[string]string{"type": "subscribe", "channel": "posts/42/comments", "snapshot": page.Token.String(), "ref": "1"})
	if err := c.Write(ctx, websocket.MessageText, sub); err != nil {
		t.Fatal(err)
	}
	for {
		_, msg, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Type  string `json:"type"`
			Event *struct {
				NewRecord map[string]any `json:"new_record"`
			} `json:"event"`
		}
		if err := json.Unmarshal(msg, &m); err != nil {
			t.Fatal(err)
		}
		if m.Type == "error" {
			t.Fatalf("subscribe refused: %s", msg)
		}
		if m.Type != "event" {
			continue
		}
		if id := fmt.Sprint(m.Event.NewRecord["id"]); id != "2" {
			t.Fatalf("first event is of comment %s, want 2 (1 is in the snapshot): %s", id, msg)
		}
		return
	}
}
