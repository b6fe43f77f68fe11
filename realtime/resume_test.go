package realtime_test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/realtime"
)

var resumeSeed = flag.Uint64("resume.seed", 0, "seed of TestResume's writes and disconnects (0: random)")

// Channels of TestResume, one of each kind, in subscription order.
var resumeKeys = []string{"posts/1/comments", "posts/2", "comments"}

const (
	resumeChanges = 10_000 // rows changed by the writer
	resumeCuts    = 50     // disconnects per client
)

// TestResume cuts a client's connection at 50 random moments while a writer commits 10,000
// changes, and resumes it each time from the last event it received: over all its
// connections it receives every event of its channels exactly once, in ledger order, as
// the ledger holds it. Rerun a failure with -resume.seed.
func TestResume(t *testing.T) {
	t.Parallel()
	seed := *resumeSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -run TestResume -resume.seed %d)", seed, seed)
	plan := newResumePlan(rand.New(rand.NewPCG(seed, 1)), resumeChanges)
	t.Logf("writer: %d transactions, %d changes; events per channel %v", len(plan.txs), plan.changes, plan.want)

	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}})
	w := startResumeWriter(t, f.dsn, plan)
	// Runs once both subtests are done, before the fixture goes.
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		if err := w.wait(); err != nil {
			t.Errorf("writer: %v", err)
		}
		eventually(t, "every stream ended", func() bool { return f.gw.Stats().Connections == 0 })
	})

	t.Run("sse", func(t *testing.T) {
		t.Parallel()
		rng := rand.New(rand.NewPCG(seed, 2))
		total := clientTotals(plan.want)["sse"]
		got := resumeSSE(t, f, w, rng, total)
		want := ledgerEvents(t, f.eng.Ledger(), resumeKeys)
		if len(want) != total {
			t.Errorf("the ledger holds %d events of %v, the writer made %d", len(want), resumeKeys, total)
		}
		router := f.eng.Router()
		if diff := diffResumed(got, want, func(e *event.Event) string {
			matched := router.Channels(e, nil)
			ch := resumeKeys[slices.IndexFunc(resumeKeys, func(k string) bool { return slices.Contains(matched, k) })]
			return `{"channel":` + strconv.Quote(ch) + `,"event":` + string(e.AppendJSON(nil)) + `}`
		}); diff != "" {
			t.Error(diff)
		}
	})
	t.Run("websocket", func(t *testing.T) {
		t.Parallel()
		rng := rand.New(rand.NewPCG(seed, 3))
		got := resumeWS(t, f, w, rng, clientTotals(plan.want)["websocket"])
		for _, k := range resumeKeys {
			want := ledgerEvents(t, f.eng.Ledger(), []string{k})
			if len(want) != plan.want[k] {
				t.Errorf("%s: the ledger holds %d events, the writer made %d", k, len(want), plan.want[k])
			}
			if diff := diffResumed(got[k], want, func(e *event.Event) string { return string(e.AppendJSON(nil)) }); diff != "" {
				t.Errorf("%s: %s", k, diff)
			}
		}
	})
}

// received is one event message as a client got it: its position and its data (SSE) or
// event JSON (WebSocket).
type received struct {
	pos  uint64
	data string
}

// diffResumed compares what a client received with the ledger's events, rendered as the
// gateway must send them (nil render: positions only); "" when equal.
func diffResumed(got []received, want []event.Event, render func(*event.Event) string) string {
	for i := range max(len(got), len(want)) {
		switch {
		case i >= len(got):
			return fmt.Sprintf("received %d events, the ledger has %d: first missing is position %d", len(got), len(want), want[i].Position)
		case i >= len(want):
			return fmt.Sprintf("received %d events, the ledger has %d: first extra is position %d", len(got), len(want), got[i].pos)
		case got[i].pos != uint64(want[i].Position):
			return fmt.Sprintf("event %d: received position %d, the ledger has %d (received around it: %v)", i, got[i].pos, want[i].Position, positionsAround(got, i))
		}
		if render == nil {
			continue
		}
		if w := render(&want[i]); got[i].data != w {
			return fmt.Sprintf("event %d (position %d):\n got %s\nwant %s", i, got[i].pos, got[i].data, w)
		}
	}
	return ""
}

func positionsAround(got []received, i int) []uint64 {
	var ps []uint64
	for _, r := range got[max(0, i-3):min(len(got), i+4)] {
		ps = append(ps, r.pos)
	}
	return ps
}

// ledgerEvents reads every event of keys from the ledger.
func ledgerEvents(t *testing.T, led ledger.Ledger, keys []string) []event.Event {
	t.Helper()
	return ledgerEventsAfter(t, led, keys, 0)
}

// ledgerEventsAfter reads the events of keys after position after from the ledger.
func ledgerEventsAfter(t *testing.T, led ledger.Ledger, keys []string, after event.Position) []event.Event {
	t.Helper()
	var all []event.Event
	for {
		evs, err := led.ReadKeys(t.Context(), keys, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, evs...)
		if len(evs) < 1000 {
			return all
		}
		after = evs[len(evs)-1].Position
	}
}

// resumeStmt is one statement of the writer and the rows it must change.
type resumeStmt struct {
	sql  string
	rows int64
}

// resumePlan is what the writer commits, decided in advance from a seed, with the number
// of events each channel must get (keyed by channel, and by "a|b|c" for their union).
type resumePlan struct {
	txs     [][]resumeStmt
	changes int
	want    map[string]int
	// before[i] is how many events each client ("sse", "websocket") must have received
	// once the transactions before txs[i] are delivered.
	before []map[string]int
}

// clientTotals is how many events each client must receive when the plan's counts are want.
func clientTotals(want map[string]int) map[string]int {
	ws := 0
	for _, k := range resumeKeys {
		ws += want[k]
	}
	return map[string]int{"sse": want[strings.Join(resumeKeys, "|")], "websocket": ws}
}

// newResumePlan mixes inserts, updates (some moving comments between posts) and deletes
// of comments and posts, on rows of the subscribed channels and others, in transactions
// of one row, of a few multi-row statements, or of a few hundred rows.
func newResumePlan(rng *rand.Rand, changes int) *resumePlan {
	p := &resumePlan{want: map[string]int{}}
	union := strings.Join(resumeKeys, "|")
	commentEvent := func(postIDs ...int) {
		p.want["comments"]++
		if slices.Contains(postIDs, 1) {
			p.want["posts/1/comments"]++
		}
		p.want[union]++
	}
	postEvent := func(id int) {
		if id == 2 {
			p.want["posts/2"]++
			p.want[union]++
		}
	}
	postOf := map[int]int{} // live comment id → post id
	var live []int          // live comment ids
	var extraPosts []int    // live posts beyond 1..4
	nextComment, nextPost := 1, 100
	// pick moves k random elements of *s to its front and returns them.
	pick := func(s []int, k int) []int {
		for i := range k {
			j := i + rng.IntN(len(s)-i)
			s[i], s[j] = s[j], s[i]
		}
		return s[:k]
	}
	list := func(ids []int) string {
		var b strings.Builder
		for i, id := range ids {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(id))
		}
		return b.String()
	}

	insertComments := func(k int) resumeStmt {
		var b strings.Builder
		b.WriteString("INSERT INTO comments VALUES ")
		for i := range k {
			id, post := nextComment, 1+rng.IntN(4)
			nextComment++
			postOf[id] = post
			live = append(live, id)
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "(%d, %d, 'c%d')", id, post, id)
			commentEvent(post)
		}
		return resumeStmt{b.String(), int64(k)}
	}
	stmt := func(k int) []resumeStmt {
		switch n := rng.IntN(100); {
		case n < 25 || len(live) == 0:
			return []resumeStmt{insertComments(k)}
		case n < 40:
			ids := pick(live, min(k, len(live)))
			for _, id := range ids {
				commentEvent(postOf[id])
			}
			return []resumeStmt{{fmt.Sprintf("UPDATE comments SET body = 'u' || id WHERE id IN (%s)", list(ids)), int64(len(ids))}}
		case n < 50:
			ids, to := pick(live, min(k, len(live))), 1+rng.IntN(4)
			for _, id := range ids {
				commentEvent(postOf[id], to)
				postOf[id] = to
			}
			return []resumeStmt{{fmt.Sprintf("UPDATE comments SET post_id = %d WHERE id IN (%s)", to, list(ids)), int64(len(ids))}}
		case n < 60:
			ids := pick(live, min(k, len(live)))
			for _, id := range ids {
				commentEvent(postOf[id])
				delete(postOf, id)
			}
			s := resumeStmt{fmt.Sprintf("DELETE FROM comments WHERE id IN (%s)", list(ids)), int64(len(ids))}
			live = live[len(ids):]
			return []resumeStmt{s}
		case n < 75:
			var b strings.Builder
			b.WriteString("INSERT INTO posts VALUES ")
			for i := range k {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, "(%d, 'p')", nextPost)
				extraPosts = append(extraPosts, nextPost)
				nextPost++
			}
			return []resumeStmt{{b.String(), int64(k)}}
		case n < 90:
			ids := []int{1 + rng.IntN(4)}
			if rng.IntN(2) == 0 {
				ids[0] = 2
			}
			ids = append(ids, pick(extraPosts, min(k-1, len(extraPosts)))...)
			for _, id := range ids {
				postEvent(id)
			}
			return []resumeStmt{{fmt.Sprintf("UPDATE posts SET title = 't' || id WHERE id IN (%s)", list(ids)), int64(len(ids))}}
		case n < 95 && len(extraPosts) > 0:
			ids := pick(extraPosts, min(k, len(extraPosts)))
			s := resumeStmt{fmt.Sprintf("DELETE FROM posts WHERE id IN (%s)", list(ids)), int64(len(ids))}
			extraPosts = extraPosts[len(ids):]
			return []resumeStmt{s}
		default:
			postEvent(2)
			postEvent(2)
			return []resumeStmt{{"DELETE FROM posts WHERE id = 2", 1}, {"INSERT INTO posts VALUES (2, 'again')", 1}}
		}
	}

	p.before = append(p.before, clientTotals(p.want))
	postEvent(2)
	p.txs = append(p.txs, []resumeStmt{{"INSERT INTO posts VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')", 4}})
	p.changes = 4
	for p.changes < changes {
		p.before = append(p.before, clientTotals(p.want))
		var tx []resumeStmt
		switch n := rng.IntN(10); {
		case n < 3: // one row
			tx = stmt(1)
		case n < 9: // a few multi-row statements
			for range 1 + rng.IntN(6) {
				tx = append(tx, stmt(1+rng.IntN(20))...)
			}
		default: // a large one
			for range 1 + rng.IntN(2) {
				tx = append(tx, stmt(50+rng.IntN(250))...)
			}
		}
		for _, s := range tx {
			p.changes += int(s.rows)
		}
		p.txs = append(p.txs, tx)
	}
	return p
}

// resumeWriter commits a plan in the background, keeping at most resumeWindow events
// ahead of each client so that the disconnects happen while it writes.
type resumeWriter struct {
	done   chan struct{} // closed when the writer ended
	failed chan struct{} // closed when it ended with an error
	err    error

	kick     chan struct{} // a client made progress
	mu       sync.Mutex
	received map[string]int  // by client
	finished map[string]bool // by client
}

const resumeWindow = 500

func startResumeWriter(t *testing.T, dsn string, plan *resumePlan) *resumeWriter {
	w := &resumeWriter{
		done: make(chan struct{}), failed: make(chan struct{}), kick: make(chan struct{}, 1),
		received: map[string]int{}, finished: map[string]bool{},
	}
	ctx := t.Context()
	go func() {
		defer close(w.done)
		if w.err = w.write(ctx, dsn, plan); w.err != nil {
			close(w.failed)
		}
	}()
	return w
}

// writing is 1 while the writer has transactions left to commit, else 0.
func (w *resumeWriter) writing() int {
	select {
	case <-w.done:
		return 0
	default:
		return 1
	}
}

func (w *resumeWriter) wait() error {
	<-w.done
	return w.err
}

// progress records that client has received n events.
func (w *resumeWriter) progress(client string, n int) {
	w.mu.Lock()
	w.received[client] = n
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// finish records that client stopped reading.
func (w *resumeWriter) finish(client string) {
	w.mu.Lock()
	w.finished[client] = true
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// behind reports a client more than resumeWindow events behind need, or "".
func (w *resumeWriter) behind(need map[string]int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c, n := range need {
		if !w.finished[c] && w.received[c] < n-resumeWindow {
			return fmt.Sprintf("%s received %d events of %d", c, w.received[c], n)
		}
	}
	return ""
}

// write commits each transaction of the plan in one round trip, checking that every
// statement changed the rows the plan counted.
func (w *resumeWriter) write(ctx context.Context, dsn string, plan *resumePlan) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for i, tx := range plan.txs {
		for {
			who := w.behind(plan.before[i])
			if who == "" {
				break
			}
			select {
			case <-w.kick:
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(30 * time.Second):
				return fmt.Errorf("before transaction %d: no progress within 30s: %s", i, who)
			}
		}
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		for _, s := range tx {
			b.Queue(s.sql)
		}
		b.Queue("COMMIT")
		br := conn.SendBatch(ctx, b)
		_, err := br.Exec()
		for _, s := range tx {
			if err != nil {
				break
			}
			var tag pgconn.CommandTag
			tag, err = br.Exec()
			if err == nil && tag.RowsAffected() != s.rows {
				err = fmt.Errorf("%.80s changed %d rows, want %d", s.sql, tag.RowsAffected(), s.rows)
			}
		}
		if err == nil {
			_, err = br.Exec()
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("transaction %d: %w", i, err)
		}
	}
	return nil
}

// cutPoints returns n sorted numbers of events in [0, total) after which to disconnect;
// equal ones disconnect a connection before it received any event.
func cutPoints(rng *rand.Rand, n, total int) []int {
	cuts := make([]int, n)
	for i := range cuts {
		cuts[i] = rng.IntN(total)
	}
	slices.Sort(cuts)
	return cuts
}

// capturingTransport returns a transport of one connection and a function returning that
// connection once dialed.
func capturingTransport() (*http.Transport, func() net.Conn) {
	var mu sync.Mutex
	var conn net.Conn
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			mu.Lock()
			conn = c
			mu.Unlock()
			return c, err
		},
	}
	return tr, func() net.Conn {
		mu.Lock()
		defer mu.Unlock()
		return conn
	}
}

// resetConn closes a TCP connection with a reset instead of a FIN.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// readSSE parses SSE messages from r and passes each to yield until r ends or yield
// returns false; comments are skipped.
func readSSE(r io.Reader, yield func(msg) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	var m msg
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if m != (msg{}) && !yield(m) {
				return nil
			}
			m = msg{}
		case strings.HasPrefix(line, ":"):
		default:
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimPrefix(v, " ")
			switch k {
			case "id":
				m.ID = v
			case "event":
				m.Event = v
			case "data":
				m.Data += v
			}
		}
	}
	return sc.Err()
}

// sseConn is one connection of the SSE resume client, with its TCP connection at hand to
// cut it.
type sseConn struct {
	conn   net.Conn
	tr     *http.Transport
	resp   *http.Response
	cancel context.CancelFunc
	msgs   chan msg
	stop   chan struct{} // closed when the client stops reading
	done   chan struct{} // closed when the reading goroutine ended
}

func dialSSE(ctx context.Context, base string, query url.Values, header http.Header) (*sseConn, error) {
	tr, conn := capturingTransport()
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, "GET", base+"?"+query.Encode(), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header = header
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	c := &sseConn{conn: conn(), tr: tr, resp: resp, cancel: cancel, msgs: make(chan msg), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		_ = readSSE(resp.Body, func(m msg) bool {
			select {
			case c.msgs <- m:
				return true
			case <-c.stop:
				return false
			}
		})
	}()
	return c, nil
}

// drop ends the connection in one of four ways: closing the TCP connection, resetting it,
// cancelling the request's context, or closing the response body.
func (c *sseConn) drop(how int) string {
	close(c.stop)
	var what string
	switch how % 4 {
	case 0:
		what = "close"
		_ = c.conn.Close()
	case 1:
		what = "reset"
		resetConn(c.conn)
	case 2:
		what = "cancel"
		c.cancel()
	case 3:
		what = "close body"
		c.resp.Body.Close()
	}
	c.cancel()
	c.resp.Body.Close()
	<-c.done
	c.tr.CloseIdleConnections()
	return what
}

// nextOf returns the next message of msgs, failing the test when the connection ended,
// after 30s without a message, or when the writer failed; what describes the state.
func nextOf[M any](t *testing.T, msgs <-chan M, w *resumeWriter, what func() string) M {
	t.Helper()
	select {
	case m, ok := <-msgs:
		if !ok {
			t.Fatalf("connection ended (%s)", what())
		}
		return m
	case <-w.failed:
		t.Fatalf("writer: %v", w.err)
	case <-time.After(30 * time.Second):
		t.Fatalf("no message within 30s (%s)", what())
	}
	panic("unreachable")
}

// resumeSSE reads total events of resumeKeys over SSE, disconnecting at random moments and
// resuming with Last-Event-ID (or after) set to the last event received.
func resumeSSE(t *testing.T, f *fixture, w *resumeWriter, rng *rand.Rand, total int) []received {
	defer w.finish("sse")
	var got []received
	var last uint64
	cuts := cutPoints(rng, resumeCuts, total)
	drops := map[string]int{}
	var c *sseConn
	defer func() {
		if c != nil {
			c.drop(0)
		}
	}()
	for conn := 0; ; conn++ {
		q, h := url.Values{"channel": resumeKeys}, http.Header{}
		if rng.IntN(4) == 0 {
			q.Set("after", strconv.FormatUint(last, 10))
		} else {
			h.Set("Last-Event-ID", strconv.FormatUint(last, 10))
		}
		var err error
		c, err = dialSSE(t.Context(), f.srv.URL, q, h)
		if err != nil {
			t.Fatalf("connection %d: %v", conn, err)
		}
		state := func() string {
			return fmt.Sprintf("connection %d, %d of %d events received, last %d; %s",
				conn, len(got), total, last, diffResumed(got, ledgerEvents(t, f.eng.Ledger(), resumeKeys), nil))
		}
		a := nextOf(t, c.msgs, w, state)
		if a.Event != "subscribed" || a.ID != strconv.FormatUint(last, 10) {
			t.Fatalf("first message %+v, want subscribed with id %d (%s)", a, last, state())
		}
		for len(got) < total && (len(cuts) == 0 || len(got) < cuts[0]) {
			m := nextOf(t, c.msgs, w, state)
			pos, err := strconv.ParseUint(m.ID, 10, 64)
			if err != nil || m.Event == "subscribed" || m.Event == "error" {
				t.Fatalf("got %+v, want an event (%s)", m, state())
			}
			if pos <= last {
				t.Fatalf("event %d after %d: duplicate or out of order (%s)", pos, last, state())
			}
			var p payload
			if err := json.Unmarshal([]byte(m.Data), &p); err != nil || p.Event.Type != m.Event || p.Event.Position != pos {
				t.Fatalf("message %+v does not carry its event (%v)", m, err)
			}
			got = append(got, received{pos, m.Data})
			last = pos
			w.progress("sse", len(got))
		}
		if len(cuts) == 0 {
			t.Logf("%d connections, disconnects %v", conn+1, drops)
			return got
		}
		cuts = cuts[1:]
		drops[c.drop(rng.IntN(4))]++
		c = nil
		drops["while writing"] += w.writing()
	}
}

// wsResumeConn is one connection of the WebSocket resume client.
type wsResumeConn struct {
	conn   net.Conn
	tr     *http.Transport
	c      *websocket.Conn
	cancel context.CancelFunc // of reads
	msgs   chan wsMsg
	stop   chan struct{}
	done   chan struct{}
}

func dialWSResume(ctx context.Context, base string) (*wsResumeConn, error) {
	tr, conn := capturingTransport()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/", &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	readCtx, cancel := context.WithCancel(ctx)
	w := &wsResumeConn{conn: conn(), tr: tr, c: c, cancel: cancel, msgs: make(chan wsMsg), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			_, data, err := c.Read(readCtx)
			if err != nil {
				return
			}
			var m wsMsg
			if err := json.Unmarshal(data, &m); err != nil {
				m = wsMsg{Type: "unparsable: " + string(data)}
			}
			select {
			case w.msgs <- m:
			case <-w.stop:
				return
			}
		}
	}()
	return w, nil
}

// drop ends the connection in one of five ways: closing or resetting the TCP connection,
// cancelling the context of the pending read (which closes the connection), or a clean
// close handshake with 1000 or 1001.
func (w *wsResumeConn) drop(how int) string {
	close(w.stop)
	var what string
	switch how % 5 {
	case 0:
		what = "close"
		_ = w.conn.Close()
	case 1:
		what = "reset"
		resetConn(w.conn)
	case 2:
		what = "cancel"
		w.cancel()
	case 3:
		what = "close 1000"
		_ = w.c.Close(websocket.StatusNormalClosure, "")
	case 4:
		what = "close 1001"
		_ = w.c.Close(websocket.StatusGoingAway, "bye")
	}
	w.cancel()
	_ = w.c.CloseNow()
	<-w.done
	w.tr.CloseIdleConnections()
	return what
}

// resumeWS reads every event of each of resumeKeys over WebSocket, disconnecting at random
// moments and subscribing each channel again after the last event received on it.
func resumeWS(t *testing.T, f *fixture, w *resumeWriter, rng *rand.Rand, total int) map[string][]received {
	defer w.finish("websocket")
	got := map[string][]received{}
	last := map[string]uint64{}
	var n int
	cuts := cutPoints(rng, resumeCuts, total)
	drops := map[string]int{}
	var c *wsResumeConn
	defer func() {
		if c != nil {
			c.drop(3)
		}
	}()
	for conn := 0; ; conn++ {
		var err error
		c, err = dialWSResume(t.Context(), f.srv.URL)
		if err != nil {
			t.Fatalf("connection %d: %v", conn, err)
		}
		state := func() string {
			var diffs []string
			for _, k := range resumeKeys {
				if d := diffResumed(got[k], ledgerEvents(t, f.eng.Ledger(), []string{k}), nil); d != "" {
					diffs = append(diffs, k+": "+d)
				}
			}
			return fmt.Sprintf("connection %d, %d of %d events received, last %v; %s", conn, n, total, last, strings.Join(diffs, "; "))
		}
		for _, i := range rng.Perm(len(resumeKeys)) {
			k := resumeKeys[i]
			b, _ := json.Marshal(map[string]any{"type": "subscribe", "channel": k, "after": last[k], "ref": k})
			if err := c.c.Write(t.Context(), websocket.MessageText, b); err != nil {
				t.Fatalf("subscribe %s: %v (%s)", k, err, state())
			}
		}
		acked := map[string]bool{}
		for n < total && (len(cuts) == 0 || n < cuts[0]) {
			m := nextOf(t, c.msgs, w, state)
			switch m.Type {
			case "heartbeat":
			case "subscribed":
				if m.Ref != m.Channel || m.pos() != last[m.Channel] || acked[m.Channel] {
					t.Fatalf("ack %+v, want one at %d (%s)", m, last[m.Channel], state())
				}
				acked[m.Channel] = true
			case "event":
				if !acked[m.Channel] {
					t.Fatalf("event at %d on %q before its subscription was acknowledged (%s)", m.pos(), m.Channel, state())
				}
				if m.pos() <= last[m.Channel] {
					t.Fatalf("%s: event %d after %d: duplicate or out of order (%s)", m.Channel, m.pos(), last[m.Channel], state())
				}
				var e struct {
					Position uint64 `json:"position"`
				}
				if err := json.Unmarshal(m.Event, &e); err != nil || e.Position != m.pos() {
					t.Fatalf("message at %d does not carry its event: %s (%v)", m.pos(), m.Event, err)
				}
				got[m.Channel] = append(got[m.Channel], received{m.pos(), string(m.Event)})
				last[m.Channel] = m.pos()
				n++
				w.progress("websocket", n)
			default:
				t.Fatalf("got %+v (reason %s) (%s)", m, deref(m.Reason), state())
			}
		}
		if len(cuts) == 0 {
			t.Logf("%d connections, disconnects %v", conn+1, drops)
			return got
		}
		cuts = cuts[1:]
		drops[c.drop(rng.IntN(5))]++
		c = nil
		drops["while writing"] += w.writing()
	}
}
