package faulttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/internal/pgtest"
)

const (
	projKills   = 20
	projWriters = 4
	// projSchema is the event-sourced application of internal/testcmd/projector.
	projSchema = `
		CREATE TABLE events (id bigserial PRIMARY KEY, stream_identifier text NOT NULL, type text NOT NULL, payload jsonb NOT NULL);
		CREATE TABLE balances (account text PRIMARY KEY, balance bigint NOT NULL);
		CREATE TABLE applied (id bigint PRIMARY KEY, ord bigserial, times int NOT NULL DEFAULT 1);
		CREATE TABLE accounts (account text PRIMARY KEY, first_position bigint NOT NULL);
		CREATE TABLE accounts_applied (position bigint PRIMARY KEY, times int NOT NULL DEFAULT 1);`
)

// buildProjectorChild builds internal/testcmd/projector, without -race.
func buildProjectorChild(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			goBin, err = filepath.Join(root, "bin", "go"), nil
		}
	}
	if err != nil {
		t.Fatalf("the go command is needed to build the projector child process: %v; put it in PATH", err)
	}
	bin := filepath.Join(t.TempDir(), "projector")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/walflow/walflow/internal/testcmd/projector")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build the projector child: %v\n%s", err, out)
	}
	return bin
}

// TestProjectorCrashConsistency runs an event-sourced application: writers commit deposits
// into their own events table from concurrent transactions, whose ids commit out of order
// and some of which roll back, while the child process (internal/testcmd/projector) builds
// a balance read model with a projector in application-sequence mode, and a second
// projector depending on it reads that model. The child is SIGKILLed at 20 random moments
// and restarted; at the end the balances must equal their recomputation from the events,
// each committed event must have been applied exactly once by each projector, in id order
// by the first, and neither projector may have halted.
func TestProjectorCrashConsistency(t *testing.T) {
	t.Parallel()
	bin := buildProjectorChild(t)
	dsn := pgtest.NewDatabase(t)
	slot := dbName(t, dsn)
	conn := connect(t, dsn)
	exec1(t, conn, projSchema)
	p := newPipeline(t, bin, dsn, t.TempDir(), slot, "events")
	p.args = append(p.args, "-grace", "2s")
	count := func(sql string) int64 {
		t.Helper()
		var n int64
		if err := conn.QueryRow(t.Context(), sql).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}

	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var txs, rolledBack atomic.Int64
	var errMu sync.Mutex
	var writeErr error
	// The writers start once the first run streams: changes committed before the slot
	// exists are not in its stream.
	startWriters := func() {
		for w := range projWriters {
			wconn := connect(t, dsn)
			wrng := rand.New(rand.NewPCG(seed, uint64(w)+1))
			wg.Go(func() {
				if err := writeDeposits(ctx, wconn, wrng, &txs, &rolledBack); err != nil && ctx.Err() == nil {
					errMu.Lock()
					writeErr = err
					errMu.Unlock()
				}
			})
		}
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	writerFailed := func() {
		t.Helper()
		errMu.Lock()
		defer errMu.Unlock()
		if writeErr != nil {
			t.Fatalf("writer: %v", writeErr)
		}
	}
	noHalt := func() {
		t.Helper()
		if n := count(`SELECT count(*) FROM walflow.projectors WHERE halted`); n != 0 {
			var name, msg string
			_ = conn.QueryRow(t.Context(), `SELECT name, error FROM walflow.projectors WHERE halted LIMIT 1`).Scan(&name, &msg)
			t.Fatalf("projector %s halted: %s", name, msg)
		}
	}

	var points []string
	for i := range projKills {
		c := p.start()
		kind := "start-up"
		if i == 0 || rng.IntN(5) > 0 {
			p.waitReady(c, 60*time.Second)
			if i == 0 {
				startWriters()
			}
			// Kill among the projectors' transactions: once this run has applied something.
			from := count(`SELECT count(*) FROM applied`) + count(`SELECT count(*) FROM accounts_applied`)
			poll(t, 2*time.Minute, "the projectors to apply events", func() (bool, string, error) {
				n := count(`SELECT count(*) FROM applied`) + count(`SELECT count(*) FROM accounts_applied`)
				return n > from, fmt.Sprintf("%d applications", n), nil
			})
			kind = "projecting"
		}
		waitOrExit(t, p, c, time.Duration(rng.Int64N(int64(300*time.Millisecond))))
		writerFailed()
		p.kill(c)
		points = append(points, fmt.Sprintf("%s:%d", kind, c.State().Head))
		waitSlotIdle(t, conn, slot)
	}
	noHalt()

	// Stop the writers; the last run catches up with everything, then stops gracefully.
	cancel()
	wg.Wait()
	writerFailed()
	c := p.start()
	p.waitReady(c, 60*time.Second)
	committed := count(`SELECT count(*) FROM events`)
	poll(t, 2*time.Minute, "the projectors to apply every committed event", func() (bool, string, error) {
		a, b := count(`SELECT count(*) FROM applied`), count(`SELECT count(*) FROM accounts_applied`)
		noHalt()
		return a == committed && b == committed, fmt.Sprintf("balances applied %d, accounts %d, of %d events; ledger head %d", a, b, committed, c.State().Head), nil
	})
	p.stop(c)

	var got, want string
	if err := conn.QueryRow(t.Context(), `SELECT coalesce(string_agg(account || '=' || balance, ' ' ORDER BY account), '') FROM balances`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(t.Context(), `SELECT coalesce(string_agg(account || '=' || balance, ' ' ORDER BY account), '') FROM (
		SELECT stream_identifier AS account, sum((payload->>'amount')::bigint) AS balance FROM events GROUP BY 1) s`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("balances differ from their recomputation\n got: %s\nwant: %s", got, want)
	}
	checks := []struct{ what, sql string }{
		{"ids applied that were never committed, or applied more than once", `SELECT count(*) FROM applied a LEFT JOIN events e USING (id) WHERE e.id IS NULL OR a.times <> 1`},
		{"events applied after a larger id", `SELECT count(*) FROM (SELECT id, lag(id) OVER (ORDER BY ord) AS prev FROM applied) s WHERE id <= prev`},
		{"positions the dependent projector applied more than once", `SELECT count(*) FROM accounts_applied WHERE times <> 1`},
		{"accounts missing from the dependent's model", `SELECT count(*) FROM balances b LEFT JOIN accounts a USING (account) WHERE a.account IS NULL`},
	}
	for _, ck := range checks {
		if n := count(ck.sql); n != 0 {
			t.Errorf("%d %s", n, ck.what)
		}
	}
	skips, retries := 0, 0
	for i := 1; i <= p.runs; i++ {
		log := p.log(i)
		skips += strings.Count(log, "projector skipped missing sequence numbers")
		retries += strings.Count(log, "projector failed; retrying")
		if strings.Contains(log, "projector halted") {
			t.Errorf("run %d: a projector halted", i)
		}
	}
	if retries != 0 {
		t.Errorf("%d retries: the dependent projector saw an event before the balance it reads", retries)
	}
	t.Logf("%d kills at (kind:ledger head) %s", projKills, strings.Join(points, " "))
	t.Logf("writers: %d transactions, %d rolled back; %d events committed (max id %d); %d gaps skipped as rolled back",
		txs.Load(), rolledBack.Load(), committed, count(`SELECT coalesce(max(id), 0) FROM events`), skips)
}

// writeDeposits commits deposits until ctx ends: transactions of 1 to 3 inserts that hold
// their ids a moment (so that other writers' later ids commit first), one in six rolled
// back.
func writeDeposits(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, txs, rolledBack *atomic.Int64) error {
	for ctx.Err() == nil {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		for range 1 + rng.IntN(3) {
			if _, err := tx.Exec(ctx, `INSERT INTO events (stream_identifier, type, payload) VALUES ($1, 'deposited', jsonb_build_object('amount', $2::int))`,
				fmt.Sprintf("acct%d", rng.IntN(8)), rng.IntN(200)-50); err != nil {
				_ = tx.Rollback(context.WithoutCancel(ctx))
				return err
			}
		}
		time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
		if rng.IntN(6) == 0 {
			err = tx.Rollback(ctx)
			rolledBack.Add(1)
		} else {
			err = tx.Commit(ctx)
		}
		if err != nil {
			return err
		}
		txs.Add(1)
	}
	return nil
}
