package faulttest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
)

const (
	crashKills   = 20
	crashChanges = 20000
	crashWriters = 2
	// crashMaxKillDelay bounds the random time a pipeline run lives after it streams (or,
	// for some runs, after it starts).
	crashMaxKillDelay = 400 * time.Millisecond
)

const crashSchema = `
CREATE TABLE items (id bigint PRIMARY KEY, writer int NOT NULL, val int NOT NULL, pad text NOT NULL);
CREATE TABLE others (id bigint PRIMARY KEY, writer int NOT NULL, val int NOT NULL);
-- One row per writer transaction, written first in it: its event says which transaction the
-- events after it belong to and how many there are.
CREATE TABLE audit (seq bigserial PRIMARY KEY, txid bigint NOT NULL DEFAULT txid_current(), writer int NOT NULL, n int NOT NULL);`

// crashTables is the pipeline's -tables flag and the matching channel configuration.
const crashTablesFlag = "items,others,audit:seq"

var crashTables = []channel.Table{{Name: "items"}, {Name: "others"}, {Name: "audit", IDColumn: "seq"}}

// change is one row change a writer made.
type change struct {
	table string
	typ   event.Type
	id    int64
}

func (c change) String() string { return fmt.Sprintf("%s %s %d", c.typ, c.table, c.id) }

// writerTx is a transaction a writer committed (or rolled back).
type writerTx struct {
	txid    int64
	writer  int
	changes []change // after the audit row
}

// budget lets the writers make changes only as fast as the kill loop allows, so that the
// writes spread over all the pipeline's runs. It is safe for concurrent use.
type budget struct {
	mu      sync.Mutex
	allowed int
	used    int
	total   int
	raised  chan struct{} // closed and replaced when allowed grows

	committed       int // changes of committed transactions
	committedEvents int // events they produce, audit rows included
}

func newBudget(total int) *budget { return &budget{total: total, raised: make(chan struct{})} }

// take waits until the writers may go on and grants up to n changes; 0 means the total is
// used up.
func (b *budget) take(ctx context.Context, n int) (int, error) {
	for {
		b.mu.Lock()
		if b.used >= b.total {
			b.mu.Unlock()
			return 0, nil
		}
		if b.used < b.allowed {
			n = min(n, b.total-b.used)
			b.used += n
			b.mu.Unlock()
			return n, nil
		}
		raised := b.raised
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-raised:
		}
	}
}

// giveBack returns changes a rolled-back transaction did not make.
func (b *budget) giveBack(n int) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

// commit counts a committed transaction's changes and events.
func (b *budget) commit(changes, events int) {
	b.mu.Lock()
	b.committed += changes
	b.committedEvents += events
	b.mu.Unlock()
}

// progress returns the changes and events of the committed transactions.
func (b *budget) progress() (changes, events int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.committed, b.committedEvents
}

func (b *budget) raise(allowed int) {
	b.mu.Lock()
	if allowed > b.allowed {
		b.allowed = allowed
		close(b.raised)
		b.raised = make(chan struct{})
	}
	b.mu.Unlock()
}

func (b *budget) usedChanges() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// budgetWriters are writers that run in the background, taking their changes from one
// budget, until each has returned.
type budgetWriters struct {
	bud  *budget
	mu   sync.Mutex
	err  error         // what the writers returned, joined
	done chan struct{} // closed once every writer has returned
}

// startBudgetWriters runs each of runs in a goroutine of its own with bud, until it
// returns: when the budget is used up, on an error, or when the test ends (whose cleanup
// waits for them).
func startBudgetWriters(t *testing.T, bud *budget, runs ...func(context.Context, *budget) error) *budgetWriters {
	ctx, cancel := context.WithCancel(t.Context())
	w := &budgetWriters{bud: bud, done: make(chan struct{})}
	var wg sync.WaitGroup
	for _, run := range runs {
		wg.Go(func() {
			if err := run(ctx, bud); err != nil {
				w.mu.Lock()
				w.err = errors.Join(w.err, err)
				w.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	go func() { wg.Wait(); close(w.done) }()
	return w
}

// failed returns the errors the writers returned so far, joined, or nil.
func (w *budgetWriters) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// waitBacklog raises the budget to backlog changes and waits until the writers have
// committed them, failing the test when a writer fails or after two minutes.
func (w *budgetWriters) waitBacklog(t *testing.T, backlog int) {
	t.Helper()
	w.bud.raise(backlog)
	poll(t, 2*time.Minute, "the writers to write a backlog", func() (bool, string, error) {
		changes, _ := w.bud.progress()
		return changes >= backlog, fmt.Sprintf("%d of %d changes committed", changes, backlog), w.failed()
	})
}

// checkFailed fails the test if a writer failed.
func (w *budgetWriters) checkFailed(t *testing.T) {
	t.Helper()
	if err := w.failed(); err != nil {
		t.Fatalf("writer: %v", err)
	}
}

// waitDone waits until every writer has returned, failing the test after three minutes
// or when a writer failed.
func (w *budgetWriters) waitDone(t *testing.T) {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the writers did not finish within 3 minutes (%d changes made)", w.bud.usedChanges())
	}
	w.checkFailed(t)
}

// randomTxSize picks a writer transaction's size: mostly small, some up to 200 changes.
func randomTxSize(rng *rand.Rand) int {
	switch r := rng.IntN(10); {
	case r < 6:
		return 1 + rng.IntN(10)
	case r < 9:
		return 10 + rng.IntN(91)
	default:
		return 100 + rng.IntN(101)
	}
}

// idSet is a set of row ids that can hand out a random member.
type idSet struct {
	ids []int64
	at  map[int64]int
}

func newIDSet() *idSet { return &idSet{at: map[int64]int{}} }

func (s *idSet) add(id int64) { s.at[id] = len(s.ids); s.ids = append(s.ids, id) }

func (s *idSet) remove(id int64) {
	i := s.at[id]
	last := s.ids[len(s.ids)-1]
	s.ids[i], s.at[last] = last, i
	s.ids = s.ids[:len(s.ids)-1]
	delete(s.at, id)
}

// writer commits transactions of random size and shape until the budget is used up.
type writer struct {
	n      int
	conn   *pgx.Conn
	rng    *rand.Rand
	nextID int64
	live   map[string]*idSet // committed rows by table

	committed  []writerTx
	rolledBack []writerTx
	events     int // events the committed transactions produce, audit rows included
}

func newWriter(n int, conn *pgx.Conn, seed uint64) *writer {
	return &writer{n: n, conn: conn, rng: rand.New(rand.NewPCG(seed, uint64(n))),
		nextID: int64(n+1) * 1_000_000_000, live: map[string]*idSet{"items": newIDSet(), "others": newIDSet()}}
}

// plan picks n changes; about one transaction in seven also writes the second table.
func (w *writer) plan(n int) []change {
	multi := w.rng.IntN(7) == 0
	gone := map[change]bool{} // rows this transaction deletes
	var out []change
	for range n {
		table := "items"
		if multi && w.rng.IntN(3) == 0 {
			table = "others"
		}
		live := w.live[table]
		typ := event.Insert
		if len(live.ids) > 0 {
			switch r := w.rng.IntN(10); {
			case r < 3:
				typ = event.Update
			case r < 5:
				typ = event.Delete
			}
		}
		var id int64
		if typ != event.Insert {
			id = live.ids[w.rng.IntN(len(live.ids))]
			if gone[change{table: table, id: id}] {
				typ = event.Insert
			}
		}
		if typ == event.Insert {
			w.nextID++
			id = w.nextID
		}
		if typ == event.Delete {
			gone[change{table: table, id: id}] = true
		}
		out = append(out, change{table: table, typ: typ, id: id})
	}
	return out
}

// run writes until the budget is used up.
func (w *writer) run(ctx context.Context, b *budget) error {
	for {
		n, err := b.take(ctx, randomTxSize(w.rng))
		if err != nil || n == 0 {
			return err
		}
		rollback := w.rng.IntN(40) == 0
		tx := writerTx{writer: w.n, changes: w.plan(n)}
		if err := w.exec(ctx, &tx, rollback); err != nil {
			return err
		}
		if rollback {
			w.rolledBack = append(w.rolledBack, tx)
			b.giveBack(n)
			continue
		}
		for _, c := range tx.changes {
			switch c.typ {
			case event.Insert:
				w.live[c.table].add(c.id)
			case event.Delete:
				w.live[c.table].remove(c.id)
			}
		}
		w.committed = append(w.committed, tx)
		w.events += 1 + len(tx.changes)
		b.commit(len(tx.changes), 1+len(tx.changes))
	}
}

// exec runs one transaction: the audit row, then the changes in one round trip.
func (w *writer) exec(ctx context.Context, tx *writerTx, rollback bool) (err error) {
	dbtx, err := w.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("writer %d: begin: %w", w.n, err)
	}
	defer func() {
		if err != nil || rollback {
			if rerr := dbtx.Rollback(context.WithoutCancel(ctx)); err == nil && rerr != nil {
				err = fmt.Errorf("writer %d: rollback: %w", w.n, rerr)
			}
		}
	}()
	if err := dbtx.QueryRow(ctx, "INSERT INTO audit (writer, n) VALUES ($1, $2) RETURNING txid", w.n, len(tx.changes)).Scan(&tx.txid); err != nil {
		return fmt.Errorf("writer %d: audit row: %w", w.n, err)
	}
	var batch pgx.Batch
	for _, c := range tx.changes {
		switch {
		case c.typ == event.Insert && c.table == "items":
			batch.Queue("INSERT INTO items (id, writer, val, pad) VALUES ($1, $2, $3, $4)", c.id, w.n, w.rng.IntN(1000), strings.Repeat("p", w.rng.IntN(100)))
		case c.typ == event.Insert:
			batch.Queue("INSERT INTO others (id, writer, val) VALUES ($1, $2, $3)", c.id, w.n, w.rng.IntN(1000))
		case c.typ == event.Update:
			batch.Queue("UPDATE "+c.table+" SET val = val + 1 WHERE id = $1", c.id)
		case c.typ == event.Delete:
			batch.Queue("DELETE FROM "+c.table+" WHERE id = $1", c.id)
		}
	}
	br := dbtx.SendBatch(ctx, &batch)
	for _, c := range tx.changes {
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return fmt.Errorf("writer %d: %s: %w", w.n, c, err)
		}
		if tag.RowsAffected() != 1 {
			br.Close()
			return fmt.Errorf("writer %d: %s changed %d rows, want 1", w.n, c, tag.RowsAffected())
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("writer %d: batch: %w", w.n, err)
	}
	if rollback {
		return nil
	}
	if err := dbtx.Commit(ctx); err != nil {
		return fmt.Errorf("writer %d: commit: %w", w.n, err)
	}
	return nil
}

// TestPipelineProcess runs the tests that need the pipeline as a child process, which it
// builds once for them.
func TestPipelineProcess(t *testing.T) {
	t.Parallel()
	bin := buildPipeline(t)
	t.Run("CrashSafety", func(t *testing.T) {
		t.Parallel()
		testCrashSafety(t, bin)
	})
	t.Run("KillRightAfterSlotCreation", func(t *testing.T) {
		t.Parallel()
		testKillRightAfterSlotCreation(t, bin)
	})
	t.Run("OperatorCrashConsistency", func(t *testing.T) {
		t.Parallel()
		testOperatorCrashConsistency(t, bin)
	})
	t.Run("ParkingUnderKills", func(t *testing.T) {
		t.Parallel()
		testParkingUnderKills(t, bin)
	})
	t.Run("MillionRowTransaction", func(t *testing.T) {
		t.Parallel()
		testMillionRowTransaction(t, bin)
	})
}

// waitOrExit lets the child run for d, failing the test if it exits by itself.
func waitOrExit(t *testing.T, p *pipeline, c *child, d time.Duration) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-c.exited:
		t.Fatalf("before the kill: %s", p.exitError(c))
	}
}

// testKillRightAfterSlotCreation kills the pipeline as soon as it streams from the slot it
// has just created, before it acknowledged anything, and checks that the next run resumes:
// the slot's confirmed position is then its creation point, which the ledger must count as
// acknowledged rather than take for a slot consumed by another client.
func testKillRightAfterSlotCreation(t *testing.T, bin string) {
	dsn := pgtest.NewDatabase(t)
	slot := dbName(t, dsn)
	conn := connect(t, dsn)
	exec1(t, conn, `CREATE TABLE t (id int PRIMARY KEY)`)
	p := newPipeline(t, bin, dsn, t.TempDir(), slot, "t")
	c := p.start()
	p.waitReady(c, 60*time.Second)
	p.kill(c)
	waitSlotIdle(t, conn, slot)
	exec1(t, conn, `INSERT INTO t VALUES (1)`)
	c = p.start()
	p.waitState(c, 60*time.Second, "the row inserted after the kill", func(s childState) bool { return s.Head >= 1 })
	p.stop(c)
}

// testCrashSafety SIGKILLs the pipeline at random moments while writers commit, restarts it
// each time, and checks that the ledger ends up with every committed change exactly once,
// in commit order.
func testCrashSafety(t *testing.T, bin string) {
	dsn := pgtest.NewDatabase(t)
	slot := dbName(t, dsn)
	conn := connect(t, dsn)
	exec1(t, conn, crashSchema)
	ledgerDir := t.TempDir()
	p := newPipeline(t, bin, dsn, ledgerDir, slot, crashTablesFlag)

	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	perRun := crashChanges / crashKills
	bud := newBudget(crashChanges)

	writers := make([]*writer, crashWriters)
	runs := make([]func(context.Context, *budget) error, len(writers))
	for i := range writers {
		writers[i] = newWriter(i, connect(t, dsn), seed)
		runs[i] = writers[i].run
	}
	ws := startBudgetWriters(t, bud, runs...)

	type killPoint struct {
		run       int
		streaming bool
		reported  bool // the run reported its ledger state before the kill
		head      event.Position
		behind    int // events committed but not yet in the ledger when the kill came
	}
	var kills []killPoint
	for i := range crashKills {
		if i > 0 {
			// Half of each run's share of the writes is made while the pipeline is down, so
			// that the run starts by catching up.
			ws.waitBacklog(t, i*perRun+perRun/2)
		}
		c := p.start()
		kp := killPoint{run: c.n}
		if i > 0 && rng.IntN(4) == 0 {
			// Kill it somewhere in its start-up: opening the ledger, checking the
			// database, starting replication.
			bud.raise((i + 1) * perRun)
			waitOrExit(t, p, c, time.Duration(rng.Int64N(int64(crashMaxKillDelay))))
		} else {
			// The first run must create the slot before anything is written. Each run gets
			// the rest of its share of the writes once it streams, and is killed at a
			// random moment after it has made some changes durable, often while it is still
			// catching up, sometimes in the middle of a transaction.
			p.waitReady(c, 60*time.Second)
			kp.streaming = true
			bud.raise((i + 1) * perRun)
			from := c.State().Head
			p.waitState(c, 2*time.Minute, "the run to make progress", func(s childState) bool { return s.Head > from })
			waitOrExit(t, p, c, time.Duration(rng.Int64N(int64(crashMaxKillDelay))))
		}
		ws.checkFailed(t)
		_, events := bud.progress()
		st := c.State()
		kp.reported, kp.head, kp.behind = st.Lines > 0, st.Head, events-int(st.Head)
		p.kill(c)
		kills = append(kills, kp)
		waitSlotIdle(t, conn, slot)
	}

	// The last run catches up with everything, then stops gracefully.
	bud.raise(crashChanges)
	c := p.start()
	p.waitReady(c, 60*time.Second)
	ws.waitDone(t)
	target := currentLSN(t, conn)
	final := p.waitState(c, 3*time.Minute, "the last run to catch up with "+target.String(), func(s childState) bool { return s.Acked >= target })
	p.stop(c)

	streamingKills, behindKills := 0, 0
	points := make([]string, len(kills))
	for i, k := range kills {
		if k.streaming {
			streamingKills++
		}
		switch {
		case !k.reported:
			points[i] = "start"
		case k.behind > 0:
			behindKills++
			fallthrough
		default:
			points[i] = fmt.Sprintf("%d(-%d)", k.head, k.behind)
		}
	}
	recovered := 0
	for i := 1; i <= p.runs; i++ {
		if strings.Contains(p.log(i), "removed the events of an interrupted transaction") {
			recovered++
		}
	}
	t.Logf("%d kills: %d while streaming, %d during start-up, %d while behind the writers; "+
		"ledger head (and events committed but not yet in it) at each kill, \"start\" before it reported any: %s; %d restarts removed a transaction interrupted after a sync; final head %d",
		len(kills), streamingKills, len(kills)-streamingKills, behindKills, strings.Join(points, " "), recovered, final.Head)

	verifyCrashLedger(t, conn, ledgerDir, writers)
}

// verifyCrashLedger checks the ledger against the writers' logs and the tables.
func verifyCrashLedger(t *testing.T, conn *pgx.Conn, ledgerDir string, writers []*writer) {
	t.Helper()
	byTxid := map[int64]*writerTx{}
	wantEvents := 0
	for _, w := range writers {
		for i := range w.committed {
			byTxid[w.committed[i].txid] = &w.committed[i]
		}
		for i := range w.rolledBack {
			byTxid[w.rolledBack[i].txid] = nil
		}
		wantEvents += w.events
	}
	next := make([]int, len(writers)) // index of each writer's next expected transaction
	rows := map[string]map[int64]bool{"items": {}, "others": {}}
	auditRows := 0

	// The current transaction being matched.
	var (
		cur     *writerTx
		curLSN  event.LSN
		curXID  uint32
		curIdx  int // events of cur seen after the audit row
		prevPos event.Position
		lastLSN event.LSN
		nextOrd uint32
		txs     int
	)
	finish := func() {
		if cur != nil && curIdx != len(cur.changes) {
			t.Fatalf("transaction %d (commit %s) has %d changes in the ledger, the writer made %d", cur.txid, curLSN, curIdx, len(cur.changes))
		}
	}
	n := scanLedger(t, ledgerDir, crashTables, func(e *event.Event) {
		prevPos = e.Position
		if e.LSN < lastLSN {
			t.Fatalf("event %d: commit LSN %s is before the previous event's %s", e.Position, e.LSN, lastLSN)
		}
		if e.LSN != lastLSN {
			finish()
			txs++
			lastLSN, nextOrd, cur, curIdx, curXID = e.LSN, 0, nil, 0, e.XID
			curLSN = e.LSN
			if e.Name != "audit" || e.Type != event.Insert {
				t.Fatalf("event %d (%s %s) starts transaction %s; every writer transaction starts with its audit row", e.Position, e.Type, e.Name, e.LSN)
			}
		}
		if e.Ordinal != nextOrd {
			t.Fatalf("event %d: ordinal %d in transaction %s, want %d ((LSN, ordinal) must be unique and dense)", e.Position, e.Ordinal, e.LSN, nextOrd)
		}
		nextOrd++
		if e.XID != curXID {
			t.Fatalf("event %d: xid %d, its transaction's first event has %d", e.Position, e.XID, curXID)
		}
		if e.Ordinal == 0 {
			auditRows++
			txid := intField(t, e, "txid")
			wtx, known := byTxid[txid]
			switch {
			case !known:
				t.Fatalf("event %d: transaction %d is not one the writers made", e.Position, txid)
			case wtx == nil:
				t.Fatalf("event %d: transaction %d was rolled back, yet it is in the ledger", e.Position, txid)
			case uint32(txid) != e.XID:
				t.Fatalf("event %d: audit row says txid %d, the event's xid is %d", e.Position, txid, e.XID)
			case int(intField(t, e, "n")) != len(wtx.changes):
				t.Fatalf("event %d: audit row says %d changes, the writer made %d", e.Position, intField(t, e, "n"), len(wtx.changes))
			}
			w := wtx.writer
			if next[w] >= len(writers[w].committed) {
				t.Fatalf("event %d: transaction %d of writer %d again (duplicate)", e.Position, txid, w)
			}
			if want := writers[w].committed[next[w]].txid; want != txid {
				t.Fatalf("event %d: writer %d's transaction %d, but its next committed transaction is %d (lost, duplicated or out of commit order)", e.Position, w, txid, want)
			}
			next[w]++
			cur = wtx
			return
		}
		if curIdx >= len(cur.changes) {
			t.Fatalf("event %d: transaction %d has more changes in the ledger than the writer's %d", e.Position, cur.txid, len(cur.changes))
		}
		want := cur.changes[curIdx]
		got := change{table: e.Name, typ: e.Type, id: idOf(t, e, "id")}
		if got != want {
			t.Fatalf("event %d: change %d of transaction %d is %s, the writer made %s", e.Position, curIdx, cur.txid, got, want)
		}
		curIdx++
		set := rows[got.table]
		switch got.typ {
		case event.Insert:
			if set[got.id] {
				t.Fatalf("event %d: %s inserts a row that exists", e.Position, got)
			}
			set[got.id] = true
		case event.Update:
			if !set[got.id] {
				t.Fatalf("event %d: %s updates a missing row", e.Position, got)
			}
		case event.Delete:
			if !set[got.id] {
				t.Fatalf("event %d: %s deletes a missing row", e.Position, got)
			}
			delete(set, got.id)
		}
	})
	finish()
	for w := range writers {
		if next[w] != len(writers[w].committed) {
			t.Fatalf("writer %d committed %d transactions, the ledger holds %d of them (the first missing is %d)",
				w, len(writers[w].committed), next[w], writers[w].committed[next[w]].txid)
		}
	}
	if n != wantEvents {
		t.Fatalf("ledger holds %d events, the writers' transactions made %d", n, wantEvents)
	}

	// Replaying the ledger gives the tables as they are.
	for table, set := range rows {
		dbRows, err := conn.Query(t.Context(), "SELECT id FROM "+table)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pgx.CollectRows(dbRows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		got := make([]int64, 0, len(set))
		for id := range set {
			got = append(got, id)
		}
		slices.Sort(got)
		slices.Sort(ids)
		if !slices.Equal(got, ids) {
			t.Fatalf("replaying the ledger gives %d rows of %s, the table has %d", len(got), table, len(ids))
		}
	}
	var dbAudit int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM audit").Scan(&dbAudit); err != nil {
		t.Fatal(err)
	}
	if dbAudit != auditRows {
		t.Fatalf("ledger has %d audit rows, the table %d", auditRows, dbAudit)
	}
	rolledBack := 0
	for _, w := range writers {
		rolledBack += len(w.rolledBack)
	}
	t.Logf("ledger: %d events in %d transactions (%d rolled back ones absent), positions 1..%d gap-free", n, txs, rolledBack, prevPos)
}
