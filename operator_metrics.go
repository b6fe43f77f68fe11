package walflow

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/retry"
)

// operatorMetrics counts operator retries and halts for /metrics and passes the reports
// of operators and projectors on to the configured reporter.
type operatorMetrics struct {
	next retry.Reporter
	mu   sync.Mutex
	// retries and halts per consumer.
	retries map[retry.Consumer]uint64
	halts   map[retry.Consumer]uint64
}

func newOperatorMetrics(next retry.Reporter, log *slog.Logger) *operatorMetrics {
	if next == nil {
		next = retry.LogReporter{Logger: log}
	}
	return &operatorMetrics{next: next, retries: map[retry.Consumer]uint64{}, halts: map[retry.Consumer]uint64{}}
}

func (m *operatorMetrics) Retry(ctx context.Context, c retry.Consumer, e *event.Event, attempt int, delay time.Duration, err error) {
	m.mu.Lock()
	m.retries[c]++
	m.mu.Unlock()
	m.next.Retry(ctx, c, e, attempt, delay, err)
}

func (m *operatorMetrics) Halted(ctx context.Context, c retry.Consumer, e *event.Event, err error) {
	m.mu.Lock()
	m.halts[c]++
	m.mu.Unlock()
	m.next.Halted(ctx, c, e, err)
}

// counts returns the retries and halts of the operator called op.
func (m *operatorMetrics) counts(op string) (retries, halts uint64) {
	c := retry.Consumer{Kind: retry.Operator, Name: op}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.retries[c], m.halts[c]
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
