package walflow

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/projector"
)

// openProjectors builds the runner of Config.Projectors on the engine's ledger and pool.
func (e *Engine) openProjectors() error {
	if len(e.cfg.Projectors) == 0 {
		return nil
	}
	cfg := projector.Config{
		Ledger: e.led, DB: e.pool, Store: e.cfg.ProjectorStore, Projectors: e.cfg.Projectors,
		Retry: e.cfg.OperatorRetry, Reporter: e.opMetrics, Logger: e.cfg.Logger,
		SharedLedger: e.cfg.Cluster != nil, // the cluster's stream, which each node reads at its own pace
	}
	if e.idx != nil {
		cfg.Indexes = e.idx
	}
	r, err := projector.New(cfg)
	if err != nil {
		return fmt.Errorf("walflow: projectors: %w", err)
	}
	e.projs = r
	return nil
}

// Projectors returns the runner of Config.Projectors (Status, WaitLive, Restart, Reset),
// or nil when none is configured.
func (e *Engine) Projectors() *projector.Runner { return e.projs }

// projectorsPosition is the lowest stored position of the projectors, which retention
// does not pass: a projector resumes from it after a restart.
func (e *Engine) projectorsPosition() (event.Position, bool) {
	if e.projs == nil {
		return 0, false
	}
	sts := e.projs.Status()
	if len(sts) == 0 {
		return 0, false
	}
	low := sts[0].Position
	for _, s := range sts[1:] {
		low = min(low, s.Position)
	}
	return low, true
}

var (
	projectorPositionDesc = prometheus.NewDesc("walflow_projector_position", "Ledger position through which the projector has applied every event.", []string{"projector"}, nil)
	projectorLagDesc      = prometheus.NewDesc("walflow_projector_lag_events", "Ledger positions between the head and the projector's position.", []string{"projector"}, nil)
	projectorHaltedDesc   = prometheus.NewDesc("walflow_projector_halted", "1 while the projector is halted.", []string{"projector"}, nil)
	projectorStandbyDesc  = prometheus.NewDesc("walflow_projector_standby", "1 while another process holds the projector's lock and runs it.", []string{"projector"}, nil)
)

// projectorCollector exports each projector's position, lag, halt and standby.
type projectorCollector struct{ e *Engine }

func (c projectorCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- projectorPositionDesc
	ch <- projectorLagDesc
	ch <- projectorHaltedDesc
	ch <- projectorStandbyDesc
}

func (c projectorCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.e.projs.Status() {
		halted, standby := 0.0, 0.0
		switch s.Phase {
		case projector.Halted:
			halted = 1
		case projector.Standby:
			standby = 1
		}
		ch <- prometheus.MustNewConstMetric(projectorPositionDesc, prometheus.GaugeValue, float64(s.Position), s.Name)
		ch <- prometheus.MustNewConstMetric(projectorLagDesc, prometheus.GaugeValue, float64(s.Lag), s.Name)
		ch <- prometheus.MustNewConstMetric(projectorHaltedDesc, prometheus.GaugeValue, halted, s.Name)
		ch <- prometheus.MustNewConstMetric(projectorStandbyDesc, prometheus.GaugeValue, standby, s.Name)
	}
}

// hasTxProjector reports whether a projector needs the database for its transactions.
func hasTxProjector(ps []projector.Projector) bool {
	for _, p := range ps {
		if p.HandleTx != nil {
			return true
		}
	}
	return false
}
