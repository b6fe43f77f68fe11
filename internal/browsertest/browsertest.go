// Package browsertest drives a headless Chromium for the tests of walflow's pages (the
// demo, the console): it fails the test with the page's text and a screenshot when a step
// fails, and collects the pages' uncaught exceptions and console errors.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// ChromiumPath is the browser the tests drive: the distribution's Chromium.
const ChromiumPath = "/usr/bin/chromium"

// Wait bounds each wait for the page.
const Wait = 20 * time.Second

// Browser is a headless Chromium tab, driven by a test.
type Browser struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	problems []string // uncaught exceptions and console errors of the pages
}

// New starts Chromium with a fresh profile; it stops when the test ends. It fails the test
// with the install command when Chromium is missing.
func New(t *testing.T) *Browser {
	t.Helper()
	if _, err := os.Stat(ChromiumPath); err != nil {
		t.Fatalf("the browser tests need Chromium at %s (%v); run scripts/setup, or as root: apt-get update && apt-get install -y --no-install-recommends chromium", ChromiumPath, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(ChromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox, // the tests run as root, where Chromium's sandbox cannot start
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1000, 900),
	)
	actx, stopAlloc := chromedp.NewExecAllocator(context.WithoutCancel(t.Context()), opts...)
	ctx, stopTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		stopTab()
		stopAlloc() // waits for the browser to exit, before its profile directory is removed
	})
	b := &Browser{t: t, ctx: ctx}
	// The first action starts the browser; it must have no timeout, which would end it.
	if err := chromedp.Listen(ctx, b.listen); err != nil {
		t.Fatalf("start Chromium (%s): %v", ChromiumPath, err)
	}
	return b
}

// listen records the pages' uncaught exceptions and console errors.
func (b *Browser) listen(ev any) {
	var p string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		p = (&chromedp.ExceptionError{ExceptionDetails: ev.ExceptionDetails}).Error()
	case *runtime.EventConsoleAPICalled:
		if ev.Type != runtime.ConsoleAPICalledTypeError {
			return
		}
		var args []string
		for _, a := range ev.Args {
			args = append(args, string(a.Value)+a.Description)
		}
		p = "console.error: " + strings.Join(args, " ")
	default:
		return
	}
	b.mu.Lock()
	b.problems = append(b.problems, p)
	b.mu.Unlock()
}

// CheckProblems fails the test when a page threw or logged an error.
func (b *Browser) CheckProblems() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		b.t.Errorf("the page reported: %s", p)
	}
	b.problems = nil
}

// Do runs actions, failing the test with the page's text when they fail.
func (b *Browser) Do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Wait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.Fail(what, err)
	}
}

// WaitJS waits until the JavaScript expression is truthy on the current page.
//
// An expression that throws counts as false, so that it may read elements the page has not
// rendered yet: a slow page is waited for rather than failed.
func (b *Browser) WaitJS(what, expr string) {
	b.t.Helper()
	expr = "(() => { try { return (" + expr + "); } catch { return false; } })()"
	b.Do("wait until "+what, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(Wait)))
}

// Eval evaluates a JavaScript expression on the current page.
func Eval[T any](b *Browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Wait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.Fail("evaluate "+expr, err)
	}
	return v
}

// Fail fails the test with what failed, the page's address and text, a screenshot and the
// problems the page reported.
func (b *Browser) Fail(what string, err error) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
	b.Screenshot("failure")
	b.CheckProblems()
	b.t.Fatalf("%s: %v\nthe page:\n%s", what, err, text)
}

// PNG returns a screenshot of the whole page.
func (b *Browser) PNG() []byte {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Wait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot: %v", err)
	}
	return png
}

// Screenshot saves the page as a PNG in $WALFLOW_ARTIFACTS, or in the test's artifact
// directory (kept with go test -artifacts, temporary otherwise).
func (b *Browser) Screenshot(name string) {
	b.t.Helper()
	png := b.PNG()
	if png == nil {
		return
	}
	dir := os.Getenv("WALFLOW_ARTIFACTS")
	if dir == "" {
		dir = b.t.ArtifactDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	path := filepath.Join(dir, fmt.Sprintf("%s_%s.png", b.t.Name(), name))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	b.t.Logf("screenshot: %s", path)
}

// Context is the tab's context, for chromedp calls the helpers do not cover; bound each
// call with a timeout.
func (b *Browser) Context() context.Context { return b.ctx }
