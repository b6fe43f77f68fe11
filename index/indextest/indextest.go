// Package indextest is the conformance suite every [index.Store] passes.
package indextest

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
)

// NewFunc returns an empty store for one test; the suite does not close it.
type NewFunc func(t *testing.T) index.Store

// Run runs the conformance suite against the stores newStore returns. A store that is an
// [index.SharedStore] is also checked for EntriesSince.
func Run(t *testing.T, newStore NewFunc) {
	t.Helper()
	tests := []struct {
		name string
		f    func(t *testing.T, s index.Store)
	}{
		{"Empty", testEmpty},
		{"WriteAndRead", testWriteAndRead},
		{"Duplicates", testDuplicates},
		{"PrefixNames", testPrefixNames},
		{"Reset", testReset},
		{"EntriesStop", testEntriesStop},
		{"EntriesSince", testEntriesSince},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.f(t, newStore(t))
		})
	}
}

// Dump returns every entry of the indexer, as Entries gives them.
func Dump(t testing.TB, s index.Store, indexer string) []index.Entry {
	t.Helper()
	var out []index.Entry
	if err := s.Entries(context.Background(), indexer, func(e index.Entry) error {
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatalf("Entries(%q): %v", indexer, err)
	}
	return out
}

func positions(t *testing.T, s index.Store, indexer, value string, after event.Position, limit int) []event.Position {
	t.Helper()
	ps, err := s.Positions(context.Background(), indexer, value, after, limit)
	if err != nil {
		t.Fatalf("Positions(%q, %q, %d, %d): %v", indexer, value, after, limit, err)
	}
	return ps
}

func write(t *testing.T, s index.Store, batches ...index.Batch) {
	t.Helper()
	if err := s.Write(context.Background(), batches...); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

func testEmpty(t *testing.T, s index.Store) {
	ctx := context.Background()
	if _, ok, err := s.State(ctx, "users"); ok || err != nil {
		t.Fatalf("State of a new store: ok %v, err %v; want false, nil", ok, err)
	}
	if ps := positions(t, s, "users", "7", 0, 10); len(ps) != 0 {
		t.Fatalf("Positions of a new store: %v", ps)
	}
	if d := Dump(t, s, "users"); len(d) != 0 {
		t.Fatalf("Entries of a new store: %v", d)
	}
	if err := s.Reset(ctx, "users"); err != nil {
		t.Fatalf("Reset of a missing indexer: %v", err)
	}
}

func testWriteAndRead(t *testing.T, s index.Store) {
	ctx := context.Background()
	st := index.State{Checkpoint: 9, Since: 2, Version: "field:user_id"}
	write(t, s, index.Batch{Indexer: "users", State: st, Entries: []index.Entry{
		{Value: "7", Position: 3}, {Value: "8", Position: 3}, {Value: "7", Position: 5},
		{Value: "", Position: 6}, {Value: "7", Position: 9},
	}}, index.Batch{Indexer: "types", State: index.State{Checkpoint: 9}, Entries: []index.Entry{{Value: "insert", Position: 3}}})
	got, ok, err := s.State(ctx, "users")
	if err != nil || !ok || got != st {
		t.Fatalf("State = %+v, %v, %v; want %+v, true, nil", got, ok, err, st)
	}
	if got, _, _ := s.State(ctx, "types"); got.Checkpoint != 9 {
		t.Fatalf("State(types) = %+v; the second batch was not written", got)
	}
	for _, c := range []struct {
		value        string
		after, limit int
		want         []event.Position
	}{
		{"7", 0, 10, []event.Position{3, 5, 9}},
		{"7", 3, 10, []event.Position{5, 9}},
		{"7", 0, 2, []event.Position{3, 5}},
		{"7", 9, 10, nil},
		{"7", 0, 0, nil},
		{"8", 0, 10, []event.Position{3}},
		{"", 0, 10, []event.Position{6}},
		{"9", 0, 10, nil},
	} {
		if ps := positions(t, s, "users", c.value, event.Position(c.after), c.limit); !slices.Equal(ps, c.want) {
			t.Errorf("Positions(users, %q, %d, %d) = %v; want %v", c.value, c.after, c.limit, ps, c.want)
		}
	}
	want := []index.Entry{{Value: "", Position: 6}, {Value: "7", Position: 3}, {Value: "7", Position: 5}, {Value: "7", Position: 9}, {Value: "8", Position: 3}}
	if d := Dump(t, s, "users"); !slices.Equal(d, want) {
		t.Fatalf("Entries = %v; want %v", d, want)
	}
	// A state-only batch moves the checkpoint and keeps the entries.
	write(t, s, index.Batch{Indexer: "users", State: index.State{Checkpoint: 12, Since: 2, Version: "field:user_id"}})
	if got, _, _ := s.State(ctx, "users"); got.Checkpoint != 12 {
		t.Fatalf("checkpoint after a state-only batch = %d; want 12", got.Checkpoint)
	}
	if d := Dump(t, s, "users"); len(d) != len(want) {
		t.Fatalf("a state-only batch changed the entries: %v", d)
	}
}

func testDuplicates(t *testing.T, s index.Store) {
	e := []index.Entry{{Value: "a", Position: 4}, {Value: "a", Position: 2}}
	write(t, s, index.Batch{Indexer: "x", Entries: e})
	write(t, s, index.Batch{Indexer: "x", Entries: append(e, index.Entry{Value: "a", Position: 3})})
	if ps := positions(t, s, "x", "a", 0, 10); !slices.Equal(ps, []event.Position{2, 3, 4}) {
		t.Fatalf("Positions after writing entries twice, out of order = %v; want [2 3 4]", ps)
	}
}

func testPrefixNames(t *testing.T, s index.Store) {
	// Neither names nor values that are prefixes of others may mix.
	write(t, s,
		index.Batch{Indexer: "user", Entries: []index.Entry{{Value: "1", Position: 1}, {Value: "10", Position: 2}}},
		index.Batch{Indexer: "user_id", Entries: []index.Entry{{Value: "1", Position: 3}}},
	)
	if ps := positions(t, s, "user", "1", 0, 10); !slices.Equal(ps, []event.Position{1}) {
		t.Fatalf("Positions(user, 1) = %v; want [1]", ps)
	}
	if d := Dump(t, s, "user"); len(d) != 2 {
		t.Fatalf("Entries(user) = %v; want 2 entries", d)
	}
	if err := s.Reset(context.Background(), "user"); err != nil {
		t.Fatal(err)
	}
	if d := Dump(t, s, "user_id"); len(d) != 1 {
		t.Fatalf("Reset(user) changed user_id: %v", d)
	}
}

func testReset(t *testing.T, s index.Store) {
	ctx := context.Background()
	write(t, s, index.Batch{Indexer: "a", State: index.State{Checkpoint: 1}, Entries: []index.Entry{{Value: "v", Position: 1}}},
		index.Batch{Indexer: "b", State: index.State{Checkpoint: 1}, Entries: []index.Entry{{Value: "v", Position: 1}}})
	if err := s.Reset(ctx, "a"); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if _, ok, _ := s.State(ctx, "a"); ok {
		t.Fatal("Reset kept the state")
	}
	if d := Dump(t, s, "a"); len(d) != 0 {
		t.Fatalf("Reset kept entries: %v", d)
	}
	if _, ok, _ := s.State(ctx, "b"); !ok || len(Dump(t, s, "b")) != 1 {
		t.Fatal("Reset(a) changed b")
	}
}

func testEntriesStop(t *testing.T, s index.Store) {
	write(t, s, index.Batch{Indexer: "a", Entries: []index.Entry{{Value: "v", Position: 1}, {Value: "v", Position: 2}}})
	stop := errors.New("stop")
	n := 0
	err := s.Entries(context.Background(), "a", func(index.Entry) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Entries with fn failing: err %v after %d calls; want fn's error after 1", err, n)
	}
}

func testEntriesSince(t *testing.T, s index.Store) {
	ss, ok := s.(index.SharedStore)
	if !ok {
		t.Skip("not an index.SharedStore: it has no EntriesSince")
	}
	ctx := context.Background()
	write(t, s, index.Batch{Indexer: "users", State: index.State{Checkpoint: 9}, Entries: []index.Entry{
		{Value: "b", Position: 3}, {Value: "a", Position: 3}, {Value: "b", Position: 5},
		{Value: "", Position: 6}, {Value: "a", Position: 9}, {Value: "ab", Position: 6},
	}}, index.Batch{Indexer: "user", State: index.State{Checkpoint: 9}, Entries: []index.Entry{{Value: "a", Position: 4}}})
	since := func(after, through event.Position) []index.Entry {
		t.Helper()
		var out []index.Entry
		if err := ss.EntriesSince(ctx, "users", after, through, func(e index.Entry) error {
			out = append(out, e)
			return nil
		}); err != nil {
			t.Fatalf("EntriesSince(users, %d, %d): %v", after, through, err)
		}
		return out
	}
	for _, c := range []struct {
		after, through event.Position
		want           []index.Entry
	}{
		{0, 9, []index.Entry{{Value: "a", Position: 3}, {Value: "b", Position: 3}, {Value: "b", Position: 5}, {Value: "", Position: 6}, {Value: "ab", Position: 6}, {Value: "a", Position: 9}}},
		{3, 6, []index.Entry{{Value: "b", Position: 5}, {Value: "", Position: 6}, {Value: "ab", Position: 6}}},
		{2, 3, []index.Entry{{Value: "a", Position: 3}, {Value: "b", Position: 3}}},
		{6, 8, nil},
		{9, 100, nil},
		{5, 5, nil},
		{7, 4, nil},
	} {
		if got := since(c.after, c.through); !slices.Equal(got, c.want) {
			t.Errorf("EntriesSince(users, %d, %d) = %v; want %v", c.after, c.through, got, c.want)
		}
	}
	var none []index.Entry
	if err := ss.EntriesSince(ctx, "missing", 0, 100, func(e index.Entry) error { none = append(none, e); return nil }); err != nil || len(none) != 0 {
		t.Fatalf("EntriesSince of a missing indexer: %v, %v; want nothing", none, err)
	}
	stop := errors.New("stop")
	n := 0
	if err := ss.EntriesSince(ctx, "users", 0, 9, func(index.Entry) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("EntriesSince with fn failing: err %v after %d calls; want fn's error after 1", err, n)
	}
}
