package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sync/errgroup"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(floorChildEnv); spec != "" {
		os.Exit(floorClientsMain(spec))
	}
	pgtest.Main(m, nil)
}

var (
	drainChanges = flag.Int("drain.changes", 1_000_000, "row changes in BenchmarkDrain's backlog, a multiple of 400")
	drainRounds  = flag.Int("drain.rounds", 2, "BenchmarkDrain's rounds of drains: pg_recvlogical, walflow, walflow, pg_recvlogical")
)

// The bars walflow must clear (from the issue that asked for this benchmark).
const (
	minRatio      = 0.75      // walflow events/s over pg_recvlogical events/s
	maxPeakRSSMiB = 256       // peak resident set while walflow drains
	smokeChanges  = 20_000    // TestDrainSmoke's backlog
	publication   = "bench"   // the publication both clients read
	table         = "items"   // the one table changed
	ridBase       = 1_000_000 // ids of worker w start at w*ridBase*ridBase+1
)

// Backlog generation. Each of genWorkers connections runs rounds of 100 one-row
// transactions followed by one transaction of 100 rows, in its own id range, so half of
// the changes are in 1-row and half in 100-row transactions, and both sizes are spread
// over the whole WAL. Operations follow genPattern per transaction (50% inserts, 30%
// updates, 20% deletes); deletes take the lowest live ids and updates pick ids between the
// lowest and the highest, so every statement changes exactly 1 or 100 rows.
const (
	genWorkers      = 2
	genTxPerRound   = 100 // one-row transactions per round
	genBigTx        = 100 // rows of the round's big transaction
	changesPerRound = genTxPerRound + genBigTx
	genPattern      = "IIUIDIUIUD"
)

const schemaSQL = `
CREATE TABLE items (
	id         bigint PRIMARY KEY,
	account    int NOT NULL,
	amount     numeric(12,2) NOT NULL,
	note       text,
	updated_at timestamptz NOT NULL
);
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE PUBLICATION bench FOR TABLE items;

CREATE PROCEDURE bench_generate(base bigint, rounds int)
LANGUAGE plpgsql AS $$
DECLARE
	pattern constant text := '` + genPattern + `';
	next_id bigint := base; -- the next id to insert
	low     bigint := base; -- the lowest live id: ids in [low, next_id) all exist
	t       bigint := 0;    -- one-row transactions so far
	u       bigint := 0;    -- big transactions so far
	s       bigint;
BEGIN
	FOR r IN 1..rounds LOOP
		FOR k IN 1..100 LOOP
			CASE substr(pattern, (t % 10)::int + 1, 1)
			WHEN 'I' THEN
				INSERT INTO items VALUES (next_id, (next_id % 1000)::int, (next_id % 100000) / 100.0,
					'note ' || md5(next_id::text), now());
				next_id := next_id + 1;
			WHEN 'U' THEN
				s := low + (t * 7919) % (next_id - low);
				UPDATE items SET amount = amount + 1, note = 'updated ' || t, updated_at = now() WHERE id = s;
			ELSE
				DELETE FROM items WHERE id = low;
				low := low + 1;
			END CASE;
			t := t + 1;
			COMMIT;
		END LOOP;
		CASE substr(pattern, (u % 10)::int + 1, 1)
		WHEN 'I' THEN
			INSERT INTO items SELECT g, (g % 1000)::int, (g % 100000) / 100.0, 'note ' || md5(g::text), now()
				FROM generate_series(next_id, next_id + 99) g;
			next_id := next_id + 100;
		WHEN 'U' THEN
			s := low + (u * 7919) % (next_id - low - 99);
			UPDATE items SET amount = amount + 1, note = 'bulk ' || u, updated_at = now()
				WHERE id >= s AND id < s + 100;
		ELSE
			DELETE FROM items WHERE id >= low AND id < low + 100;
			low := low + 100;
		END CASE;
		u := u + 1;
		COMMIT;
	END LOOP;
END $$;
`

// drainKind names the client of one drain.
type drainKind string

const (
	// recvlogical is pg_recvlogical writing the stream to /dev/null: the baseline.
	recvlogical drainKind = "pg_recvlogical"
	// walflowKind is the engine with its disk ledger.
	walflowKind drainKind = "walflow"
	// discardKind is a Go client (pgconn) that receives the stream and discards it, for
	// information: what is left of a drain without decoding or storing anything.
	discardKind drainKind = "discard"
)

// drainOrder is the order of the drains of rounds rounds: each round alternates the
// compared clients (ABBA) so neither always goes first, and a discard drain ends.
func drainOrder(rounds int) []drainKind {
	var out []drainKind
	for range rounds {
		out = append(out, recvlogical, walflowKind, walflowKind, recvlogical)
	}
	return append(out, discardKind)
}

// drainRun is one measured drain.
type drainRun struct {
	Kind        drainKind
	Slot        string
	Elapsed     time.Duration
	StartRSS    int64         // bytes when the drain started, walflow only; -1 when unknown
	PeakRSS     int64         // bytes, walflow only; -1 when unknown
	LedgerBytes int64         // walflow only
	ClientCPU   time.Duration // CPU time of the client: pg_recvlogical, or this process
	MachineCPU  time.Duration // CPU time all processes used meanwhile; 0 when unknown
}

// drainResult is what the drains of one backlog measured.
type drainResult struct {
	Changes      int
	WALBytes     int64
	Setup        time.Duration
	Runs         []drainRun
	Rates        map[drainKind]float64 // events/s over all the drains of each kind
	Ratio        float64               // walflow's rate over pg_recvlogical's
	PeakRSSMiB   float64               // highest over the walflow drains; -1 when unknown
	ServerVer    string
	EventCounts  map[event.Type]int // from the last walflow ledger (Verify only)
	MissingOlds  int                // updates and deletes without an old record (Verify only)
	ExpectCounts map[event.Type]int // what the generator wrote
}

// drainOpts configure [drain].
type drainOpts struct {
	Changes int    // backlog size, a multiple of genWorkers*changesPerRound
	Rounds  int    // ABBA rounds of pg_recvlogical and walflow drains
	Prefix  string // slot name prefix; slots are cluster-wide
	Verify  bool   // read the ledger back and count the event types
}

// drain builds a backlog in the empty database at dsn behind one slot per drain, then
// drains it once per slot in drainOrder.
func drain(tb testing.TB, c *pgtest.Cluster, dsn string, opts drainOpts) drainResult {
	tb.Helper()
	ctx := tb.Context()
	per := genWorkers * changesPerRound
	if opts.Changes <= 0 || opts.Changes%per != 0 {
		tb.Fatalf("drain: %d changes is not a positive multiple of %d", opts.Changes, per)
	}
	res := drainResult{Changes: opts.Changes, PeakRSSMiB: -1}

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&res.ServerVer); err != nil {
		tb.Fatal(err)
	}
	if _, err := conn.Exec(ctx, schemaSQL); err != nil {
		tb.Fatalf("create schema: %v", err)
	}
	// Every client must see the same backlog: all the slots exist before the first change.
	order := drainOrder(max(opts.Rounds, 1))
	slots := make([]string, len(order))
	for i, k := range order {
		slots[i] = fmt.Sprintf("%s_%d_%s", opts.Prefix, i, strings.TrimPrefix(string(k), "pg_"))
		if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slots[i]); err != nil {
			tb.Fatalf("create slot %s: %v", slots[i], err)
		}
	}

	var startLSN string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&startLSN); err != nil {
		tb.Fatal(err)
	}
	start := time.Now()
	rounds := opts.Changes / per
	if err := generate(ctx, dsn, rounds); err != nil {
		tb.Fatalf("generate the backlog: %v", err)
	}
	res.Setup = time.Since(start)
	// The target is where the last commit ends: the insert position, not
	// pg_current_wal_lsn(), which is only what was written so far.
	var target string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text, pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)::bigint",
		startLSN).Scan(&target, &res.WALBytes); err != nil {
		tb.Fatal(err)
	}
	// The commits were asynchronous. Flush the WAL with a synchronous commit (of an empty
	// transaction, which pgoutput does not send) so the walsenders do not wait for the WAL
	// writer, and so each finds WAL past the target and tells its client it got there.
	if _, err := conn.Exec(ctx, "SET synchronous_commit = on; SELECT txid_current()"); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("backlog: %s changes, %.1f MiB of WAL from %s to %s, generated in %s; %d drains",
		thousands(opts.Changes), float64(res.WALBytes)/(1<<20), startLSN, target, res.Setup.Round(time.Millisecond), len(order))
	res.ExpectCounts = expectedCounts(rounds)

	for i, k := range order {
		var r drainRun
		switch k {
		case recvlogical:
			r = drainRecvlogical(tb, c, dsn, slots[i], target)
		case discardKind:
			r = drainDiscard(tb, dsn, slots[i], target, opts.Changes)
		case walflowKind:
			var counts map[event.Type]int
			var missing int
			r, counts, missing = drainWalflow(tb, dsn, slots[i], opts.Changes, opts.Verify)
			res.MissingOlds += missing
			if r.PeakRSS >= 0 {
				res.PeakRSSMiB = max(res.PeakRSSMiB, float64(r.PeakRSS)/(1<<20))
			}
			if counts != nil {
				res.EventCounts = counts
			}
		}
		res.Runs = append(res.Runs, r)
	}
	res.Rates = map[drainKind]float64{}
	for _, k := range []drainKind{recvlogical, walflowKind, discardKind} {
		var n int
		var total time.Duration
		for _, r := range res.Runs {
			if r.Kind == k {
				n++
				total += r.Elapsed
			}
		}
		res.Rates[k] = float64(n*opts.Changes) / total.Seconds()
	}
	res.Ratio = res.Rates[walflowKind] / res.Rates[recvlogical]
	return res
}

// summary describes the drains in a few lines (a benchmark's log keeps only ten): one per
// client, with each drain's time, and the CPU time the client and the whole machine used.
func (r drainResult) summary() string {
	var b strings.Builder
	for _, k := range []drainKind{recvlogical, walflowKind, discardKind} {
		var times []string
		var n int
		var client, all time.Duration
		var ledger int64
		for _, run := range r.Runs {
			if run.Kind == k {
				n++
				t := fmt.Sprintf("%.2fs", run.Elapsed.Seconds())
				if run.PeakRSS >= 0 {
					t += fmt.Sprintf(" (RSS %.0f→%.0f MiB)", float64(run.StartRSS)/(1<<20), float64(run.PeakRSS)/(1<<20))
				}
				times = append(times, t)
				client += run.ClientCPU
				all += run.MachineCPU
				ledger = max(ledger, run.LedgerBytes)
			}
		}
		if n == 0 {
			continue
		}
		fmt.Fprintf(&b, "%-14s %9s events/s  drains %s  CPU per drain: client %.2fs, machine %.2fs",
			k, thousands(int(r.Rates[k])), strings.Join(times, " "), client.Seconds()/float64(n), all.Seconds()/float64(n))
		if k == walflowKind {
			fmt.Fprintf(&b, "  ledger %s", mib(ledger))
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "walflow/pg_recvlogical %.2f×, walflow/discard %.2f×", r.Ratio, r.Rates[walflowKind]/r.Rates[discardKind])
	return b.String()
}

// generate writes the backlog: rounds rounds on each of genWorkers connections at once.
func generate(ctx context.Context, dsn string, rounds int) error {
	g, ctx := errgroup.WithContext(ctx)
	for w := range genWorkers {
		g.Go(func() error {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			// The simple protocol (no arguments) runs CALL outside any implicit transaction
			// block, which the procedure's COMMITs need.
			_, err = conn.Exec(ctx, fmt.Sprintf("CALL bench_generate(%d, %d)", int64(w)*ridBase*ridBase+1, rounds))
			return err
		})
	}
	return g.Wait()
}

// expectedCounts replays the generator's pattern: the event types the backlog must yield.
func expectedCounts(rounds int) map[event.Type]int {
	kind := map[byte]event.Type{'I': event.Insert, 'U': event.Update, 'D': event.Delete}
	out := map[event.Type]int{}
	for r := range rounds {
		for t := r * genTxPerRound; t < (r+1)*genTxPerRound; t++ {
			out[kind[genPattern[t%len(genPattern)]]] += genWorkers
		}
		out[kind[genPattern[r%len(genPattern)]]] += genWorkers * genBigTx
	}
	return out
}

// drainRecvlogical runs pg_recvlogical on slot until it has received the WAL up to
// target, writing pgoutput's messages to /dev/null.
func drainRecvlogical(tb testing.TB, c *pgtest.Cluster, dsn, slot, target string) drainRun {
	tb.Helper()
	bin, err := c.Binary("pg_recvlogical")
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.CommandContext(tb.Context(), bin,
		"--dbname", dsn, "--slot", slot, "--start",
		"--option", "proto_version=1", "--option", "publication_names="+publication,
		"--file", "/dev/null", "--endpos", target, "--no-loop")
	cmd.Env = withoutPGEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	busy := machineBusy()
	start := time.Now()
	err = cmd.Run()
	elapsed := time.Since(start)
	busy = machineBusy() - busy
	if err != nil {
		tb.Fatalf("%s: %v\n%s", cmd, err, out.String())
	}
	return drainRun{Kind: recvlogical, Slot: slot, Elapsed: elapsed, PeakRSS: -1, LedgerBytes: -1,
		ClientCPU: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), MachineCPU: busy}
}

// drainDiscard receives the stream of slot up to target and discards it, as pg_recvlogical
// does with --endpos, but in this process and without writing anything. It counts the row
// changes (pgoutput Insert, Update and Delete messages) and fails unless there are
// changes of them: an independent check of the backlog both compared clients read.
func drainDiscard(tb testing.TB, dsn, slot, target string, changes int) drainRun {
	tb.Helper()
	ctx := tb.Context()
	end, err := pglogrepl.ParseLSN(target)
	if err != nil {
		tb.Fatal(err)
	}
	busy, cpu := machineBusy(), processCPU()
	start := time.Now()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'"},
	})
	if err != nil {
		tb.Fatalf("start replication on %s: %v", slot, err)
	}
	// Receive without a context, as walflow does: pgconn watches a cancellable context on
	// every call, which would cost more than the rest of this loop. A deadline stands in.
	if err := conn.Conn().SetReadDeadline(time.Now().Add(10 * time.Minute)); err != nil {
		tb.Fatal(err)
	}
	n := 0
	for done := false; !done; {
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			tb.Fatalf("receive on %s: %v", slot, err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			tb.Fatalf("unexpected %T on %s", msg, slot)
		}
		// Stop like pg_recvlogical --endpos: at a message at or past target, or a keepalive
		// saying the server has nothing before it left.
		switch {
		case len(cd.Data) >= 26 && cd.Data[0] == pglogrepl.XLogDataByteID:
			switch cd.Data[25] {
			case 'I', 'U', 'D':
				n++
			}
			done = pglogrepl.LSN(binary.BigEndian.Uint64(cd.Data[1:])) >= end
		case len(cd.Data) >= 9 && cd.Data[0] == pglogrepl.PrimaryKeepaliveMessageByteID:
			done = pglogrepl.LSN(binary.BigEndian.Uint64(cd.Data[1:])) >= end
		}
	}
	elapsed := time.Since(start)
	busy, cpu = machineBusy()-busy, processCPU()-cpu
	if n != changes {
		tb.Errorf("slot %s streamed %d row changes up to %s, want %d", slot, n, target, changes)
	}
	return drainRun{Kind: discardKind, Slot: slot, Elapsed: elapsed, PeakRSS: -1, LedgerBytes: -1, ClientCPU: cpu, MachineCPU: busy}
}

// withoutPGEnv is the environment without PG* variables, which could redirect a client.
func withoutPGEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// drainWalflow runs an engine with a disk ledger on slot until the ledger durably holds
// changes events, and measures the process's peak RSS meanwhile. With verify it then reads
// the ledger back and counts the event types, and the updates and deletes that lack their
// old record.
func drainWalflow(tb testing.TB, dsn, slot string, changes int, verify bool) (drainRun, map[event.Type]int, int) {
	tb.Helper()
	ctx := tb.Context()
	dir := filepath.Join(tb.TempDir(), "ledger")
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn,
		Slot:        slot,
		Publication: publication,
		Tables:      []channel.Table{{Name: table}},
		LedgerDir:   dir,
		Logger:      slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		tb.Fatal(err)
	}
	defer eng.Close()

	// Start the peak from what the process holds now, garbage returned.
	runtime.GC()
	debug.FreeOSMemory()
	rssOK := true
	if err := resetPeakRSS(); err != nil {
		tb.Logf("cannot reset the peak RSS, so it covers the whole process's life: %v", err)
	}
	startRSS, err := procStatus("VmRSS")
	if err != nil {
		startRSS = -1
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	waited := make(chan error, 1)
	busy, cpu := machineBusy(), processCPU()
	start := time.Now()
	go func() { ran <- eng.Run(runCtx) }()
	go func() { waited <- eng.Ledger().Wait(runCtx, event.Position(changes-1)) }()
	select {
	case err := <-waited:
		if err != nil {
			tb.Fatalf("wait for %d events: %v", changes, err)
		}
	case err := <-ran:
		tb.Fatalf("walflow stopped before draining the backlog: %v", err)
	}
	elapsed := time.Since(start)
	busy, cpu = machineBusy()-busy, processCPU()-cpu
	peak, err := procStatus("VmHWM")
	if err != nil {
		tb.Logf("cannot read the peak RSS: %v", err)
		peak, rssOK = -1, false
	}
	cancel()
	if err := <-ran; err != nil {
		tb.Fatalf("walflow run: %v", err)
	}

	st := eng.Status(ctx)
	if st.LedgerHead != uint64(changes) || st.EventsAppended != uint64(changes) {
		tb.Errorf("walflow on slot %s: ledger head %d, %d events appended; want %d of each",
			slot, st.LedgerHead, st.EventsAppended, changes)
	}
	var counts map[event.Type]int
	missing := 0
	if verify {
		counts, missing = countEvents(tb, eng, changes)
	}
	if err := eng.Close(); err != nil {
		tb.Fatal(err)
	}
	r := drainRun{Kind: walflowKind, Slot: slot, Elapsed: elapsed, StartRSS: startRSS, PeakRSS: peak, LedgerBytes: dirSize(dir),
		ClientCPU: cpu, MachineCPU: busy}
	if !rssOK {
		r.PeakRSS = -1
	}
	return r, counts, missing
}

// countEvents reads the whole ledger back.
func countEvents(tb testing.TB, eng *walflow.Engine, changes int) (map[event.Type]int, int) {
	tb.Helper()
	counts := map[event.Type]int{}
	missing := 0
	var after event.Position
	for {
		evs, err := eng.Ledger().Read(tb.Context(), after, 4096)
		if err != nil {
			tb.Fatal(err)
		}
		if len(evs) == 0 {
			break
		}
		for i := range evs {
			e := &evs[i]
			counts[e.Type]++
			if (e.Type == event.Update || e.Type == event.Delete) && e.OldRecord == nil {
				missing++
			}
			after = e.Position
		}
	}
	if int(after) != changes {
		tb.Errorf("read %d events back from the ledger, want %d", after, changes)
	}
	return counts, missing
}

// resetPeakRSS resets the process's VmHWM to its current RSS (Linux 4.0+).
func resetPeakRSS() error {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// procStatus reads a memory figure of /proc/self/status (VmHWM, VmRSS), in bytes.
func procStatus(name string) (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), name+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s %q: %w", name, v, err)
			}
			return kb << 10, nil
		}
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no %s line in /proc/self/status", name)
}

// processCPU is the CPU time this process used so far, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy is the CPU time all CPUs spent not idle since boot, from /proc/stat; 0 when
// unknown. Differences show how busy the machine was: the client plus PostgreSQL.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0
		}
		// Fields: user nice system idle iowait irq softirq steal guest guest_nice; guest
		// time is already counted in user.
		if i != 3 && i != 4 && i < 8 {
			busy += n
		}
	}
	const clockTicks = 100 // USER_HZ on every Linux platform Go supports
	return time.Duration(busy) * time.Second / clockTicks
}

// dirSize sums the sizes of the files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func mib(n int64) string {
	if n < 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// machine describes the host for the README: CPUs, CPU model and PostgreSQL version.
func machine(pgVersion string) string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%d CPUs (%s), PostgreSQL %s", runtime.NumCPU(), model, pgVersion)
}

// readmeHeader and readmeRow give the result as a Markdown table row, for the README.
const readmeHeader = "| backlog | pg_recvlogical | walflow | ratio | peak RSS | machine |"

func readmeRow(r drainResult) string {
	return fmt.Sprintf("| %s changes | %s events/s | %s events/s | %.2f× | %.0f MiB | %s |",
		thousands(r.Changes), thousands(int(r.Rates[recvlogical])), thousands(int(r.Rates[walflowKind])),
		r.Ratio, r.PeakRSSMiB, machine(r.ServerVer))
}

// thousands writes n with commas: 1,000,000.
func thousands(n int) string {
	s := strconv.Itoa(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// TestDrainSmoke runs BenchmarkDrain's code on a small backlog, so the benchmark cannot
// rot: every client must drain it, and walflow's ledger must hold exactly the changes
// generated, with the old record of every update and delete. It asserts no timing.
func TestDrainSmoke(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDatabase(t)
	res := drain(t, pgtest.Shared(t), dsn, drainOpts{Changes: smokeChanges, Rounds: 1, Prefix: "smoke", Verify: true})
	for _, k := range []event.Type{event.Insert, event.Update, event.Delete, event.Truncate} {
		if got, want := res.EventCounts[k], res.ExpectCounts[k]; got != want {
			t.Errorf("%s events: got %d, want %d", k, got, want)
		}
	}
	if res.MissingOlds != 0 {
		t.Errorf("%d updates or deletes lack their old record under REPLICA IDENTITY FULL", res.MissingOlds)
	}
	if n := len(drainOrder(1)); len(res.Runs) != n {
		t.Errorf("%d drains ran, want %d", len(res.Runs), n)
	}
	for k, rate := range res.Rates {
		if !(rate > 0) {
			t.Errorf("%s drained at %v events/s", k, rate)
		}
	}
	t.Logf("smoke run, not a measurement:\n%s\n%s\n%s", res.summary(), readmeHeader, readmeRow(res))
}

// BenchmarkDrain measures how fast walflow drains a backlog of row changes into its disk
// ledger, against pg_recvlogical reading the same backlog into /dev/null; see the package
// documentation. Each call builds its own cluster and backlog and drains it once per
// slot, whatever b.N is: a slot's backlog can be drained only once.
func BenchmarkDrain(b *testing.B) {
	ctx := b.Context()
	c, err := pgtest.Start(ctx, &pgtest.Options{Settings: map[string]string{
		// Keep checkpoints out of the way of the generation and the drains.
		"max_wal_size":       "4GB",
		"min_wal_size":       "1GB",
		"checkpoint_timeout": "30min",
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Stop(sctx); err != nil {
			b.Error(err)
		}
	})
	if err := c.CreateDatabase(ctx, "bench"); err != nil {
		b.Fatal(err)
	}

	res := drain(b, c, c.DSN("bench"), drainOpts{Changes: *drainChanges, Rounds: *drainRounds, Prefix: "bench"})

	// The time per op covers the setup and every drain: a meaningless figure. The timer
	// still runs, so that the framework does not call the benchmark again with a larger b.N.
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(res.Rates[recvlogical], "recvlogical_events/s")
	b.ReportMetric(res.Rates[walflowKind], "walflow_events/s")
	b.ReportMetric(res.Ratio, "ratio")
	b.ReportMetric(res.PeakRSSMiB, "peak_rss_MiB")
	b.ReportMetric(res.Rates[discardKind], "discard_events/s")
	b.Logf("%s\nfor the README:\n%s\n%s", res.summary(), readmeHeader, readmeRow(res))
	if res.Ratio < minRatio {
		b.Errorf("walflow drains at %.2f× pg_recvlogical's rate, below the %.2f× bar", res.Ratio, minRatio)
	}
	if res.PeakRSSMiB >= maxPeakRSSMiB {
		b.Errorf("peak RSS %.0f MiB while walflow drains, at or over the %d MiB bar", res.PeakRSSMiB, maxPeakRSSMiB)
	}
}
