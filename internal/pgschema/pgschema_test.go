package pgschema

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

func TestValidIdent(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"walflow": true, "_x": true, "a1_b2": true, "": false, "1a": false, "Walflow": false,
		"a-b": false, "a.b": false, `a"b`: false, "é": false,
		"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabc":  true,  // 63 bytes
		"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcd": false, // 64
	} {
		if got := ValidIdent(s); got != want {
			t.Errorf("ValidIdent(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestCheckSchema(t *testing.T) {
	t.Parallel()
	if err := CheckSchema("x/pg: Config.Schema", "walflow_2"); err != nil {
		t.Errorf("CheckSchema of a plain name = %v", err)
	}
	err := CheckSchema("x/pg: Config.Schema", "Walflow")
	want := `x/pg: Config.Schema "Walflow" is not a plain schema name; use lower-case letters, digits and _, not starting with a digit, at most 63 bytes`
	if err == nil || err.Error() != want {
		t.Errorf("CheckSchema of a name with a capital = %v, want %s", err, want)
	}
}

// Stores creating different tables in one new schema at the same moment all succeed: with
// a lock per table they raced on CREATE SCHEMA IF NOT EXISTS and one failed with a unique
// violation in pg_namespace (seen in CI between the operator and backfill tables).
func TestCreateConcurrentTablesInOneSchema(t *testing.T) {
	t.Parallel()
	const stores, rounds = 8, 5
	pool, err := pgxpool.New(t.Context(), pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for r := range rounds {
		schema := fmt.Sprintf("s%d", r)
		var wg sync.WaitGroup
		errs := make([]error, stores)
		for i := range stores {
			wg.Go(func() {
				errs[i] = Create(t.Context(), pool, fmt.Sprintf(
					"CREATE SCHEMA IF NOT EXISTS %s; CREATE TABLE IF NOT EXISTS %s.t%d (id int)", schema, schema, i))
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d, store %d: %v", r, i, err)
			}
		}
		var n int
		if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE schemaname = $1`, schema).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != stores {
			t.Errorf("round %d: schema %s has %d tables, want %d", r, schema, n, stores)
		}
	}
}

// A schema created at the same moment by a session that does not take walflow's lock (a
// user's own migration, or a catalog cache that missed the other store's commit, as
// TestParkedCounts met in CI) makes CREATE SCHEMA IF NOT EXISTS fail with a unique
// violation; Create runs the DDL again in a new transaction, which sees the schema.
func TestCreateRetriesCatalogCollision(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDatabase(t)
	ctx := t.Context()
	first, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close(context.Background())
	second, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close(context.Background())
	tx, err := first.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `CREATE SCHEMA racing; CREATE TABLE racing.a (id int)`); err != nil {
		t.Fatal(err)
	}
	pid := second.PgConn().PID()
	done := make(chan error, 1)
	go func() {
		done <- Create(ctx, second, `CREATE SCHEMA IF NOT EXISTS racing; CREATE TABLE IF NOT EXISTS racing.b (id int)`)
	}()
	// Wait until the second session waits on the first's uncommitted pg_namespace row.
	for waiting := false; !waiting; {
		if err := first.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)`, pid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Create while another session created the schema: %v", err)
	}
	var n int
	if err := first.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'racing'`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("schema racing has %d tables (%v), want 2", n, err)
	}
}

// A role without CREATE on the database gets the hint that says how to fix it; a failure
// of another kind gets none.
func TestPrivilegeHint(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDatabase(t)
	ctx := t.Context()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	role := "limited_" + admin.Config().Database
	if _, err := admin.Exec(ctx, `CREATE ROLE `+role+` LOGIN`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), `DROP ROLE `+role) })
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = role
	limited, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = Create(ctx, limited, `CREATE SCHEMA IF NOT EXISTS walflow`)
	limited.Close(context.Background())
	if err == nil {
		t.Fatal("a role without CREATE created a schema")
	}
	if h := PrivilegeHint(err); !strings.Contains(h, "needs CREATE") {
		t.Errorf("PrivilegeHint(%v) = %q; want the fix", err, h)
	}
	if h := PrivilegeHint(fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: pgerrcode.AdminShutdown})); h != "" {
		t.Errorf("PrivilegeHint of a terminated connection = %q; want none", h)
	}
}
