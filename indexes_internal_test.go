package walflow

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	indexpg "github.com/walflow/walflow/index/pg"
	"github.com/walflow/walflow/retry"
)

// halts records the halts reported to it.
type halts struct{ errs []error }

func (h *halts) Retry(context.Context, retry.Consumer, *event.Event, int, time.Duration, error) {}
func (h *halts) Halted(_ context.Context, _ retry.Consumer, _ *event.Event, err error) {
	h.errs = append(h.errs, err)
}

// TestUnfencedReporter: a cluster node's index fenced off by the shared store (another node
// took over) is not reported as halted; any other failure is.
func TestUnfencedReporter(t *testing.T) {
	t.Parallel()
	h := &halts{}
	r := unfencedReporter{h}
	c := retry.Consumer{Kind: retry.Index, Name: "by_user"}
	r.Halted(t.Context(), c, &event.Event{}, fmt.Errorf("index: by_user: write entries: %w", indexpg.ErrFenced))
	other := errors.New("index/pg: write: connection refused")
	r.Halted(t.Context(), c, &event.Event{}, other)
	if len(h.errs) != 1 || h.errs[0] != other {
		t.Fatalf("reported halts %v; want only %v", h.errs, other)
	}
}
