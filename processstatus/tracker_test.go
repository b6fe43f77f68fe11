package processstatus_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/processstatus"
	psmemory "github.com/walflow/walflow/processstatus/memory"
	"github.com/walflow/walflow/processstatus/processstatustest"
)

// testTimeout bounds every wait of these tests.
const testTimeout = 10 * time.Second

const t0 = int64(1_721_736_000_000_000) // 2024-07-23 12:00:00 UTC

// bundle is a tracker over a memory ledger, with watermarks the test moves.
type bundle struct {
	l    *memory.Ledger
	wm   *processstatustest.Watermarks
	tr   *processstatus.Tracker
	cfg  processstatus.Config
	next event.LSN
}

// setup returns a tracker, not running yet, over an empty memory ledger; mod may change
// its configuration.
func setup(t *testing.T, mod func(*processstatus.Config)) *bundle {
	t.Helper()
	l := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	t.Cleanup(func() { l.Close() })
	wm := processstatustest.NewWatermarks()
	cfg := processstatus.Config{
		Ledger: l, Watermark: wm, ChangedFunc: wm.Changed,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	if mod != nil {
		mod(&cfg)
	}
	return &bundle{l: l, wm: wm, tr: processstatustest.NewTracker(t, cfg), cfg: cfg, next: 0x100}
}

// write commits events in one transaction at the next LSN (0x100, 0x200, ...), syncs, and
// returns the transaction's commit LSN; the events' positions are set.
func (b *bundle) write(t *testing.T, events ...*event.Event) event.LSN {
	t.Helper()
	lsn := b.next
	b.next += 0x100
	for i, e := range events {
		e.LSN, e.Ordinal = lsn, uint32(i)
	}
	ledgertest.WriteTx(t, b.l, lsn, events...)
	if err := b.l.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	return lsn
}

// start runs the tracker until the test ends; Run must then return nil.
func (b *bundle) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.tr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// ev returns an insert into table whose updated_at holds micros.
func ev(table string, id int, micros int64) *event.Event {
	return processstatustest.Event(0, 0, table, id, micros)
}

// withColumn returns an insert into table whose column holds the value v.
func withColumn(table, column string, v event.Value) *event.Event {
	e := ledgertest.Event(0, 0, table, 1)
	e.NewRecord = append(e.NewRecord, event.Field{Name: column, Value: v})
	return e
}

// waitProcessed waits until entity is processed through micros.
func waitProcessed(t *testing.T, tr *processstatus.Tracker, entity string, micros int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	if err := tr.Wait(ctx, entity, micros); err != nil {
		got, ok := tr.Watermark(entity)
		t.Fatalf("Wait(%q, %d): %v (watermark %d, known %v)", entity, micros, err, got, ok)
	}
}

// waitLSN waits until lsn is processed.
func waitLSN(t *testing.T, tr *processstatus.Tracker, lsn event.LSN) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	if err := tr.WaitLSN(ctx, lsn); err != nil {
		t.Fatalf("WaitLSN(%s): %v (watermark %s)", lsn, err, tr.WatermarkLSN())
	}
}

// waitPosition polls until the tracker's position is pos.
func waitPosition(t *testing.T, tr *processstatus.Tracker, pos event.Position) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for tr.Position() != pos {
		if time.Now().After(deadline) {
			t.Fatalf("Position = %d after %s, want %d", tr.Position(), testTimeout, pos)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestHoldThenAdvance: an event is never processed before its entity's watermark reaches
// it, and is once it does, whether the tracker is told of watermark moves or polls them.
func TestHoldThenAdvance(t *testing.T) {
	t.Parallel()
	for _, notified := range []bool{true, false} {
		name := "notified"
		if !notified {
			name = "polling"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(c *processstatus.Config) {
				if !notified {
					c.ChangedFunc = nil
					c.PollInterval = time.Millisecond
				}
			})
			b.write(t, ev("posts", 1, t0+1))   // position 1
			b.write(t, ev("markers", 1, t0))   // position 2
			b.write(t, ev("posts", 2, t0+3))   // position 3
			b.write(t, ev("markers", 2, t0+1)) // position 4
			b.wm.Set("markers", 4)
			b.start(t)

			// Once the later marker is processed, the tracker has seen the posts and their
			// watermark: they must still be unprocessed.
			waitProcessed(t, b.tr, "markers", t0+1)
			for _, ts := range []int64{t0 + 1, t0 + 3} {
				if b.tr.Processed("posts", ts) {
					t.Errorf("posts at %d processed while the watermark holds at 0", ts)
				}
			}
			if v, ok := b.tr.Watermark("posts"); ok {
				t.Errorf("Watermark(posts) = %d, true; want none", v)
			}
			if got := b.tr.Position(); got != 0 {
				t.Errorf("Position = %d, want 0", got)
			}

			b.wm.Set("posts", 2) // past the first post, short of the second
			waitProcessed(t, b.tr, "posts", t0+1)
			waitPosition(t, b.tr, 2)
			if b.tr.Processed("posts", t0+2) || b.tr.Processed("posts", t0+3) {
				t.Errorf("the second post reads processed with the watermark at 2")
			}
			if v, _ := b.tr.Watermark("posts"); v != t0+1 {
				t.Errorf("Watermark(posts) = %d, want %d", v, t0+1)
			}

			b.wm.Set("posts", 3)
			waitProcessed(t, b.tr, "posts", t0+3)
			waitPosition(t, b.tr, 4)
			if !b.tr.Processed("posts", t0) || b.tr.Processed("posts", t0+4) {
				t.Errorf("Processed is not watermark >= micros")
			}
		})
	}
}

// TestTimestampColumns: timestamptz, timestamp (UTC) and bigint columns, named per entity.
func TestTimestampColumns(t *testing.T) {
	t.Parallel()
	columns := map[string]string{"tz": "updated_at", "naive": "changed_at", "big": "version_us", "none": ""}
	b := setup(t, func(c *processstatus.Config) {
		c.TimestampColumnFunc = func(entity string) string {
			if col, ok := columns[entity]; ok {
				return col
			}
			return processstatus.TimestampColumnDefault
		}
		c.Watermark = processstatustest.HeadWatermark{Ledger: c.Ledger}
		c.ChangedFunc = nil
	})
	b.write(t,
		withColumn("tz", "updated_at", event.Text(1184, "2024-07-23 17:30:00.123456+05:30")),
		withColumn("naive", "changed_at", event.Text(1114, "2024-07-23 12:00:00.5")),
		withColumn("naive", "updated_at", event.Text(1114, "2030-01-01 00:00:00")), // not its column
		withColumn("big", "version_us", event.Text(20, "1721736000000042")),
		withColumn("none", "updated_at", event.Text(1184, "2024-07-23 12:00:00+00")),
		withColumn("nulls", "updated_at", event.Null(1184)),
		withColumn("missing", "other", event.Text(1184, "2024-07-23 12:00:00+00")),
		withColumn("bad", "updated_at", event.Text(25, "yesterday")),
		withColumn("inf", "updated_at", event.Text(1184, "infinity")),
	)
	b.start(t)
	waitPosition(t, b.tr, 9)
	want := map[string]int64{"tz": t0 + 123456, "naive": t0 + 500000, "big": t0 + 42}
	for entity, micros := range want {
		if got, ok := b.tr.Watermark(entity); !ok || got != micros {
			t.Errorf("Watermark(%q) = %d, %v; want %d", entity, got, ok, micros)
		}
	}
	for _, entity := range []string{"none", "nulls", "missing", "bad", "inf"} {
		if got, ok := b.tr.Watermark(entity); ok {
			t.Errorf("Watermark(%q) = %d; want none: the event has no usable timestamp", entity, got)
		}
	}
}

// TestTimestampMax: an entity's watermark never goes back when a later event carries an
// older timestamp.
func TestTimestampMax(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.wm.SetDefault(3)
	b.write(t, ev("posts", 1, t0+300))
	b.write(t, ev("posts", 2, t0+100))
	b.write(t, ev("posts", 3, t0+200))
	b.start(t)
	waitPosition(t, b.tr, 3)
	if got, _ := b.tr.Watermark("posts"); got != t0+300 {
		t.Errorf("Watermark(posts) = %d, want the highest processed timestamp %d", got, t0+300)
	}
}

// TestEntitiesIndependent: a held entity holds back neither the others' timestamps nor
// their own progress, but holds the position and the LSN watermark.
func TestEntitiesIndependent(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.write(t, ev("comments", 1, t0+1))     // position 1, held forever
	lsn := b.write(t, ev("posts", 1, t0+2)) // position 2
	b.write(t, ev("posts", 2, t0+3))        // position 3
	b.wm.Set("posts", 3)
	b.start(t)
	waitProcessed(t, b.tr, "posts", t0+3)
	if b.tr.Processed("comments", t0+1) {
		t.Errorf("comments processed while held")
	}
	if got := b.tr.Position(); got != 0 {
		t.Errorf("Position = %d, want 0: comments at 1 is not processed", got)
	}
	if b.tr.ProcessedLSN(lsn) {
		t.Errorf("ProcessedLSN(%s) with an earlier transaction unprocessed", lsn)
	}
}

// TestNoTimestampEventsHoldPosition: deletes and truncates carry no timestamp but still
// count for the position and the LSN watermark.
func TestNoTimestampEventsHoldPosition(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.wm.Set("markers", 3)
	b.write(t, ev("posts", 1, t0+1)) // position 1
	del := ledgertest.Event(0, 0, "posts", 1)
	del.Type, del.OldRecord, del.NewRecord = event.Delete, del.NewRecord, nil
	lsn := b.write(t, del)           // position 2
	b.write(t, ev("markers", 1, t0)) // position 3
	b.wm.Set("posts", 1)
	b.start(t)
	waitProcessed(t, b.tr, "markers", t0)
	waitProcessed(t, b.tr, "posts", t0+1)
	if got := b.tr.Position(); got != 1 {
		t.Errorf("Position = %d, want 1: the delete at 2 is not processed", got)
	}
	if b.tr.ProcessedLSN(lsn) {
		t.Errorf("ProcessedLSN(%s) of the unprocessed delete", lsn)
	}
	b.wm.Set("posts", 2)
	waitLSN(t, b.tr, lsn)
	waitPosition(t, b.tr, 3)
	if got, _ := b.tr.Watermark("posts"); got != t0+1 {
		t.Errorf("Watermark(posts) = %d after the delete, want %d", got, t0+1)
	}
}

// TestProcessedLSN: an LSN is processed when every transaction committed at or before it
// is in the ledger and processed.
func TestProcessedLSN(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.wm.Set("comments", 10)
	tx1 := b.write(t, ev("posts", 1, t0))                          // 0/100, position 1, held
	tx2 := b.write(t, ev("comments", 1, t0))                       // 0/200, position 2
	tx3 := b.write(t, ev("comments", 2, t0+1), ev("posts", 2, t0)) // 0/300, positions 3-4
	b.start(t)
	waitProcessed(t, b.tr, "comments", t0+1)
	waitLSN(t, b.tr, tx1-1)
	check := func(when string, want map[event.LSN]bool) {
		t.Helper()
		for lsn, w := range want {
			if got := b.tr.ProcessedLSN(lsn); got != w {
				t.Errorf("%s: ProcessedLSN(%s) = %v, want %v (watermark %s)", when, lsn, got, w, b.tr.WatermarkLSN())
			}
		}
	}
	check("posts held", map[event.LSN]bool{0: true, tx1 - 1: true, tx1: false, tx2: false, tx3: false})
	if got := b.tr.WatermarkLSN(); got != tx1-1 {
		t.Errorf("WatermarkLSN = %s, want %s", got, tx1-1)
	}

	b.wm.Set("posts", 1)
	waitLSN(t, b.tr, tx2)
	// tx3 has a posts event still held: not processed, though its comments event is.
	check("posts past tx1", map[event.LSN]bool{tx1: true, tx2: true, tx2 + 0x80: true, tx3 - 1: true, tx3: false})

	b.wm.Set("posts", 4)
	waitLSN(t, b.tr, tx3)
	// The ledger has seen nothing after tx3's commit record, which ends at tx3+1.
	check("all processed", map[event.LSN]bool{tx3: true, tx3 + 1: false, tx3 + 0x100: false})

	// The source acknowledges WAL past tx3 with no new transaction: every transaction
	// committed before the acknowledged LSN is in the ledger.
	if err := b.l.SetAcked(t.Context(), tx3+0x100); err != nil {
		t.Fatal(err)
	}
	check("acknowledged", map[event.LSN]bool{tx3 + 0xFF: true, tx3 + 0x100: false})
	waitLSN(t, b.tr, tx3+0xFF)

	// A new transaction at the acknowledged LSN, held: nothing at or after it is processed.
	tx4 := b.write(t, ev("posts", 3, t0))
	if tx4 < tx3+0x100 {
		t.Fatalf("test bug: tx4 at %s", tx4)
	}
	check("new held transaction", map[event.LSN]bool{tx3 + 0xFF: true, tx4: false})

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := b.tr.WaitLSN(ctx, tx4); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitLSN of a held transaction: %v, want %v", err, context.DeadlineExceeded)
	}
	if err := b.tr.Wait(ctx, "posts", t0+1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait of a held timestamp: %v, want %v", err, context.DeadlineExceeded)
	}
}

// TestProcessedLSNEmptyLedger: with nothing in the ledger, what the source acknowledged is
// processed, before Run and after.
func TestProcessedLSNEmptyLedger(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	if b.tr.ProcessedLSN(0x100) {
		t.Errorf("ProcessedLSN(0/100) on an empty ledger that acknowledged nothing")
	}
	if err := b.l.SetAcked(t.Context(), 0x200); err != nil {
		t.Fatal(err)
	}
	if !b.tr.ProcessedLSN(0x1FF) || b.tr.ProcessedLSN(0x200) {
		t.Errorf("ProcessedLSN around the acknowledged 0/200: %v %v, want true false", b.tr.ProcessedLSN(0x1FF), b.tr.ProcessedLSN(0x200))
	}
}

// TestHaltedOperatorBoundedQueue: thousands of events of a held entity, then the watermark
// passes them in steps: nothing reads processed early, and everything is in the end.
func TestHaltedOperatorBoundedQueue(t *testing.T) {
	t.Parallel()
	const n = 5000
	b := setup(t, nil)
	for i := 1; i <= n; i++ {
		b.write(t, ev("posts", i, t0+int64(i))) // position i, timestamp t0+i
	}
	b.write(t, ev("markers", 1, t0)) // position n+1
	b.wm.Set("markers", n+1)
	b.start(t)
	waitProcessed(t, b.tr, "markers", t0)
	for _, w := range []event.Position{1, 999, 2500, 4999} {
		b.wm.Set("posts", w)
		waitPosition(t, b.tr, w)
		// Past 1024 held events, neighbours are merged: the watermark may lag, never lead.
		if got, ok := b.tr.Watermark("posts"); ok && got > t0+int64(w) {
			t.Fatalf("watermark at %d: Watermark(posts) = %d; want at most %d", w, got, t0+int64(w))
		}
		if b.tr.Processed("posts", t0+int64(w)+1) {
			t.Fatalf("watermark at %d: a later post reads processed", w)
		}
	}
	b.wm.Set("posts", n)
	waitPosition(t, b.tr, n+1)
	if got, _ := b.tr.Watermark("posts"); got != t0+n {
		t.Errorf("all passed: Watermark(posts) = %d, want %d", got, t0+n)
	}
}

// TestSmallBatches: reading the ledger a few events at a time gives the same result.
func TestSmallBatches(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *processstatus.Config) { c.Batch = 2 })
	b.wm.SetDefault(100)
	for i := 1; i <= 7; i++ {
		b.write(t, ev("posts", i, t0+int64(i)), ev("comments", i, t0-int64(i)))
	}
	b.start(t)
	waitPosition(t, b.tr, 14)
	if got, _ := b.tr.Watermark("posts"); got != t0+7 {
		t.Errorf("Watermark(posts) = %d, want %d", got, t0+7)
	}
	if got, _ := b.tr.Watermark("comments"); got != t0-1 {
		t.Errorf("Watermark(comments) = %d, want %d", got, t0-1)
	}
}

// TestSavedPositionAheadOfLedger: a status saved against another ledger is reset.
func TestSavedPositionAheadOfLedger(t *testing.T) {
	t.Parallel()
	store := psmemory.New()
	_ = store.Save(t.Context(), "posts", t0+99)
	_ = store.SavePosition(t.Context(), 50)
	b := setup(t, func(c *processstatus.Config) { c.Store = store })
	b.wm.SetDefault(10)
	b.write(t, ev("comments", 1, t0))
	b.start(t)
	waitProcessed(t, b.tr, "comments", t0)
	if b.tr.Processed("posts", t0) {
		t.Errorf("posts reads processed from a status saved against another ledger")
	}
	snap, _ := store.Load(t.Context())
	if snap.Position != 1 || snap.Entities["posts"] != 0 || snap.Entities["comments"] != t0 {
		t.Errorf("store after the reset: %v at %d, want comments only, at 1", snap.Entities, snap.Position)
	}
}

// TestSavedPositionBeforeTail: a restarted tracker whose saved position the retention
// passed resumes at the ledger's tail instead of failing to read the removed events.
func TestSavedPositionBeforeTail(t *testing.T) {
	t.Parallel()
	for _, saved := range []event.Position{0, 2} {
		t.Run(fmt.Sprintf("saved at %d", saved), func(t *testing.T) {
			t.Parallel()
			store := psmemory.New()
			_ = store.Save(t.Context(), "posts", t0)
			_ = store.SavePosition(t.Context(), saved)
			b := setup(t, func(c *processstatus.Config) { c.Store = store })
			b.wm.SetDefault(100)
			for i := 1; i <= 5; i++ {
				b.write(t, ev("posts", i, t0+int64(i)))
			}
			if err := b.l.Truncate(t.Context(), 4); err != nil {
				t.Fatal(err)
			}
			lsn := b.write(t, ev("comments", 1, t0+10)) // position 6
			b.start(t)
			waitPosition(t, b.tr, 6)
			waitProcessed(t, b.tr, "comments", t0+10)
			waitLSN(t, b.tr, lsn)
			// Only event 5 of posts was read again.
			if got, _ := b.tr.Watermark("posts"); got != t0+5 {
				t.Errorf("Watermark(posts) = %d, want %d", got, t0+5)
			}
		})
	}
}

// TestRunErrors: Run once; a closed ledger and a failing store stop it with an error.
func TestRunErrors(t *testing.T) {
	t.Parallel()
	t.Run("twice", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := b.tr.Run(ctx); err != nil {
			t.Fatalf("first Run: %v", err)
		}
		if err := b.tr.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "Run called twice") {
			t.Errorf("second Run: %v", err)
		}
	})
	t.Run("ledger closed", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		done := make(chan error, 1)
		go func() { done <- b.tr.Run(t.Context()) }()
		b.l.Close()
		select {
		case err := <-done:
			if !errors.Is(err, ledger.ErrClosed) || !strings.HasPrefix(err.Error(), "processstatus: ") {
				t.Errorf("Run on a closed ledger: %v, want a processstatus error wrapping %v", err, ledger.ErrClosed)
			}
		case <-time.After(testTimeout):
			t.Fatal("Run did not return after the ledger closed")
		}
	})
	errStore := errors.New("store down")
	for _, failing := range []string{"load", "save", "position"} {
		t.Run("store "+failing, func(t *testing.T) {
			t.Parallel()
			store := &failingStore{Store: psmemory.New(), fail: failing, err: errStore}
			b := setup(t, func(c *processstatus.Config) { c.Store = store })
			b.wm.SetDefault(1)
			b.write(t, ev("posts", 1, t0))
			err := b.tr.Run(t.Context())
			if !errors.Is(err, errStore) || !strings.HasPrefix(err.Error(), "processstatus: ") {
				t.Errorf("Run with a store failing to %s: %v", failing, err)
			}
			if failing == "load" && b.tr.Processed("posts", t0) {
				t.Errorf("posts processed though Run never loaded")
			}
		})
	}
}

// TestFlushOnReturn: Run flushes a buffering store when it returns.
func TestFlushOnReturn(t *testing.T) {
	t.Parallel()
	store := &flushingStore{Store: psmemory.New()}
	b := setup(t, func(c *processstatus.Config) { c.Store = store })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := b.tr.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if store.flushes() != 1 {
		t.Errorf("Flush called %d times, want 1", store.flushes())
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	l := memory.New(nil)
	defer l.Close()
	wm := processstatustest.NewWatermarks()
	tests := []struct {
		name string
		cfg  processstatus.Config
		want string
	}{
		{"no ledger", processstatus.Config{Watermark: wm}, "Config.Ledger is nil"},
		{"no watermark", processstatus.Config{Ledger: l}, "Config.Watermark is nil"},
		{"negative poll", processstatus.Config{Ledger: l, Watermark: wm, PollInterval: -1}, "Config.PollInterval"},
		{"negative batch", processstatus.Config{Ledger: l, Watermark: wm, Batch: -1}, "Config.Batch"},
	}
	for _, tc := range tests {
		_, err := processstatus.New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "processstatus: ") {
			t.Errorf("%s: New: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := processstatus.New(processstatus.Config{Ledger: l, Watermark: wm}); err != nil {
		t.Errorf("New with only the required fields: %v", err)
	}
}

// failingStore fails one kind of call.
type failingStore struct {
	processstatus.Store
	fail string
	err  error
}

func (s *failingStore) Load(ctx context.Context) (processstatus.Snapshot, error) {
	if s.fail == "load" {
		return processstatus.Snapshot{}, s.err
	}
	return s.Store.Load(ctx)
}

func (s *failingStore) Save(ctx context.Context, entity string, micros int64) error {
	if s.fail == "save" {
		return s.err
	}
	return s.Store.Save(ctx, entity, micros)
}

func (s *failingStore) SavePosition(ctx context.Context, pos event.Position) error {
	if s.fail == "position" {
		return s.err
	}
	return s.Store.SavePosition(ctx, pos)
}

// flushingStore counts flushes.
type flushingStore struct {
	processstatus.Store
	mu sync.Mutex
	n  int
}

func (s *flushingStore) Flush(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return nil
}

func (s *flushingStore) flushes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// gatedLedger closes entered at the first Read and holds it until gate is closed.
type gatedLedger struct {
	processstatus.Ledger
	entered chan<- struct{}
	gate    <-chan struct{}
	once    sync.Once
}

func (g *gatedLedger) Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error) {
	g.once.Do(func() {
		close(g.entered)
		<-g.gate
	})
	return g.Ledger.Read(ctx, after, limit)
}

// TestTruncatedWhileRunning: events removed under a running tracker (by someone else than
// the engine's retention, which never passes it) make it go on from the tail, not stop.
func TestTruncatedWhileRunning(t *testing.T) {
	t.Parallel()
	entered, gate := make(chan struct{}), make(chan struct{})
	b := setup(t, func(c *processstatus.Config) {
		c.Ledger = &gatedLedger{Ledger: c.Ledger, entered: entered, gate: gate}
	})
	b.wm.SetDefault(100)
	for i := 1; i <= 5; i++ {
		b.write(t, ev("posts", i, t0+int64(i)))
	}
	b.start(t)
	<-entered // the tracker has started from position 0
	if err := b.l.Truncate(t.Context(), 4); err != nil {
		t.Fatal(err)
	}
	close(gate)
	lsn := b.write(t, ev("comments", 1, t0+10)) // position 6
	waitPosition(t, b.tr, 6)
	waitProcessed(t, b.tr, "comments", t0+10)
	waitLSN(t, b.tr, lsn)
	if got, _ := b.tr.Watermark("posts"); got != t0+5 {
		t.Errorf("Watermark(posts) = %d, want %d (only event 5 was left to read)", got, t0+5)
	}
}
