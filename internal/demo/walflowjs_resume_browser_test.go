package demo

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/realtime"
)

// aheadPage subscribes to posts from position 3, which the gateway's ledger reaches only
// later, and records what the client reports.
const aheadPage = `<!doctype html>
<title>walflow.js resume ahead of the head</title>
<script type="module">
import { connect } from "/realtime/walflow.js";
window.got = [];
window.refusals = [];
window.client = connect("/realtime/", { backoffMin: 50, backoffMax: 200 });
window.client.addEventListener("error", (e) => window.refusals.push(e.detail.error.status));
window.sub = window.client.subscribe("posts", (ev) => window.got.push(ev.position), { after: 3 });
window.sub.ready.then((p) => { window.ready = p; }, (err) => { window.failed = String(err); });
</script>`

// TestWalflowJSRetriesResumeAhead: a subscribe the gateway refuses with 503 because its
// ledger has not reached the resume position (in a cluster, a node behind the one the
// position came from) is sent again, with the same position, until the ledger has it;
// the subscription then gets exactly the events after its position. Before, the client
// failed the subscription on the refusal.
func TestWalflowJSRetriesResumeAhead(t *testing.T) {
	t.Parallel()
	router, err := channel.NewRouter([]channel.Table{{Name: "posts"}})
	if err != nil {
		t.Fatal(err)
	}
	led := memory.New(&memory.Options{Indexer: router.Channels})
	t.Cleanup(func() { _ = led.Close() })
	write := func(id int) {
		t.Helper()
		lsn := event.LSN(100 + id)
		ledgertest.WriteTx(t, led, lsn, ledgertest.Event(lsn, 0, "posts", id))
		if err := led.Sync(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	write(1)
	gw, err := realtime.NewGateway(realtime.GatewayConfig{
		Ledger: led, Router: router, Authorizer: realtime.AllowAll{}, SharedLedger: true, ResumeWait: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/realtime/", http.StripPrefix("/realtime", gw))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(aheadPage)) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := gw.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})

	b := newBrowser(t, nil)
	b.do("open the page", chromedp.Navigate(srv.URL))
	b.waitJS("the gateway refused the subscribe three times", `window.refusals.length >= 3`)
	if got := eval[[]int](b, `window.refusals`); got[0] != http.StatusServiceUnavailable {
		t.Fatalf("refusals %v, want 503", got)
	}
	if closed := eval[bool](b, `window.sub.closed || window.failed !== undefined`); closed {
		t.Fatalf("the subscription ended on a 503: %s", eval[string](b, `String(window.failed)`))
	}
	if n := gw.Stats().Rejected[http.StatusServiceUnavailable]; n < 3 {
		t.Fatalf("the gateway refused %d subscribes with 503, the page saw at least 3", n)
	}

	for id := 2; id <= 5; id++ {
		write(id)
	}
	b.waitJS("subscribed at 3 with the events after it", `window.ready === 3 && window.got.join() === "4,5"`)
	write(6)
	b.waitJS("the next event", `window.got.join() === "4,5,6"`)
	if failed := eval[bool](b, `window.failed !== undefined`); failed {
		t.Fatal("the subscription failed")
	}
	b.checkProblems()
}
