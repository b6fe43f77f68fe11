package faulttest

import (
	"testing"
	"time"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
)

const (
	largeRows = 1_000_000
	// largeMaxRSS bounds the pipeline's peak resident set size while it drains the
	// transaction: it streams the transaction into the ledger instead of holding it.
	largeMaxRSS = 256 << 20
)

// testMillionRowTransaction commits one transaction of a million rows and checks that the
// pipeline drains it into the ledger, at consecutive positions, without holding it in
// memory.
func testMillionRowTransaction(t *testing.T, bin string) {
	dsn := pgtest.NewDatabase(t)
	slot := dbName(t, dsn)
	conn := connect(t, dsn)
	exec1(t, conn, `CREATE TABLE big (id int PRIMARY KEY, body text NOT NULL)`)
	ledgerDir := t.TempDir()
	p := newPipeline(t, bin, dsn, ledgerDir, slot, "big")
	c := p.start()
	p.waitReady(c, 60*time.Second)

	exec1(t, conn, `INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, $1) g`, largeRows)
	start := time.Now()
	s := p.waitState(c, 10*time.Minute, "the million-row transaction", func(s childState) bool { return s.Head >= largeRows })
	drained := time.Since(start)
	kb := p.stop(c)
	t.Logf("pipeline drained %d rows of one transaction in %s; peak RSS (VmHWM) %.1f MiB", largeRows, drained.Round(time.Millisecond), float64(kb)/1024)
	if kb*1024 >= largeMaxRSS {
		t.Errorf("peak RSS %.1f MiB, want under %d MiB", float64(kb)/1024, largeMaxRSS>>20)
	}
	if s.Head != largeRows {
		t.Fatalf("ledger head %d, want %d", s.Head, largeRows)
	}

	var lsn event.LSN
	var xid uint32
	n := scanLedger(t, ledgerDir, []channel.Table{{Name: "big"}}, func(e *event.Event) {
		if e.Position == 1 {
			lsn, xid = e.LSN, e.XID
		}
		if e.LSN != lsn || e.XID != xid || e.Ordinal != uint32(e.Position-1) || e.Type != event.Insert || e.Name != "big" {
			t.Fatalf("event %d: %s of %s in transaction %s/%d with ordinal %d; want insert of big in %s/%d with ordinal %d",
				e.Position, e.Type, e.Name, e.LSN, e.XID, e.Ordinal, lsn, xid, e.Position-1)
		}
		if id := idOf(t, e, "id"); id != int64(e.Position) {
			t.Fatalf("event %d holds row %d, want row %d (insertion order)", e.Position, id, e.Position)
		}
	})
	if n != largeRows {
		t.Fatalf("ledger holds %d events, want %d", n, largeRows)
	}
}
