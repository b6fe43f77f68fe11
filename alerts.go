package walflow

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/walflow/walflow/alert"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/projector"
)

// alertState is the engine's evaluation of Config.Alerts.
type alertState struct {
	monitor *alert.Monitor

	mu sync.Mutex
	// oldest caches, per consumer, the commit time of the event after its checkpoint, so
	// that a consumer that does not move costs no ledger read.
	oldest map[string]oldestAfter
}

type oldestAfter struct {
	pos event.Position
	at  time.Time
}

func (a *alertState) init(log *slog.Logger) {
	a.monitor = alert.NewMonitor(log.With(slog.String("component", "alerts")))
	a.oldest = map[string]oldestAfter{}
}

// checkAlerts evaluates Config.Alerts against the slot sample s and the consumers' progress.
func (e *Engine) checkAlerts(ctx context.Context, s *slotSample) {
	if e.cfg.Alerts.IsZero() || ctx.Err() != nil {
		return
	}
	e.alerts.monitor.Update(ctx, alert.Evaluate(e.alertSnapshot(ctx, s), e.cfg.Alerts))
}

// alertSnapshot measures what the budgets are evaluated against. A consumer's age is the
// commit time of the event right after its checkpoint, read from the ledger only when the
// consumer has an age budget, is behind, and moved since the last read: one read of one
// event per moving consumer per evaluation.
func (e *Engine) alertSnapshot(ctx context.Context, s *slotSample) alert.Snapshot {
	head := e.led.State().Head
	snap := alert.Snapshot{Slot: e.cfg.Slot, Now: time.Now()}
	if s != nil && s.err == nil && s.exists {
		snap.SlotMeasured, snap.SlotRetainedWAL = true, s.info.RetainedBytes
	}
	add := func(kind, name string, pos event.Position) {
		c := alert.Consumer{Kind: kind, Name: name, Lag: uint64(head - min(head, pos))}
		if c.Lag > 0 && e.cfg.Alerts.For(name).Age > 0 {
			c.Oldest = e.oldestAfter(ctx, kind+"/"+name, pos)
		}
		snap.Consumers = append(snap.Consumers, c)
	}
	// A consumer whose position is not known yet (operators before Run read their
	// checkpoints, projectors not started or run by another process) is left out.
	if e.ops != nil && e.ops.Loaded() {
		for _, o := range e.ops.Operators() {
			add(alert.KindOperator, o.Name, o.Position)
		}
	}
	if e.projs != nil {
		for _, p := range e.projs.Status() {
			if p.Phase != projector.Stopped && p.Phase != projector.Standby {
				add(alert.KindProjector, p.Name, p.Position)
			}
		}
	}
	if e.idx != nil {
		// An index whose status cannot be read is left out: its checks keep their state.
		if sts, err := e.idx.Status(ctx); err == nil {
			for _, st := range sts {
				add(alert.KindIndex, st.Indexer, st.Checkpoint)
			}
		}
	}
	return snap
}

// oldestAfter returns the commit time of the first event after pos, or the zero time when
// the ledger cannot say (the event was removed, or the read failed).
func (e *Engine) oldestAfter(ctx context.Context, key string, pos event.Position) time.Time {
	e.alerts.mu.Lock()
	defer e.alerts.mu.Unlock()
	if c, ok := e.alerts.oldest[key]; ok && c.pos == pos {
		return c.at
	}
	evs, err := e.led.Read(ctx, pos, 1)
	if err != nil || len(evs) == 0 {
		return time.Time{}
	}
	e.alerts.oldest[key] = oldestAfter{pos: pos, at: evs[0].Timestamp}
	return evs[0].Timestamp
}

// Readiness is the body of /readyz.
type Readiness struct {
	// Ready reports whether walflow streams from the slot within every budget.
	Ready bool `json:"ready"`
	// Streaming reports whether the replication connection is up.
	Streaming bool `json:"streaming"`
	// Reasons say why it is not ready, one line each.
	Reasons []string `json:"reasons,omitempty"`
	// Alerts are the crossed budgets of Config.Alerts.
	Alerts []alert.Check `json:"alerts,omitempty"`
}

// serveReadyz answers 200 while walflow streams within every budget, 503 otherwise, with a
// [Readiness] as JSON either way.
func (e *Engine) serveReadyz(w http.ResponseWriter, r *http.Request) {
	rd := Readiness{Streaming: e.src.Stats().Connected.Load(), Alerts: e.alerts.monitor.Active()}
	if ok, reason := e.serving(); !ok {
		rd.Reasons = append(rd.Reasons, reason)
	}
	for _, c := range rd.Alerts {
		rd.Reasons = append(rd.Reasons, c.Reason)
	}
	rd.Ready = len(rd.Reasons) == 0
	w.Header().Set("Content-Type", "application/json")
	if !rd.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(rd)
}
