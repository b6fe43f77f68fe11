package pgwal_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/source/pgwal"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// harness runs a Source against a fresh database into a memory ledger.
type harness struct {
	t    *testing.T
	dsn  string
	conn *pgx.Conn
	led  *memory.Ledger
	src  *pgwal.Source
	stop func() error
	done chan struct{}
	slot string // slots are cluster-wide, so each test's is named after its database
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func newHarness(t *testing.T, schema string) *harness {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if schema != "" {
		if _, err := conn.Exec(ctx, schema); err != nil {
			t.Fatalf("schema: %v", err)
		}
	}
	return &harness{t: t, dsn: dsn, conn: conn, led: memory.New(nil), slot: dbName(dsn)}
}

func (h *harness) config(tables ...string) pgwal.Config {
	return pgwal.Config{ConnString: h.dsn, Slot: h.slot, Tables: tables, StatusInterval: 200 * time.Millisecond,
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: 500 * time.Millisecond, Logger: testLogger(h.t)}
}

// start runs the source until the test ends (or stop is called) and returns a channel
// that receives Run's result.
func (h *harness) start(cfg pgwal.Config) <-chan error {
	h.t.Helper()
	src, err := pgwal.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.src = src
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan error, 1)
	finished := make(chan struct{})
	var res error
	go func() {
		res = src.Run(ctx, h.led)
		out <- res
		close(finished)
	}()
	h.done = finished
	h.stop = func() error {
		cancel()
		<-finished
		return res
	}
	h.t.Cleanup(func() { _ = h.stop() })
	return out
}

func (h *harness) exec(sql string, args ...any) {
	h.t.Helper()
	if _, err := h.conn.Exec(h.t.Context(), sql, args...); err != nil {
		h.t.Fatalf("%s: %v", sql, err)
	}
}

// waitEvents waits until the ledger holds at least n events and returns all of them.
func (h *harness) waitEvents(n int) []event.Event {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 60*time.Second)
	defer cancel()
	for h.led.State().Head < event.Position(n) {
		if err := h.led.Wait(ctx, h.led.State().Head); err != nil {
			h.t.Fatalf("waiting for %d events (have %d): %v", n, h.led.State().Head, err)
		}
	}
	return readAll(h.t, h.led)
}

func readAll(t *testing.T, l ledger.Ledger) []event.Event {
	t.Helper()
	var out []event.Event
	var after event.Position
	for {
		evs, err := l.Read(t.Context(), after, 10000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return out
		}
		out = append(out, evs...)
		after = evs[len(evs)-1].Position
	}
}

func recordJSON(t *testing.T, r event.Record) string {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestTypeMatrix(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `
		CREATE TYPE mood AS ENUM ('happy', 'sad');
		CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
		CREATE TABLE matrix (
			id int PRIMARY KEY,
			i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
			num numeric, num_nan numeric, txt text, vc varchar(10), ch char(3), b bool, by bytea,
			u uuid, d date, tm time, ts timestamp, tstz timestamptz, ts_inf timestamptz, ts_ninf timestamp, iv interval,
			js json, jb jsonb, ia int[], ia2 int[], ta text[], m mood, dom positive, ip inet, mon money,
			f8nan double precision, f8inf double precision, f8ninf double precision,
			big text, counter int);
		ALTER TABLE matrix ALTER COLUMN big SET STORAGE EXTERNAL; ALTER TABLE matrix REPLICA IDENTITY FULL;`)
	h.start(h.config("matrix"))
	h.waitConnected()
	big := strings.Repeat("walflow TOAST ", 2000) // 28 KB, stored out of line
	h.exec(`INSERT INTO matrix VALUES (1,
		-32768, 2147483647, -9223372036854775808, 3.4028235e+38, 1.7976931348623157e+308,
		'123456789012345678901234567890.123456789012345678901234567890', 'NaN', 'héllo "q"', 'abc', 'x', true, '\xdeadbeef',
		'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '13:14:15.123456', '2024-07-23 12:00:00.5', '2024-07-23 12:00:00.123456+02', 'infinity', '-infinity', '1 year 2 mons 3 days 04:05:06',
		'{"a": 1}', '{"b": [1, 2]}', '{1,NULL,3}', '{{1,2},{3,4}}', '{"x,y",NULL,"z"}', 'sad', 7, '192.168.1.0/24', 12.34,
		'NaN', 'Infinity', '-Infinity', $1, 0)`, big)
	h.exec(`UPDATE matrix SET counter = counter + 1 WHERE id = 1`)
	evs := h.waitEvents(2)
	ins := evs[0]
	want := map[string]string{
		"i2": `-32768`, "i4": `2147483647`, "i8": `-9223372036854775808`, "f4": `3.4028235e+38`, "f8": `1.7976931348623157e+308`,
		"num": `123456789012345678901234567890.123456789012345678901234567890`, "num_nan": `"NaN"`,
		"txt": `"héllo \"q\""`, "vc": `"abc"`, "ch": `"x  "`, "b": `true`, "by": `"\\xdeadbeef"`,
		"u": `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, "d": `"2024-02-29"`, "tm": `"13:14:15.123456"`,
		"ts": `"2024-07-23T12:00:00.5"`, "tstz": `"2024-07-23T10:00:00.123456Z"`, "ts_inf": `"infinity"`, "ts_ninf": `"-infinity"`,
		"iv": `"1 year 2 mons 3 days 04:05:06"`, "js": `{"a":1}`, "jb": `{"b":[1,2]}`,
		"ia": `[1,null,3]`, "ia2": `[[1,2],[3,4]]`, "ta": `["x,y",null,"z"]`, "m": `"sad"`, "dom": `7`,
		"ip": `"192.168.1.0/24"`, "mon": `"$12.34"`, "f8nan": `"NaN"`, "f8inf": `"Infinity"`, "f8ninf": `"-Infinity"`,
	}
	for col, w := range want {
		v, ok := ins.NewRecord.Get(col)
		if !ok {
			t.Errorf("column %s missing", col)
			continue
		}
		b, _ := json.Marshal(v)
		if string(b) != w {
			t.Errorf("%s: JSON %s, want %s", col, b, w)
		}
		if _, err := v.Any(); err != nil {
			t.Errorf("%s: Any: %v", col, err)
		}
	}
	if c, _ := ins.Source.Column("dom"); c.Type != "positive" {
		t.Errorf("domain column type name %q, want positive", c.Type)
	}
	if c, _ := ins.Source.Column("vc"); c.Type != "character varying(10)" {
		t.Errorf("varchar type name %q", c.Type)
	}
	if v, _ := ins.NewRecord.Get("dom"); true {
		if x, _ := v.Any(); x != int32(7) {
			t.Errorf("domain decodes as %T %v, want int32 7", x, x)
		}
	}
	// The update left the TOASTed column alone: with REPLICA IDENTITY FULL it is filled
	// from the old row, and it is not among the changes.
	up := evs[1]
	if v, _ := up.NewRecord.Get("big"); v.IsNull() || v.IsUnchanged() {
		t.Fatalf("TOASTed column after update: %v", v.Kind())
	} else if s, _ := v.Text(); s != big {
		t.Fatalf("TOASTed column has %d bytes, want %d", len(s), len(big))
	}
	if len(up.Changes) != 1 || up.Changes[0].Column != "counter" {
		t.Fatalf("changes %+v, want only counter", up.Changes)
	}
}

func (h *harness) waitConnected() {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !h.src.Stats().Connected.Load() {
		select {
		case <-h.done:
			h.t.Fatalf("source stopped before streaming: %v", h.stop())
		default:
		}
		if time.Now().After(deadline) {
			h.t.Fatal("source did not start streaming within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUnchangedTOASTWithoutFullIdentity(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE docs (id int PRIMARY KEY, body text, n int); ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;`)
	h.start(h.config("docs"))
	h.waitConnected()
	h.exec(`INSERT INTO docs VALUES (1, $1, 0)`, strings.Repeat("x", 10000))
	h.exec(`UPDATE docs SET n = 1`)
	evs := h.waitEvents(2)
	v, _ := evs[1].NewRecord.Get("body")
	if !v.IsUnchanged() {
		t.Fatalf("body is %v, want unchanged TOAST marker", v.Kind())
	}
	if got := evs[1].UnchangedTOAST(); len(got) != 1 || got[0] != "body" {
		t.Fatalf("UnchangedTOAST() = %v", got)
	}
	b, _ := json.Marshal(&evs[1])
	if strings.Contains(string(b), `"body":null`) {
		t.Fatalf("unchanged TOAST reported as null: %s", b)
	}
}

func TestChangeKinds(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `
		CREATE TABLE posts (id int PRIMARY KEY, title text);
		CREATE TABLE comments (id int PRIMARY KEY, post_id int, body text);
		ALTER TABLE posts REPLICA IDENTITY FULL; ALTER TABLE comments REPLICA IDENTITY FULL;`)
	h.start(h.config("posts", "comments"))
	h.waitConnected()
	h.exec(`BEGIN; INSERT INTO posts VALUES (1, 'a'), (2, 'b'); INSERT INTO comments VALUES (10, 1, 'x'); COMMIT`)
	h.exec(`UPDATE comments SET post_id = 2 WHERE id = 10`)
	h.exec(`DELETE FROM posts WHERE id = 1`)
	h.exec(`ALTER TABLE posts ADD COLUMN score int DEFAULT 5`)
	h.exec(`INSERT INTO posts (id, title) VALUES (3, 'c')`)
	h.exec(`TRUNCATE comments`)
	evs := h.waitEvents(7)
	type row struct{ name, typ, rec string }
	got := make([]row, len(evs))
	for i, e := range evs {
		r := e.NewRecord
		if r == nil {
			r = e.OldRecord
		}
		got[i] = row{e.Name, e.Type.String(), recordJSON(t, r)}
		if e.Position != event.Position(i+1) {
			t.Errorf("event %d has position %d", i, e.Position)
		}
	}
	want := []row{
		{"posts", "insert", `{"id":1,"title":"a"}`},
		{"posts", "insert", `{"id":2,"title":"b"}`},
		{"comments", "insert", `{"id":10,"post_id":1,"body":"x"}`},
		{"comments", "update", `{"id":10,"post_id":2,"body":"x"}`},
		{"posts", "delete", `{"id":1,"title":"a"}`},
		{"posts", "insert", `{"id":3,"title":"c","score":5}`},
		{"comments", "truncate", `null`},
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	// One transaction: same LSN and xid, ordinals 0..2.
	if evs[0].LSN != evs[2].LSN || evs[0].XID != evs[2].XID || evs[2].Ordinal != 2 {
		t.Errorf("multi-table transaction identity: %v/%d/%d vs %v/%d/%d", evs[0].LSN, evs[0].XID, evs[0].Ordinal, evs[2].LSN, evs[2].XID, evs[2].Ordinal)
	}
	ch, ok := evs[3].Changes.Get("post_id")
	if !ok || ch.OldValue.String() != "1" || ch.NewValue.String() != "2" || len(evs[3].Changes) != 1 {
		t.Errorf("update changes %+v", evs[3].Changes)
	}
	if evs[3].OldRecord == nil {
		t.Errorf("update under REPLICA IDENTITY FULL has no old_record")
	}
	if c, ok := evs[5].Source.Column("score"); !ok || c.Type != "integer" {
		t.Errorf("schema change not seen: columns %+v", evs[5].Source.Columns)
	}
}

func TestCommitOrder(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY, who text)`)
	h.start(h.config("t"))
	h.waitConnected()
	ctx := t.Context()
	a, err := pgx.Connect(ctx, h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	txA, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := txA.Exec(ctx, `INSERT INTO t VALUES (1, 'A started first')`); err != nil {
		t.Fatal(err)
	}
	h.exec(`INSERT INTO t VALUES (2, 'B committed first')`)
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	evs := h.waitEvents(2)
	if id, _ := evs[0].NewRecord.Get("id"); id.String() != "2" {
		t.Fatalf("first event is row %s, want row 2 (commit order)", id)
	}
	if evs[0].LSN >= evs[1].LSN {
		t.Fatalf("commit LSNs not increasing: %s, %s", evs[0].LSN, evs[1].LSN)
	}
}

func TestIdleSlotDoesNotRetainWAL(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE unrelated (id serial PRIMARY KEY, pad text)`)
	h.start(h.config("watched"))
	h.waitConnected()
	// Busy only with a table outside the publication: the slot must still move on.
	for range 20 {
		h.exec(`INSERT INTO unrelated (pad) SELECT repeat('x', 1000) FROM generate_series(1, 200)`)
	}
	var target string
	if err := h.conn.QueryRow(t.Context(), "SELECT pg_current_wal_lsn()::text").Scan(&target); err != nil {
		t.Fatal(err)
	}
	want, _ := event.ParseLSN(target)
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, ok, err := pgwal.QuerySlot(t.Context(), h.conn, h.slot)
		if err != nil || !ok {
			t.Fatalf("slot: %v %v", ok, err)
		}
		if info.ConfirmedFlush >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot confirmed %s, never reached %s: idle progress is not acknowledged", info.ConfirmedFlush, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if h.led.State().Head != 0 {
		t.Fatalf("unrelated writes reached the ledger")
	}
}

func TestStartupChecks(t *testing.T) {
	t.Parallel()
	t.Run("no primary key", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, `CREATE TABLE nopk (a int)`)
		err := <-h.start(h.config("nopk"))
		if !errors.Is(err, pgwal.ErrNoPrimaryKey) || !strings.Contains(err.Error(), "ADD PRIMARY KEY") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("missing table", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, "")
		err := <-h.start(h.config("ghost"))
		if !errors.Is(err, pgwal.ErrNoTable) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("role without replication", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
		role := fmt.Sprintf("noreplication_%d", time.Now().UnixNano())
		h.exec(`CREATE ROLE ` + role + ` LOGIN`)
		t.Cleanup(func() { _, _ = h.conn.Exec(context.Background(), "DROP OWNED BY "+role+"; DROP ROLE "+role) })
		cfg := h.config("t")
		cfg.ConnString = strings.Replace(h.dsn, "postgres@", role+"@", 1)
		err := <-h.start(cfg)
		if !errors.Is(err, pgwal.ErrNoReplication) || !strings.Contains(err.Error(), "WITH REPLICATION") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("slot in use", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
		h.start(h.config("t"))
		h.waitConnected()
		other := &harness{t: t, dsn: h.dsn, led: memory.New(nil), slot: h.slot}
		cfg := h.config("t")
		cfg.SlotBusyWait = 300 * time.Millisecond
		err := <-other.start(cfg)
		if !errors.Is(err, pgwal.ErrSlotInUse) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("invalid names", func(t *testing.T) {
		t.Parallel()
		for _, cfg := range []pgwal.Config{
			{},
			{ConnString: "postgres://x@127.0.0.1/db", Slot: "Bad-Slot"},
			{ConnString: "postgres://x@127.0.0.1/db", Publication: "bad name"},
			{ConnString: "postgres://x@127.0.0.1/db", Tables: []string{"a;drop"}},
		} {
			if _, err := pgwal.New(cfg); err == nil {
				t.Errorf("config %+v accepted", cfg)
			}
		}
	})
}

func TestSlotDroppedOrRecreated(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	h.start(h.config("t"))
	h.waitConnected()
	h.exec(`INSERT INTO t VALUES (1)`)
	h.waitEvents(1)
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}

	h.waitSlotInactive()
	h.exec(`SELECT pg_drop_replication_slot($1)`, h.slot)
	err := <-h.start(h.config("t"))
	if !errors.Is(err, pgwal.ErrSlotMissing) || !strings.Contains(err.Error(), "to resync") {
		t.Fatalf("dropped slot: got %v", err)
	}

	h.exec(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, h.slot)
	h.exec(`INSERT INTO t VALUES (2)`)
	err = <-h.start(h.config("t"))
	if !errors.Is(err, pgwal.ErrSlotRecreated) || !strings.Contains(err.Error(), "to resync") {
		t.Fatalf("recreated slot: got %v", err)
	}
}

func TestTemporarySlot(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := h.config("t")
	cfg.Slot, cfg.TemporarySlot = h.slot+"_tmp", true
	h.start(cfg)
	h.waitConnected()
	h.exec(`INSERT INTO t VALUES (1)`)
	h.waitEvents(1)
	info, ok, err := pgwal.QuerySlot(t.Context(), h.conn, h.slot+"_tmp")
	if err != nil || !ok || !info.Temporary {
		t.Fatalf("temporary slot: %+v %v %v", info, ok, err)
	}
	_ = h.stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, ok, err := pgwal.QuerySlot(t.Context(), h.conn, h.slot+"_tmp")
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("temporary slot outlived its connection")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dbName(dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		panic(err)
	}
	return cfg.Database
}

// waitSlotInactive waits until the server has released the slot after a stop.
func (h *harness) waitSlotInactive() {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, ok, err := pgwal.QuerySlot(h.t.Context(), h.conn, h.slot)
		if err != nil {
			h.t.Fatal(err)
		}
		if !ok || !info.Active {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("slot %s still active 30s after the source stopped", h.slot)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOtherCluster covers the conditions a second cluster is needed for: wal_level not
// logical, and a ledger pointed at a different database system (as after a restore from a
// backup into a new cluster), which must stop instead of resuming past a gap.
func TestOtherCluster(t *testing.T) {
	t.Parallel()
	ctx := t.Context()

	replica, err := pgtest.Start(ctx, &pgtest.Options{Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = replica.Stop(context.Background()) })
	h := &harness{t: t, dsn: replica.DSN("postgres"), led: memory.New(nil), slot: "walflow"}
	err = <-h.start(h.config())
	if !errors.Is(err, pgwal.ErrWALLevel) || !strings.Contains(err.Error(), "wal_level = logical") {
		t.Fatalf("wal_level replica: got %v", err)
	}

	// The same ledger, first following the shared cluster, then a different one with the
	// same database and slot names.
	a := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	a.start(a.config("t"))
	a.waitConnected()
	a.exec(`INSERT INTO t VALUES (1)`)
	a.waitEvents(1)
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	other, err := pgtest.Start(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Stop(context.Background()) })
	if err := other.CreateDatabase(ctx, a.slot); err != nil {
		t.Fatal(err)
	}
	if err := other.Exec(ctx, a.slot, `CREATE TABLE t (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	b := &harness{t: t, dsn: other.DSN(a.slot), led: a.led, slot: a.slot}
	err = <-b.start(b.config("t"))
	if !errors.Is(err, pgwal.ErrOriginChanged) || !strings.Contains(err.Error(), "database system") || !strings.Contains(err.Error(), "to resync") {
		t.Fatalf("other cluster: got %v", err)
	}
	if got := a.led.State().Head; got != 1 {
		t.Fatalf("ledger head %d after the refused start, want 1", got)
	}
}

// syncFailer is a memory ledger whose Sync fails once failing is set: a disk that stopped
// taking writes. It counts the transactions committed (published only by Sync).
type syncFailer struct {
	*memory.Ledger
	failing *atomic.Bool
	commits *atomic.Int64
}

func (s syncFailer) CommitTx(ctx context.Context, endLSN event.LSN) error {
	err := s.Ledger.CommitTx(ctx, endLSN)
	if err == nil {
		s.commits.Add(1)
	}
	return err
}

var errDiskGone = errors.New("disk gone")

func (s syncFailer) Sync(ctx context.Context) error {
	if s.failing.Load() {
		return errDiskGone
	}
	return s.Ledger.Sync(ctx)
}

// TestStopReportsFailedSync: committed transactions waiting for their sync when Run stops
// are synced then; a failure of that sync is Run's result, not a clean nil.
func TestStopReportsFailedSync(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := h.config("t")
	cfg.SyncDelay = time.Hour // nothing is synced until the stop
	src, err := pgwal.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	var failing atomic.Bool
	var commits atomic.Int64
	go func() { done <- src.Run(ctx, syncFailer{h.led, &failing, &commits}) }()
	h.exec(`INSERT INTO t VALUES (1)`) // before the slot exists: not streamed
	deadline := time.Now().Add(60 * time.Second)
	for commits.Load() == 0 {
		h.exec(`INSERT INTO t SELECT max(id) + 1 FROM t`)
		if time.Now().After(deadline) {
			t.Fatal("no transaction reached the ledger within 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	failing.Store(true)
	cancel()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return within 60s of its context ending")
	}
	if !errors.Is(err, errDiskGone) || !strings.Contains(err.Error(), "not durable") {
		t.Fatalf("Run returned %v after a failed sync at stop, want an error wrapping %v", err, errDiskGone)
	}
}

// TestTableAddedWarns: a table added to the configuration after the first start joins
// the publication with a warning naming it, because its existing rows produce no events;
// the first start, which creates the publication, does not warn.
func TestTableAddedWarns(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE SCHEMA other; CREATE TABLE other.c (id int PRIMARY KEY);
		INSERT INTO b VALUES (1); INSERT INTO other.c VALUES (1);`)
	logs := &syncbuf.Buffer{}
	logged := func(cfg pgwal.Config) pgwal.Config {
		cfg.Logger = slog.New(slog.NewJSONHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelInfo}))
		return cfg
	}
	const msg = "added tables to publication: their existing rows produce no events, only changes from now on"
	warnings := func() []map[string]any {
		var out []map[string]any
		for line := range strings.Lines(logs.String()) {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			if rec["msg"] == msg {
				out = append(out, rec)
			}
		}
		return out
	}

	h.start(logged(h.config("a")))
	h.waitConnected()
	h.exec(`INSERT INTO a VALUES (1)`)
	h.waitEvents(1)
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if w := warnings(); len(w) != 0 {
		t.Fatalf("the first start warned: %v", w)
	}

	h.waitSlotInactive()
	h.start(logged(h.config("a", "b", "other.c")))
	h.waitConnected()
	w := warnings()
	if len(w) != 1 {
		t.Fatalf("restart with two more tables: %d warnings, want 1:\n%s", len(w), logs.String())
	}
	rec := w[0]
	fix, _ := rec["fix"].(string)
	if rec["level"] != "WARN" || rec["publication"] != "walflow" || fmt.Sprint(rec["tables"]) != "[b other.c]" ||
		!strings.Contains(fix, "walflow operator backfill") || !strings.Contains(fix, "snapshot") {
		t.Errorf("warning %v, want level WARN, publication walflow, tables [b other.c] and a fix naming walflow operator backfill and a snapshot", rec)
	}
	// As warned: b's existing row 1 is no event; its new row 2 is.
	h.exec(`INSERT INTO b VALUES (2)`)
	evs := h.waitEvents(2)
	if got := evs[1].Name + " " + recordJSON(t, evs[1].NewRecord); len(evs) != 2 || got != `b {"id":2}` {
		t.Errorf("after the restart: %d events, the second %s; want 2, the second b {\"id\":2}", len(evs), got)
	}
}

// TestAckRecordedBeforeSent checks that every position the slot confirms was recorded in
// the ledger (State().AckedLSN) before it was sent, while transactions stream: a ledger
// that recovers to less than its recorded bookkeeping must be able to tell damage from a
// torn write, which it can only if nothing acknowledged lies beyond what it recorded.
func TestAckRecordedBeforeSent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE watched (id serial PRIMARY KEY, pad text)`)
	h.start(h.config("watched"))
	h.waitConnected()
	ctx := t.Context()
	writerDone := make(chan error, 1)
	stopWriter := make(chan struct{})
	go func() {
		conn, err := pgx.Connect(ctx, h.dsn)
		if err != nil {
			writerDone <- err
			return
		}
		defer conn.Close(context.Background())
		for {
			select {
			case <-stopWriter:
				writerDone <- nil
				return
			default:
			}
			if _, err := conn.Exec(ctx, `INSERT INTO watched (pad) SELECT repeat('x', 200) FROM generate_series(1, 100)`); err != nil {
				writerDone <- err
				return
			}
		}
	}()
	var confirmedMoves int
	var last event.LSN
	for range 200 {
		info, ok, err := pgwal.QuerySlot(ctx, h.conn, h.slot)
		if err != nil || !ok {
			t.Fatalf("slot: %v %v", ok, err)
		}
		// Read the slot first: whatever it confirmed was recorded before it was sent.
		if acked := h.led.State().AckedLSN; info.ConfirmedFlush > acked {
			t.Fatalf("the slot confirmed %s, but the ledger recorded only %s as acknowledged", info.ConfirmedFlush, acked)
		}
		if info.ConfirmedFlush > last {
			confirmedMoves++
			last = info.ConfirmedFlush
		}
		time.Sleep(25 * time.Millisecond)
	}
	close(stopWriter)
	if err := <-writerDone; err != nil {
		t.Fatalf("writer: %v", err)
	}
	if confirmedMoves < 3 {
		t.Fatalf("the slot's confirmed position moved %d times while the writer ran; the check saw too little", confirmedMoves)
	}
}

// beginFailer refuses every BeginTx once failing is set, as a ledger does when the stop
// cancelled the call.
type beginFailer struct {
	*memory.Ledger
	failing *atomic.Bool
	refused chan struct{}
	once    *sync.Once
}

var errBeginRefused = errors.New("begin refused")

func (s beginFailer) BeginTx(ctx context.Context, meta event.TxMeta) error {
	if s.failing.Load() {
		s.once.Do(func() { close(s.refused) })
		return errBeginRefused
	}
	return s.Ledger.BeginTx(ctx, meta)
}

// TestBeginRefusedLeavesNothingToAbort: a transaction the ledger refused to begin is not
// open, so the session ends with the refusal alone, not also a failed abort of a
// transaction the ledger never had (seen when a stop cancelled BeginTx).
func TestBeginRefusedLeavesNothingToAbort(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id serial PRIMARY KEY)`)
	var logs syncbuf.Buffer
	cfg := h.config("t")
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	src, err := pgwal.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var failing atomic.Bool
	failing.Store(true)
	sink := beginFailer{h.led, &failing, make(chan struct{}), new(sync.Once)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, sink) }()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(logs.String(), "replication session ended") {
		h.exec(`INSERT INTO t DEFAULT VALUES`)
		if time.Now().After(deadline) {
			t.Fatalf("no session ended on the refused BeginTx within 60s:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, errBeginRefused) {
		t.Fatalf("Run returned %v", err)
	}
	if out := logs.String(); !strings.Contains(out, errBeginRefused.Error()) || strings.Contains(out, "abort the open transaction") {
		t.Fatalf("the session ended with more than the refused BeginTx:\n%s", out)
	}
}

// writeFailer fails every Sync once failing is set, with a write failure after which the
// ledger takes no more writes, as a full disk does.
type writeFailer struct {
	*memory.Ledger
	failing *atomic.Bool
	commits *atomic.Int64
}

var errNoSpace = errors.New("write seg: no space left on device")

func (s writeFailer) CommitTx(ctx context.Context, endLSN event.LSN) error {
	err := s.Ledger.CommitTx(ctx, endLSN)
	if err == nil {
		s.commits.Add(1)
	}
	return err
}

func (s writeFailer) Sync(ctx context.Context) error {
	if s.failing.Load() {
		return ledger.WriteFailed(errNoSpace)
	}
	return s.Ledger.Sync(ctx)
}

func (s writeFailer) AbortTx(ctx context.Context) error {
	if s.failing.Load() {
		return ledger.WriteFailed(errNoSpace)
	}
	return s.Ledger.AbortTx(ctx)
}

// TestWriteFailureReportedOnce: a sink whose write failed refuses every later write, so Run
// ends with that failure once, saying that what was not synced is streamed again, instead
// of also reporting the stop's abort and sync failing the same way.
func TestWriteFailureReportedOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id serial PRIMARY KEY)`)
	cfg := h.config("t")
	cfg.SyncDelay = 50 * time.Millisecond
	src, err := pgwal.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var failing atomic.Bool
	var commits atomic.Int64
	done := make(chan error, 1)
	go func() { done <- src.Run(t.Context(), writeFailer{h.led, &failing, &commits}) }()
	deadline := time.Now().Add(60 * time.Second)
	for commits.Load() == 0 {
		h.exec(`INSERT INTO t DEFAULT VALUES`)
		if time.Now().After(deadline) {
			t.Fatal("no transaction reached the ledger within 60s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	failing.Store(true)
	for {
		h.exec(`INSERT INTO t DEFAULT VALUES`)
		select {
		case err = <-done:
		case <-time.After(50 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("Run did not end on the write failure within 60s")
			}
			continue
		}
		break
	}
	if !errors.Is(err, ledger.ErrWriteFailed) || strings.Count(err.Error(), errNoSpace.Error()) != 1 || !strings.Contains(err.Error(), "streamed again") {
		t.Fatalf("Run returned %q, want the write failure once, saying the unsynced transactions are streamed again", err)
	}
}
