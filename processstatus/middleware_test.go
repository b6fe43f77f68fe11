package processstatus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/processstatus/processstatustest"
)

// middlewareSetup returns a running tracker where posts is processed through t0 (its
// transaction at 0/100), comments has a held write at t0+5 (0/200), and the LSN watermark
// is therefore 0/1FF.
func middlewareSetup(t *testing.T) *bundle {
	t.Helper()
	b := setup(t, nil)
	b.write(t, ev("posts", 1, t0))      // 0/100, position 1
	b.write(t, ev("comments", 1, t0+5)) // 0/200, position 2, held
	b.write(t, ev("posts", 2, t0+10))   // 0/300, position 3, held
	b.wm.Set("posts", 1)
	b.start(t)
	waitProcessed(t, b.tr, "posts", t0)
	waitLSN(t, b.tr, 0x1FF)
	return b
}

// ok is the handler behind the middleware.
var ok = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "ok")
})

// serve runs one request through the middleware.
func serve(h http.Handler, ctx context.Context, headers map[string][]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/post_with_comments_counts/1", nil).WithContext(ctx)
	for k, vs := range headers {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func decode(t *testing.T, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q is not JSON: %v", rec.Body.String(), err)
	}
	return body
}

func TestMiddleware(t *testing.T) {
	t.Parallel()
	b := middlewareSetup(t)
	h := processstatus.Middleware(b.tr, nil)(ok)
	const (
		ts  = processstatus.HeaderEntityTimestamp
		lsn = processstatus.HeaderLSN
	)
	hdr := func(kv ...string) map[string][]string {
		m := map[string][]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = append(m[kv[i]], kv[i+1])
		}
		return m
	}
	tests := []struct {
		name    string
		headers map[string][]string
		status  int
		body    map[string]any // fields the JSON body must have (numbers as float64)
		bad     string         // for 400: the header named
		reason  string         // for 400: a substring of the reason
	}{
		{name: "no header", headers: nil, status: 200},
		{name: "other headers", headers: hdr("X-Other", "posts/9"), status: 200},
		{name: "processed", headers: hdr(ts, fmt.Sprintf("posts/%d", t0)), status: 200},
		{name: "processed earlier", headers: hdr(ts, fmt.Sprintf("posts/%d", t0-1)), status: 200},
		{name: "spaces", headers: hdr(ts, fmt.Sprintf("  posts/%d ", t0)), status: 200},
		{name: "schema-qualified", headers: hdr(ts, "public.posts/1"), status: 425,
			body: map[string]any{"entity": "public.posts", "processed_through": nil}},
		{name: "not processed", headers: hdr(ts, fmt.Sprintf("posts/%d", t0+10)), status: 425,
			body: map[string]any{"error": "too_early", "entity": "posts", "timestamp": float64(t0 + 10), "processed_through": float64(t0)}},
		{name: "entity never processed", headers: hdr(ts, "comments/5"), status: 425,
			body: map[string]any{"error": "too_early", "entity": "comments", "timestamp": float64(5), "processed_through": nil}},
		{name: "lsn processed", headers: hdr(lsn, "0/100"), status: 200},
		{name: "lsn watermark", headers: hdr(lsn, "0/1FF"), status: 200},
		{name: "lsn lower case", headers: hdr(lsn, "0/1ff"), status: 200},
		{name: "lsn not processed", headers: hdr(lsn, "0/200"), status: 425,
			body: map[string]any{"error": "too_early", "lsn": "0/200", "processed_through_lsn": "0/1FF"}},
		{name: "both processed", headers: hdr(ts, fmt.Sprintf("posts/%d", t0), lsn, "0/100"), status: 200},
		{name: "both, lsn not processed", headers: hdr(ts, fmt.Sprintf("posts/%d", t0), lsn, "16/B374D848"), status: 425,
			body: map[string]any{"entity": "posts", "processed_through": float64(t0), "lsn": "16/B374D848", "processed_through_lsn": "0/1FF"}},
		{name: "both, entity not processed", headers: hdr(ts, fmt.Sprintf("posts/%d", t0+1), lsn, "0/100"), status: 425,
			body: map[string]any{"entity": "posts", "timestamp": float64(t0 + 1), "lsn": "0/100"}},

		{name: "no slash", headers: hdr(ts, "posts"), status: 400, bad: ts, reason: "no slash"},
		{name: "empty timestamp", headers: hdr(ts, "posts/"), status: 400, bad: ts, reason: "empty"},
		{name: "empty entity", headers: hdr(ts, "/1422057007123000"), status: 400, bad: ts, reason: "empty name"},
		{name: "entity starts with a digit", headers: hdr(ts, "1posts/5"), status: 400, bad: ts, reason: "not a table name"},
		{name: "entity with a dash", headers: hdr(ts, "po-sts/5"), status: 400, bad: ts, reason: "not a table name"},
		{name: "entity too long", headers: hdr(ts, strings.Repeat("a", 64)+"/5"), status: 400, bad: ts, reason: "63-byte limit"},
		{name: "two dots", headers: hdr(ts, "a.b.c/5"), status: 400, bad: ts, reason: "at most one dot"},
		{name: "extra slash", headers: hdr(ts, "posts/1/2"), status: 400, bad: ts, reason: "not a decimal number"},
		{name: "not numeric", headers: hdr(ts, "posts/abc"), status: 400, bad: ts, reason: "not a decimal number"},
		{name: "ISO timestamp", headers: hdr(ts, "posts/2024-07-23T12:00:00Z"), status: 400, bad: ts, reason: "not a decimal number"},
		{name: "plus sign", headers: hdr(ts, "posts/+5"), status: 400, bad: ts, reason: "not a decimal number"},
		{name: "negative", headers: hdr(ts, "posts/-5"), status: 400, bad: ts, reason: "negative"},
		{name: "out of range", headers: hdr(ts, "posts/99999999999999999999"), status: 400, bad: ts, reason: "out of range"},
		{name: "empty header", headers: hdr(ts, ""), status: 400, bad: ts, reason: "empty"},
		{name: "twice", headers: hdr(ts, "posts/1", ts, "posts/2"), status: 400, bad: ts, reason: "more than once"},
		{name: "comma list", headers: hdr(ts, "posts/1, posts/2"), status: 400, bad: ts, reason: "more than once"},
		{name: "bad lsn", headers: hdr(lsn, "zz"), status: 400, bad: lsn, reason: `"zz" is not an LSN`},
		{name: "lsn without low half", headers: hdr(lsn, "16/"), status: 400, bad: lsn, reason: "not an LSN"},
		{name: "lsn with three parts", headers: hdr(lsn, "1/2/3"), status: 400, bad: lsn, reason: "not an LSN"},
		{name: "lsn as a number", headers: hdr(lsn, "12345"), status: 400, bad: lsn, reason: "not an LSN"},
		{name: "lsn twice", headers: hdr(lsn, "0/1", lsn, "0/2"), status: 400, bad: lsn, reason: "more than once"},
		{name: "good lsn, bad entity", headers: hdr(lsn, "0/1", ts, "posts"), status: 400, bad: ts, reason: "no slash"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := serve(h, t.Context(), tc.headers)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tc.status, rec.Body.String())
			}
			switch tc.status {
			case 200:
				if rec.Body.String() != "ok" {
					t.Errorf("body %q: the request did not reach the handler", rec.Body.String())
				}
				return
			case 425:
				if got := rec.Header().Get("Retry-After"); got != "1" {
					t.Errorf("Retry-After %q, want 1", got)
				}
			case 400:
				if got := rec.Header().Get("Retry-After"); got != "" {
					t.Errorf("Retry-After %q on a 400", got)
				}
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			body := decode(t, rec)
			for k, want := range tc.body {
				got, present := body[k]
				if !present || got != want {
					t.Errorf("body field %q = %v (present %v), want %v; body %s", k, got, present, want, rec.Body.String())
				}
			}
			if tc.status == 400 {
				if body["error"] != "malformed_header" || body["header"] != tc.bad {
					t.Errorf("400 body %s, want error malformed_header naming %s", rec.Body.String(), tc.bad)
				}
				if r, _ := body["reason"].(string); !strings.Contains(r, tc.reason) {
					t.Errorf("reason %q, want it to contain %q", r, tc.reason)
				}
				if e, _ := body["expected"].(string); !strings.Contains(e, "e.g.") {
					t.Errorf("expected %q gives no example", e)
				}
			}
		})
	}
}

func TestMiddlewareRetryAfter(t *testing.T) {
	t.Parallel()
	b := middlewareSetup(t)
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{{0, "1"}, {10 * time.Millisecond, "1"}, {time.Second, "1"}, {1500 * time.Millisecond, "2"}, {3 * time.Second, "3"}, {-time.Second, "1"}} {
		h := processstatus.Middleware(b.tr, &processstatus.MiddlewareOpts{RetryAfter: tc.d})(ok)
		rec := serve(h, t.Context(), map[string][]string{processstatus.HeaderLSN: {"0/200"}})
		if rec.Code != http.StatusTooEarly || rec.Header().Get("Retry-After") != tc.want {
			t.Errorf("RetryAfter %s: status %d, Retry-After %q; want 425 and %q", tc.d, rec.Code, rec.Header().Get("Retry-After"), tc.want)
		}
	}
}

// signalContext reports, by closing waiting, that the middleware started waiting: it derives
// its bounded context from the request's, which calls Done.
type signalContext struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (c *signalContext) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

// TestMiddlewareWait: with a bound, the middleware waits for processing, and passes the
// request when the watermark moves in time; it answers 425 when the bound or the request
// ends first.
func TestMiddlewareWait(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		header string
		value  string
		move   func(b *bundle)
	}{
		{"entity", processstatus.HeaderEntityTimestamp, fmt.Sprintf("posts/%d", t0+10), func(b *bundle) { b.wm.Set("posts", 3) }},
		{"lsn", processstatus.HeaderLSN, "0/200", func(b *bundle) { b.wm.Set("comments", 2) }},
	} {
		t.Run(tc.name+" moves during the wait", func(t *testing.T) {
			t.Parallel()
			b := middlewareSetup(t)
			h := processstatus.Middleware(b.tr, &processstatus.MiddlewareOpts{Wait: time.Minute})(ok)
			ctx := &signalContext{Context: t.Context(), waiting: make(chan struct{})}
			done := make(chan *httptest.ResponseRecorder, 1)
			go func() { done <- serve(h, ctx, map[string][]string{tc.header: {tc.value}}) }()
			select {
			case <-ctx.waiting:
			case rec := <-done:
				t.Fatalf("answered %d before waiting", rec.Code)
			case <-time.After(testTimeout):
				t.Fatal("the middleware did not start waiting")
			}
			start := time.Now()
			tc.move(b)
			select {
			case rec := <-done:
				if rec.Code != http.StatusOK || rec.Body.String() != "ok" {
					t.Errorf("status %d, body %q; want 200 from the handler", rec.Code, rec.Body.String())
				}
			case <-time.After(testTimeout):
				t.Fatalf("no answer %s after the watermark moved", time.Since(start))
			}
		})
	}
	t.Run("bound ends", func(t *testing.T) {
		t.Parallel()
		b := middlewareSetup(t)
		const bound = 30 * time.Millisecond
		h := processstatus.Middleware(b.tr, &processstatus.MiddlewareOpts{Wait: bound})(ok)
		start := time.Now()
		rec := serve(h, t.Context(), map[string][]string{processstatus.HeaderLSN: {"0/200"}})
		elapsed := time.Since(start)
		if rec.Code != http.StatusTooEarly || rec.Header().Get("Retry-After") != "1" {
			t.Errorf("status %d, Retry-After %q; want 425 and 1", rec.Code, rec.Header().Get("Retry-After"))
		}
		if elapsed < bound {
			t.Errorf("answered after %s, before the %s bound", elapsed, bound)
		}
		if body := decode(t, rec); body["processed_through_lsn"] != "0/1FF" {
			t.Errorf("body %s", rec.Body.String())
		}
	})
	t.Run("request ends", func(t *testing.T) {
		t.Parallel()
		b := middlewareSetup(t)
		h := processstatus.Middleware(b.tr, &processstatus.MiddlewareOpts{Wait: time.Hour})(ok)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		rec := serve(h, ctx, map[string][]string{processstatus.HeaderEntityTimestamp: {"comments/1"}})
		if rec.Code != http.StatusTooEarly {
			t.Errorf("status %d, want 425", rec.Code)
		}
	})
	t.Run("processed needs no wait", func(t *testing.T) {
		t.Parallel()
		b := middlewareSetup(t)
		h := processstatus.Middleware(b.tr, &processstatus.MiddlewareOpts{Wait: time.Hour})(ok)
		ctx := &signalContext{Context: t.Context(), waiting: make(chan struct{})}
		rec := serve(h, ctx, map[string][]string{processstatus.HeaderLSN: {"0/100"}})
		if rec.Code != http.StatusOK {
			t.Errorf("status %d, want 200", rec.Code)
		}
		select {
		case <-ctx.waiting:
			t.Errorf("the middleware waited for a processed LSN")
		default:
		}
	})
}

func TestHeaderValue(t *testing.T) {
	t.Parallel()
	ts := time.Date(2015, 1, 31, 23, 50, 7, 123456789, time.FixedZone("", 3600))
	if got, want := processstatus.HeaderValue("posts", ts), "posts/1422744607123456"; got != want {
		t.Errorf("HeaderValue = %q, want %q", got, want)
	}
	// What PostgreSQL sends back for the row parses to the same microseconds.
	micros, err := processstatus.ParseMicros("2015-01-31 22:50:07.123456+00")
	if err != nil || fmt.Sprintf("posts/%d", micros) != processstatus.HeaderValue("posts", ts) {
		t.Errorf("ParseMicros of the stored value = %d, %v; want the header's microseconds", micros, err)
	}
	if _, err := event.ParseLSN(event.LSN(0x16B374D848).String()); err != nil {
		t.Error(err)
	}
}

// FuzzMiddlewareHeaders: no header value panics, and every answer is 200, 400 or 425.
func FuzzMiddlewareHeaders(f *testing.F) {
	for _, s := range []string{"posts/1422057007123000", "16/B374D848", "", "/", "a.b/-1", "posts/99999999999999999999", "\x00/1"} {
		f.Add(s, s)
	}
	h := processstatus.Middleware(idleTracker(f), nil)(ok)
	f.Fuzz(func(t *testing.T, ts, lsn string) {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header[processstatus.HeaderEntityTimestamp] = []string{ts}
		req.Header[processstatus.HeaderLSN] = []string{lsn}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusTooEarly:
		default:
			t.Fatalf("status %d for %q, %q", rec.Code, ts, lsn)
		}
	})
}

// idleTracker returns a tracker that never runs: nothing is processed.
func idleTracker(tb testing.TB) *processstatus.Tracker {
	l := memory.New(nil)
	tb.Cleanup(func() { l.Close() })
	return processstatustest.NewTracker(tb, processstatus.Config{Ledger: l, Watermark: processstatustest.NewWatermarks()})
}
