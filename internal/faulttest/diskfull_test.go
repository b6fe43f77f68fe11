package faulttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/disk"
	"github.com/walflow/walflow/ledger/pebble"
)

// diskFullSchema is the table the disk-full test fills; payload is random text, so that
// neither PostgreSQL nor anything else makes it smaller.
const diskFullSchema = `CREATE TABLE items (id bigserial PRIMARY KEY, payload text NOT NULL);`

// TestDiskFull runs walflow run with its ledger and index directories on a 64 MiB tmpfs that
// a writer fills. walflow must exit with status 1 and an error naming the directory and
// "no space left on device", without a panic; the slot must not be confirmed past what the
// ledger holds durably; and once space is freed, a second run must bring the ledger to
// every committed change exactly once, in commit order.
//
// It runs with each ledger backend: the segment files of ledger/disk and the Pebble database
// of ledger/pebble (whose full disk made Pebble call its logger's Fatalf).
func TestDiskFull(t *testing.T) {
	bin := buildCommand(t, "github.com/walflow/walflow/cmd/walflow", "walflow")
	for _, backend := range []string{"disk", "pebble"} {
		t.Run(backend, func(t *testing.T) { testDiskFull(t, bin, backend) })
	}
}

func testDiskFull(t *testing.T, bin, backend string) {
	if os.Geteuid() != 0 {
		t.Fatalf("TestDiskFull mounts a tmpfs and must run as root (euid is %d); run the faulttest package as root, as CI does", os.Geteuid())
	}
	mnt := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount a 64 MiB tmpfs on %s: %v: %s; the test needs root and permission to mount (in a container: CAP_SYS_ADMIN)", mnt, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	// The filler takes half the file system, so that the writer fills the rest quickly;
	// removing it is how space returns.
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 32<<20), 0o600); err != nil {
		t.Fatalf("write the filler: %v", err)
	}

	dsn, conn := pgtest.NewDatabaseWith(t, diskFullSchema)
	slot := dbName(t, dsn)
	ledgerDir := filepath.Join(mnt, "ledger")
	config := filepath.Join(t.TempDir(), "walflow.yaml")
	httpAddr := freeAddr(t)
	// The index (in ledgerDir + ".index", on the same file system) makes the Pebble index
	// store take part: either store may be the first to meet the full disk.
	if err := os.WriteFile(config, fmt.Appendf(nil, `database_url: %s
slot: %s
ledger:
  backend: %s
  dir: %s
http:
  addr: %s
log:
  level: warn
status_interval: 200ms
tables:
  items:
indexes:
  by_type: {type: true}
`, dsn, slot, backend, ledgerDir, httpAddr), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	// Run 1: the writer commits 256 rows of 2 KiB per transaction until walflow exits, and
	// notes after each commit a WAL position at or past the transaction's end.
	run1 := startWalflow(ctx, t, bin, config)
	// Changes committed before walflow creates the slot are not streamed: wait for it.
	poll(t, time.Minute, "walflow streams from the slot", func() (bool, string, error) {
		select {
		case <-run1.exited:
			return false, "", fmt.Errorf("walflow exited with %d before streaming:\n%s", run1.code, run1.stderr.String())
		default:
		}
		var active bool
		err := conn.QueryRow(ctx, `SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		return active, fmt.Sprintf("slot active: %v", active), err
	})
	type commit struct {
		maxID int64
		after event.LSN // at or past the transaction's end LSN
	}
	var commits []commit
	written := 0
	for {
		select {
		case <-run1.exited:
		default:
			if written > 256<<20 {
				t.Fatalf("wrote %d MiB into a 64 MiB file system and walflow still runs", written>>20)
			}
			var c commit
			if err := conn.QueryRow(ctx, `WITH ins AS (INSERT INTO items (payload)
				SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 256) g, generate_series(1, 64) h GROUP BY g
				RETURNING id) SELECT max(id) FROM ins`).Scan(&c.maxID); err != nil {
				t.Fatalf("insert: %v", err)
			}
			c.after = currentLSN(t, conn)
			commits = append(commits, c)
			written += 256 * 2048
			continue
		}
		break
	}
	stderr := run1.stderr.String()
	if run1.code != 1 {
		t.Fatalf("walflow exited with %d after the disk filled, want 1\nstderr:\n%s", run1.code, stderr)
	}
	for _, bad := range []string{"panic", "goroutine ", "fatal error:"} {
		if strings.Contains(stderr, bad) {
			t.Fatalf("walflow's stderr holds %q (a crash, not an error):\n%s", bad, stderr)
		}
	}
	last := errorLine(stderr)
	if !strings.Contains(last, ledgerDir) || !strings.Contains(last, "no space left on device") {
		t.Fatalf("walflow's error line is %q, want \"walflow: ...\" naming %s and \"no space left on device\"\nstderr:\n%s", last, ledgerDir, stderr)
	}
	t.Logf("wrote %d MiB; walflow exited 1: %s", written>>20, last)

	// The slot is not confirmed past what the ledger holds. Space is freed first, since
	// opening a Pebble ledger writes; it does not change what the ledger holds durably.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	l := openLedger(ctx, t, backend, ledgerDir)
	st := l.State()
	var lastID int64
	if st.Head > 0 {
		evs, err := l.Read(ctx, st.Head-1, 1)
		if err != nil || len(evs) != 1 {
			t.Fatalf("read the ledger's last event: %v (%d events)", err, len(evs))
		}
		lastID = idOf(t, &evs[0], "id")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var confirmed string
	if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed); err != nil {
		t.Fatalf("read the slot: %v", err)
	}
	cl, err := event.ParseLSN(confirmed)
	if err != nil {
		t.Fatal(err)
	}
	if cl > st.AckedLSN {
		t.Fatalf("the slot is confirmed at %s, past the acknowledged LSN the ledger recorded, %s", cl, st.AckedLSN)
	}
	// A transaction that ended at or before the confirmed position will not be sent again,
	// so its rows must be in the ledger. Rows are inserted in id order by one session and
	// each is one event, so the ledger holds ids 1 to Head (checked after run 2).
	for _, c := range commits {
		if c.after <= cl && c.maxID > lastID {
			t.Fatalf("the slot is confirmed at %s, past the transaction of rows up to id %d (ended by %s), but the ledger holds rows up to id %d (%d events)", cl, c.maxID, c.after, lastID, st.Head)
		}
	}
	t.Logf("after the failure: ledger head %d, end LSN %s, acked %s; slot confirmed at %s", st.Head, st.LastEndLSN, st.AckedLSN, cl)

	// Run 2, with space back: it catches up with every committed row.
	// One more transaction while walflow is down, so that run 2 has rows to catch up with
	// even if the ledger held every earlier one (another store may have met the full disk
	// first).
	exec1(t, conn, `INSERT INTO items (payload) SELECT md5(random()::text) FROM generate_series(1, 100)`)
	var rows int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	end := currentLSN(t, conn)
	run2 := startWalflow(ctx, t, bin, config)
	// Caught up when the slot is confirmed past the last commit: walflow acknowledges only
	// what its ledger holds durably. (Read from PostgreSQL, not from walflow's /status, so
	// that nothing else listening on the address can answer for it; the ledger itself is
	// compared with the table below.)
	poll(t, 2*time.Minute, "walflow acknowledges every commit", func() (bool, string, error) {
		select {
		case <-run2.exited:
			return false, "", fmt.Errorf("walflow exited with %d before catching up:\n%s", run2.code, run2.stderr.String())
		default:
		}
		var confirmed string
		if err := conn.QueryRow(ctx, `SELECT coalesce(confirmed_flush_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed); err != nil {
			return false, "", fmt.Errorf("read the slot: %w", err)
		}
		cl, err := event.ParseLSN(confirmed)
		if err != nil {
			return false, "", err
		}
		seen := fmt.Sprintf("slot confirmed at %s, last commit before %s", cl, end)
		if head, err := statusHead(ctx, httpAddr); err == nil {
			seen += fmt.Sprintf("; /status ledger head %d of %d rows", head, rows)
		}
		return cl >= end, seen, nil
	})
	if err := run2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-run2.exited
	if run2.code != 0 {
		t.Fatalf("walflow exited with %d after SIGTERM\nstderr:\n%s", run2.code, run2.stderr.String())
	}

	// Every committed row is in the ledger once, in commit order: one session inserted
	// them, so their ids ascend in commit order.
	var ids []int64
	scanAnyLedger(ctx, t, backend, ledgerDir, func(e *event.Event) {
		if e.Type != event.Insert || e.Name != "items" {
			t.Fatalf("event %d is %s %s, want only inserts into items", e.Position, e.Type, e.Name)
		}
		ids = append(ids, idOf(t, e, "id"))
	})
	want := make([]int64, 0, rows)
	r, err := conn.Query(ctx, `SELECT id FROM items ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var id int64
		if err := r.Scan(&id); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if len(ids) != len(want) {
		t.Fatalf("the ledger holds %d inserts, the table %d rows", len(ids), len(want))
	}
	for i := range ids {
		if ids[i] != want[i] {
			t.Fatalf("ledger insert %d has id %d, want %d (each committed row once, in commit order)", i+1, ids[i], want[i])
		}
	}
}

// walflowRun is one walflow run child process.
type walflowRun struct {
	cmd    *exec.Cmd
	stderr *syncbuf.Buffer
	exited chan struct{}
	code   int // set before exited is closed
}

func startWalflow(ctx context.Context, t *testing.T, bin, config string) *walflowRun {
	t.Helper()
	r := &walflowRun{stderr: &syncbuf.Buffer{}, exited: make(chan struct{})}
	r.cmd = exec.CommandContext(ctx, bin, "run", "--config", config)
	r.cmd.Stderr = r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start walflow run: %v", err)
	}
	go func() {
		err := r.cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			r.code = ee.ExitCode()
		default:
			r.code = -1
		}
		close(r.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-r.exited:
		default:
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
		if t.Failed() {
			t.Logf("walflow run stderr:\n%s", r.stderr.String())
		}
	})
	return r
}

// errorLine returns the first line of stderr that starts with "walflow: " (how walflow run
// reports the error it exits with), or "".
func errorLine(stderr string) string {
	for line := range strings.Lines(stderr) {
		if strings.HasPrefix(line, "walflow: ") {
			return strings.TrimSuffix(line, "\n")
		}
	}
	return ""
}

// ledgerTables are the tables of the disk-full test's ledger.
var ledgerTables = []channel.Table{{Name: "items"}}

// openLedger opens the ledger of the backend in dir, with the indexer walflow run used.
func openLedger(ctx context.Context, t *testing.T, backend, dir string) ledger.Ledger {
	t.Helper()
	router, err := channel.NewRouter(ledgerTables)
	if err != nil {
		t.Fatal(err)
	}
	var l ledger.Ledger
	switch backend {
	case "disk":
		l, err = disk.Open(ctx, dir, &disk.Options{Indexer: router.Channels})
	case "pebble":
		l, err = pebble.Open(ctx, dir, &pebble.Options{Indexer: router.Channels})
	default:
		t.Fatalf("unknown ledger backend %q", backend)
	}
	if err != nil {
		t.Fatalf("open the %s ledger: %v", backend, err)
	}
	return l
}

// scanAnyLedger calls f for each event of the backend's ledger in dir, in position order,
// checking that positions are gap-free from 1.
func scanAnyLedger(ctx context.Context, t *testing.T, backend, dir string, f func(e *event.Event)) {
	t.Helper()
	l := openLedger(ctx, t, backend, dir)
	defer l.Close()
	scanEvents(ctx, t, l, f)
}

// freeAddr returns a loopback address no one listens on (at the time of the call).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// statusHead returns the ledger head from walflow run's /status.
func statusHead(ctx context.Context, addr string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st struct {
		LedgerHead int64 `json:"ledger_head"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, fmt.Errorf("GET /status: %d: %w", resp.StatusCode, err)
	}
	return st.LedgerHead, nil
}
