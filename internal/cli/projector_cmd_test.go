package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/ledger/disk"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/projector"
	"github.com/walflow/walflow/retry"
)

// projectorConfigFile writes a configuration on dsn with the given http.addr and ledger
// directory data beside it, and returns its path.
func projectorConfigFile(t *testing.T, dsn, httpAddr string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "walflow.yaml")
	config := fmt.Sprintf("database_url: %s\nhttp:\n  addr: %q\nledger:\n  dir: data\ntables:\n  events:\n", dsn, httpAddr)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// projectorStore is a fresh database with walflow.projectors, and its store.
func projectorStore(t *testing.T) (string, *projector.PostgresStore) {
	t.Helper()
	dsn, pool := poolOnNewDatabase(t, "")
	store := projector.NewPostgresStore(pool)
	if err := store.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return dsn, store
}

// saveCheckpoint stores cp for name as a Runner does: Load (which registers it), then Save
// with the loaded version. It returns the stored checkpoint.
func saveCheckpoint(t *testing.T, store *projector.PostgresStore, name string, cp projector.Checkpoint) projector.Checkpoint {
	t.Helper()
	loaded, err := store.Load(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	cp.Version = loaded.Version
	if err := store.Save(t.Context(), name, cp); err != nil {
		t.Fatal(err)
	}
	return storedCheckpoint(t, store, name)
}

// storedCheckpoint reads name's checkpoint without registering it.
func storedCheckpoint(t *testing.T, store *projector.PostgresStore, name string) projector.Checkpoint {
	t.Helper()
	cps, err := store.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range cps {
		if cp.Name == name {
			return cp.Checkpoint
		}
	}
	t.Fatalf("walflow.projectors has no %s: %+v", name, cps)
	return projector.Checkpoint{}
}

// projectorStatusJSON runs walflow projector status --json and decodes its output.
func projectorStatusJSON(t *testing.T, path string) (projectorStatusDoc, string) {
	t.Helper()
	r := runCLI(t.Context(), noEnv, "projector", "status", "--json", "--config", path)
	var doc projectorStatusDoc
	if err := json.Unmarshal([]byte(r.stdout), &doc); r.code != ExitOK || err != nil {
		t.Fatalf("projector status --json: exit %d, %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	return doc, r.stdout
}

func TestProjectorStatusRestartReset(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, store := projectorStore(t)
	path := projectorConfigFile(t, dsn, "")
	saveCheckpoint(t, store, "balances", projector.Checkpoint{Position: 10, Seen: 10})
	const failure = "apply order 7: ERROR: duplicate key value\nviolates unique constraint"
	orders := saveCheckpoint(t, store, "orders", projector.Checkpoint{Position: 12, Seen: 15,
		Sequence: map[string]int64{"events": 8, "audit": 3}, Halted: true, Error: failure, FailedPosition: 13})

	r := runCLI(ctx, noEnv, "projector", "status", "--config", path)
	if r.code != ExitOK {
		t.Fatalf("projector status: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, re := range []string{
		`(?m)^ledger head: unknown \(no walflow answers on http \(http.addr is off\) and the ledger \S+data does not exist yet\), so the lag is too$`,
		`(?m)^PROJECTOR +POSITION +LAG +RUNS IN +HALTED +FAILED AT +ERROR$`,
		`(?m)^balances +10 +- +- +no +- +$`,
		`(?m)^orders +12 +- +- +yes +13 +apply order 7: ERROR: duplicate key value violates unique constraint$`,
		`(?m)^Sequence mode: read up to SEEN; the next number each sequence expects.\nPROJECTOR +SEEN +NEXT\norders +15 +audit 3, events 8$`,
		`walflow projector restart NAME +to retry the event it failed on`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("projector status output does not match %s:\n%s", re, r.stdout)
		}
	}

	doc, out := projectorStatusJSON(t, path)
	if doc.LedgerHead != nil || !doc.TableExists || len(doc.Projectors) != 2 || !strings.Contains(doc.LedgerHeadFrom, "does not exist yet") {
		t.Fatalf("projector status --json: %+v", doc)
	}
	if p := doc.Projectors[0]; p.Name != "balances" || p.Position != 10 || p.Seen != 10 || p.Halted || p.Error != "" ||
		p.FailedPosition != 0 || p.Sequence != nil || p.LagEvents != nil || p.RunningPosition != nil || p.Version != 1 {
		t.Errorf("projector status --json: %+v", p)
	}
	if p := doc.Projectors[1]; p.Name != "orders" || p.Position != 12 || p.Seen != 15 || !p.Halted || p.Error != failure ||
		p.FailedPosition != 13 || p.Sequence["events"] != 8 || p.Sequence["audit"] != 3 || p.Version != orders.Version {
		t.Errorf("projector status --json: %+v", p)
	}
	// Every key is always there, null when unknown.
	for _, key := range []string{`"ledger_head": null`, `"ledger_head_from": `, `"table_exists": true`, `"running_position": null`,
		`"lag_events": null`, `"sequence": null`, `"error": ""`, `"failed_position": 0`, `"failed_position": 13`, `"version": 1`} {
		if !strings.Contains(out, key) {
			t.Errorf("projector status --json lacks %s:\n%s", key, out)
		}
	}

	// Unknown names are usage errors that list the stored projectors.
	for _, cmd := range []string{"reset", "restart"} {
		r = runCLI(ctx, noEnv, "projector", cmd, "order", "--config", path)
		want := fmt.Sprintf(`walflow: projector %s: unknown projector "order" (did you mean orders?); the projectors in walflow.projectors are balances, orders`, cmd)
		if r.code != ExitUsage || strings.TrimSpace(r.stderr) != want || r.stdout != "" {
			t.Errorf("projector %s of an unknown name: exit %d\n%s\nwant\n%s", cmd, r.code, r.stderr, want)
		}
	}
	if cps, _ := store.List(ctx); len(cps) != 2 {
		t.Errorf("an unknown name was stored: %+v", cps)
	}

	// restart: the halt is cleared, the position and the sequence numbers stay.
	r = runCLI(ctx, noEnv, "projector", "restart", "balances", "--config", path)
	if r.code != ExitOK || r.stdout != "balances is not halted (position 10); nothing to restart.\n" {
		t.Errorf("projector restart of a projector not halted: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(ctx, noEnv, "projector", "restart", "--config", path, "orders")
	if r.code != ExitOK || !strings.HasPrefix(r.stdout, "Restarted orders: it retries the event at position 13, where it halted, and goes on from there.\n") {
		t.Errorf("projector restart: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	cp := storedCheckpoint(t, store, "orders")
	if cp.Halted || cp.Error != "" || cp.FailedPosition != 0 || cp.Position != 12 || cp.Seen != 15 || cp.Sequence["events"] != 8 || cp.Version != orders.Version+1 {
		t.Errorf("after restart: %+v", cp)
	}

	// reset: position 0, no halt, a new version, so that a running projector's next save
	// conflicts instead of overwriting it.
	orders = saveCheckpoint(t, store, "orders", projector.Checkpoint{Position: 20, Seen: 20, Sequence: map[string]int64{"events": 9},
		Halted: true, Error: "boom", FailedPosition: 21})
	r = runCLI(ctx, noEnv, "projector", "reset", "orders", "--config", path)
	if r.code != ExitOK || !strings.HasPrefix(r.stdout, "Reset orders (was position 20, halted at 21): it replays the ledger from the start") ||
		!strings.Contains(r.stdout, "Its read model must be cleared by the application first") {
		t.Errorf("projector reset: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	cp = storedCheckpoint(t, store, "orders")
	if cp.Position != 0 || cp.Seen != 0 || cp.Sequence != nil || cp.Halted || cp.Error != "" || cp.FailedPosition != 0 || cp.Version <= orders.Version {
		t.Errorf("after reset: %+v (version before: %d)", cp, orders.Version)
	}
	err := store.Save(ctx, "orders", projector.Checkpoint{Position: 30, Seen: 30, Version: orders.Version})
	if !errors.Is(err, projector.ErrConflict) {
		t.Errorf("a save with the version before the reset: %v, want ErrConflict", err)
	}
	if b := storedCheckpoint(t, store, "balances"); b.Position != 10 || b.Version != 1 {
		t.Errorf("reset of orders changed balances: %+v", b)
	}
}

// TestProjectorWithoutTable: before any projector ran against the database, status says so
// (exit 0) and reset and restart fail.
func TestProjectorWithoutTable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	path := projectorConfigFile(t, dsn, "")
	r := runCLI(ctx, noEnv, "projector", "status", "--config", path)
	want := "No projector has run against this database: walflow.projectors does not exist yet.\n" +
		"An application creates it when it first runs projectors (walflow.Config.Projectors).\n"
	if r.code != ExitOK || r.stdout != want || r.stderr != "" {
		t.Errorf("projector status without walflow.projectors: exit %d\n%s%s\nwant\n%s", r.code, r.stdout, r.stderr, want)
	}
	doc, out := projectorStatusJSON(t, path)
	if doc.TableExists || doc.Projectors == nil || len(doc.Projectors) != 0 || !strings.Contains(out, `"projectors": []`) {
		t.Errorf("projector status --json without walflow.projectors:\n%s", out)
	}
	for _, cmd := range []string{"reset", "restart"} {
		r = runCLI(ctx, noEnv, "projector", cmd, "orders", "--config", path)
		want := fmt.Sprintf("walflow: projector %s: walflow.projectors does not exist in the database of %s: no projector has run against this database, so there is no orders\n", cmd, path)
		if r.code != ExitFailure || r.stderr != want || r.stdout != "" {
			t.Errorf("projector %s without walflow.projectors: exit %d\n%s\nwant\n%s", cmd, r.code, r.stderr, want)
		}
	}

	// An empty table: nothing to show, nothing to reset.
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := projector.NewPostgresStore(pool).Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	r = runCLI(ctx, noEnv, "projector", "status", "--config", path)
	if r.code != ExitOK || r.stdout != "No projector has run against this database: walflow.projectors is empty.\n" {
		t.Errorf("projector status of an empty walflow.projectors: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(ctx, noEnv, "projector", "reset", "orders", "--config", path)
	if r.code != ExitUsage || !strings.Contains(r.stderr, `walflow: projector reset: unknown projector "orders": walflow.projectors in the database of `+path+" is empty") {
		t.Errorf("projector reset with an empty walflow.projectors: exit %d\n%s", r.code, r.stderr)
	}
}

// TestProjectorStatusHead: the lag comes from a running walflow's /status (with the
// projectors' live positions), else from the ledger directory unless it is held.
func TestProjectorStatusHead(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, store := projectorStore(t)
	saveCheckpoint(t, store, "balances", projector.Checkpoint{Position: 3, Seen: 3})
	saveCheckpoint(t, store, `odd "name"`, projector.Checkpoint{Position: 1, Seen: 1})

	// The ledger directory, while nothing holds it.
	path := projectorConfigFile(t, dsn, "")
	data := filepath.Join(filepath.Dir(path), "data")
	led, err := disk.Open(ctx, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	ledgertest.WriteTx(t, led, 100, ledgertest.Event(100, 0, "events", 1), ledgertest.Event(100, 1, "events", 2),
		ledgertest.Event(100, 2, "events", 3), ledgertest.Event(100, 3, "events", 4), ledgertest.Event(100, 4, "events", 5))
	if err := led.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// Held by this process, as by a walflow running without http.addr: read read-only.
	doc, _ := projectorStatusJSON(t, path)
	if doc.LedgerHead == nil || *doc.LedgerHead != 5 || doc.LedgerHeadFrom != "the ledger "+data {
		t.Errorf("projector status with the ledger held: %+v", doc)
	}
	if err := led.Close(); err != nil {
		t.Fatal(err)
	}
	doc, _ = projectorStatusJSON(t, path)
	if doc.LedgerHead == nil || *doc.LedgerHead != 5 || doc.LedgerHeadFrom != "the ledger "+data {
		t.Fatalf("projector status from the ledger: %+v", doc)
	}
	if p := doc.Projectors[0]; p.Name != "balances" || p.LagEvents == nil || *p.LagEvents != 2 {
		t.Errorf("projector status from the ledger: %+v", p)
	}
	r := runCLI(ctx, noEnv, "projector", "status", "--config", path)
	if !regexp.MustCompile(`(?m)^ledger head: position 5 \(from the ledger \S+data\)\n\nPROJECTOR .*\nbalances +3 +2 +- +no +- +$`).MatchString(r.stdout) {
		t.Errorf("projector status from the ledger:\n%s", r.stdout)
	}

	// A running walflow's /status: its head and its live positions. The /metrics beside it
	// disagree, so that reading them shows.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/status":
			_ = json.NewEncoder(w).Encode(walflow.Status{Slot: "walflow", LedgerHead: 50, Projectors: []projector.Status{
				{Name: "balances", Phase: projector.Live, Position: 45, Head: 50, Lag: 5},
				{Name: `odd "name"`, Phase: projector.Standby, Position: 1, Head: 50, Lag: 49},
			}})
		case "/metrics":
			fmt.Fprint(w, "walflow_ledger_head_position 999\nwalflow_projector_position{projector=\"balances\"} 998\n")
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	path = projectorConfigFile(t, dsn, strings.TrimPrefix(srv.URL, "http://"))
	doc, _ = projectorStatusJSON(t, path)
	if doc.LedgerHead == nil || *doc.LedgerHead != 50 || doc.LedgerHeadFrom != "the running walflow at "+srv.URL+"/status" {
		t.Fatalf("projector status from /status: %+v", doc)
	}
	want := map[string]struct{ running, lag uint64 }{"balances": {45, 5}, `odd "name"`: {1, 49}}
	for _, p := range doc.Projectors {
		w := want[p.Name]
		if p.RunningPosition == nil || *p.RunningPosition != event.Position(w.running) || p.LagEvents == nil || *p.LagEvents != w.lag {
			t.Errorf("projector status from /status: %+v, want running position %d, lag %d", p, w.running, w.lag)
		}
	}
	r = runCLI(ctx, noEnv, "projector", "status", "--config", path)
	for _, re := range []string{
		`(?m)^balances +3 \(running: 45\) +5 +- +no +- +$`,
		`(?m)^odd "name" +1 +49 +- +no +- +$`,
		`(?m)^running: the position in the running walflow, not saved yet`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("projector status from /status does not match %s:\n%s", re, r.stdout)
		}
	}
}

func TestProjectorCommandLine(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "walflow.yaml")
	tests := []cliCase{
		{args: []string{"help"}, code: ExitOK, stdout: "\n  projector Show, reset or restart the projectors stored in the database.\n"},
		{args: []string{"projector"}, code: ExitUsage, stderr: "walflow: projector: no command given; the projector commands are status, reset, restart"},
		{args: []string{"help", "projector", "reset"}, code: ExitOK, stdout: "Usage: walflow projector reset NAME [--config FILE]"},
		{args: []string{"help", "projector", "reset"}, code: ExitOK, stdout: "its next save\n(after the next events it applies) fails with a version conflict"},
		{args: []string{"help", "projector", "status"}, code: ExitOK, stdout: "The --json document has the keys"},
		{args: []string{"projector", "reset"}, code: ExitUsage, stderr: "walflow: projector reset: missing NAME; write walflow projector reset NAME [--config FILE]"},
		{args: []string{"projector", "restart", "a", "b"}, code: ExitUsage, stderr: `walflow: projector restart: unexpected argument "b"`},
		{args: []string{"projector", "stat"}, code: ExitUsage, stderr: `walflow: projector: unknown command "stat"; did you mean status?`},
		{args: []string{"projector", "status", "--config", missing}, code: ExitUsage, stderr: "walflow: " + missing + ": no such file"},
	}
	runCLICases(t, tests)
}

// TestProjectorUnreachable: a database that does not answer fails once, without the
// password.
func TestProjectorUnreachable(t *testing.T) {
	t.Parallel()
	path := projectorConfigFile(t, "postgres://app:s3cret@127.0.0.1:1/app?connect_timeout=1", "")
	for _, args := range [][]string{{"status"}, {"reset", "orders"}, {"restart", "orders"}} {
		r := runCLI(t.Context(), noEnv, append(append([]string{"projector"}, args...), "--config", path)...)
		if r.code != ExitFailure || !strings.HasPrefix(r.stderr, "walflow: projector "+args[0]+": ") || strings.Count(r.stderr, "walflow: ") != 1 ||
			strings.Contains(r.stdout+r.stderr, "s3cret") {
			t.Errorf("projector %s of an unreachable database: exit %d\n%s%s", args[0], r.code, r.stdout, r.stderr)
		}
	}
}

// TestProjectorCommandsUnderRunner runs projectors in this process, as an application does,
// and checks what the help texts promise: a reset makes the running projector replay from
// the start after its next save conflicts, and a restart leaves a projector halted in a
// running application until the application restarts it.
func TestProjectorCommandsUnderRunner(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, pool := poolOnNewDatabase(t, "")
	store := projector.NewPostgresStore(pool)
	path := projectorConfigFile(t, dsn, "")
	led := memory.New(nil)
	defer led.Close()
	lsn := event.LSN(0)
	add := func(n int) {
		t.Helper()
		lsn += 100
		evs := make([]*event.Event, n)
		for i := range evs {
			evs[i] = ledgertest.Event(lsn, uint32(i), "accounts", i)
		}
		ledgertest.WriteTx(t, led, lsn, evs...)
		if err := led.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var seen []event.Position
	var broken atomic.Bool
	broken.Store(true)
	r, err := projector.New(projector.Config{
		Ledger: led, DB: pool, Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		SleepFunc: func(context.Context, time.Duration) error { return nil },
		Projectors: []projector.Projector{
			{Name: "counts", Handle: func(_ context.Context, e event.Event) error {
				mu.Lock()
				seen = append(seen, e.Position)
				mu.Unlock()
				return nil
			}},
			{Name: "failing", Retry: &retry.Policy{MaxRetries: -1}, Handle: func(_ context.Context, e event.Event) error {
				if e.Position == 2 && broken.Load() {
					return errors.New("account 2 is frozen")
				}
				return nil
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	ran := make(chan error, 1)
	go func() { ran <- r.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	phase := func(name string) projector.Status {
		for _, s := range r.Status() {
			if s.Name == name {
				return s
			}
		}
		return projector.Status{}
	}
	until := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.NewTimer(30 * time.Second)
		defer deadline.Stop()
		for {
			ch := r.Changed()
			if cond() {
				return
			}
			select {
			case <-ch:
			case <-deadline.C:
				t.Fatalf("waiting for %s: not within 30s; status %+v", what, r.Status())
			}
		}
	}
	add(3)
	until("counts at 3 and failing halted", func() bool {
		return phase("counts").Position == 3 && phase("failing").Phase == projector.Halted
	})

	// status tells where each runs: the runner's lock session.
	doc, out := projectorStatusJSON(t, path)
	for _, p := range doc.Projectors {
		if p.RunsIn == nil || p.RunsIn.PID == 0 {
			t.Errorf("projector status --json: %s runs nowhere, want the runner's session:\n%s", p.Name, out)
		}
	}
	if r := runCLI(ctx, noEnv, "projector", "status", "--config", path); !regexp.MustCompile(`(?m)^counts +3 +- +pid \d+ from \S+ +no`).MatchString(r.stdout) {
		t.Errorf("projector status does not say where counts runs:\n%s", r.stdout)
	}

	r1 := runCLI(ctx, noEnv, "projector", "reset", "counts", "--config", path)
	if r1.code != ExitOK {
		t.Fatalf("projector reset: exit %d\n%s%s", r1.code, r1.stdout, r1.stderr)
	}
	reset := storedCheckpoint(t, store, "counts")
	if reset.Position != 0 {
		t.Fatalf("after reset: %+v", reset)
	}
	// The running projector notices at its next save, and replays the ledger.
	add(2)
	until("counts replayed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return phase("counts").Position == 5 && len(seen) >= 8 && slices.Equal(seen[len(seen)-5:], []event.Position{1, 2, 3, 4, 5})
	})
	if cp := storedCheckpoint(t, store, "counts"); cp.Position != 5 || cp.Version <= reset.Version {
		t.Errorf("counts after the replay: %+v (reset version %d)", cp, reset.Version)
	}

	// restart clears the stored halt, but the running runner does not watch the table.
	broken.Store(false)
	r1 = runCLI(ctx, noEnv, "projector", "restart", "failing", "--config", path)
	if r1.code != ExitOK || !strings.HasPrefix(r1.stdout, "Restarted failing: it retries the event at position 2") {
		t.Fatalf("projector restart: exit %d\n%s%s", r1.code, r1.stdout, r1.stderr)
	}
	if cp := storedCheckpoint(t, store, "failing"); cp.Halted || cp.Position != 1 {
		t.Errorf("failing after the restart: %+v", cp)
	}
	if s := phase("failing"); s.Phase != projector.Halted {
		t.Errorf("the running runner resumed failing by itself: %+v", s)
	}
	if err := r.Restart(ctx, "failing"); err != nil {
		t.Fatal(err)
	}
	if err := r.WaitLive(ctx, "failing"); err != nil {
		t.Fatal(err)
	}
	if s := phase("failing"); s.Position != 5 {
		t.Errorf("failing after Runner.Restart: %+v", s)
	}
}
