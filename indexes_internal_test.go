package walflow

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexmemory "github.com/walflow/walflow/index/memory"
	indexpg "github.com/walflow/walflow/index/pg"
	ledgermemory "github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/retry"
)

// halts records the halts reported to it.
type halts struct{ errs []error }

func (h *halts) Retry(context.Context, retry.Consumer, *event.Event, int, time.Duration, error) {}
func (h *halts) Halted(_ context.Context, _ retry.Consumer, _ *event.Event, err error) {
	h.errs = append(h.errs, err)
}

// permanentErr is a failure that retrying cannot heal, as an indexer's Func failing.
type permanentErr struct{ error }

func (permanentErr) Permanent() bool { return true }

// TestUnfencedReporter: a cluster node's index fenced off by the shared store (another node
// took over), or failing on a passing error the node retries, is not reported as halted; a
// permanent failure is.
func TestUnfencedReporter(t *testing.T) {
	t.Parallel()
	h := &halts{}
	r := unfencedReporter{h}
	c := retry.Consumer{Kind: retry.Index, Name: "by_user"}
	r.Halted(t.Context(), c, &event.Event{}, fmt.Errorf("index: by_user: write entries: %w", indexpg.ErrFenced))
	r.Halted(t.Context(), c, &event.Event{}, errors.New("index/pg: write: connection refused"))
	other := permanentErr{errors.New("index: by_user: Func panicked on the event at position 3")}
	r.Halted(t.Context(), c, &event.Event{}, other)
	if len(h.errs) != 1 || h.errs[0] != other {
		t.Fatalf("reported halts %v; want only %v", h.errs, other)
	}
}

// failingState is an index store whose State fails, as a cluster's shared store does while
// PostgreSQL is unreachable.
type failingState struct{ *indexmemory.Store }

func (failingState) State(context.Context, string) (index.State, bool, error) {
	return index.State{}, false, errors.New("index/pg: read state: connection refused")
}

// TestIndexesCheckpointUnreadable: when the indexes' checkpoints cannot be read, retention
// is told so (an error), not that there are no indexes to wait for, and its round truncates
// nothing.
func TestIndexesCheckpointUnreadable(t *testing.T) {
	t.Parallel()
	led := ledgermemory.New(nil)
	r, err := index.New(index.Config{Ledger: led, Store: failingState{indexmemory.New()}, Indexers: []index.Indexer{index.Field("by_post", "post_id")}})
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{idx: r}
	low, ok, err := e.indexesCheckpoint(t.Context())
	if err == nil || ok {
		t.Fatalf("indexesCheckpoint = %d, %v, %v; want an error, so that retention skips the round", low, ok, err)
	}
}
