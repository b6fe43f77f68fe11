package projector_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexmem "github.com/walflow/walflow/index/memory"
	"github.com/walflow/walflow/projector"
)

// addUsers appends one transaction of n inserts into orders, the i-th (counting from
// first) by user i%5.
func (b *bundle) addUsers(first, n int) {
	b.t.Helper()
	evs := make([]event.Event, n)
	for i := range evs {
		evs[i] = event.Event{Name: "orders", Type: event.Insert, NewRecord: event.Record{
			{Name: "id", Value: event.Text(20, strconv.Itoa(first+i))}, {Name: "user", Value: event.Text(20, strconv.Itoa((first+i)%5))}}}
	}
	b.commit(evs)
}

// byUser gives an order the value u<user>, and "lucky" to every 7th order too: an event
// with two values.
var byUser = index.Indexer{Name: "by_user", Func: func(e *event.Event, dst []string) []string {
	u, _ := e.NewRecord.Get("user")
	dst = append(dst, "u"+u.String())
	id, _ := e.NewRecord.Get("id")
	if n, _ := strconv.Atoi(id.String()); n%7 == 0 {
		dst = append(dst, "lucky")
	}
	return dst
}}

// orderIDs returns the ids of the orders of user 1 or lucky among ids 0..n-1, in order.
func wantOrders(n int) []string {
	var out []string
	for i := range n {
		if i%5 == 1 || i%7 == 0 {
			out = append(out, strconv.Itoa(i))
		}
	}
	return out
}

func TestIndexFilter(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addUsers(0, 300)
	ix, err := index.New(index.Config{Ledger: b.led, Store: indexmem.New(), Indexers: []index.Indexer{byUser}, Batch: 16})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var seen []event.Position
	handle := func(_ context.Context, e event.Event) error {
		id, _ := e.NewRecord.Get("id")
		got = append(got, id.String())
		seen = append(seen, e.Position)
		return nil
	}
	// The projector starts before the index runs: it must wait for the index, not skip.
	r := b.run(projector.Config{Store: projector.NewMemoryStore(), BatchSize: 8, Indexes: ix, Projectors: []projector.Projector{
		{Name: "user1", Index: "by_user", Values: []string{"u1", "lucky"}, Handle: handle},
	}})
	until(t, r.Runner, "the projector to start", func() bool { return status(r.Runner, "user1").Phase == projector.Rehydrating })
	if p := status(r.Runner, "user1").Position; p != 0 {
		t.Fatalf("the projector moved to %d before the index ran", p)
	}
	ictx, stopIndex := context.WithCancel(context.Background())
	idone := make(chan error, 1)
	go func() { idone <- ix.Run(ictx) }()
	t.Cleanup(func() {
		stopIndex()
		if err := <-idone; err != nil {
			t.Errorf("index Run: %v", err)
		}
	})
	if err := r.WaitLive(t.Context(), "user1"); err != nil {
		t.Fatal(err)
	}
	if want := wantOrders(300); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("history: got orders %v\nwant %v", got, want)
	}
	// Live.
	b.addUsers(300, 100)
	until(t, r.Runner, "the live orders", func() bool { return status(r.Runner, "user1").Position == 400 })
	r.stop()
	if want := wantOrders(400); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("after live orders: got %v\nwant %v", got, want)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] <= seen[i-1] {
			t.Fatalf("positions out of order or repeated: %d after %d", seen[i], seen[i-1])
		}
	}
}

func TestIndexFilterRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ix, err := index.New(index.Config{Ledger: b.led, Store: indexmem.New(), Indexers: []index.Indexer{byUser}})
	if err != nil {
		t.Fatal(err)
	}
	nop := func(context.Context, event.Event) error { return nil }
	for _, tt := range []struct {
		name    string
		indexes projector.IndexReader
		p       projector.Projector
		want    string
	}{
		{"no Indexes", nil, projector.Projector{Name: "p", Index: "by_user", Values: []string{"u1"}, Handle: nop}, "needs Config.Indexes"},
		{"unknown indexer", ix, projector.Projector{Name: "p", Index: "by_nobody", Values: []string{"u1"}, Handle: nop}, `no indexer is named "by_nobody"`},
		{"no values", ix, projector.Projector{Name: "p", Index: "by_user", Handle: nop}, "has no Values"},
		{"values without index", ix, projector.Projector{Name: "p", Values: []string{"u1"}, Handle: nop}, "without an Index"},
		{"with Entities", ix, projector.Projector{Name: "p", Index: "by_user", Values: []string{"u1"}, Entities: []string{"orders"}, Handle: nop}, "cannot be combined"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := projector.Config{Ledger: b.led, Store: projector.NewMemoryStore(), Projectors: []projector.Projector{tt.p}}
			if tt.indexes != nil {
				cfg.Indexes = tt.indexes
			}
			_, err := projector.New(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
