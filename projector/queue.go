package projector

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/walflow/walflow/event"
)

// item is an event read from the ledger and not applied yet.
type item struct {
	ev   event.Event
	key  string    // sequence key (table, or table/stream); "" without Sequence
	num  int64     // sequence number; 0 without Sequence
	wall time.Time // when it was read; sequence mode only
}

// queue holds a projector's events between the ledger and the handler: the ready ones, to
// apply in order, and in sequence mode the held ones, which wait for a smaller number. It
// does no I/O, so that its rules are tested with events alone.
//
// Its checkpoint keeps one invariant across crashes: every event read (at or before seen)
// whose number is below next[key] is applied, and every other one is after the stored
// Position. A restart reads again after Position and drops the events at or before the
// stored Seen whose number is below next: they are the ones applied already.
type queue struct {
	seq    *SequenceConfig // nil: ledger order only
	seen   event.Position  // every event at or before it was fed (or filtered out)
	replay event.Position  // the stored Seen at load
	next   map[string]int64
	held   map[string][]item // per key, sorted by number
	nheld  int
	ready  []item
	// latest is the latest commit time fed: the ledger's clock for Grace.
	latest time.Time
}

func newQueue(seq *SequenceConfig, cp Checkpoint) *queue {
	q := &queue{seq: seq, seen: cp.Position, replay: cp.Seen}
	if seq != nil {
		q.next = maps.Clone(cp.Sequence)
		if q.next == nil {
			q.next = map[string]int64{}
		}
		q.held = map[string][]item{}
	}
	return q
}

// advance records that every event at or before pos was fed or filtered out.
func (q *queue) advance(pos event.Position) { q.seen = max(q.seen, pos) }

func (q *queue) nextOf(key string) int64 {
	if n, ok := q.next[key]; ok {
		return n
	}
	return q.seq.Start
}

// number returns an event's sequence key and number.
func (c *SequenceConfig) number(e *event.Event) (string, int64, error) {
	key := e.Name
	if col := c.StreamColumn; col != "" {
		v, ok := e.NewRecord.Get(col)
		s, text := v.Text()
		if !ok || !text {
			return "", 0, fmt.Errorf("%w: event %d of %s has no %s value (StreamColumn)", ErrSequence, e.Position, e.Name, col)
		}
		key += "/" + s
	}
	v, ok := e.NewRecord.Get(c.Column)
	s, text := v.Text()
	if !ok || !text {
		return "", 0, fmt.Errorf("%w: event %d of %s has no %s value; set Sequence.Column to the table's sequence column", ErrSequence, e.Position, e.Name, c.Column)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("%w: event %d of %s: %s is %q, not an integer", ErrSequence, e.Position, e.Name, c.Column, s)
	}
	return key, n, nil
}

// lateEvent describes a skipped number that arrived anyway.
type lateEvent struct {
	key  string
	num  int64
	next int64
}

// feed takes the next event in ledger order, read at now. It returns a non-nil late when
// the event's number was skipped already and SkipLate dropped it. Its error (wrapping
// ErrSequence, ErrLate or ErrBufferFull) leaves the queue as it was.
func (q *queue) feed(e event.Event, now time.Time) (late *lateEvent, err error) {
	if q.seq == nil {
		q.ready = append(q.ready, item{ev: e})
		q.seen = max(q.seen, e.Position)
		return nil, nil
	}
	key, num, err := q.seq.number(&e)
	if err != nil {
		return nil, err
	}
	next := q.nextOf(key)
	switch {
	case num < next && e.Position <= q.replay:
		// Read again after a restart: applied before it.
	case num < next:
		if !q.seq.SkipLate {
			return nil, fmt.Errorf("%w: event %d of %s has number %d, but %s had moved on to %d after taking the missing numbers as rolled back (their transaction committed more than Sequence.Grace=%s late; raise Grace, or set SkipLate and restart)",
				ErrLate, e.Position, e.Name, num, key, next, q.seq.Grace)
		}
		late = &lateEvent{key: key, num: num, next: next}
	case num == next:
		q.ready = append(q.ready, item{ev: e, key: key, num: num})
		q.next[key] = num + 1
		q.release(key)
	default:
		h := q.held[key]
		i, dup := slices.BinarySearchFunc(h, num, func(it item, n int64) int { return cmp.Compare(it.num, n) })
		if dup {
			return nil, fmt.Errorf("%w: event %d of %s repeats number %d of %s, which event %d holds already", ErrSequence, e.Position, e.Name, num, key, h[i].ev.Position)
		}
		if q.nheld >= q.seq.Buffer {
			return nil, fmt.Errorf("%w: %d events wait for number %d of %s (event %d has %d); raise Sequence.Buffer, or lower Sequence.Grace if that number was rolled back",
				ErrBufferFull, q.nheld, next, key, e.Position, num)
		}
		q.held[key] = slices.Insert(h, i, item{ev: e, key: key, num: num, wall: now})
		q.nheld++
	}
	if e.Timestamp.After(q.latest) {
		q.latest = e.Timestamp
	}
	q.seen = max(q.seen, e.Position)
	return late, nil
}

// release moves the held events of key that follow next on into the ready queue.
func (q *queue) release(key string) {
	h := q.held[key]
	n := 0
	for n < len(h) && h[n].num == q.next[key] {
		q.ready = append(q.ready, h[n])
		q.next[key]++
		n++
	}
	q.nheld -= n
	if n == len(h) {
		delete(q.held, key)
	} else if n > 0 {
		q.held[key] = slices.Delete(h, 0, n)
	}
}

// gap is a run of numbers taken as rolled back.
type gap struct {
	key      string
	from, to int64 // inclusive
	waited   time.Duration
	byLedger bool // Grace passed in commit time, not only in wall time
}

// expire takes as rolled back every missing number that has been awaited for Grace: in
// commit time, or in wall time when caughtUp (the projector has read the whole ledger, so
// the number is not merely further on). It returns the gaps it skipped.
func (q *queue) expire(now time.Time, caughtUp bool) []gap {
	if q.seq == nil || q.nheld == 0 {
		return nil
	}
	var out []gap
	for _, key := range slices.Sorted(maps.Keys(q.held)) {
		h := q.held[key]
		first, wall := h[0].ev.Timestamp, h[0].wall
		for _, it := range h[1:] {
			if it.ev.Timestamp.Before(first) {
				first = it.ev.Timestamp
			}
			if it.wall.Before(wall) {
				wall = it.wall
			}
		}
		byLedger := q.latest.Sub(first) >= q.seq.Grace
		if !byLedger && (!caughtUp || now.Sub(wall) < q.seq.Grace) {
			continue
		}
		g := gap{key: key, from: q.nextOf(key), to: h[0].num - 1, waited: now.Sub(wall), byLedger: byLedger}
		if byLedger {
			g.waited = q.latest.Sub(first)
		}
		out = append(out, g)
		q.next[key] = h[0].num
		q.release(key)
	}
	return out
}

// deadline is when, in wall time, the earliest awaited number will have waited for Grace;
// zero when none is awaited.
func (q *queue) deadline() time.Time {
	var d time.Time
	for _, h := range q.held {
		for _, it := range h {
			if t := it.wall.Add(q.seq.Grace); d.IsZero() || t.Before(d) {
				d = t
			}
		}
	}
	return d
}

// checkpoint is the state to store once the first k ready events are applied.
func (q *queue) checkpoint(k int) Checkpoint {
	cp := Checkpoint{Position: q.seen, Seen: q.seen}
	for _, it := range q.ready[k:] {
		cp.Position = min(cp.Position, it.ev.Position-1)
	}
	for _, h := range q.held {
		for _, it := range h {
			cp.Position = min(cp.Position, it.ev.Position-1)
		}
	}
	if q.seq != nil {
		cp.Sequence = maps.Clone(q.next)
		for _, it := range q.ready[k:] {
			if it.num < cp.Sequence[it.key] {
				cp.Sequence[it.key] = it.num
			}
		}
	}
	return cp
}

// applied drops the first k ready events, which are applied.
func (q *queue) applied(k int) {
	q.ready = slices.Delete(q.ready, 0, k)
}

// buffered is the number of held events.
func (q *queue) buffered() int { return q.nheld }
