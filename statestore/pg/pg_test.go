package pg_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/statestore"
	"github.com/walflow/walflow/statestore/pg"
	"github.com/walflow/walflow/statestore/statestoretest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// pool opens a pool on dsn, closed when the test ends.
func pool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatalf("pgxpool.New: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

func newStore(t *testing.T, cfg pg.Config) *pg.Store {
	t.Helper()
	s, err := pg.New(cfg)
	if err != nil {
		t.Fatalf("pg.New: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	statestoretest.Run(t, func(t *testing.T) statestore.Storage {
		return newStore(t, pg.Config{DB: pool(t, pgtest.NewDatabase(t))})
	})
}

// TestReopen reopens with a new pool each time, as a restarted process would.
func TestReopen(t *testing.T) {
	t.Parallel()
	statestoretest.RunReopen(t, func(t *testing.T) func() statestore.Storage {
		dsn := pgtest.NewDatabase(t)
		var cur *pgxpool.Pool
		return func() statestore.Storage {
			if cur != nil {
				cur.Close()
			}
			cur = pool(t, dsn)
			return newStore(t, pg.Config{DB: cur})
		}
	})
}

func TestTables(t *testing.T) {
	t.Parallel()
	for _, schema := range []string{"", "app_state"} {
		t.Run("schema="+schema, func(t *testing.T) {
			t.Parallel()
			db := pool(t, pgtest.NewDatabase(t))
			s := newStore(t, pg.Config{DB: db, Schema: schema})
			if err := s.InitRun(t.Context(), "r"); err != nil {
				t.Fatalf("InitRun: %v", err)
			}
			want := schema
			if want == "" {
				want = pg.SchemaDefault
			}
			got := pgtest.Columns(t, db, want)
			const wantCols = "statestore_entities.run_id text; statestore_entities.seq bigint; statestore_entities.ord integer; " +
				"statestore_entities.entity_id text; statestore_entities.state bytea; " +
				"statestore_runs.run_id text; statestore_runs.next_seq bigint; statestore_runs.created_at timestamp with time zone; " +
				"statestore_savepoints.run_id text; statestore_savepoints.seq bigint; statestore_savepoints.timestamp_ms bigint; " +
				"statestore_savepoints.position bigint; statestore_savepoints.entity_count integer; statestore_savepoints.saved_at timestamp with time zone"
			if got != wantCols {
				t.Errorf("columns in schema %s:\n got %s\nwant %s", want, got, wantCols)
			}
			// A second store on the same tables finds them.
			s2 := newStore(t, pg.Config{DB: db, Schema: schema})
			if err := s2.Migrate(t.Context()); err != nil {
				t.Errorf("Migrate on existing tables: %v", err)
			}
			if ok, err := s2.IsInitialized(t.Context(), "r"); err != nil || !ok {
				t.Errorf("IsInitialized on a second store: %v, %v; want true", ok, err)
			}
		})
	}
}

// TestConcurrentMigrate: stores created together on a fresh database all create or find
// the tables.
func TestConcurrentMigrate(t *testing.T) {
	t.Parallel()
	db := pool(t, pgtest.NewDatabase(t))
	errs := make(chan error, 8)
	for i := range cap(errs) {
		go func() {
			s, err := pg.New(pg.Config{DB: db})
			if err == nil {
				err = s.InitRun(t.Context(), "run-"+string(rune('a'+i)))
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("InitRun on a new store: %v", err)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	db := &pgxpool.Pool{} // never used: New does no I/O
	for _, tc := range []struct {
		cfg  pg.Config
		want string
	}{
		{pg.Config{}, "Config.DB is nil"},
		{pg.Config{DB: db, Schema: "Bad-Name"}, `Config.Schema "Bad-Name"`},
		{pg.Config{DB: db, Schema: "1x"}, `Config.Schema "1x"`},
	} {
		_, err := pg.New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v, want an error containing %q", tc.cfg, err, tc.want)
		}
	}
}

// TestTx: the Tx variants commit and roll back with the caller's transaction.
func TestTx(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pool(t, pgtest.NewDatabase(t))
	s := newStore(t, pg.Config{DB: db})
	if _, err := db.Exec(ctx, "CREATE TABLE read_model (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	sp := statestoretest.Savepoint(10, 5, "a", "b")

	// Rolled back: neither the run, the savepoint nor the application's row are there.
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := s.InitRunTx(ctx, tx, "r"); err != nil {
			return err
		}
		if err := s.SaveSavepointTx(ctx, tx, "r", sp); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO read_model VALUES (1)"); err != nil {
			return err
		}
		return errors.New("roll back")
	})
	if err == nil || err.Error() != "roll back" {
		t.Fatalf("rolled back transaction: %v", err)
	}
	if ok, err := s.IsInitialized(ctx, "r"); err != nil || ok {
		t.Errorf("IsInitialized after a rollback: %v, %v; want false", ok, err)
	}

	// Committed: all of them are.
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := s.InitRunTx(ctx, tx, "r"); err != nil {
			return err
		}
		if err := s.SaveSavepointTx(ctx, tx, "r", statestoretest.Savepoint(5, 1, "old")); err != nil {
			return err
		}
		if err := s.SaveSavepointTx(ctx, tx, "r", sp); err != nil {
			return err
		}
		if err := s.DeleteOldSavepointsTx(ctx, tx, "r", 1); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO read_model VALUES (1)")
		return err
	})
	if err != nil {
		t.Fatalf("committed transaction: %v", err)
	}
	got, err := s.LatestSavepoint(ctx, "r")
	if err != nil || !statestoretest.Equal(got, sp) {
		t.Errorf("LatestSavepoint after commit: %+v, %v; want %+v", got, err, sp)
	}
	infos, err := s.ListSavepoints(ctx, "r")
	if err != nil || len(infos) != 1 {
		t.Errorf("ListSavepoints after keeping 1 in the transaction: %v, %v", infos, err)
	}

	// An error of the store leaves the caller's transaction usable.
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := s.SaveSavepointTx(ctx, tx, "r", statestoretest.Savepoint(1, 1)); !errors.Is(err, statestore.ErrOutOfOrder) {
			t.Errorf("SaveSavepointTx before the latest: %v, want ErrOutOfOrder", err)
		}
		if err := s.SaveSavepointTx(ctx, tx, "missing", sp); !errors.Is(err, statestore.ErrNotInitialized) {
			t.Errorf("SaveSavepointTx of a missing run: %v, want ErrNotInitialized", err)
		}
		return s.DeleteRunTx(ctx, tx, "r")
	})
	if err != nil {
		t.Fatalf("transaction after store errors: %v", err)
	}
	if ok, err := s.IsInitialized(ctx, "r"); err != nil || ok {
		t.Errorf("IsInitialized after DeleteRunTx: %v, %v; want false", ok, err)
	}
	var n int
	if err := db.QueryRow(ctx, "SELECT (SELECT count(*) FROM walflow.statestore_savepoints) + (SELECT count(*) FROM walflow.statestore_entities)").Scan(&n); err != nil || n != 0 {
		t.Errorf("rows left after DeleteRunTx: %d, %v; want 0", n, err)
	}
}
