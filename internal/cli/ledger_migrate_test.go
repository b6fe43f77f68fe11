package cli

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/disk"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/pebble"
)

// TestLedgerMigrate converts a pebble ledger with walflow ledger migrate, and checks that
// the disk ledger in its place holds the same events and state, and that the pebble one is
// kept aside.
func TestLedgerMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "walflow.yaml")
	if err := os.WriteFile(path, []byte("database_url: postgres://app@127.0.0.1:1/app\nledger: {backend: pebble, dir: data}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	r := runCLI(ctx, noEnv, "ledger", "migrate", "--config", path)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "the ledger "+data+" does not exist") {
		t.Fatalf("ledger migrate without a ledger: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	src, err := pebble.Open(ctx, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		lsn := event.LSN(100 + i)
		ledgertest.WriteTx(t, src, lsn, ledgertest.Event(lsn, 0, "posts", i), ledgertest.Event(lsn, 1, "comments", i))
	}
	if err := src.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Truncate(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if err := src.SetOrigin(ctx, ledger.Origin{SystemID: "7", Timeline: 1, Database: "app", Slot: "walflow"}); err != nil {
		t.Fatal(err)
	}
	want := src.State()
	events, err := src.Read(ctx, 10, 1000)
	if err != nil {
		t.Fatal(err)
	}
	// While the pebble ledger is held, migrate says so.
	r = runCLI(ctx, noEnv, "ledger", "migrate", "--config", path)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "is in use by process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("ledger migrate of a held ledger: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	r = runCLI(ctx, noEnv, "ledger", "migrate", "--config", path)
	if r.code != ExitOK || r.stderr != "" || !strings.Contains(r.stdout, "Migrated 90 events to the disk backend in "+data) ||
		!strings.Contains(r.stdout, "Set ledger.backend: disk") {
		t.Fatalf("ledger migrate: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	l, err := disk.Open(ctx, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := l.State(); got != want {
		t.Fatalf("State after migrating = %+v, want %+v", got, want)
	}
	got, err := l.Read(ctx, 10, 1000)
	if err != nil || !reflect.DeepEqual(got, events) {
		t.Fatalf("events after migrating: %d, %v; want %d", len(got), err, len(events))
	}
	if !pebble.IsLedgerDir(filepath.Join(dir, "data.pebble")) {
		t.Fatal("the pebble ledger is not kept aside")
	}
	// A second migrate finds nothing to migrate.
	r = runCLI(ctx, noEnv, "ledger", "migrate", "--config", path)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "holds no ledger of the pebble backend") {
		t.Fatalf("ledger migrate of a disk ledger: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
