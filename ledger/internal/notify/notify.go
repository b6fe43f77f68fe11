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

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when the head moves
	done    chan struct{} // closed by Close
	closed  atomic.Bool
}

// New returns a publisher of st.
func New(st ledger.State) *Publisher {
	p := &Publisher{changed: make(chan struct{}), done: make(chan struct{})}
	p.state.Store(&st)
	return p
}

// State returns the published state.
func (p *Publisher) State() ledger.State { return *p.state.Load() }

// Head returns the published head.
func (p *Publisher) Head() event.Position { return p.state.Load().Head }

// Publish makes st the published state, then wakes every waiter if the head moved.
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
