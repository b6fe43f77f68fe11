package demo

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/walflow/walflow/realtime"
)

// silentPage subscribes with a 200 ms heartbeat to a gateway that never sends one.
const silentPage = `<!doctype html>
<title>walflow.js heartbeat</title>
<script type="module">
import { connect } from "/realtime/walflow.js";
window.client = connect("/realtime/", { heartbeat: 200, backoffMin: 50, backoffMax: 200 });
window.client.subscribe("comments", () => {});
</script>`

// TestWalflowJSHeartbeat: a connection that stays open but goes silent (no heartbeat, no
// event) is taken for dead after 2.5 heartbeats and replaced, and every replacement
// subscribes the channel again from the position the gateway acknowledged.
func TestWalflowJSHeartbeat(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var subscribes []map[string]any // per connection, the subscribe messages in order
	mux := http.NewServeMux()
	mux.HandleFunc("GET /realtime/walflow.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript")
		_, _ = w.Write(realtime.ClientJS())
	})
	// A gateway that acknowledges subscriptions at position 7, then says nothing more.
	mux.HandleFunc("GET /realtime/", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			_, data, err := c.Read(r.Context())
			if err != nil {
				return
			}
			var m map[string]any
			if json.Unmarshal(data, &m) != nil || m["type"] != "subscribe" {
				continue
			}
			mu.Lock()
			subscribes = append(subscribes, m)
			mu.Unlock()
			ack, _ := json.Marshal(map[string]any{"type": "subscribed", "ref": m["ref"], "channel": m["channel"], "position": 7})
			if err := c.Write(r.Context(), websocket.MessageText, ack); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(silentPage)) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	b := newBrowser(t, nil)
	b.do("open the page", chromedp.Navigate(srv.URL))
	b.waitJS("the client has reconnected twice", `(() => {
		window.opens = window.opens || 0;
		if (!window.counting) {
			window.counting = true;
			window.client.addEventListener("open", () => window.opens++);
		}
		return window.opens >= 2;
	})()`)
	// The last reconnection's subscribe may still be on its way.
	for deadline := time.Now().Add(browserWait); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := len(subscribes)
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(subscribes) < 3 {
		t.Fatalf("%d subscribe messages, want one per connection (at least 3)", len(subscribes))
	}
	for i, m := range subscribes {
		if m["channel"] != "comments" {
			t.Errorf("subscribe %d: %v", i, m)
		}
		if i > 0 && fmt.Sprint(m["after"]) != "7" {
			t.Errorf("subscribe %d after a silent connection: %v, want after 7 (the acknowledged position)", i, m)
		}
	}
	b.checkProblems()
}
