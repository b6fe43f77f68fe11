package pg_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/processstatus/pg"
	"github.com/walflow/walflow/processstatus/processstatustest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// connect opens a connection to dsn, closed when the test ends.
func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
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
	processstatustest.Run(t, processstatustest.Features{Durable: true}, func(t *testing.T) func() processstatus.Store {
		dsn := pgtest.NewDatabase(t)
		return func() processstatus.Store {
			return newStore(t, pg.Config{DB: connect(t, dsn)})
		}
	})
}

// rows returns the stored entities of schema.process_status.
func rows(t *testing.T, conn *pgx.Conn, schema string) map[string]int64 {
	t.Helper()
	rs, err := conn.Query(t.Context(), "SELECT entity, processed_micros FROM "+pgx.Identifier{schema, "process_status"}.Sanitize())
	if err != nil {
		t.Fatalf("query %s.process_status: %v", schema, err)
	}
	out := map[string]int64{}
	var (
		e string
		m int64
	)
	if _, err := pgx.ForEachRow(rs, []any{&e, &m}, func() error { out[e] = m; return nil }); err != nil {
		t.Fatalf("read %s.process_status: %v", schema, err)
	}
	return out
}

func TestTables(t *testing.T) {
	t.Parallel()
	for _, schema := range []string{"", "app_status"} {
		t.Run("schema="+schema, func(t *testing.T) {
			t.Parallel()
			conn := connect(t, pgtest.NewDatabase(t))
			s := newStore(t, pg.Config{DB: conn, Schema: schema})
			if _, err := s.Load(t.Context()); err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := schema
			if want == "" {
				want = pg.SchemaDefault
			}
			got := pgtest.Columns(t, conn, want)
			const wantCols = "process_status.instance text; process_status.entity text; process_status.processed_micros bigint; process_status.updated_at timestamp with time zone; " +
				"process_status_position.instance text; process_status_position.position bigint; process_status_position.updated_at timestamp with time zone"
			if got != wantCols {
				t.Errorf("columns in schema %s:\n got %s\nwant %s", want, got, wantCols)
			}
			// A second store on the same tables finds them.
			if err := newStore(t, pg.Config{DB: conn, Schema: schema}).Migrate(t.Context()); err != nil {
				t.Errorf("Migrate on existing tables: %v", err)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	var conn *pgx.Conn // never used: New does no I/O
	tests := []struct {
		name string
		cfg  pg.Config
		want string
	}{
		{"no DB", pg.Config{}, "Config.DB is nil"},
		{"bad schema", pg.Config{DB: conn, Schema: "Bad-Schema"}, `Config.Schema "Bad-Schema"`},
		{"negative interval", pg.Config{DB: conn, FlushInterval: -time.Second}, "Config.FlushInterval is -1s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := pg.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "processstatus/pg: ") {
				t.Errorf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestBatching: saves are kept in memory, and one flush writes the latest value per entity.
func TestBatching(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := connect(t, pgtest.NewDatabase(t))
	s := newStore(t, pg.Config{DB: conn})
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if err := s.Save(ctx, "posts", int64(i)); err != nil {
			t.Fatal(err)
		}
		if err := s.Save(ctx, "comments", int64(2*i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := rows(t, conn, "walflow"); len(got) != 0 {
		t.Fatalf("before Flush: rows %v, want none (Save must not write)", got)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rows(t, conn, "walflow"); got["posts"] != 999 || got["comments"] != 1998 || len(got) != 2 {
		t.Errorf("after Flush: rows %v, want posts 999 and comments 1998", got)
	}
}

// failingDB fails Begin while fail is set.
type failingDB struct {
	pg.DB
	fail atomic.Bool
}

var errDown = errors.New("database down")

func (f *failingDB) Begin(ctx context.Context) (pgx.Tx, error) {
	if f.fail.Load() {
		return nil, errDown
	}
	return f.DB.Begin(ctx)
}

// TestFlushFailureKeepsValues: a failed flush keeps its values for the next, without
// overwriting newer ones.
func TestFlushFailureKeepsValues(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := connect(t, pgtest.NewDatabase(t))
	db := &failingDB{DB: conn}
	s := newStore(t, pg.Config{DB: db})
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	_ = s.Save(ctx, "posts", 10)
	_ = s.Save(ctx, "tags", 5)
	_ = s.SavePosition(ctx, 3)
	db.fail.Store(true)
	if err := s.Flush(ctx); !errors.Is(err, errDown) || !strings.HasPrefix(err.Error(), "processstatus/pg: ") {
		t.Fatalf("Flush on a failing database: %v, want a pg error wrapping %v", err, errDown)
	}
	_ = s.Save(ctx, "posts", 20) // newer than the failed flush's value
	db.fail.Store(false)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := newStore(t, pg.Config{DB: conn}).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Entities["posts"] != 20 || snap.Entities["tags"] != 5 || snap.Position != 3 {
		t.Errorf("after the retried flush: %v at position %d, want posts 20, tags 5 at position 3", snap.Entities, snap.Position)
	}
}

// TestRun: Run flushes on its interval, and once more when its context ends.
func TestRun(t *testing.T) {
	t.Parallel()
	t.Run("interval", func(t *testing.T) {
		t.Parallel()
		conn := connect(t, pgtest.NewDatabase(t))
		s := newStore(t, pg.Config{DB: connect(t, conn.Config().ConnString()), FlushInterval: 5 * time.Millisecond})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		_ = s.Save(ctx, "posts", 42)
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := conn.Exec(t.Context(), "SELECT 1 FROM walflow.process_status"); err == nil && rows(t, conn, "walflow")["posts"] == 42 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("Run did not flush within 10s")
			}
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Run("final flush", func(t *testing.T) {
		t.Parallel()
		conn := connect(t, pgtest.NewDatabase(t))
		s := newStore(t, pg.Config{DB: connect(t, conn.Config().ConnString()), FlushInterval: time.Hour})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		_ = s.Save(ctx, "posts", 7)
		_ = s.SavePosition(ctx, 9)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if got := rows(t, conn, "walflow"); got["posts"] != 7 {
			t.Errorf("after Run returned: rows %v, want posts 7", got)
		}
	})
}

// TestCurrentLSN: the token read after a commit covers the commit, and reads as
// PostgreSQL's LSN form.
func TestCurrentLSN(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := connect(t, pgtest.NewDatabase(t))
	var before string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&before); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE posts (id int PRIMARY KEY); INSERT INTO posts VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	lsn, err := processstatus.CurrentLSN(ctx, conn)
	if err != nil {
		t.Fatalf("CurrentLSN: %v", err)
	}
	b, _ := event.ParseLSN(before)
	if lsn <= b {
		t.Errorf("CurrentLSN after a commit = %s, want after %s (the insert position before it)", lsn, b)
	}
	var after string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if a, _ := event.ParseLSN(after); lsn >= a {
		t.Errorf("CurrentLSN = %s, want before the insert position %s", lsn, a)
	}
	if back, err := event.ParseLSN(lsn.String()); err != nil || back != lsn {
		t.Errorf("the header value %q does not parse back: %v", lsn.String(), err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := processstatus.CurrentLSN(cctx, conn); err == nil || !strings.HasPrefix(err.Error(), "processstatus: ") {
		t.Errorf("CurrentLSN with a cancelled context: %v, want a processstatus error", err)
	}
}

// Stores of different instances share the tables without seeing, overwriting or resetting
// each other's status.
func TestInstances(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	a := newStore(t, pg.Config{DB: connect(t, dsn), Instance: "slot_a"})
	b := newStore(t, pg.Config{DB: connect(t, dsn), Instance: "slot_b"})
	save := func(s *pg.Store, micros int64, pos event.Position) {
		t.Helper()
		if err := s.Save(ctx, "posts", micros); err != nil {
			t.Fatal(err)
		}
		if err := s.SavePosition(ctx, pos); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	load := func(s *pg.Store) processstatus.Snapshot {
		t.Helper()
		snap, err := s.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return snap
	}
	save(a, 100, 7)
	save(b, 200, 3)
	if got := load(a); got.Position != 7 || got.Entities["posts"] != 100 {
		t.Errorf("instance a loads %+v, want its own position 7 and posts 100", got)
	}
	if got := load(b); got.Position != 3 || got.Entities["posts"] != 200 {
		t.Errorf("instance b loads %+v, want its own position 3 and posts 200", got)
	}
	if err := b.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if got := load(b); got.Position != 0 || len(got.Entities) != 0 {
		t.Errorf("instance b after its reset loads %+v, want nothing", got)
	}
	if got := load(a); got.Position != 7 || got.Entities["posts"] != 100 {
		t.Errorf("instance a after b's reset loads %+v, want its own status untouched", got)
	}
}

// Tables made before instances are upgraded in place, and the first store of a named
// instance adopts their rows: no saved status is lost.
func TestUpgradeAdoptsStatus(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	conn := connect(t, dsn)
	_, err := conn.Exec(ctx, `CREATE SCHEMA walflow;
		CREATE TABLE walflow.process_status (entity text PRIMARY KEY, processed_micros bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
		CREATE TABLE walflow.process_status_position (singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), position bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO walflow.process_status (entity, processed_micros) VALUES ('posts', 42), ('comments', 43);
		INSERT INTO walflow.process_status_position (position) VALUES (12);`)
	if err != nil {
		t.Fatal(err)
	}
	first := newStore(t, pg.Config{DB: connect(t, dsn), Instance: "first"})
	snap, err := first.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Position != 12 || snap.Entities["posts"] != 42 || snap.Entities["comments"] != 43 {
		t.Errorf("the first instance after the upgrade loads %+v, want the status kept before", snap)
	}
	second := newStore(t, pg.Config{DB: connect(t, dsn), Instance: "second"})
	if snap, err := second.Load(ctx); err != nil || snap.Position != 0 || len(snap.Entities) != 0 {
		t.Errorf("a second instance loads %+v (%v), want nothing: the status is the first one's", snap, err)
	}
	if err := second.SavePosition(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := second.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if snap, err := first.Load(ctx); err != nil || snap.Position != 12 {
		t.Errorf("the first instance loads %+v (%v) after the second saved, want its position 12", snap, err)
	}
	const wantCols = "process_status.entity text; process_status.processed_micros bigint; process_status.updated_at timestamp with time zone; process_status.instance text; " +
		"process_status_position.position bigint; process_status_position.updated_at timestamp with time zone; process_status_position.instance text"
	if got := pgtest.Columns(t, conn, "walflow"); got != wantCols {
		t.Errorf("columns after the upgrade:\n got %s\nwant %s", got, wantCols)
	}
}
