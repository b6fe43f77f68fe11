// Package notify publishes a ledger's durable [ledger.State] to readers and wakes the
// goroutines that wait for its head to move. Both backends share it, and [ValidKey].
package notify

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Publisher holds the published state. Its methods are safe for concurrent use.
type Publisher struct {
	state atomic.Pointer[ledger.State]
	// tail is kept apart from state because Truncate moves it from its own goroutine while
	// the writer publishes the rest: neither can overwrite the other's value.
	tail atomic.Uint64

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when the head moves
	done    chan struct{} // closed by Close
	closed  atomic.Bool
}

// New returns a publisher of st.
func New(st ledger.State) *Publisher {
	p := &Publisher{changed: make(chan struct{}), done: make(chan struct{})}
	p.state.Store(&st)
	p.tail.Store(uint64(st.Tail))
	return p
}

// State returns the published state, with the published tail.
func (p *Publisher) State() ledger.State {
	// Load the tail first: it was clamped to a head that the state loaded next has reached,
	// so the result never has Tail > Head.
	tail := p.tail.Load()
	st := *p.state.Load()
	st.Tail = event.Position(tail)
	return st
}

// Tail returns the published tail.
func (p *Publisher) Tail() event.Position { return event.Position(p.tail.Load()) }

// SetTail publishes a new tail; a tail at or before the published one is ignored.
func (p *Publisher) SetTail(t event.Position) {
	for {
		old := p.tail.Load()
		if uint64(t) <= old || p.tail.CompareAndSwap(old, uint64(t)) {
			return
		}
	}
}

// CheckTail returns a [*ledger.TruncatedError] when a read of the events after position
// after would need removed ones (after < the published tail), nil otherwise.
func (p *Publisher) CheckTail(after event.Position) error {
	if tail := p.Tail(); after < tail {
		return &ledger.TruncatedError{After: after, Tail: tail}
	}
	return nil
}

// Head returns the published head.
func (p *Publisher) Head() event.Position { return p.state.Load().Head }

// Publish makes st the published state, then wakes every waiter if the head moved. st.Tail
// is ignored: SetTail publishes the tail.
func (p *Publisher) Publish(st ledger.State) {
	old := p.state.Swap(&st)
	if old.Head == st.Head {
		return
	}
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// Close ends every Wait in progress and to come with [ledger.ErrClosed]. It reports
// whether this call closed the publisher.
func (p *Publisher) Close() bool {
	if !p.closed.CompareAndSwap(false, true) {
		return false
	}
	close(p.done)
	return true
}

// Closed reports whether Close was called.
func (p *Publisher) Closed() bool { return p.closed.Load() }

// Wait blocks until the head is past after, ctx ends (its error is returned) or the
// publisher is closed ([ledger.ErrClosed]).
func (p *Publisher) Wait(ctx context.Context, after event.Position) error {
	for {
		if p.closed.Load() {
			return ledger.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		p.mu.Lock()
		ch := p.changed
		p.mu.Unlock()
		// Publish stores the state before closing the channel, so checking the head after
		// taking the channel cannot miss a wake-up.
		if p.Head() > after {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-p.done:
			return ledger.ErrClosed
		}
	}
}

// ValidKey reports whether k may be an index key: non-empty and without a NUL byte.
func ValidKey(k string) bool {
	return k != "" && strings.IndexByte(k, 0) < 0
}
