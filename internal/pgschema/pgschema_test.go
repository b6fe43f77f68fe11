package pgschema

import (
	"fmt"
	"sync"
	"testing"

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
