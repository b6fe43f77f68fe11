package alert

import (
	"context"
	"log/slog"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Monitor keeps the latest checks and reports their transitions. It is safe for concurrent
// use.
type Monitor struct {
	log *slog.Logger

	mu     sync.Mutex
	checks []Check // the latest, in evaluation order
}

// NewMonitor returns a Monitor that logs to log.
func NewMonitor(log *slog.Logger) *Monitor { return &Monitor{log: log} }

// Update records an evaluation. A check that became active is logged once at WARN, one
// that stopped being active once at INFO; an unchanged one is not logged. A check of the
// previous evaluation that checks lacks (its value could not be measured this time) keeps
// its previous state.
func (m *Monitor) Update(ctx context.Context, checks []Check) {
	m.mu.Lock()
	prev := make(map[string]Check, len(m.checks))
	for _, c := range m.checks {
		prev[c.key()] = c
	}
	next := slices.Clone(checks)
	seen := make(map[string]bool, len(next))
	var crossed, recovered []Check
	for _, c := range next {
		seen[c.key()] = true
		p, had := prev[c.key()]
		switch {
		case c.Active && (!had || !p.Active):
			crossed = append(crossed, c)
		case !c.Active && had && p.Active:
			recovered = append(recovered, c)
		}
	}
	for _, c := range m.checks {
		if !seen[c.key()] {
			next = append(next, c)
		}
	}
	m.checks = next
	m.mu.Unlock()
	for _, c := range crossed {
		m.log.WarnContext(ctx, "over budget", attrs(c)...)
	}
	for _, c := range recovered {
		m.log.InfoContext(ctx, "back within budget", attrs(c)...)
	}
}

func attrs(c Check) []any {
	return []any{slog.String("alert", c.Alert), slog.String("kind", c.Kind), slog.String("name", c.Name),
		slog.Int64("value", c.Value), slog.Int64("budget", c.Budget), slog.String("unit", c.Unit), slog.String("reason", c.Reason)}
}

// Checks returns the latest checks, active or not.
func (m *Monitor) Checks() []Check {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.checks)
}

// Active returns the latest checks that are over budget.
func (m *Monitor) Active() []Check {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Active(m.checks)
}

var activeDesc = prometheus.NewDesc("walflow_alert_active",
	"1 while the budget is crossed, 0 while it is kept; one series per budget that applies (see the alerts configuration).",
	[]string{"alert", "kind", "name"}, nil)

// Collector exports walflow_alert_active{alert, kind, name} for every check.
func (m *Monitor) Collector() prometheus.Collector { return collector{m} }

type collector struct{ m *Monitor }

func (c collector) Describe(ch chan<- *prometheus.Desc) { ch <- activeDesc }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, k := range c.m.Checks() {
		v := 0.0
		if k.Active {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, v, k.Alert, k.Kind, k.Name)
	}
}
