package walflow

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/operator"
)

// operatorMetrics counts operator retries and halts for /metrics and passes them on to the
// configured reporter.
type operatorMetrics struct {
	next operator.ErrorReporter
	mu   sync.Mutex
	// retries and halts per operator name.
	retries map[string]uint64
	halts   map[string]uint64
}

func newOperatorMetrics(next operator.ErrorReporter, log *slog.Logger) *operatorMetrics {
	if next == nil {
		next = operator.LogReporter{Logger: log.With(slog.String("component", "operator"))}
	}
	return &operatorMetrics{next: next, retries: map[string]uint64{}, halts: map[string]uint64{}}
}

func (m *operatorMetrics) Retry(ctx context.Context, op string, e *event.Event, attempt int, delay time.Duration, err error) {
	m.mu.Lock()
	m.retries[op]++
	m.mu.Unlock()
	m.next.Retry(ctx, op, e, attempt, delay, err)
}

func (m *operatorMetrics) Halted(ctx context.Context, op string, e *event.Event, err error) {
	m.mu.Lock()
	m.halts[op]++
	m.mu.Unlock()
	m.next.Halted(ctx, op, e, err)
}

func (m *operatorMetrics) counts(op string) (retries, halts uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.retries[op], m.halts[op]
}
