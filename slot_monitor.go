package walflow

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/source/pgwal"
)

// slotMonitorApplicationName is the application_name of the slot monitor's connection, as
// pg_stat_activity shows it.
const slotMonitorApplicationName = "walflow_slot_monitor"

// slotSample is the slot's state as last measured.
type slotSample struct {
	info   pgwal.SlotInfo
	exists bool
	at     time.Time
	err    error
}

// fill sets the slot's fields of out from the sample.
func (s *slotSample) fill(out *Status) {
	out.SlotExists, out.SlotActive = s.exists, s.info.Active
	out.SlotWALStatus, out.ConfirmedLSN = s.info.WALStatus, s.info.ConfirmedFlush
	out.RetainedWAL, out.SlotLagBytes = s.info.RetainedBytes, s.info.LagBytes
	if s.err != nil {
		out.SlotError = s.err.Error()
	}
}

// MeasureSlot measures the replication slot named slot in the database at databaseURL
// now, as [Engine.Status] does, within 5s, over a connection of its own that it closes
// before returning. It returns a Status with only Slot and the slot's fields set
// (SlotExists false when there is no such slot, SlotError when it could not be read). It
// only reads: it creates no slot and starts nothing, so it works beside running walflows.
func MeasureSlot(ctx context.Context, databaseURL, slot string) Status {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r := &slotReader{dsn: databaseURL, slot: slot}
	s := r.read(ctx)
	r.close(ctx)
	out := Status{Slot: slot}
	s.fill(&out)
	return out
}

// pollSlot measures the slot's lag every StatusInterval for metrics and Status, and
// evaluates the alerts with it, until ctx ends.
func (e *Engine) pollSlot(ctx context.Context) {
	t := time.NewTicker(e.cfg.StatusInterval)
	defer t.Stop()
	defer e.slotReader.close(ctx) // a stopped engine holds no connection; Status connects again
	for {
		e.checkAlerts(ctx, e.sampleSlot(ctx))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sampleSlot measures the slot now, within 5s, and keeps the sample for metrics and
// /status unless ctx ended during the measurement.
func (e *Engine) sampleSlot(ctx context.Context) *slotSample {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s := e.slotReader.read(ctx)
	if ctx.Err() == nil || s.err == nil {
		e.slot.Store(s)
	}
	return s
}

// slotReader reads the replication slot's state over one kept connection: it connects at
// the first read, reuses the connection for every later one, and connects again when a
// read over it fails (a restarted server, a terminated backend). Reads are serialized.
type slotReader struct {
	dsn  string
	slot string

	mu   sync.Mutex
	conn *pgx.Conn // nil until the first read, after a failed one and after close
}

// read returns the slot's state now. A read over the kept connection that fails is tried
// once more over a new connection, so a connection broken since the last read shows no
// error.
func (r *slotReader) read(ctx context.Context) *slotSample {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &slotSample{at: time.Now()}
	reused := r.conn != nil
	s.info, s.exists, s.err = r.query(ctx)
	if s.err != nil && reused && ctx.Err() == nil {
		s.info, s.exists, s.err = r.query(ctx)
	}
	return s
}

// query reads the slot over the kept connection, connecting first when there is none; it
// drops the connection when the read fails. The caller holds mu.
func (r *slotReader) query(ctx context.Context) (pgwal.SlotInfo, bool, error) {
	if r.conn == nil {
		cfg, err := pgx.ParseConfig(r.dsn)
		if err != nil {
			return pgwal.SlotInfo{}, false, fmt.Errorf("connect to read the slot: %w", err)
		}
		cfg.RuntimeParams["application_name"] = slotMonitorApplicationName
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return pgwal.SlotInfo{}, false, fmt.Errorf("connect to read the slot: %w", err)
		}
		r.conn = conn
	}
	info, ok, err := pgwal.QuerySlot(ctx, r.conn, r.slot)
	if err != nil {
		r.closeConn(ctx)
	}
	return info, ok, err
}

// close closes the kept connection; a later read connects again.
func (r *slotReader) close(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeConn(ctx)
}

// closeConn closes the kept connection, within 5s. The caller holds mu.
func (r *slotReader) closeConn(ctx context.Context) {
	if r.conn == nil {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = r.conn.Close(cctx)
	r.conn = nil
}
