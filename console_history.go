package walflow

import (
	"context"
	"sync"
	"time"

	"github.com/walflow/walflow/realtime"
)

// ConsoleWindow is how far back the console's history reaches.
const ConsoleWindow = time.Hour

// consoleMaxSamples bounds the history's memory whatever Config.ConsoleInterval is.
const consoleMaxSamples = 36000

// ConsoleHistory is the body of GET /console/api/history: the samples the console draws its
// charts from, oldest first.
type ConsoleHistory struct {
	// IntervalMS is the time between two samples (Config.ConsoleInterval), in milliseconds.
	IntervalMS int64 `json:"interval_ms"`
	// WindowSeconds is how far back the history reaches: ConsoleWindow, in seconds.
	WindowSeconds int64 `json:"window_seconds"`
	// Samples are the samples after the requested sequence number, oldest first.
	Samples []ConsoleSample `json:"samples"`
}

// ConsoleSample is the engine measured at one moment. Its values come from the same
// function as /status (and the realtime gateway's counters, as /metrics shows them), with
// the slot as last measured (every Config.StatusInterval).
type ConsoleSample struct {
	// Seq numbers the samples from 1, without gaps; ask for the samples after the last one
	// seen with ?after=SEQ.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Streaming reports whether the replication connection is up ([Status].Streaming).
	Streaming bool `json:"streaming"`
	// EventsAppended is [Status].EventsAppended, and EventsPerSecond its rate since the
	// previous sample (0 for the first).
	EventsAppended  uint64  `json:"events_appended"`
	EventsPerSecond float64 `json:"events_per_second"`
	// SlotMeasured reports whether the slot's last measurement succeeded; the slot's values
	// are 0 when it did not.
	SlotMeasured bool   `json:"slot_measured"`
	SlotLagBytes int64  `json:"slot_lag_bytes"`
	RetainedWAL  int64  `json:"retained_wal_bytes"`
	LedgerHead   uint64 `json:"ledger_head"`
	LedgerTail   uint64 `json:"ledger_tail"`
	// Alerts are the reasons of the crossed budgets ([Status].Alerts).
	Alerts []string `json:"alerts,omitempty"`
	// Consumers are the operators, projectors and indexes, in that order and each in
	// configuration order.
	Consumers []ConsoleConsumer `json:"consumers"`
	// Realtime is the gateway's activity; nil without Config.Realtime.
	Realtime *ConsoleRealtime `json:"realtime,omitempty"`
}

// Kinds of [ConsoleConsumer].
const (
	ConsumerOperator  = "operator"
	ConsumerProjector = "projector"
	ConsumerIndex     = "index"
)

// ConsoleConsumer is an operator's, projector's or index's progress in a [ConsoleSample].
type ConsoleConsumer struct {
	// Kind is ConsumerOperator, ConsumerProjector or ConsumerIndex.
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Position is the operator's and projector's position, the index's checkpoint.
	Position uint64 `json:"position"`
	// LagEvents is the ledger head minus Position.
	LagEvents uint64 `json:"lag_events"`
	// State is an operator's halted, parked (it has parked events), running, or starting
	// (its checkpoint is not read yet, so Position is 0); a
	// projector's or index's phase (live, rehydrating, standby, halted, catching_up,
	// stopped).
	State string `json:"state"`
	// Error is why the consumer halted; "" when it did not.
	Error string `json:"error,omitempty"`
	// ParkedEvents and ParkedIDs count an operator's parked events and the derived rows
	// they wait for.
	ParkedEvents int `json:"parked_events,omitempty"`
	ParkedIDs    int `json:"parked_ids,omitempty"`
}

// ConsoleRealtime is the realtime gateway's activity in a [ConsoleSample].
type ConsoleRealtime struct {
	// Connections is the number of streams open.
	Connections int `json:"connections"`
	// MessagesSent counts the event messages written to clients, and MessagesPerSecond is
	// its rate since the previous sample.
	MessagesSent      uint64  `json:"messages_sent"`
	MessagesPerSecond float64 `json:"messages_per_second"`
	// LatencyP50Seconds and LatencyP99Seconds are the median and 99th percentile delivery
	// latency (commit to write) of the messages sent since the previous sample, estimated
	// from walflow_realtime_delivery_latency_seconds's buckets; null when none was sent.
	LatencyP50Seconds *float64 `json:"latency_p50_seconds"`
	LatencyP99Seconds *float64 `json:"latency_p99_seconds"`
}

// consoleHistory keeps the last ConsoleWindow of samples in a ring.
type consoleHistory struct {
	mu      sync.Mutex
	ring    []ConsoleSample
	start   int // index of the oldest sample
	n       int // samples held
	seq     uint64
	latency realtime.LatencyHistogram // the histogram at the last sample
}

func newConsoleHistory(interval time.Duration) *consoleHistory {
	size := int(ConsoleWindow / interval)
	size = min(max(size, 1), consoleMaxSamples)
	return &consoleHistory{ring: make([]ConsoleSample, size)}
}

// add numbers s, fills in its rates from the previous sample, and keeps it, dropping the
// oldest sample when the ring is full. lat is the gateway's latency histogram now.
func (h *consoleHistory) add(s ConsoleSample, lat realtime.LatencyHistogram) ConsoleSample {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	s.Seq = h.seq
	if h.n > 0 {
		prev := h.ring[(h.start+h.n-1)%len(h.ring)]
		if dt := s.Time.Sub(prev.Time).Seconds(); dt > 0 {
			s.EventsPerSecond = float64(s.EventsAppended-min(s.EventsAppended, prev.EventsAppended)) / dt
			if s.Realtime != nil && prev.Realtime != nil {
				s.Realtime.MessagesPerSecond = float64(s.Realtime.MessagesSent-min(s.Realtime.MessagesSent, prev.Realtime.MessagesSent)) / dt
			}
		}
	}
	if s.Realtime != nil {
		d := lat.Sub(h.latency)
		if q, ok := d.Quantile(0.5); ok {
			s.Realtime.LatencyP50Seconds = &q
		}
		if q, ok := d.Quantile(0.99); ok {
			s.Realtime.LatencyP99Seconds = &q
		}
		h.latency = lat
	}
	if h.n < len(h.ring) {
		h.ring[(h.start+h.n)%len(h.ring)] = s
		h.n++
	} else {
		h.ring[h.start] = s
		h.start = (h.start + 1) % len(h.ring)
	}
	return s
}

// after returns the samples whose Seq is greater than seq, oldest first.
func (h *consoleHistory) after(seq uint64) []ConsoleSample {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]ConsoleSample, 0, h.n)
	for i := range h.n {
		s := h.ring[(h.start+i)%len(h.ring)]
		if s.Seq > seq {
			out = append(out, s)
		}
	}
	return out
}

// sampleConsole keeps the console's history every Config.ConsoleInterval until ctx ends.
func (e *Engine) sampleConsole(ctx context.Context) {
	t := time.NewTicker(e.cfg.ConsoleInterval)
	defer t.Stop()
	for {
		e.consoleSample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// consoleSample measures the engine into a sample and adds it to the history.
func (e *Engine) consoleSample(ctx context.Context) ConsoleSample {
	// The time is taken before the reads, so that a slow read does not shorten the next
	// interval and inflate its rates.
	now := time.Now()
	st := e.status(ctx, e.slot.Load())
	s := ConsoleSample{
		Time: now, Streaming: st.Streaming, EventsAppended: st.EventsAppended,
		SlotMeasured: st.SlotExists && st.SlotError == "", SlotLagBytes: st.SlotLagBytes, RetainedWAL: st.RetainedWAL,
		LedgerHead: st.LedgerHead, LedgerTail: st.LedgerTail, Consumers: []ConsoleConsumer{},
	}
	for _, a := range st.Alerts {
		s.Alerts = append(s.Alerts, a.Reason)
	}
	s.Consumers = append(s.Consumers, consoleConsumers(st, e.ops == nil || e.ops.Loaded())...)
	var lat realtime.LatencyHistogram
	if e.gw != nil {
		gs := e.gw.Stats()
		s.Realtime = &ConsoleRealtime{Connections: gs.Connections, MessagesSent: gs.MessagesSent}
		lat = e.gw.DeliveryLatency()
	}
	return e.console.add(s, lat)
}

// consoleConsumers lists the consumers of st; opsLoaded says whether the operators'
// positions are their checkpoints yet (before, they are starting).
func consoleConsumers(st Status, opsLoaded bool) []ConsoleConsumer {
	var out []ConsoleConsumer
	lag := func(pos uint64) uint64 { return st.LedgerHead - min(st.LedgerHead, pos) }
	for _, o := range st.Operators {
		c := ConsoleConsumer{Kind: ConsumerOperator, Name: o.Name, Position: uint64(o.Position), LagEvents: lag(uint64(o.Position)),
			State: "running", ParkedEvents: o.ParkedEvents, ParkedIDs: o.ParkedIDs}
		switch {
		case !opsLoaded:
			c.State = "starting"
		case o.Halted:
			c.State = "halted"
		case o.ParkedEvents > 0:
			c.State = "parked"
		}
		out = append(out, c)
	}
	for _, p := range st.Projectors {
		out = append(out, ConsoleConsumer{Kind: ConsumerProjector, Name: p.Name, Position: uint64(p.Position), LagEvents: p.Lag,
			State: p.Phase.String(), Error: p.Error})
	}
	for _, ix := range st.Indexes {
		out = append(out, ConsoleConsumer{Kind: ConsumerIndex, Name: ix.Indexer, Position: uint64(ix.Checkpoint), LagEvents: ix.Lag,
			State: ix.Phase.String()})
	}
	return out
}
