package retry

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/walflow/walflow/event"
)

// Kind is the kind of a ledger consumer.
type Kind uint8

// Kinds of consumers.
const (
	// Operator: an operator of package operator, keeping a derived table.
	Operator Kind = iota + 1
	// Projector: a projector of package projector.
	Projector
	// Index: an indexer of package index.
	Index
)

// String returns operator, projector or index.
func (k Kind) String() string {
	switch k {
	case Operator:
		return "operator"
	case Projector:
		return "projector"
	case Index:
		return "index"
	default:
		return "kind(" + strconv.Itoa(int(k)) + ")"
	}
}

// Consumer names the consumer that failed: its kind and its name, which is unique among
// the consumers of its kind (an operator and a projector may share a name).
type Consumer struct {
	Kind Kind
	Name string
}

// String returns the kind and the name, like "operator post_counts".
func (c Consumer) String() string { return c.Kind.String() + " " + c.Name }

// Reporter receives the failures of consumers. Its methods are called from the failing
// consumer's goroutine, so they must be safe for concurrent use and must not block for
// long: the consumer waits for them.
type Reporter interface {
	// Retry reports a failure on e that will be retried after delay (attempt counts from 1).
	Retry(ctx context.Context, c Consumer, e *event.Event, attempt int, delay time.Duration, err error)
	// Halted reports the final failure: the consumer stopped at e, and stays stopped until
	// a person restarts it. e is an empty event (position 0) when the failure belongs to
	// no event (an operator whose checkpoint belongs to another ledger, an index whose
	// store failed).
	Halted(ctx context.Context, c Consumer, e *event.Event, err error)
}

// LogReporter reports failures to a slog.Logger: retries as warnings, halts as errors
// saying how to go on. Each record has the attributes component and the consumer's kind
// (both set to the kind, the latter to its name: component=operator operator=post_counts).
type LogReporter struct{ Logger *slog.Logger }

// Retry logs a retry.
func (r LogReporter) Retry(ctx context.Context, c Consumer, e *event.Event, attempt int, delay time.Duration, err error) {
	r.Logger.WarnContext(ctx, c.Kind.String()+" failed; retrying", slog.String("component", c.Kind.String()),
		slog.String(c.Kind.String(), c.Name), slog.Uint64("position", uint64(e.Position)), slog.String("entity", e.Name),
		slog.String("type", e.Type.String()), slog.Int("attempt", attempt), slog.Duration("delay", delay), slog.Any("error", err))
}

// Halted logs a halt.
func (r LogReporter) Halted(ctx context.Context, c Consumer, e *event.Event, err error) {
	r.Logger.ErrorContext(ctx, c.Kind.String()+" halted; "+fixHint(c.Kind), slog.String("component", c.Kind.String()),
		slog.String(c.Kind.String(), c.Name), slog.Uint64("position", uint64(e.Position)), slog.String("entity", e.Name),
		slog.String("type", e.Type.String()), slog.Any("error", err))
}

// fixHint says how a halted consumer of kind k goes on.
func fixHint(k Kind) string {
	switch k {
	case Operator:
		return "fix the cause, then restart it (walflow operator restart) or skip the event (walflow operator skip)"
	case Projector:
		return "fix the cause, then restart it (Runner.Restart) or reset it (Runner.Reset)"
	default:
		return "fix the cause, then start walflow again"
	}
}

// SleepFunc waits d or until ctx ends, and returns ctx's error when ctx ended first. Tests
// pass a fake one to observe retry delays without waiting.
type SleepFunc func(ctx context.Context, d time.Duration) error

// Sleep is the default SleepFunc: a timer.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
