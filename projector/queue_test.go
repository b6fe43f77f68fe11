package projector

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// ev is an insert into table at position pos with the given id, committed at t0+ms.
func ev(table string, pos event.Position, id int64, ms int) event.Event {
	return event.Event{Position: pos, Name: table, Type: event.Insert, Timestamp: t0.Add(time.Duration(ms) * time.Millisecond),
		NewRecord: event.Record{{Name: "id", Value: event.Text(20, strconv.FormatInt(id, 10))}, {Name: "stream", Value: event.Text(25, "s"+strconv.FormatInt(id%2, 10))}}}
}

func readyIDs(q *queue) []int64 {
	var out []int64
	for _, it := range q.ready {
		out = append(out, it.num)
	}
	return out
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestQueueOrders(t *testing.T) {
	t.Parallel()
	seq := SequenceConfig{Buffer: 10, Grace: time.Second}.withDefaults()
	tests := []struct {
		name  string
		feed  []event.Event
		ready []int64
		held  int
		cp    Checkpoint
	}{
		{"in order", []event.Event{ev("e", 1, 1, 0), ev("e", 2, 2, 0)}, []int64{1, 2}, 0,
			Checkpoint{Position: 0, Seen: 2, Sequence: map[string]int64{"e": 1}}},
		{"later id commits first", []event.Event{ev("e", 1, 2, 0), ev("e", 2, 3, 0)}, nil, 2,
			Checkpoint{Position: 0, Seen: 2, Sequence: map[string]int64{}}},
		{"gap fills", []event.Event{ev("e", 1, 2, 0), ev("e", 2, 3, 0), ev("e", 3, 1, 0)}, []int64{1, 2, 3}, 0,
			Checkpoint{Position: 0, Seen: 3, Sequence: map[string]int64{"e": 1}}},
		{"tables are separate", []event.Event{ev("a", 1, 1, 0), ev("b", 2, 2, 0), ev("b", 3, 1, 0)}, []int64{1, 1, 2}, 0,
			Checkpoint{Position: 0, Seen: 3, Sequence: map[string]int64{"a": 1, "b": 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := newQueue(&seq, Checkpoint{})
			for _, e := range tt.feed {
				if _, err := q.feed(e, t0); err != nil {
					t.Fatal(err)
				}
			}
			if got := readyIDs(q); !equal(got, tt.ready) || q.buffered() != tt.held {
				t.Fatalf("ready %v held %d, want %v and %d", got, q.buffered(), tt.ready, tt.held)
			}
			cp := q.checkpoint(0)
			if cp.Position != tt.cp.Position || cp.Seen != tt.cp.Seen || len(cp.Sequence) != len(tt.cp.Sequence) {
				t.Fatalf("checkpoint %+v, want %+v", cp, tt.cp)
			}
			for k, v := range tt.cp.Sequence {
				if cp.Sequence[k] != v {
					t.Fatalf("checkpoint %+v, want %+v", cp, tt.cp)
				}
			}
		})
	}
}

func TestQueueGrace(t *testing.T) {
	t.Parallel()
	seq := SequenceConfig{Buffer: 10, Grace: time.Second}.withDefaults()
	t.Run("commit time", func(t *testing.T) {
		t.Parallel()
		q := newQueue(&seq, Checkpoint{})
		_, _ = q.feed(ev("e", 1, 1, 0), t0)
		_, _ = q.feed(ev("e", 2, 3, 100), t0) // 2 rolled back
		if g := q.expire(t0, false); len(g) != 0 {
			t.Fatalf("expired %+v before Grace", g)
		}
		_, _ = q.feed(ev("e", 3, 5, 1100), t0) // 4 rolled back too; Grace has passed for 2 in commit time
		g := q.expire(t0, false)
		if len(g) != 1 || g[0].from != 2 || g[0].to != 2 || !g[0].byLedger {
			t.Fatalf("gaps %+v, want 2 by commit time", g)
		}
		// 4 is missing only since 5 committed.
		_, _ = q.feed(ev("e", 4, 7, 2000), t0)
		if g := q.expire(t0, false); len(g) != 0 {
			t.Fatalf("expired %+v before Grace", g)
		}
		_, _ = q.feed(ev("e", 5, 9, 2100), t0)
		if g := q.expire(t0, false); len(g) != 1 || g[0].from != 4 || g[0].to != 4 {
			t.Fatalf("gaps %+v, want 4", g)
		}
		if got := readyIDs(q); !equal(got, []int64{1, 3, 5}) || q.buffered() != 2 {
			t.Fatalf("ready %v, held %d", got, q.buffered())
		}
	})
	t.Run("wall time only when caught up", func(t *testing.T) {
		t.Parallel()
		q := newQueue(&seq, Checkpoint{})
		_, _ = q.feed(ev("e", 1, 2, 0), t0)
		if d := q.deadline(); !d.Equal(t0.Add(time.Second)) {
			t.Fatalf("deadline %v", d)
		}
		if g := q.expire(t0.Add(2*time.Second), false); len(g) != 0 {
			t.Fatalf("expired %+v while reading history", g)
		}
		if g := q.expire(t0.Add(2*time.Second), true); len(g) != 1 || g[0].from != 1 || g[0].to != 1 {
			t.Fatalf("gaps %+v", g)
		}
		if !q.deadline().IsZero() {
			t.Fatal("deadline left after the gap was skipped")
		}
	})
	t.Run("late", func(t *testing.T) {
		t.Parallel()
		q := newQueue(&seq, Checkpoint{})
		_, _ = q.feed(ev("e", 1, 2, 0), t0)
		q.expire(t0.Add(2*time.Second), true)
		if _, err := q.feed(ev("e", 2, 1, 3000), t0); !errors.Is(err, ErrLate) {
			t.Fatalf("late event: %v, want ErrLate", err)
		}
		skip := seq
		skip.SkipLate = true
		q.seq = &skip
		if late, err := q.feed(ev("e", 2, 1, 3000), t0); err != nil || late == nil || late.num != 1 || late.next != 3 {
			t.Fatalf("SkipLate: %+v %v", late, err)
		}
	})
}

func TestQueueBufferFull(t *testing.T) {
	t.Parallel()
	seq := SequenceConfig{Buffer: 2, Grace: time.Second}.withDefaults()
	q := newQueue(&seq, Checkpoint{})
	for i := range 2 {
		if _, err := q.feed(ev("e", event.Position(i+1), int64(i+2), 0), t0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.feed(ev("e", 3, 4, 0), t0); !errors.Is(err, ErrBufferFull) {
		t.Fatalf("third held event: %v, want ErrBufferFull", err)
	}
	if q.seen != 2 || q.buffered() != 2 {
		t.Fatalf("a refused event changed the queue: seen %d held %d", q.seen, q.buffered())
	}
	if _, err := q.feed(ev("e", 3, 2, 0), t0); !errors.Is(err, ErrSequence) {
		t.Fatalf("repeated number: %v, want ErrSequence", err)
	}
}

// TestQueueReplay checks the checkpoint's invariant: whatever prefix of the ready events was
// applied when a crash came, reading again after the checkpoint's position applies every
// other event once, in order.
func TestQueueReplay(t *testing.T) {
	t.Parallel()
	seq := SequenceConfig{Buffer: 100, Grace: time.Hour}.withDefaults()
	// Ledger order of ids: 3 2 5 1 4 7 6 8 (each commits before a smaller one).
	ids := []int64{3, 2, 5, 1, 4, 7, 6, 8}
	var log []event.Event
	for i, id := range ids {
		log = append(log, ev("e", event.Position(i+1), id, 0))
	}
	for cut := 1; cut <= len(ids); cut++ { // events read before the crash
		for applied := 0; ; applied++ { // ready events applied before the crash
			q := newQueue(&seq, Checkpoint{})
			for _, e := range log[:cut] {
				if _, err := q.feed(e, t0); err != nil {
					t.Fatal(err)
				}
			}
			if applied > len(q.ready) {
				break
			}
			done := readyIDs(q)[:applied]
			cp := q.checkpoint(applied)
			q2 := newQueue(&seq, cp)
			var again []int64
			for _, e := range log[cp.Position:] {
				if _, err := q2.feed(e, t0); err != nil {
					t.Fatal(err)
				}
				again = append(again, readyIDs(q2)...)
				q2.applied(len(q2.ready))
			}
			all := append(append([]int64(nil), done...), again...)
			if !equal(all, []int64{1, 2, 3, 4, 5, 6, 7, 8}) {
				t.Fatalf("crash after reading %d events and applying %d: applied %v then %v after the restart from %+v", cut, applied, done, again, cp)
			}
		}
	}
}

func TestQueueStreams(t *testing.T) {
	t.Parallel()
	seq := SequenceConfig{Column: "id", StreamColumn: "stream", Buffer: 10, Grace: time.Second}.withDefaults()
	// stream s0 holds even ids, s1 odd ones; each needs its own contiguous run, which these
	// are not (ids 0, 2, 4 are not contiguous): everything but the first of each waits.
	q := newQueue(&seq, Checkpoint{})
	for i, id := range []int64{1, 2} {
		if _, err := q.feed(ev("e", event.Position(i+1), id, 0), t0); err != nil {
			t.Fatal(err)
		}
	}
	if got := readyIDs(q); !equal(got, []int64{1}) || q.buffered() != 1 {
		t.Fatalf("ready %v held %d", got, q.buffered())
	}
	if q.ready[0].key != "e/s1" {
		t.Fatalf("key %q", q.ready[0].key)
	}
}
