package walflow

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walflow/walflow/alert"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/projector"
)

// Status is a snapshot of the engine and its slot.
type Status struct {
	Slot          string    `json:"slot"`
	SlotExists    bool      `json:"slot_exists"`
	SlotActive    bool      `json:"slot_active"`
	SlotWALStatus string    `json:"slot_wal_status,omitempty"`
	ConfirmedLSN  event.LSN `json:"confirmed_lsn"`
	RetainedWAL   int64     `json:"retained_wal_bytes"`
	SlotLagBytes  int64     `json:"slot_lag_bytes"`
	// SlotError says why the slot could not be read (without a package prefix, ready to
	// show after the slot's name); "" when it was.
	SlotError      string    `json:"slot_error,omitempty"`
	Streaming      bool      `json:"streaming"`
	LedgerHead     uint64    `json:"ledger_head"`
	LedgerTail     uint64    `json:"ledger_tail"`
	LastCommitLSN  event.LSN `json:"last_commit_lsn"`
	AckedLSN       event.LSN `json:"acked_lsn"`
	EventsReceived uint64    `json:"events_received"`
	EventsAppended uint64    `json:"events_appended"`
	Reconnects     uint64    `json:"reconnects"`
	// Alerts are the budgets of Config.Alerts crossed at the last evaluation.
	Alerts []alert.Check `json:"alerts,omitempty"`
	// Operators are the configured operators' progress in this process.
	Operators []operator.Info `json:"operators,omitempty"`
	// Indexes are the configured indexes' progress (Config.Indexers), in configuration
	// order: each one's phase, checkpoint (the last position indexed) and lag.
	Indexes []index.Status `json:"indexes,omitempty"`
	// IndexError says why Indexes could not be read; "" when they were.
	IndexError string `json:"index_error,omitempty"`
	// Projectors are the configured projectors' progress in this process
	// (Config.Projectors), in configuration order: each one's phase (live, rehydrating,
	// standby, halted), stored position, lag and the error that halted it.
	Projectors []projector.Status `json:"projectors,omitempty"`
	// Cluster is the cluster as this node sees it (Config.Cluster): the live nodes with
	// their roles, stream positions and lag, the leader and since when, and which node runs
	// each operator and projector. Nil without a cluster.
	Cluster *cluster.Status `json:"cluster,omitempty"`
}

// Status reports the slot (measured now) and the ledger.
func (e *Engine) Status(ctx context.Context) Status {
	s := e.sampleSlot(ctx)
	return e.status(ctx, s)
}

func (e *Engine) status(ctx context.Context, s *slotSample) Status {
	st := e.led.State()
	stats := e.src.Stats()
	out := Status{
		Slot: e.cfg.Slot, Streaming: stats.Connected.Load(),
		LedgerHead: uint64(st.Head), LedgerTail: uint64(st.Tail), LastCommitLSN: st.LastCommitLSN, AckedLSN: max(st.AckedLSN, st.LastEndLSN),
		EventsReceived: stats.EventsReceived.Load(), EventsAppended: stats.EventsAppended.Load(), Reconnects: stats.Reconnects.Load(),
		Alerts: e.alerts.monitor.Active(),
	}
	if e.ops != nil {
		out.Operators = e.ops.Operators()
	}
	if e.idx != nil {
		sts, err := e.idx.Status(ctx)
		if err != nil {
			out.IndexError = err.Error()
		}
		out.Indexes = sts
	}
	if e.projs != nil {
		out.Projectors = e.projs.Status()
	}
	if e.clu != nil {
		out.Cluster = e.clusterStatus(ctx)
	}
	if s != nil {
		s.fill(&out)
	}
	return out
}

// Handler serves the console (an HTML page at /, its assets and API under /console/; see
// docs/console.md), /metrics (Prometheus), /healthz (200 while streaming, 503 otherwise, with
// the reason), /readyz (200 while streaming within every budget of Config.Alerts, 503
// otherwise, with the reasons as JSON) and /status (the [Status] as JSON, with the slot as last measured), and, with
// Config.Realtime, the realtime gateway under Realtime.Path (its metrics in /metrics). In a
// cluster (Config.Cluster), "streaming" reads "connected to NATS": every node, leader or
// standby, serves readers from the shared stream.
func (e *Engine) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	stats := e.src.Stats()
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "walflow", Name: name, Help: help}, f)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "walflow", Name: name, Help: help}, f)
	}
	slot := func(f func(*slotSample) float64) func() float64 {
		return func() float64 {
			if s := e.slot.Load(); s != nil && s.err == nil && s.exists {
				return f(s)
			}
			return 0
		}
	}
	reg.MustRegister(
		counter("events_received_total", "Row changes decoded from the WAL, replays included.", func() float64 { return float64(stats.EventsReceived.Load()) }),
		counter("events_appended_total", "Events appended to the ledger.", func() float64 { return float64(stats.EventsAppended.Load()) }),
		counter("transactions_skipped_total", "Transactions replayed by PostgreSQL that the ledger already held.", func() float64 { return float64(stats.TxSkipped.Load()) }),
		counter("reconnects_total", "Replication sessions started after the first.", func() float64 { return float64(stats.Reconnects.Load()) }),
		gauge("ledger_head_position", "Last durable ledger position.", func() float64 { return float64(e.led.State().Head) }),
		gauge("ledger_tail_position", "Last ledger position removed by retention; reads start after it.", func() float64 { return float64(e.led.State().Tail) }),
		gauge("replication_connected", "1 while streaming from the slot.", func() float64 {
			if stats.Connected.Load() {
				return 1
			}
			return 0
		}),
		gauge("slot_lag_bytes", "WAL bytes between the server's current position and the slot's confirmed position.", slot(func(s *slotSample) float64 { return float64(s.info.LagBytes) })),
		gauge("slot_retained_wal_bytes", "WAL bytes the slot keeps on the server.", slot(func(s *slotSample) float64 { return float64(s.info.RetainedBytes) })),
	)
	reg.MustRegister(e.alerts.monitor.Collector())
	if e.ops != nil {
		reg.MustRegister(operatorCollector{e})
	}
	if e.gw != nil {
		reg.MustRegister(e.gw.Collector())
	}
	if e.idx != nil {
		reg.MustRegister(indexCollector{e})
	}
	if e.projs != nil {
		reg.MustRegister(projectorCollector{e})
	}
	mux := http.NewServeMux()
	e.mountRealtime(mux)
	e.mountConsole(mux)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if ok, reason := e.serving(); !ok {
			http.Error(w, reason, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", e.serveReadyz)
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		s := e.slot.Load()
		if s == nil || time.Since(s.at) > e.cfg.StatusInterval*2 || (!s.exists && stats.Connected.Load()) {
			s = e.sampleSlot(r.Context())
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(e.status(r.Context(), s))
	})
	return mux
}

var (
	opPositionDesc = prometheus.NewDesc("walflow_operator_position", "Ledger position through which the operator has committed.", []string{"operator"}, nil)
	opLagDesc      = prometheus.NewDesc("walflow_operator_lag_events", "Ledger positions between the head and the operator's checkpoint.", []string{"operator"}, nil)
	opHaltedDesc   = prometheus.NewDesc("walflow_operator_halted", "1 while the operator is halted.", []string{"operator"}, nil)
	opRetriesDesc  = prometheus.NewDesc("walflow_operator_retries_total", "Retries of failing operator events.", []string{"operator"}, nil)
	opHaltsDesc    = prometheus.NewDesc("walflow_operator_halts_total", "Times the operator halted.", []string{"operator"}, nil)
)

// operatorCollector reports every operator's progress and failures.
type operatorCollector struct{ e *Engine }

func (c operatorCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{opPositionDesc, opLagDesc, opHaltedDesc, opRetriesDesc, opHaltsDesc} {
		ch <- d
	}
	describeParked(ch)
}

func (c operatorCollector) Collect(ch chan<- prometheus.Metric) {
	head := c.e.led.State().Head
	for _, o := range c.e.ops.Operators() {
		halted := 0.0
		if o.Halted {
			halted = 1
		}
		retries, halts := c.e.opMetrics.counts(o.Name)
		ch <- prometheus.MustNewConstMetric(opPositionDesc, prometheus.GaugeValue, float64(o.Position), o.Name)
		ch <- prometheus.MustNewConstMetric(opLagDesc, prometheus.GaugeValue, float64(head-min(head, o.Position)), o.Name)
		ch <- prometheus.MustNewConstMetric(opHaltedDesc, prometheus.GaugeValue, halted, o.Name)
		ch <- prometheus.MustNewConstMetric(opRetriesDesc, prometheus.CounterValue, float64(retries), o.Name)
		ch <- prometheus.MustNewConstMetric(opHaltsDesc, prometheus.CounterValue, float64(halts), o.Name)
		collectParked(ch, o)
	}
}

// FetchStatus reads the Status a running engine serves at GET /status on addr (host:port
// of its Config.HTTPAddr), as the processes of a cluster, its demo and its tests watch one
// another. Bound the call with ctx.
func FetchStatus(ctx context.Context, addr string) (Status, error) {
	var st Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("walflow: GET http://%s/status: %s", addr, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
