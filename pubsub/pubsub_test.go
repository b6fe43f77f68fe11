package pubsub_test

import (
	"context"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/pubsub"
)

// appendTx writes one transaction of comments with the given ids and makes it visible.
func appendTx(t *testing.T, l *memory.Ledger, lsn event.LSN, ids ...int) {
	t.Helper()
	ctx := t.Context()
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if err := l.Append(ctx, ledgertest.Event(lsn, uint32(i), "comments", id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.CommitTx(ctx, lsn+1); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}

func next(t *testing.T, s *pubsub.Subscription) event.Event {
	t.Helper()
	select {
	case e, ok := <-s.Events():
		if !ok {
			t.Fatalf("subscription ended: %v", s.Err())
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return event.Event{}
}

func TestCatchUpThenLive(t *testing.T) {
	t.Parallel()
	l := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	defer l.Close()
	appendTx(t, l, 10, 1, 2, 3) // positions 1..3
	appendTx(t, l, 20, 2)       // position 4

	ctx, cancel := context.WithCancel(t.Context())
	from := event.Position(1)
	s := pubsub.Subscribe(ctx, l, []string{"comments/2", "comments/3"}, &pubsub.Options{After: &from, Batch: 1})
	var got []event.Position
	for range 3 {
		got = append(got, next(t, s).Position)
	}
	appendTx(t, l, 30, 9, 3) // positions 5 (not subscribed) and 6
	got = append(got, next(t, s).Position)
	want := []event.Position{2, 3, 4, 6}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("positions %v, want %v", got, want)
		}
	}
	// Position moves just after the hand-over, so it may trail the receive briefly.
	deadline := time.Now().Add(10 * time.Second)
	for s.Position() != 6 {
		if time.Now().After(deadline) {
			t.Fatalf("Position() = %d, want 6", s.Position())
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-s.Done()
	if err := s.Err(); err != nil {
		t.Fatalf("Err after cancel: %v", err)
	}
	if _, ok := <-s.Events(); ok {
		t.Fatal("Events not closed after cancel")
	}
}

func TestDefaultStartsAtHead(t *testing.T) {
	t.Parallel()
	l := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	defer l.Close()
	appendTx(t, l, 10, 1)
	s := pubsub.Subscribe(t.Context(), l, []string{"comments"}, nil)
	appendTx(t, l, 20, 2)
	if e := next(t, s); e.Position != 2 {
		t.Fatalf("first live event at %d, want 2 (history must not be replayed)", e.Position)
	}
}

func TestLedgerClosedEndsWithError(t *testing.T) {
	t.Parallel()
	l := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	s := pubsub.Subscribe(t.Context(), l, []string{"comments"}, nil)
	_ = l.Close()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription did not end when the ledger closed")
	}
	if s.Err() == nil {
		t.Fatal("Err is nil after the ledger closed")
	}
}

// TestTruncatedEndsWithErrTruncated subscribes before the ledger's tail, and falls behind it
// while subscribed: both subscriptions end with an error wrapping ledger.ErrTruncated.
func TestTruncatedEndsWithErrTruncated(t *testing.T) {
	t.Parallel()
	l := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	defer l.Close()
	appendTx(t, l, 10, 1, 2, 3) // positions 1..3
	if err := l.Truncate(t.Context(), 2); err != nil {
		t.Fatal(err)
	}

	from := event.Position(0)
	s := pubsub.Subscribe(t.Context(), l, []string{"comments"}, &pubsub.Options{After: &from})
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a subscription before the tail did not end")
	}
	if _, ok := <-s.Events(); ok {
		t.Fatal("a subscription before the tail delivered an event")
	}
	ledgertest.WantTruncated(t, "Err of a subscription from 0", s.Err(), 0, 2)

	// A subscriber that stops reading, with room for one event, while the ledger moves on
	// and is truncated past it.
	from = 2
	r := &signalReader{Reader: l, read: make(chan event.Position, 16)}
	s = pubsub.Subscribe(t.Context(), r, []string{"comments"}, &pubsub.Options{After: &from, Buffer: 1, Batch: 1})
	appendTx(t, l, 20, 4, 5, 6) // positions 4..6
	// Wait until the subscription has read event 4: 3 is then in its buffer, and 4 in hand.
	for after := range r.read {
		if after == 3 {
			break
		}
	}
	if err := l.Truncate(t.Context(), 6); err != nil {
		t.Fatal(err)
	}
	// The events already read are handed over, then the subscription ends.
	for _, want := range []event.Position{3, 4} {
		if e := next(t, s); e.Position != want {
			t.Fatalf("event at %d, want %d", e.Position, want)
		}
	}
	select {
	case e, ok := <-s.Events():
		if ok {
			t.Fatalf("event at %d delivered after its position was truncated", e.Position)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the subscription did not end after falling behind the tail")
	}
	<-s.Done()
	ledgertest.WantTruncated(t, "Err of a subscription behind the tail", s.Err(), 4, 6)
	if s.Position() != 4 {
		t.Fatalf("Position = %d, want 4 (the last event handed over)", s.Position())
	}
}

// signalReader sends the position of each ReadKeys that returned events.
type signalReader struct {
	pubsub.Reader
	read chan event.Position
}

func (r *signalReader) ReadKeys(ctx context.Context, keys []string, after event.Position, limit int) ([]event.Event, error) {
	evs, err := r.Reader.ReadKeys(ctx, keys, after, limit)
	if err == nil && len(evs) > 0 {
		r.read <- after
	}
	return evs, err
}
