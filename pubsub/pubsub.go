// Package pubsub delivers ledger events to in-process subscribers by index key (walflow's
// channel names), from any position, in ledger order.
//
// # Guarantees
//
// A subscription reads the ledger's indexes: first the history after its starting position,
// then, as the head moves, each new stretch. Catch-up and live delivery are the same loop,
// so there is no seam where an event could be missed or delivered twice. A slow subscriber
// never loses events and never makes memory grow: it simply reads further behind, and its
// backlog stays in the ledger.
//
// Only the ledger's retention bounds how far behind: a subscription that starts before the
// ledger's tail, or falls behind it, ends with an error wrapping [ledger.ErrTruncated] once
// it has handed over the events it had read. Its events before the tail are gone, so the
// subscriber must reload its state and subscribe again from the head.
package pubsub

import (
	"cmp"
	"context"
	"errors"
	"sync/atomic"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Reader is the part of a ledger a subscription reads.
type Reader interface {
	ReadKeys(ctx context.Context, keys []string, after event.Position, limit int) ([]event.Event, error)
	Wait(ctx context.Context, after event.Position) error
	State() ledger.State
}

// Defaults for [Options].
const (
	BufferDefault = 256
	BatchDefault  = 512
)

// Options configure a subscription. The zero value starts after the current head (live
// events only) with default sizes.
type Options struct {
	// After is the position to deliver from (exclusive). Nil means the ledger's head at
	// subscription time: only new events. A pointer to 0 means from the beginning.
	After *event.Position
	// Buffer is the capacity of the Events channel. Default 256.
	Buffer int
	// Batch is how many events are read from the ledger at a time. Default 512.
	Batch int
	// Deliver, when set, decides each event: one it rejects is not delivered, but counts as
	// handled for Position. Default nil: every event.
	Deliver func(*event.Event) bool
}

// Subscription is a running subscription. Read Events until it is closed, then check Err.
type Subscription struct {
	ch      chan event.Event
	done    chan struct{}
	err     error
	scanned atomic.Uint64
}

// Subscribe starts delivering the events that carry any of keys. It stops, closing the
// Events channel, when ctx ends or reading the ledger fails. The goroutine it starts is
// owned by the subscription and ends with it.
func Subscribe(ctx context.Context, r Reader, keys []string, opts *Options) *Subscription {
	if opts == nil {
		opts = &Options{}
	}
	s := &Subscription{ch: make(chan event.Event, cmp.Or(opts.Buffer, BufferDefault)), done: make(chan struct{})}
	after := r.State().Head
	if opts.After != nil {
		after = *opts.After
	}
	s.scanned.Store(uint64(after))
	go s.run(ctx, r, keys, after, cmp.Or(opts.Batch, BatchDefault), opts.Deliver)
	return s
}

func (s *Subscription) run(ctx context.Context, r Reader, keys []string, after event.Position, batch int, deliver func(*event.Event) bool) {
	defer close(s.done)
	defer close(s.ch)
	for {
		// Read the head first: when the read comes back short, every matching event up to
		// this head has been seen, so the subscription may wait for the head to pass it.
		head := r.State().Head
		evs, err := r.ReadKeys(ctx, keys, after, batch)
		if err != nil {
			s.fail(ctx, err)
			return
		}
		for i := range evs {
			if deliver != nil && !deliver(&evs[i]) {
				after = evs[i].Position
				s.scanned.Store(uint64(after))
				continue
			}
			select {
			case s.ch <- evs[i]:
				after = evs[i].Position
				s.scanned.Store(uint64(after))
			case <-ctx.Done():
				return
			}
		}
		if len(evs) == batch {
			continue
		}
		if head > after {
			after = head
			s.scanned.Store(uint64(after))
		}
		if err := r.Wait(ctx, after); err != nil {
			s.fail(ctx, err)
			return
		}
	}
}

func (s *Subscription) fail(ctx context.Context, err error) {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return
	}
	s.err = err
}

// Events delivers the subscription's events in ledger order. It is closed when the
// subscription ends.
func (s *Subscription) Events() <-chan event.Event { return s.ch }

// Done is closed when the subscription has ended and Err is final.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns why the subscription ended: nil when its context ended, otherwise the ledger
// error, which wraps [ledger.ErrTruncated] when the events to deliver next were removed
// (see the package documentation). It is meaningful once Done is closed.
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Position is the resume position: every matching event up to it has been handed to the
// Events channel (those still buffered included). Subscribing again with After set to it
// continues with no gap and no duplicate, once the buffered events are consumed.
func (s *Subscription) Position() event.Position { return event.Position(s.scanned.Load()) }
