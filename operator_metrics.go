package walflow

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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

var (
	opParkedEventsDesc = prometheus.NewDesc("walflow_operator_parked_events", "Events the operator parked (on_failure: park) that are not retried or discarded yet.", []string{"operator"}, nil)
	opParkedIDsDesc    = prometheus.NewDesc("walflow_operator_parked_ids", "Derived rows whose events the operator parked.", []string{"operator"}, nil)
)

// describeParked and collectParked add the parked-event gauges to the operator collector.
func describeParked(ch chan<- *prometheus.Desc) {
	ch <- opParkedEventsDesc
	ch <- opParkedIDsDesc
}

func collectParked(ch chan<- prometheus.Metric, o operator.Info) {
	ch <- prometheus.MustNewConstMetric(opParkedEventsDesc, prometheus.GaugeValue, float64(o.ParkedEvents), o.Name)
	ch <- prometheus.MustNewConstMetric(opParkedIDsDesc, prometheus.GaugeValue, float64(o.ParkedIDs), o.Name)
}
