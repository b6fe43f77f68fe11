package pg_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/index/indextest"
	"github.com/walflow/walflow/index/pg"
	"github.com/walflow/walflow/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// sharedStore is the shape of index.SharedStore: a Store that followers read by position.
type sharedStore interface {
	index.Store
	EntriesSince(ctx context.Context, indexer string, after, through event.Position, fn func(index.Entry) error) error
}

var _ sharedStore = (*pg.Store)(nil)

// pool opens a pool on dsn, closed when the test ends.
func pool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatalf("pgxpool.New: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

func open(t testing.TB, db pg.DB, opts *pg.Options) *pg.Store {
	t.Helper()
	s, err := pg.Open(context.Background(), db, opts)
	if err != nil {
		t.Fatalf("pg.Open: %v", err)
	}
	return s
}

func write(t *testing.T, s *pg.Store, batches ...index.Batch) {
	t.Helper()
	if err := s.Write(t.Context(), batches...); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

func state(t *testing.T, s *pg.Store, indexer string) (index.State, bool) {
	t.Helper()
	st, ok, err := s.State(t.Context(), indexer)
	if err != nil {
		t.Fatalf("State(%q): %v", indexer, err)
	}
	return st, ok
}

func TestConformance(t *testing.T) {
	t.Parallel()
	indextest.Run(t, func(t *testing.T) index.Store {
		return open(t, pool(t, pgtest.NewDatabase(t)), nil)
	})
}

// TestValues: values are stored as their bytes, invalid UTF-8 included, and sort bytewise.
func TestValues(t *testing.T) {
	t.Parallel()
	s := open(t, pool(t, pgtest.NewDatabase(t)), nil)
	vals := []string{"\xff\xfe", "é", "Z", "a", "a\x01", "", "ab"}
	var es []index.Entry
	for i, v := range vals {
		es = append(es, index.Entry{Value: v, Position: event.Position(i + 1)})
	}
	write(t, s, index.Batch{Indexer: "x", Entries: es, State: index.State{Checkpoint: 7}})
	sorted := slices.Clone(vals)
	slices.Sort(sorted) // Go compares strings bytewise
	var got []string
	for _, e := range indextest.Dump(t, s, "x") {
		got = append(got, e.Value)
	}
	if !slices.Equal(got, sorted) {
		t.Fatalf("values by Entries = %q; want bytewise %q", got, sorted)
	}
	if ps, err := s.Positions(t.Context(), "x", "\xff\xfe", 0, 10); err != nil || !slices.Equal(ps, []event.Position{1}) {
		t.Fatalf("Positions of an invalid UTF-8 value = %v, %v; want [1]", ps, err)
	}
	err := s.Write(t.Context(), index.Batch{Indexer: "x", Entries: []index.Entry{{Value: "a\x00b", Position: 8}}})
	if err == nil || !strings.Contains(err.Error(), "NUL byte") {
		t.Fatalf("Write of a value with a NUL byte: %v; want an error naming the NUL byte", err)
	}
}

func TestEntriesSince(t *testing.T) {
	t.Parallel()
	s := open(t, pool(t, pgtest.NewDatabase(t)), nil)
	write(t, s,
		index.Batch{Indexer: "users", State: index.State{Checkpoint: 9}, Entries: []index.Entry{
			{Value: "8", Position: 3}, {Value: "7", Position: 3}, {Value: "7", Position: 5},
			{Value: "", Position: 6}, {Value: "7", Position: 9}, {Value: "b", Position: 6},
		}},
		index.Batch{Indexer: "user", State: index.State{Checkpoint: 9}, Entries: []index.Entry{{Value: "7", Position: 4}}},
	)
	since := func(after, through event.Position) []index.Entry {
		t.Helper()
		var out []index.Entry
		if err := s.EntriesSince(t.Context(), "users", after, through, func(e index.Entry) error {
			out = append(out, e)
			return nil
		}); err != nil {
			t.Fatalf("EntriesSince(%d, %d): %v", after, through, err)
		}
		return out
	}
	all := []index.Entry{{Value: "7", Position: 3}, {Value: "8", Position: 3}, {Value: "7", Position: 5},
		{Value: "", Position: 6}, {Value: "b", Position: 6}, {Value: "7", Position: 9}}
	for _, c := range []struct {
		after, through event.Position
		want           []index.Entry
	}{
		{0, 100, all},
		{0, 9, all},
		{3, 6, all[2:5]},
		{2, 3, all[:2]},
		{5, 5, nil},
		{6, 3, nil},
		{9, 100, nil},
		{0, ^event.Position(0), all},
	} {
		if got := since(c.after, c.through); !slices.Equal(got, c.want) {
			t.Errorf("EntriesSince(users, %d, %d) = %v; want %v", c.after, c.through, got, c.want)
		}
	}
	stop := errors.New("stop")
	n := 0
	err := s.EntriesSince(t.Context(), "users", 0, 100, func(index.Entry) error { n++; return stop })
	if err != stop || n != 1 {
		t.Fatalf("EntriesSince with fn failing: err %v after %d calls; want fn's error itself after 1", err, n)
	}
}

// TestFence: a Store that did not see another Store's write of an indexer cannot write it,
// nor reset it, until it reads its state again.
func TestFence(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	a := open(t, pool(t, dsn), nil)
	b := open(t, pool(t, dsn), nil)
	old := index.State{Checkpoint: 5, Version: "1"}
	write(t, a, index.Batch{Indexer: "users", State: old, Entries: []index.Entry{{Value: "7", Position: 5}}})

	if st, ok := state(t, a, "users"); !ok || st != old {
		t.Fatalf("A's State = %+v, %v", st, ok)
	}
	if st, ok := state(t, b, "users"); !ok || st != old {
		t.Fatalf("B's State = %+v, %v", st, ok)
	}
	cur := index.State{Checkpoint: 8, Version: "1"}
	write(t, b, index.Batch{Indexer: "users", State: cur, Entries: []index.Entry{{Value: "7", Position: 8}}})
	want := []index.Entry{{Value: "7", Position: 5}, {Value: "7", Position: 8}}

	// A's writes are fenced, alone or with another indexer's batch, and change nothing.
	stale := index.Batch{Indexer: "users", State: index.State{Checkpoint: 7, Version: "1"}, Entries: []index.Entry{{Value: "9", Position: 7}}}
	other := index.Batch{Indexer: "types", State: index.State{Checkpoint: 7}, Entries: []index.Entry{{Value: "insert", Position: 7}}}
	for _, batches := range [][]index.Batch{{stale}, {other, stale}} {
		err := a.Write(ctx, batches...)
		if !errors.Is(err, pg.ErrFenced) || !strings.Contains(err.Error(), "another runner wrote the index") {
			t.Fatalf("stale Write of %d batches: %v; want ErrFenced", len(batches), err)
		}
	}
	if err := a.Reset(ctx, "users"); !errors.Is(err, pg.ErrFenced) {
		t.Fatalf("stale Reset: %v; want ErrFenced", err)
	}
	if st, _ := state(t, b, "users"); st != cur {
		t.Fatalf("state after fenced writes = %+v; want %+v", st, cur)
	}
	if d := indextest.Dump(t, b, "users"); !slices.Equal(d, want) {
		t.Fatalf("entries after fenced writes = %v; want %v", d, want)
	}
	if _, ok := state(t, b, "types"); ok {
		t.Fatal("a fenced Write of two batches stored the other batch")
	}
	// B, whose writes A did not see, goes on writing; A, once it has read the state, too.
	cur.Checkpoint = 9
	write(t, b, index.Batch{Indexer: "users", State: cur})
	if st, _ := state(t, a, "users"); st != cur {
		t.Fatalf("A's State after B's writes = %+v; want %+v", st, cur)
	}
	write(t, a, index.Batch{Indexer: "users", State: index.State{Checkpoint: 10, Version: "1"}, Entries: []index.Entry{{Value: "7", Position: 10}}})
	write(t, a, other, index.Batch{Indexer: "users", State: index.State{Checkpoint: 11, Version: "1"}})
	// Now B is the stale one.
	if err := b.Write(ctx, index.Batch{Indexer: "users", State: cur}); !errors.Is(err, pg.ErrFenced) {
		t.Fatalf("B's Write after A's: %v; want ErrFenced", err)
	}
	if st, _ := state(t, a, "users"); st.Checkpoint != 11 {
		t.Fatalf("checkpoint = %d; want 11", st.Checkpoint)
	}
}

// TestFenceReset: a reset by one Store fences the others, and a Store that saw no state
// cannot write over one stored since.
func TestFenceReset(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	a := open(t, pool(t, dsn), nil)
	b := open(t, pool(t, dsn), nil)
	st := index.State{Checkpoint: 3, Version: "1"}
	write(t, a, index.Batch{Indexer: "users", State: st, Entries: []index.Entry{{Value: "7", Position: 3}}})
	state(t, b, "users")
	if err := b.Reset(ctx, "users"); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if err := a.Write(ctx, index.Batch{Indexer: "users", State: index.State{Checkpoint: 4, Version: "1"}}); !errors.Is(err, pg.ErrFenced) {
		t.Fatalf("Write after another Store's Reset: %v; want ErrFenced", err)
	}
	if _, ok := state(t, b, "users"); ok {
		t.Fatal("the fenced Write stored a state after the Reset")
	}

	// Both see no state; the first to write wins, the other is fenced.
	if _, ok := state(t, a, "users"); ok {
		t.Fatal("A sees a state after the Reset")
	}
	write(t, b, index.Batch{Indexer: "users", State: index.State{Version: "2"}})
	if err := a.Write(ctx, index.Batch{Indexer: "users", State: index.State{Version: "1"}}); !errors.Is(err, pg.ErrFenced) {
		t.Fatalf("Write over a state stored since this Store saw none: %v; want ErrFenced", err)
	}
	// The same when the state's row was deleted by hand: the Store reads it again.
	if _, err := pool(t, dsn).Exec(ctx, "DELETE FROM walflow.index_state"); err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, index.Batch{Indexer: "users", State: index.State{Version: "2"}}); !errors.Is(err, pg.ErrFenced) {
		t.Fatalf("Write after the state's row was deleted: %v; want ErrFenced", err)
	}
	if _, ok := state(t, b, "users"); ok {
		t.Fatal("State after the row was deleted: ok")
	}
	write(t, b, index.Batch{Indexer: "users", State: index.State{Version: "2"}})
	if got, _ := state(t, a, "users"); got.Version != "2" {
		t.Fatalf("state = %+v; want version 2", got)
	}
}

// TestFenceConcurrent: of two Stores that both read the state and then write at the same
// time, exactly one writes.
func TestFenceConcurrent(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	stores := []*pg.Store{open(t, pool(t, dsn), nil), open(t, pool(t, dsn), nil)}
	write(t, stores[0], index.Batch{Indexer: "users", State: index.State{Checkpoint: 1}})
	for round := range 20 {
		for _, s := range stores {
			state(t, s, "users")
		}
		errs := make(chan error, len(stores))
		for i, s := range stores {
			go func() {
				cp := event.Position(100*round + i + 2)
				errs <- s.Write(ctx, index.Batch{Indexer: "users", State: index.State{Checkpoint: cp},
					Entries: []index.Entry{{Value: fmt.Sprint(i), Position: cp}}})
			}()
		}
		var ok, fenced int
		for range stores {
			switch err := <-errs; {
			case err == nil:
				ok++
			case errors.Is(err, pg.ErrFenced):
				fenced++
			default:
				t.Fatalf("round %d: Write: %v", round, err)
			}
		}
		if ok != 1 || fenced != 1 {
			t.Fatalf("round %d: %d writes succeeded, %d fenced; want 1 and 1", round, ok, fenced)
		}
	}
	if n := len(indextest.Dump(t, stores[0], "users")); n != 20 {
		t.Fatalf("%d entries after 20 rounds; want one per round", n)
	}
}

// TestStateDuringWrite: a State read that a Write of the same Store overtakes does not
// fence that Store's next Write.
func TestStateDuringWrite(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := open(t, pool(t, pgtest.NewDatabase(t)), nil)
	write(t, s, index.Batch{Indexer: "users", State: index.State{Checkpoint: 1}})
	pg.AfterStateRead(s, func() {
		// The Write commits after State read checkpoint 1, before State records it.
		pg.AfterStateRead(s, nil)
		write(t, s, index.Batch{Indexer: "users", State: index.State{Checkpoint: 2}})
	})
	if st, _ := state(t, s, "users"); st.Checkpoint != 1 {
		t.Fatalf("State read checkpoint %d; want 1", st.Checkpoint)
	}
	if err := s.Write(ctx, index.Batch{Indexer: "users", State: index.State{Checkpoint: 3}}); err != nil {
		t.Fatalf("Write after a State its own Write overtook: %v", err)
	}
}

func TestTables(t *testing.T) {
	t.Parallel()
	for _, schema := range []string{"", "app_index"} {
		t.Run("schema="+schema, func(t *testing.T) {
			t.Parallel()
			db := pool(t, pgtest.NewDatabase(t))
			s := open(t, db, &pg.Options{Schema: schema})
			write(t, s, index.Batch{Indexer: "users", State: index.State{Checkpoint: 1}})
			want := cmpOr(schema, pg.SchemaDefault)
			const wantCols = "index_entries.indexer text; index_entries.value bytea; index_entries.position bigint; " +
				"index_state.indexer text; index_state.stored boolean; index_state.checkpoint bigint; index_state.since bigint; " +
				"index_state.version text; index_state.generation bigint; index_state.updated_at timestamp with time zone"
			if got := pgtest.Columns(t, db, want); got != wantCols {
				t.Errorf("columns in schema %s:\n got %s\nwant %s", want, got, wantCols)
			}
			// A second store on the same tables finds them and the data.
			s2 := open(t, db, &pg.Options{Schema: schema})
			if st, ok := state(t, s2, "users"); !ok || st.Checkpoint != 1 {
				t.Errorf("State on a second store: %+v, %v", st, ok)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestRoleCannotCreate: a role that may not create the tables gets an error saying so,
// and works on tables created beforehand.
func TestRoleCannotCreate(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	admin := pool(t, dsn)
	role := fmt.Sprintf("indexer_%d", time.Now().UnixNano())
	if _, err := admin.Exec(ctx, `CREATE ROLE `+role+` LOGIN`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP OWNED BY "+role+"; DROP ROLE "+role)
	})
	restrictedDB := pool(t, strings.Replace(dsn, "postgres@", role+"@", 1))
	_, err := pg.Open(ctx, restrictedDB, nil)
	if err == nil || !strings.Contains(err.Error(), "may not create them") {
		t.Fatalf("Open as a role without CREATE: %v; want an error saying it may not create the tables", err)
	}

	open(t, admin, nil) // creates the tables
	if _, err := admin.Exec(ctx, `GRANT USAGE ON SCHEMA walflow TO `+role+`;
GRANT SELECT, INSERT, UPDATE, DELETE ON walflow.index_state, walflow.index_entries TO `+role+`;
GRANT USAGE ON SEQUENCE walflow.index_generation TO `+role); err != nil {
		t.Fatal(err)
	}
	restricted := open(t, restrictedDB, nil)
	write(t, restricted, index.Batch{Indexer: "users", State: index.State{Checkpoint: 1}, Entries: []index.Entry{{Value: "7", Position: 1}}})
	if err := restricted.Reset(ctx, "users"); err != nil {
		t.Fatalf("Reset as the restricted role: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	db := &pgxpool.Pool{} // never used: Open checks its arguments first
	for _, tc := range []struct {
		db   pg.DB
		opts *pg.Options
		want string
	}{
		{nil, nil, "db is nil"},
		{db, &pg.Options{Schema: "Bad-Name"}, `Options.Schema "Bad-Name"`},
	} {
		_, err := pg.Open(t.Context(), tc.db, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%v, %+v): %v, want an error containing %q", tc.db, tc.opts, err, tc.want)
		}
	}
}
