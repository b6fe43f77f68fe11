package processstatus

import (
	"context"
	"errors"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Parker is implemented by a [Watermark] whose operators may park events
// (*operator.Runner, for operators with OnFailure Park): an operator's watermark passes the
// events it parks, since the other rows go on, but a parked event is not processed.
type Parker interface {
	// ParkedPositions returns the ledger positions of the events parked now, in any order.
	// Like CommittedThrough it is called often and must not block; an event must be in it
	// before CommittedThrough passes it, and may leave it once applied.
	ParkedPositions() []event.Position
}

// parkedEvent is what the tracker knows of a parked event.
type parkedEvent struct {
	entity string
	micros int64
	ok     bool // micros is known
	lsn    event.LSN
}

// parkedView is the published exclusion of parked events: their timestamps per entity and
// the LSN of the first.
type parkedView struct {
	micros   map[string]map[int64]bool
	firstLSN event.LSN // 0 when nothing is parked
}

// refreshParked reads the watermark's parked events, after its CommittedThrough values
// (so that a park published with them is seen), and reports whether the view changed.
func (t *Tracker) refreshParked(ctx context.Context) (bool, error) {
	p, ok := t.cfg.Watermark.(Parker)
	if !ok {
		return false, nil
	}
	now := p.ParkedPositions()
	keep := make(map[event.Position]bool, len(now))
	changed := false
	for _, pos := range now {
		keep[pos] = true
		if _, known := t.parked[pos]; known {
			continue
		}
		evs, err := t.cfg.Ledger.Read(ctx, pos-1, 1)
		if errors.Is(err, ledger.ErrTruncated) {
			continue
		}
		if err != nil {
			return false, err
		}
		if len(evs) != 1 || evs[0].Position != pos {
			continue
		}
		e := &evs[0]
		micros, mok, _ := eventMicros(e, t.entity(e.Name).column)
		t.parked[pos] = parkedEvent{entity: e.Name, micros: micros, ok: mok, lsn: e.LSN}
		changed = true
	}
	for pos := range t.parked {
		if !keep[pos] {
			delete(t.parked, pos)
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	v := parkedView{micros: map[string]map[int64]bool{}}
	for _, pe := range t.parked {
		if pe.ok {
			if v.micros[pe.entity] == nil {
				v.micros[pe.entity] = map[int64]bool{}
			}
			v.micros[pe.entity][pe.micros] = true
		}
		if pe.lsn > 0 && (v.firstLSN == 0 || pe.lsn < v.firstLSN) {
			v.firstLSN = pe.lsn
		}
	}
	t.mu.Lock()
	t.parkedView = v
	t.broadcast()
	t.mu.Unlock()
	return true, nil
}
