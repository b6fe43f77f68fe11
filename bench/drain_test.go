package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/walflow/walflow/internal/pgtest"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(floorChildEnv); spec != "" {
		os.Exit(floorClientsMain(spec))
	}
	if spec := os.Getenv(drainChildEnv); spec != "" {
		os.Exit(drainChildMain(spec))
	}
	pgtest.Main(m, nil)
}

// BenchmarkDrain's sizes. Each flag's default can also be set by its environment variable,
// for runs where the flags cannot be passed.
var (
	drainBulk   = flag.Int("drain.bulk", envInt("WALFLOW_BENCH_DRAIN_BULK", 1_000_000), "row changes of the bulk backlog (100-row transactions), a multiple of 200; 0 skips it (env WALFLOW_BENCH_DRAIN_BULK)")
	drainSingle = flag.Int("drain.single", envInt("WALFLOW_BENCH_DRAIN_SINGLE", 300_000), "row changes of the single-row backlog (1-row transactions), a multiple of 2; 0 skips it (env WALFLOW_BENCH_DRAIN_SINGLE)")
	drainRounds = flag.Int("drain.rounds", envInt("WALFLOW_BENCH_DRAIN_ROUNDS", 2), "rounds of drains per backlog, each pg_recvlogical, walflow, walflow, pg_recvlogical (env WALFLOW_BENCH_DRAIN_ROUNDS)")
	drainLong   = flag.Int("drain.long", envInt("WALFLOW_BENCH_DRAIN_LONG", 0), "row changes of the long drain (bulk mix, walflow only), e.g. 10000000; 0 (the default) skips it (env WALFLOW_BENCH_DRAIN_LONG)")
	drainWindow = flag.Int("drain.window", envInt("WALFLOW_BENCH_DRAIN_WINDOW", 1_000_000), "events of the long drain's first and last windows, whose rates it reports (env WALFLOW_BENCH_DRAIN_WINDOW)")
)

// envInt is the integer in the environment variable name, or def when it is unset. A
// malformed value stops the test binary with a message naming the variable.
func envInt(name string, def int) int {
	s, ok := os.LookupEnv(name)
	if !ok || s == "" {
		return def
	}
	n, err := strconv.Atoi(strings.ReplaceAll(s, "_", ""))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q is not an integer; set it to a number of changes like 1000000\n", name, s)
		os.Exit(2)
	}
	return n
}

// The bars walflow should clear (from the issues that asked for this benchmark). They are
// logged when missed, not asserted: rates on a shared machine are not assertions.
const (
	minRatio      = 0.75    // walflow changes/s over pg_recvlogical's, on each backlog
	maxPeakRSSMiB = 256     // walflow's peak resident set while it drains
	publication   = "bench" // the publication both clients read
)

// The sizes of TestDrainSmoke and of BenchmarkDrain with -short: small enough for the
// smoke test to stay quick under the race detector.
const (
	smokeBulk   = 8_000
	smokeSingle = 2_000
	smokeLong   = 4_000
	smokeWindow = 1_000
)

// Backlog generation. Each of genWorkers connections runs transactions of genStmts
// statements of genRows rows each, in its own id range. Statement s of a worker changes
// posts when s%5 == 0 and comments otherwise; the operations of each table follow
// genPattern (50% inserts, 35% updates, 15% deletes). Inserts take the next ids, deletes
// the lowest live ones and updates a run of live ids, so that every statement changes
// exactly genRows rows.
const (
	genWorkers = 2
	genPattern = "IIUIUDIUIIUDIUIUIDIU"
	genBase    = 1_000_000_000_000 // ids of worker w start at w*genBase+1
)

// backlogShape is how a backlog's transactions are made.
type backlogShape struct {
	Name  string // bulk, single, long
	Stmts int    // statements per transaction
	Rows  int    // rows per statement
}

var (
	bulkShape   = backlogShape{Name: "bulk", Stmts: 5, Rows: 20} // 100-row transactions
	singleShape = backlogShape{Name: "single", Stmts: 1, Rows: 1}
	longShape   = backlogShape{Name: "long", Stmts: 5, Rows: 20}
)

// txChanges is the row changes per transaction.
func (s backlogShape) txChanges() int { return s.Stmts * s.Rows }

const schemaSQL = `
CREATE TABLE posts (
	id         bigint PRIMARY KEY,
	author     text NOT NULL,
	title      text NOT NULL,
	body       text NOT NULL,
	updated_at timestamptz NOT NULL
);
CREATE TABLE comments (
	id         bigint PRIMARY KEY,
	post_id    bigint NOT NULL,
	author     text NOT NULL,
	body       text NOT NULL,
	updated_at timestamptz NOT NULL
);
ALTER TABLE posts REPLICA IDENTITY FULL;
ALTER TABLE comments REPLICA IDENTITY FULL;
CREATE PUBLICATION bench FOR TABLE posts, comments;

CREATE PROCEDURE bench_generate(base bigint, txs int, stmts int, nrows int)
LANGUAGE plpgsql AS $$
DECLARE
	pattern constant text := '` + genPattern + `';
	pnext bigint := base; -- the next post id; ids in [plow, pnext) all exist
	plow  bigint := base;
	pn    bigint := 0;    -- post statements so far
	cnext bigint := base; -- the same for comments
	clow  bigint := base;
	cn    bigint := 0;
	s     bigint := 0;    -- statements so far
	u     bigint;
BEGIN
	FOR t IN 1..txs LOOP
		FOR k IN 1..stmts LOOP
			IF s % 5 = 0 THEN
				CASE substr(pattern, (pn % 20)::int + 1, 1)
				WHEN 'I' THEN
					INSERT INTO posts SELECT g, 'author ' || (g % 997), 'title ' || g, repeat(md5(g::text), 3), now()
						FROM generate_series(pnext, pnext + nrows - 1) g;
					pnext := pnext + nrows;
				WHEN 'U' THEN
					u := plow + (pn * 7919) % (pnext - plow - nrows + 1);
					UPDATE posts SET title = 'edited ' || pn, updated_at = now() WHERE id >= u AND id < u + nrows;
				ELSE
					DELETE FROM posts WHERE id >= plow AND id < plow + nrows;
					plow := plow + nrows;
				END CASE;
				pn := pn + 1;
			ELSE
				CASE substr(pattern, (cn % 20)::int + 1, 1)
				WHEN 'I' THEN
					INSERT INTO comments SELECT g, plow + g % (pnext - plow), 'author ' || (g % 997), md5(g::text) || ' ' || md5((g + 1)::text), now()
						FROM generate_series(cnext, cnext + nrows - 1) g;
					cnext := cnext + nrows;
				WHEN 'U' THEN
					u := clow + (cn * 7919) % (cnext - clow - nrows + 1);
					UPDATE comments SET body = 'edited ' || cn, updated_at = now() WHERE id >= u AND id < u + nrows;
				ELSE
					DELETE FROM comments WHERE id >= clow AND id < clow + nrows;
					clow := clow + nrows;
				END CASE;
				cn := cn + 1;
			END IF;
			s := s + 1;
		END LOOP;
		COMMIT;
	END LOOP;
END $$;
`

// expectedCounts replays the generator: the events by "table type" a backlog of txs
// transactions per worker must yield.
func expectedCounts(shape backlogShape, txs int) map[string]int {
	kind := map[byte]string{'I': "insert", 'U': "update", 'D': "delete"}
	out := map[string]int{}
	var pn, cn int
	for s := range txs * shape.Stmts {
		if s%5 == 0 {
			out["posts "+kind[genPattern[pn%len(genPattern)]]] += genWorkers * shape.Rows
			pn++
		} else {
			out["comments "+kind[genPattern[cn%len(genPattern)]]] += genWorkers * shape.Rows
			cn++
		}
	}
	return out
}

// generate writes a backlog: txs transactions of shape on each of genWorkers connections
// at once.
func generate(ctx context.Context, dsn string, shape backlogShape, txs int) error {
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
			_, err = conn.Exec(ctx, fmt.Sprintf("CALL bench_generate(%d, %d, %d, %d)", int64(w)*genBase+1, txs, shape.Stmts, shape.Rows))
			return err
		})
	}
	return g.Wait()
}

// drainKind names the client of one drain.
type drainKind string

const (
	// recvlogical is pg_recvlogical writing pgoutput's stream to /dev/null: the baseline.
	recvlogical drainKind = "pg_recvlogical"
	// walflowKind is walflow with its disk ledger and channel index, in a child process.
	walflowKind drainKind = "walflow"
)

// drainOrder is the order of the drains of rounds rounds: each round alternates the
// clients (ABBA) so neither always goes first.
func drainOrder(rounds int) []drainKind {
	var out []drainKind
	for range rounds {
		out = append(out, recvlogical, walflowKind, walflowKind, recvlogical)
	}
	return out
}

// drainRun is one measured drain.
type drainRun struct {
	Kind        drainKind
	Elapsed     time.Duration // from starting the client to the backlog drained
	CPU         time.Duration // the client process's user and system CPU time over the drain
	MachineCPU  time.Duration // CPU time all processes used meanwhile; 0 when unknown
	PeakRSS     int64         // the client process's peak resident set, bytes; -1 when unknown
	LedgerBytes int64         // walflow only: the ledger directory's size after the drain
	Marks       map[int]time.Duration
	Verify      *drainVerify
}

// backlogOpts configure [drainBacklog].
type backlogOpts struct {
	Shape   backlogShape
	Changes int         // a multiple of genWorkers*Shape.txChanges()
	Order   []drainKind // the drains, in order
	Marks   []int       // ledger heads whose time walflow reports
	Verify  bool        // walflow reads its ledger back after each drain
}

// backlogResult is what the drains of one backlog measured.
type backlogResult struct {
	Opts     backlogOpts
	WALBytes int64
	Setup    time.Duration
	Runs     []drainRun
	Expect   map[string]int // events by "table type" the generator wrote
}

// rate is the changes per second of kind over all its drains.
func (r backlogResult) rate(k drainKind) float64 {
	var n int
	var total time.Duration
	for _, run := range r.Runs {
		if run.Kind == k {
			n++
			total += run.Elapsed
		}
	}
	return float64(n*r.Opts.Changes) / total.Seconds()
}

// cpuPerChange is the CPU time of kind's client per change over all its drains, in µs.
func (r backlogResult) cpuPerChange(k drainKind) float64 {
	var n int
	var total time.Duration
	for _, run := range r.Runs {
		if run.Kind == k {
			n++
			total += run.CPU
		}
	}
	return float64(total.Microseconds()) / float64(n*r.Opts.Changes)
}

// peakRSSMiB is the highest peak RSS of kind's drains, in MiB; -1 when unknown.
func (r backlogResult) peakRSSMiB(k drainKind) float64 {
	peak := -1.0
	for _, run := range r.Runs {
		if run.Kind == k && run.PeakRSS >= 0 {
			peak = max(peak, float64(run.PeakRSS)/(1<<20))
		}
	}
	return peak
}

// drainSetup creates the schema in the empty database at dsn and reports the server version.
func drainSetup(tb testing.TB, dsn string) string {
	tb.Helper()
	conn, err := pgx.Connect(tb.Context(), dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(tb.Context()))
	var ver string
	if err := conn.QueryRow(tb.Context(), "SHOW server_version").Scan(&ver); err != nil {
		tb.Fatal(err)
	}
	if _, err := conn.Exec(tb.Context(), schemaSQL); err != nil {
		tb.Fatalf("create schema: %v", err)
	}
	return ver
}

// drainBacklog builds a backlog behind one slot in the database at dsn (set up by
// drainSetup; its tables are emptied first), then drains it in opts.Order, each drain
// from its own copy of that slot, so every client reads the identical backlog. It drops
// the slots it made.
func drainBacklog(tb testing.TB, c *pgtest.Cluster, dsn string, opts backlogOpts) backlogResult {
	tb.Helper()
	ctx := tb.Context()
	per := genWorkers * opts.Shape.txChanges()
	if opts.Changes <= 0 || opts.Changes%per != 0 {
		tb.Fatalf("drain %s: %d changes is not a positive multiple of %d", opts.Shape.Name, opts.Changes, per)
	}
	txs := opts.Changes / per
	res := backlogResult{Opts: opts, Expect: expectedCounts(opts.Shape, txs)}

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "TRUNCATE posts, comments"); err != nil {
		tb.Fatal(err)
	}
	// Slots are cluster-wide: name them after the database.
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		tb.Fatal(err)
	}
	origin := fmt.Sprintf("%s_%s", db, opts.Shape.Name)
	dropSlot := func(name string) {
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_drop_replication_slot($1)", name); err != nil {
			tb.Errorf("drop slot %s: %v", name, err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", origin); err != nil {
		tb.Fatalf("create slot %s: %v", origin, err)
	}
	defer dropSlot(origin)

	var startLSN string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&startLSN); err != nil {
		tb.Fatal(err)
	}
	start := time.Now()
	if err := generate(ctx, dsn, opts.Shape, txs); err != nil {
		tb.Fatalf("generate the %s backlog: %v", opts.Shape.Name, err)
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
	tb.Logf("%s backlog: %s changes in %d-row transactions, %.1f MiB of WAL from %s to %s, generated in %s; %d drains",
		opts.Shape.Name, thousands(opts.Changes), opts.Shape.txChanges(), float64(res.WALBytes)/(1<<20), startLSN, target,
		res.Setup.Round(time.Millisecond), len(opts.Order))

	for i, k := range opts.Order {
		slot := fmt.Sprintf("%s_%d", origin, i)
		if _, err := conn.Exec(ctx, "SELECT pg_copy_logical_replication_slot($1, $2)", origin, slot); err != nil {
			tb.Fatalf("copy slot %s to %s: %v", origin, slot, err)
		}
		var r drainRun
		switch k {
		case recvlogical:
			r = drainRecvlogical(tb, c, dsn, slot, target)
		case walflowKind:
			r = drainWalflow(tb, dsn, slot, opts.Changes, opts.Marks, opts.Verify)
		}
		dropSlot(slot)
		res.Runs = append(res.Runs, r)
	}
	return res
}

// drainRecvlogical runs pg_recvlogical on slot until it has received the WAL up to
// target, writing pgoutput's messages to /dev/null, with the options walflow streams with.
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
	r := drainRun{Kind: recvlogical, Elapsed: elapsed, PeakRSS: -1, LedgerBytes: -1,
		CPU: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), MachineCPU: busy}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.PeakRSS = ru.Maxrss << 10 // KiB on Linux
	}
	return r
}

// drainWalflow runs walflow with a disk ledger in a child process (drainChildMain) on slot
// until its ledger durably holds changes events. The drain's time runs from starting the
// process to its report that the ledger holds them; its CPU time and peak RSS are the
// process's own up to then (start-up included, as pg_recvlogical's are).
func drainWalflow(tb testing.TB, dsn, slot string, changes int, marks []int, verify bool) drainRun {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "ledger")
	defer os.RemoveAll(dir) // a large backlog's ledgers would add up
	spec, err := json.Marshal(drainChildSpec{DSN: dsn, Slot: slot, Ledger: dir, Changes: changes, Marks: marks, Verify: verify})
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.CommandContext(tb.Context(), os.Args[0])
	cmd.Env = append(withoutPGEnv(), drainChildEnv+"="+string(spec))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	// Stdin stays open until the child exits; it exits by itself if this process dies.
	if _, err := cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	r := drainRun{Kind: walflowKind, PeakRSS: -1, Marks: map[int]time.Duration{}}
	busy := machineBusy()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start the walflow child: %v", err)
	}
	var protoErr error
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		verb, rest, _ := strings.Cut(line, " ")
		switch verb {
		case "mark":
			var n int
			var ns int64
			if _, err := fmt.Sscanf(rest, "%d %d", &n, &ns); err != nil {
				protoErr = fmt.Errorf("line %q: %w", line, err)
			}
			r.Marks[n] = time.Duration(ns)
		case "done":
			r.Elapsed = time.Since(start)
			r.MachineCPU = machineBusy() - busy
			var utime, stime, hwm int64
			if _, err := fmt.Sscanf(rest, "%d %d %d", &utime, &stime, &hwm); err != nil {
				protoErr = fmt.Errorf("line %q: %w", line, err)
			}
			r.CPU, r.PeakRSS = time.Duration(utime+stime), hwm<<10
		case "verify":
			r.Verify = new(drainVerify)
			if err := json.Unmarshal([]byte(rest), r.Verify); err != nil {
				protoErr = fmt.Errorf("line %q: %w", line, err)
			}
		default:
			protoErr = fmt.Errorf("unexpected line %q", line)
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		tb.Fatalf("walflow child on slot %s: %v\n%s", slot, err, stderr.String())
	}
	if protoErr != nil || r.Elapsed == 0 {
		tb.Fatalf("walflow child on slot %s: %v (done reported: %t)\n%s", slot, protoErr, r.Elapsed != 0, stderr.String())
	}
	r.LedgerBytes = dirSize(dir)
	return r
}

// summary describes a backlog's drains in two lines (a benchmark's log keeps only ten
// without -v): one per client with each drain's time, its CPU per change, its peak RSS and
// the CPU the whole machine used per drain, and for walflow the ratios.
func (r backlogResult) summary() string {
	var b strings.Builder
	for _, k := range []drainKind{recvlogical, walflowKind} {
		var times []string
		var n int
		var all time.Duration
		var ledger int64
		for _, run := range r.Runs {
			if run.Kind == k {
				n++
				times = append(times, fmt.Sprintf("%.2fs", run.Elapsed.Seconds()))
				all += run.MachineCPU
				ledger = max(ledger, run.LedgerBytes)
			}
		}
		if n == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s %-14s %9s changes/s  drains %s  CPU %.2f µs/change  peak RSS %.0f MiB  machine CPU per drain %.2fs",
			r.Opts.Shape.Name, k, thousands(int(r.rate(k))), strings.Join(times, " "), r.cpuPerChange(k), r.peakRSSMiB(k),
			all.Seconds()/float64(n))
		if k == walflowKind {
			fmt.Fprintf(&b, "  ledger %.0f bytes/change; %.2f× pg_recvlogical's rate, %.2f× its CPU per change",
				float64(ledger)/float64(r.Opts.Changes), r.ratio(), r.cpuRatio())
		}
		b.WriteByte('\n')
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// ratio is walflow's rate over pg_recvlogical's.
func (r backlogResult) ratio() float64 { return r.rate(walflowKind) / r.rate(recvlogical) }

// cpuRatio is walflow's CPU per change over pg_recvlogical's.
func (r backlogResult) cpuRatio() float64 {
	return r.cpuPerChange(walflowKind) / r.cpuPerChange(recvlogical)
}

// readmeHeader and readmeRow give a result as a Markdown table row, for docs/performance.md.
const readmeHeader = "| backlog | pg_recvlogical | walflow | ratio | CPU per change (pg_recvlogical / walflow) | CPU ratio | walflow peak RSS |"

func (r backlogResult) readmeRow() string {
	return fmt.Sprintf("| %s changes in %d-row transactions | %s changes/s | %s changes/s | %.2f× | %.2f µs / %.2f µs | %.2f× | %.0f MiB |",
		thousands(r.Opts.Changes), r.Opts.Shape.txChanges(), thousands(int(r.rate(recvlogical))), thousands(int(r.rate(walflowKind))),
		r.ratio(), r.cpuPerChange(recvlogical), r.cpuPerChange(walflowKind), r.cpuRatio(), r.peakRSSMiB(walflowKind))
}

// longResult is what the long drain measured.
type longResult struct {
	Changes, Window      int
	First, Last          float64 // changes/s over the first and the last Window events
	PeakRSSMiB           float64
	LedgerBytesPerChange float64
	Overall              float64 // changes/s over the whole drain
	CPUPerChange         float64 // µs
	Setup                time.Duration
	WALBytes             int64
}

// longMarks are the heads the long drain times: the first event, the end of the first
// window and the start of the last.
func longMarks(changes, window int) []int {
	return []int{1, window, changes - window}
}

// long computes the long drain's figures from its one walflow drain.
func long(res backlogResult, window int) (longResult, error) {
	if len(res.Runs) != 1 {
		return longResult{}, fmt.Errorf("the long drain ran %d times, want once", len(res.Runs))
	}
	run, n := res.Runs[0], res.Opts.Changes
	first, ok1 := run.Marks[1]
	win, ok2 := run.Marks[window]
	last, ok3 := run.Marks[n-window]
	end, ok4 := run.Marks[n]
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return longResult{}, fmt.Errorf("the walflow child reported marks %v, want %v", run.Marks, longMarks(n, window))
	}
	return longResult{
		Changes: n, Window: window,
		First:                float64(window-1) / (win - first).Seconds(),
		Last:                 float64(window) / (end - last).Seconds(),
		PeakRSSMiB:           float64(run.PeakRSS) / (1 << 20),
		LedgerBytesPerChange: float64(run.LedgerBytes) / float64(n),
		Overall:              float64(n) / run.Elapsed.Seconds(),
		CPUPerChange:         float64(run.CPU.Microseconds()) / float64(n),
		Setup:                res.Setup,
		WALBytes:             res.WALBytes,
	}, nil
}

func (l longResult) String() string {
	return fmt.Sprintf("long drain of %s changes in 100-row transactions (%.1f MiB of WAL, generated in %s): first %s %s changes/s, last %s %s changes/s, overall %s changes/s, %.2f µs CPU/change, peak RSS %.0f MiB, ledger %.0f bytes/change",
		thousands(l.Changes), float64(l.WALBytes)/(1<<20), l.Setup.Round(time.Second), thousands(l.Window), thousands(int(l.First)),
		thousands(l.Window), thousands(int(l.Last)), thousands(int(l.Overall)), l.CPUPerChange, l.PeakRSSMiB, l.LedgerBytesPerChange)
}

// TestDrainSmoke runs BenchmarkDrain's code on small backlogs, so the benchmark cannot
// rot: each client must drain each backlog, and walflow's ledger must hold exactly the
// changes generated, by table and type, with the old record of every update and delete,
// and its channel index must return a scoped channel's events. It asserts no timing.
func TestDrainSmoke(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDatabase(t)
	ver := drainSetup(t, dsn)
	// One drain by each client: walflow runs under the race detector here, and slowly.
	order := []drainKind{recvlogical, walflowKind}
	for _, o := range []backlogOpts{
		{Shape: bulkShape, Changes: smokeBulk, Order: order},
		{Shape: singleShape, Changes: smokeSingle, Order: order},
		{Shape: longShape, Changes: smokeLong, Order: []drainKind{walflowKind}, Marks: longMarks(smokeLong, smokeWindow)},
	} {
		o.Verify = true
		res := drainBacklog(t, pgtest.Shared(t), dsn, o)
		checkDrained(t, res)
		if o.Shape == longShape {
			l, err := long(res, smokeWindow)
			if err != nil {
				t.Fatal(err)
			}
			if !(l.First > 0 && l.Last > 0 && l.PeakRSSMiB > 0 && l.LedgerBytesPerChange > 0) {
				t.Errorf("long drain figures are not all positive: %+v", l)
			}
			t.Logf("smoke run, not a measurement: %s", l)
			continue
		}
		for _, k := range []drainKind{recvlogical, walflowKind} {
			if rate, cpu := res.rate(k), res.cpuPerChange(k); !(rate > 0) || !(cpu > 0) {
				t.Errorf("%s %s: %v changes/s, %v µs CPU per change; want both positive", o.Shape.Name, k, rate, cpu)
			}
		}
		t.Logf("smoke run, not a measurement (%s):\n%s\n%s\n%s", machine(ver), res.summary(), readmeHeader, res.readmeRow())
	}
}

// checkDrained checks what the walflow drains of res read back from their ledgers.
func checkDrained(t *testing.T, res backlogResult) {
	t.Helper()
	name := res.Opts.Shape.Name
	var n int
	for _, run := range res.Runs {
		if run.Kind != walflowKind {
			continue
		}
		n++
		v := run.Verify
		if v == nil {
			t.Errorf("%s: a walflow drain reported no verification", name)
			continue
		}
		for k, want := range res.Expect {
			if got := v.Counts[k]; got != want {
				t.Errorf("%s: %s events: got %d, want %d", name, k, got, want)
			}
		}
		for k, got := range v.Counts {
			if _, ok := res.Expect[k]; !ok {
				t.Errorf("%s: %d unexpected %s events", name, got, k)
			}
		}
		if v.Read != res.Opts.Changes {
			t.Errorf("%s: read %d events back, want %d", name, v.Read, res.Opts.Changes)
		}
		if v.MissingOlds != 0 {
			t.Errorf("%s: %d updates or deletes lack their old record under REPLICA IDENTITY FULL", name, v.MissingOlds)
		}
		if v.Channel == "" || v.ChannelWant == 0 || v.ChannelGot != v.ChannelWant {
			t.Errorf("%s: channel %q: the index returned %d events, want %d (and more than none)", name, v.Channel, v.ChannelGot, v.ChannelWant)
		}
	}
	if want := countKind(res.Opts.Order, walflowKind); n != want {
		t.Errorf("%s: %d walflow drains ran, want %d", name, n, want)
	}
	if got, want := len(res.Runs), len(res.Opts.Order); got != want {
		t.Errorf("%s: %d drains ran, want %d", name, got, want)
	}
}

func countKind(order []drainKind, k drainKind) int {
	n := 0
	for _, o := range order {
		if o == k {
			n++
		}
	}
	return n
}

// BenchmarkDrain measures how fast walflow drains backlogs of row changes into its disk
// ledger, against pg_recvlogical reading the same backlogs into /dev/null: a bulk backlog
// (100-row transactions) and a single-row one, reported separately, and an optional long
// drain; see the package documentation. Each call builds its own cluster and backlogs and
// drains each once per slot copy, whatever b.N is.
func BenchmarkDrain(b *testing.B) {
	bulk, single, longN, window, rounds := *drainBulk, *drainSingle, *drainLong, *drainWindow, max(*drainRounds, 1)
	if testing.Short() {
		// A quick run of the same code, as the smoke test does.
		bulk, single, longN, window, rounds = min(bulk, smokeBulk), min(single, smokeSingle), min(longN, smokeLong), min(window, smokeWindow), 1
	}
	if longN > 0 && (window <= 0 || 2*window > longN) {
		b.Fatalf("drain: the long drain's window of %d events must be positive and at most half its %d changes; set -drain.window", window, longN)
	}
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
	dsn := c.DSN("bench")
	ver := drainSetup(b, dsn)

	// The time per op covers the setup and every drain: a meaningless figure. The timer
	// still runs, so that the framework does not call the benchmark again with a larger b.N.
	b.ReportMetric(0, "ns/op")
	var rows []string
	var missed []string
	for _, o := range []backlogOpts{
		{Shape: bulkShape, Changes: bulk, Order: drainOrder(rounds)},
		{Shape: singleShape, Changes: single, Order: drainOrder(rounds)},
	} {
		if o.Changes == 0 {
			continue
		}
		res := drainBacklog(b, c, dsn, o)
		n := o.Shape.Name
		b.ReportMetric(res.rate(walflowKind), n+"_walflow_changes/s")
		b.ReportMetric(res.rate(recvlogical), n+"_recvlogical_changes/s")
		b.ReportMetric(res.ratio(), n+"_ratio")
		b.ReportMetric(res.cpuPerChange(walflowKind), n+"_walflow_cpu_us/change")
		b.ReportMetric(res.cpuPerChange(recvlogical), n+"_recvlogical_cpu_us/change")
		b.ReportMetric(res.cpuRatio(), n+"_cpu_ratio")
		b.ReportMetric(res.peakRSSMiB(walflowKind), n+"_walflow_peak_rss_MiB")
		b.Log(res.summary())
		rows = append(rows, res.readmeRow())
		if res.ratio() < minRatio {
			missed = append(missed, fmt.Sprintf("%s: walflow drains at %.2f× pg_recvlogical's rate, below %.2f×", n, res.ratio(), minRatio))
		}
		if p := res.peakRSSMiB(walflowKind); p >= maxPeakRSSMiB {
			missed = append(missed, fmt.Sprintf("%s: walflow's peak RSS %.0f MiB is not under %d MiB", n, p, maxPeakRSSMiB))
		}
	}
	if longN > 0 {
		res := drainBacklog(b, c, dsn, backlogOpts{Shape: longShape, Changes: longN, Order: []drainKind{walflowKind}, Marks: longMarks(longN, window)})
		l, err := long(res, window)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(l.First, "long_first_changes/s")
		b.ReportMetric(l.Last, "long_last_changes/s")
		b.ReportMetric(l.PeakRSSMiB, "long_peak_rss_MiB")
		b.ReportMetric(l.LedgerBytesPerChange, "long_ledger_bytes/change")
		b.Log(l.String())
		if l.PeakRSSMiB >= maxPeakRSSMiB {
			missed = append(missed, fmt.Sprintf("long: walflow's peak RSS %.0f MiB is not under %d MiB", l.PeakRSSMiB, maxPeakRSSMiB))
		}
	}
	if len(missed) > 0 {
		// Reported, not failed: rates on a shared machine are not assertions.
		b.Logf("bars missed (not asserted): %s", strings.Join(missed, "; "))
	}
	if len(rows) > 0 {
		b.Logf("for docs/performance.md (%s):\n%s\n%s", machine(ver), readmeHeader, strings.Join(rows, "\n"))
	}
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

// machine describes the host for docs/performance.md: CPUs, CPU model and PostgreSQL version.
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
