package cli

import (
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/walflow/walflow/internal/browsertest"
)

const browserWait = browsertest.Wait

// browser is a headless Chromium tab (internal/browsertest) with the helpers' short names.
type browser struct{ *browsertest.Browser }

// newBrowser starts Chromium; app is unused: the console test opens its own addresses.
func newBrowser(t *testing.T, _ any) *browser {
	t.Helper()
	return &browser{browsertest.New(t)}
}

func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) { b.Do(what, actions...) }
func (b *browser) waitJS(what, expr string)                                  { b.WaitJS(what, expr) }
func (b *browser) screenshot(name string)                                    { b.Screenshot(name) }
func (b *browser) checkProblems()                                            { b.CheckProblems() }
func (b *browser) png() []byte                                               { return b.PNG() }

func eval[T any](b *browser, expr string) T { return browsertest.Eval[T](b.Browser, expr) }
