package pgwal_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/walflow/walflow/source/pgwal"
)

// TestSlotFailover checks Config.SlotFailover against the test server: before PostgreSQL 17
// Run refuses it at start, naming the server's version and the fix, and creates no slot;
// from 17 on the slot is created with failover = true.
func TestSlotFailover(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	var num int
	var version string
	if err := h.conn.QueryRow(t.Context(), "SELECT current_setting('server_version_num')::int, current_setting('server_version')").Scan(&num, &version); err != nil {
		t.Fatal(err)
	}
	cfg := h.config("t")
	cfg.SlotFailover = true
	if num < 170000 {
		err := <-h.start(cfg)
		if !errors.Is(err, pgwal.ErrFailoverUnsupported) {
			t.Fatalf("Run = %v, want ErrFailoverUnsupported", err)
		}
		for _, want := range []string{"PostgreSQL " + version, "PostgreSQL 17 or newer", "slot_failover", "upgrade the server"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("the error does not say %q: %v", want, err)
			}
		}
		var slots int
		if err := h.conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", h.slot).Scan(&slots); err != nil {
			t.Fatal(err)
		}
		if slots != 0 {
			t.Errorf("the refused start created the slot")
		}
		return
	}
	h.start(cfg)
	h.waitConnected()
	var failover bool
	if err := h.conn.QueryRow(t.Context(), "SELECT failover FROM pg_replication_slots WHERE slot_name = $1", h.slot).Scan(&failover); err != nil {
		t.Fatal(err)
	}
	if !failover {
		t.Fatal("the slot was created without failover")
	}
}

func TestSlotFailoverNotTemporary(t *testing.T) {
	t.Parallel()
	_, err := pgwal.New(pgwal.Config{ConnString: "postgres://x@127.0.0.1/db", SlotFailover: true, TemporarySlot: true})
	if err == nil || !strings.Contains(err.Error(), "turn one of them off") {
		t.Fatalf("New = %v, want the refusal of a temporary failover slot", err)
	}
}
