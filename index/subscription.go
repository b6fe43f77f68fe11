package index

import (
	"cmp"
	"context"
	"errors"
	"sync"

	"github.com/walflow/walflow/event"
)

// SubscribeBufferDefault is the default [SubscribeOpts.Buffer].
const SubscribeBufferDefault = 1024

// ErrSlowSubscriber ends a subscription whose buffer was full when a notification came.
var ErrSlowSubscriber = errors.New("index: subscriber too slow: its notification buffer filled up; read notifications faster or give a larger SubscribeOpts.Buffer, and catch up with Runner.Read from Subscription.Position")

// Notification says that an indexer has indexed an event: Fact's "indexed" message. It is
// sent once the entries and the checkpoint that covers them are stored, so a
// [Runner.Read] made on receipt sees them.
type Notification struct {
	// Indexer is the indexer's name.
	Indexer string
	// Position is the event's ledger position.
	Position event.Position
	// Values are the event's values, each once, in the order Func gave them (in bytewise
	// order when a following runner sends it, see [Runner.Follow]); empty for an
	// event without values (sent only with SubscribeOpts.Empty). Shared between
	// subscribers: read-only.
	Values []string
}

// SubscribeOpts are options of [Runner.Subscribe]; nil means the defaults.
type SubscribeOpts struct {
	// Buffer is the capacity of the Notifications channel. Default SubscribeBufferDefault
	// (1024).
	Buffer int
	// Empty also sends a notification for each event that got no values, so that the
	// subscriber sees every position each indexer passes. Default false: only events with
	// values.
	Empty bool
}

// Subscription receives the notifications of a set of indexers. Read Notifications until
// it is closed, then check Err.
type Subscription struct {
	r        *Runner
	indexers map[string]bool // nil: every indexer
	empty    bool
	stop     func() bool // stops the context.AfterFunc

	mu     sync.Mutex // guards the fields below and sends on ch
	ch     chan Notification
	done   chan struct{}
	closed bool
	err    error
	last   map[string]event.Position
}

// Subscribe returns a subscription to the notifications of indexers (all of them when
// empty) from now on: it receives no history. Each indexer's notifications arrive in
// position order, through catch-up and live indexing alike; the notifications of different
// indexers interleave in no set order. Notifications flow only while Run or
// [Runner.Follow] runs; a follower's carry each event's values in bytewise order.
//
// A subscriber never slows indexing down: when its buffer is full as a notification comes,
// the subscription ends with [ErrSlowSubscriber], and [Subscription.Position] tells, for
// each indexer, the last position it was sent. The subscription also ends, with a nil Err,
// when ctx ends.
func (r *Runner) Subscribe(ctx context.Context, indexers []string, opts *SubscribeOpts) (*Subscription, error) {
	if opts == nil {
		opts = &SubscribeOpts{}
	}
	if opts.Buffer < 0 {
		return nil, errors.New("index: SubscribeOpts.Buffer is negative; give a positive capacity, or 0 for the default")
	}
	s := &Subscription{
		r:     r,
		empty: opts.Empty,
		ch:    make(chan Notification, cmp.Or(opts.Buffer, SubscribeBufferDefault)),
		done:  make(chan struct{}),
		last:  map[string]event.Position{},
	}
	if len(indexers) > 0 {
		s.indexers = map[string]bool{}
		for _, name := range indexers {
			if _, err := r.worker(name); err != nil {
				return nil, err
			}
			s.indexers[name] = true
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.subsMu.Lock()
	r.subs[s] = struct{}{}
	r.nsubs.Add(1)
	r.subsMu.Unlock()
	stop := context.AfterFunc(ctx, func() { s.close(nil) })
	s.mu.Lock()
	s.stop = stop
	s.mu.Unlock()
	return s, nil
}

// Notifications delivers the notifications. It is closed when the subscription ends.
func (s *Subscription) Notifications() <-chan Notification { return s.ch }

// Done is closed when the subscription has ended.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns why the subscription ended: nil when its context ended, [ErrSlowSubscriber]
// when its buffer overflowed. It is meaningful once Done is closed.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Position returns the position of the last notification of indexer sent to the
// subscription (buffered ones included); 0 when none was.
func (s *Subscription) Position(indexer string) event.Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[indexer]
}

// close ends the subscription with err, once.
func (s *Subscription) close(err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.err = err
	close(s.ch)
	close(s.done)
	stop := s.stop
	s.mu.Unlock()
	s.r.subsMu.Lock()
	if _, ok := s.r.subs[s]; ok {
		delete(s.r.subs, s)
		s.r.nsubs.Add(-1)
	}
	s.r.subsMu.Unlock()
	if stop != nil {
		stop() // when ctx has not ended; when AfterFunc set stop after this, it is a no-op
	}
}

// send hands notes of one indexer to the subscription without blocking; it reports false
// when the buffer overflowed and the subscription must end.
func (s *Subscription) send(notes []Notification) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return true
	}
	for _, n := range notes {
		if len(n.Values) == 0 && !s.empty {
			continue
		}
		select {
		case s.ch <- n:
			s.last[n.Indexer] = n.Position
		default:
			return false
		}
	}
	return true
}

// publish sends an indexer's notifications to its subscribers.
func (r *Runner) publish(indexer string, notes []Notification) {
	r.subsMu.RLock()
	var subs []*Subscription
	for s := range r.subs {
		if s.indexers == nil || s.indexers[indexer] {
			subs = append(subs, s)
		}
	}
	r.subsMu.RUnlock()
	for _, s := range subs {
		if !s.send(notes) {
			s.close(ErrSlowSubscriber)
		}
	}
}
