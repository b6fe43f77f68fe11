package operator

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/ledger/memory"
)

// TestHaltForeignKeepsReset: a foreign-ledger halt is stored only while the row still
// holds the checkpoint that was checked, so a walflow operator reset committed between the
// runner's read and its halt is not overwritten (the operator would stay halted on a reset
// checkpoint).
func TestHaltForeignKeepsReset(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, err := pgxpool.New(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	op := Func{Name: "tally", Entities: []string{"comments"},
		Handle: func(context.Context, pgx.Tx, *event.Event) error { return nil }}
	r, err := New(Config{DB: db, Instance: "s", Ledger: memory.New(nil), Operators: []Operator{op}})
	if err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `CREATE TABLE comments (id bigint PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO walflow.operators (instance, name, position, ledger, mark_position, mark_lsn)
		VALUES ('s', 'tally', 48, 'old', 48, 1000)`); err != nil {
		t.Fatal(err)
	}
	rows, err := r.load(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	rw := rows["tally"]
	if rw.position != 48 {
		t.Fatalf("loaded %+v", rw)
	}
	// The reset lands after the read, before the halt.
	if err := Reset(ctx, db, "s", op, nil); err != nil {
		t.Fatal(err)
	}
	cause := errors.New("operator tally: the checkpoint belongs to another ledger")
	if r.haltForeign(ctx, r.ops[0], rw, cause) {
		t.Fatal("haltForeign stored a halt over a reset checkpoint")
	}
	var halted bool
	var pos int64
	if err := db.QueryRow(ctx, `SELECT halted, position FROM walflow.operators WHERE instance = 's' AND name = 'tally'`).Scan(&halted, &pos); err != nil {
		t.Fatal(err)
	}
	if halted || pos != 0 {
		t.Fatalf("after the reset and a stale halt: halted %v at position %d, want the reset (not halted, 0)", halted, pos)
	}
	// Without a reset in between, the halt is stored.
	rows, err = r.load(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !r.haltForeign(ctx, r.ops[0], rows["tally"], cause) {
		t.Fatal("haltForeign did not store the halt of an unchanged row")
	}
	if err := db.QueryRow(ctx, `SELECT halted FROM walflow.operators WHERE instance = 's' AND name = 'tally'`).Scan(&halted); err != nil || !halted {
		t.Fatalf("halted %v (%v), want true", halted, err)
	}
}
