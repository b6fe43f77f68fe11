package walflow_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/realtime"
)

// loadClient is a browser-like client: it loads a channel's snapshot pages over HTTP, then
// follows the channel over SSE from the snapshot's token, applying each event to its rows.
type loadClient struct {
	channel string
	match   func(row map[string]any) bool // whether a row belongs to the channel

	mu    sync.Mutex
	rows  map[string]string // id → canonical JSON of the row
	err   error
	ready bool
}

func canonical(row map[string]any) string {
	b, _ := json.Marshal(row) // map keys are sorted
	return string(b)
}

func (c *loadClient) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

func (c *loadClient) run(ctx context.Context, base string) {
	rows := map[string]string{}
	cursor, token := "", ""
	limit := 3 + rand.IntN(20)
	for {
		q := url.Values{"channel": {c.channel}, "limit": {fmt.Sprint(limit)}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/snapshot?"+q.Encode(), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			c.fail(err)
			return
		}
		var page struct {
			Rows  []map[string]any `json:"rows"`
			Token string           `json:"token"`
			Next  string           `json:"next"`
		}
		if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusGone {
			// Too many paged loads open (retry), or the cursor expired (start over).
			resp.Body.Close()
			time.Sleep(time.Duration(50+rand.IntN(200)) * time.Millisecond)
			rows, cursor, token = map[string]string{}, "", ""
			continue
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			c.fail(fmt.Errorf("snapshot %s: status %d: %v", c.channel, resp.StatusCode, err))
			return
		}
		if token != "" && page.Token != token {
			c.fail(fmt.Errorf("page token %s differs from the first page's %s", page.Token, token))
			return
		}
		token = page.Token
		for _, r := range page.Rows {
			rows[fmt.Sprint(r["id"])] = canonical(r)
		}
		if page.Next == "" {
			break
		}
		cursor = page.Next
	}
	c.mu.Lock()
	c.rows, c.ready = rows, true
	c.mu.Unlock()

	q := url.Values{"channel": {c.channel}, "snapshot": {token}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/?"+q.Encode(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.fail(err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.fail(fmt.Errorf("stream %s: status %d", c.channel, resp.StatusCode))
		return
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var msg struct {
			Event *struct {
				Type      string         `json:"type"`
				NewRecord map[string]any `json:"new_record"`
				OldRecord map[string]any `json:"old_record"`
			} `json:"event"`
		}
		if err := json.Unmarshal([]byte(data), &msg); err != nil {
			c.fail(err)
			return
		}
		e := msg.Event
		if e == nil {
			continue // subscribed
		}
		c.mu.Lock()
		switch e.Type {
		case "insert", "update":
			id := fmt.Sprint(e.NewRecord["id"])
			if _, dup := c.rows[id]; dup && e.Type == "insert" {
				// A row is inserted once until deleted: the snapshot had it already.
				c.mu.Unlock()
				c.fail(fmt.Errorf("insert of %s, which the client has: a duplicate delivery", canonical(e.NewRecord)))
				return
			}
			if c.match(e.NewRecord) {
				c.rows[id] = canonical(e.NewRecord)
			} else {
				delete(c.rows, id)
			}
			if e.OldRecord != nil {
				if old := fmt.Sprint(e.OldRecord["id"]); old != id {
					delete(c.rows, old)
				}
			}
		case "delete":
			delete(c.rows, fmt.Sprint(e.OldRecord["id"]))
		case "truncate":
			clear(c.rows)
		}
		c.mu.Unlock()
	}
	if ctx.Err() == nil {
		c.fail(fmt.Errorf("stream %s ended: %v", c.channel, sc.Err()))
	}
}

// TestSnapshotLoadUnderWrites: while writers change posts and comments at full speed, 100
// clients each load a channel's snapshot (in pages) and follow it from the token, at random
// moments; in the end each client's rows equal the table's rows of its channel.
func TestSnapshotLoadUnderWrites(t *testing.T) {
	t.Parallel()
	b := startBlog(t)
	ctx := t.Context()
	b.exec(`INSERT INTO posts SELECT i, 'p' || i FROM generate_series(1, 6) i`)
	b.exec(`INSERT INTO comments SELECT i, 1 + i % 5, 'c' || i FROM generate_series(1, 60) i`)

	gw, err := b.eng.Gateway(realtime.GatewayConfig{Authorizer: realtime.AllowAll{}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	defer srv.Close()
	defer gw.Shutdown(context.Background())

	// Writers: several sessions, so that transactions are in flight when snapshots are
	// taken; conflicts roll back and are simply retried with other rows.
	writeCtx, stopWriters := context.WithCancel(ctx)
	var writers sync.WaitGroup
	for w := range 3 {
		conn, err := pgx.Connect(ctx, b.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		writers.Add(1)
		go func() {
			defer writers.Done()
			next := 1000 * (w + 1)
			for writeCtx.Err() == nil {
				var stmts []string
				for range 1 + rand.IntN(3) {
					switch id := 1 + rand.IntN(80); rand.IntN(6) {
					case 0, 1:
						next++
						stmts = append(stmts, fmt.Sprintf(`INSERT INTO comments VALUES (%d, %d, 'n%d')`, next%97+100*(w+1), 1+rand.IntN(5), next))
					case 2:
						stmts = append(stmts, fmt.Sprintf(`UPDATE comments SET body = body || '+' WHERE id = %d`, id))
					case 3:
						stmts = append(stmts, fmt.Sprintf(`UPDATE comments SET post_id = %d WHERE id = %d`, 1+rand.IntN(5), id))
					case 4:
						stmts = append(stmts, fmt.Sprintf(`DELETE FROM comments WHERE id = %d OR id = %d`, id, next%97+100*(w+1)))
					default:
						stmts = append(stmts, fmt.Sprintf(`UPDATE posts SET title = title || '.' WHERE id = %d`, 1+rand.IntN(6)))
					}
				}
				if _, err := conn.Exec(writeCtx, "BEGIN; "+strings.Join(stmts, "; ")+"; COMMIT"); err != nil {
					if writeCtx.Err() != nil {
						return
					}
					// A unique violation or a deadlock: the transaction rolled back.
					_, _ = conn.Exec(context.Background(), "ROLLBACK")
				}
			}
		}()
	}

	clientCtx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	var clients []*loadClient
	var running sync.WaitGroup
	for range 100 {
		c := &loadClient{}
		switch k := rand.IntN(5); k {
		case 0:
			c.channel, c.match = "comments", func(map[string]any) bool { return true }
		case 1:
			c.channel, c.match = "posts", func(map[string]any) bool { return true }
		case 2, 3:
			post := fmt.Sprint(1 + rand.IntN(5))
			c.channel = "posts/" + post + "/comments"
			c.match = func(r map[string]any) bool { return fmt.Sprint(r["post_id"]) == post }
		default:
			id := fmt.Sprint(1 + rand.IntN(80))
			c.channel = "comments/" + id
			c.match = func(r map[string]any) bool { return fmt.Sprint(r["id"]) == id }
		}
		clients = append(clients, c)
		running.Add(1)
		go func() {
			defer running.Done()
			select {
			case <-time.After(time.Duration(rand.IntN(3000)) * time.Millisecond):
			case <-clientCtx.Done():
				return
			}
			c.run(clientCtx, srv.URL)
		}()
	}
	time.Sleep(4 * time.Second)
	stopWriters()
	writers.Wait()
	defer func() { stopClients(); running.Wait() }()

	expected := func(c *loadClient) map[string]string {
		table, where := "comments", "true"
		switch {
		case c.channel == "posts":
			table = "posts"
		case strings.HasPrefix(c.channel, "posts/"):
			where = "post_id = " + strings.Split(c.channel, "/")[1]
		case strings.HasPrefix(c.channel, "comments/"):
			where = "id = " + strings.Split(c.channel, "/")[1]
		}
		rows, err := b.conn.Query(ctx, `SELECT row_to_json(t)::text FROM `+table+` t WHERE `+where)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			var r map[string]any
			_ = json.Unmarshal([]byte(s), &r)
			out[fmt.Sprint(r["id"])] = canonical(r)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	// The clients converge once the last changes have reached the ledger and their streams.
	deadline := time.Now().Add(90 * time.Second)
	for i, c := range clients {
		want := expected(c)
		for {
			c.mu.Lock()
			ready, err, diff := c.ready, c.err, mapDiff(c.rows, want)
			c.mu.Unlock()
			if err != nil {
				t.Fatalf("client %d (%s): %v", i, c.channel, err)
			}
			if ready && diff == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("client %d (%s) rows differ from the table's: %s", i, c.channel, diff)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// mapDiff describes how got differs from want, or returns "".
func mapDiff(got, want map[string]string) string {
	var d []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			d = append(d, "missing "+w)
		} else if g != w {
			d = append(d, "has "+g+" want "+w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			d = append(d, "extra "+g)
		}
	}
	if len(d) > 5 {
		d = append(d[:5], fmt.Sprintf("and %d more", len(d)-5))
	}
	return strings.Join(d, "; ")
}
