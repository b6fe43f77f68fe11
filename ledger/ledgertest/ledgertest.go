package ledgertest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// NewFunc returns a new, empty ledger that indexes events with indexer. The suite closes
// every ledger it gets; a backend may also close it in a cleanup (a second Close's error
// is ignored).
type NewFunc func(t *testing.T, indexer ledger.Indexer) ledger.Ledger

// Run runs the conformance suite against the ledgers newLedger returns.
func Run(t *testing.T, newLedger NewFunc) {
	tests := []struct {
		name string
		fn   func(*testing.T, NewFunc)
	}{
		{"Empty", testEmpty},
		{"PositionsGapFree", testPositions},
		{"VisibleAfterSync", testVisibleAfterSync},
		{"OpenTxInvisibleAcrossSync", testOpenTxAcrossSync},
		{"EmptyTransaction", testEmptyTx},
		{"AbortTx", testAbort},
		{"OutOfOrder", testOutOfOrder},
		{"NoTxAndTxOpen", testTxErrors},
		{"State", testState},
		{"Read", testRead},
		{"ReadKeys", testReadKeys},
		{"InvalidKeys", testInvalidKeys},
		{"Wait", testWait},
		{"WaitClose", testWaitClose},
		{"Closed", testClosed},
		{"Concurrent", testConcurrent},
		{"CloseDuringReads", testCloseDuringReads},
		{"RoundTrip", testRoundTrip},
		{"NoReference", testNoReference},
		{"Truncate", testTruncate},
		{"TruncateReadKeys", testTruncateReadKeys},
		{"TruncateClamps", testTruncateClamps},
		{"TruncateConcurrent", testTruncateConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newLedger)
		})
	}
}

// open returns a new ledger indexed by [Indexer], closed when the test ends.
func open(t *testing.T, newLedger NewFunc) ledger.Ledger {
	t.Helper()
	l := newLedger(t, Indexer)
	t.Cleanup(func() { l.Close() })
	return l
}

// Indexer indexes an event under its table name and under table/id, id being the text of
// the first field of its new record (its old record for a delete).
func Indexer(e *event.Event, dst []string) []string {
	dst = append(dst, e.Name)
	r := e.NewRecord
	if r == nil {
		r = e.OldRecord
	}
	if len(r) > 0 {
		if id, ok := r[0].Value.Text(); ok {
			dst = append(dst, e.Name+"/"+id)
		}
	}
	return dst
}

// Columns are the columns of the events [Event] returns.
var Columns = []event.Column{
	{Name: "id", Type: "integer", OID: 23, Key: true},
	{Name: "title", Type: "text", OID: 25},
	{Name: "score", Type: "numeric", OID: 1700},
	{Name: "tags", Type: "text[]", OID: 1009},
	{Name: "created_at", Type: "timestamp with time zone", OID: 1184},
}

// Event returns an insert into table of the row with the given id, as the event at ordinal
// of the transaction that commits at lsn. It has the five [Columns].
func Event(lsn event.LSN, ordinal uint32, table string, id int) *event.Event {
	ids := strconv.Itoa(id)
	return &event.Event{
		LSN:     lsn,
		Ordinal: ordinal,
		XID:     uint32(lsn),
		Name:    table,
		Type:    event.Insert,
		Source:  event.Source{DB: "app", Schema: "public", Table: table, Columns: Columns},
		NewRecord: event.Record{
			{Name: "id", Value: event.Text(23, ids)},
			{Name: "title", Value: event.Text(25, "row "+ids+" of "+table)},
			{Name: "score", Value: event.Text(1700, "12.50")},
			{Name: "tags", Value: event.Text(1009, `{a,"b c"}`)},
			{Name: "created_at", Value: event.Text(1184, "2024-07-23 12:00:00.5+00")},
		},
		Timestamp: time.UnixMicro(1_700_000_000_000_000 + int64(lsn)).UTC(),
	}
}

// WriteTx appends events in one transaction committed at lsn (end lsn+1) and returns
// their positions. It does not Sync.
func WriteTx(t testing.TB, l ledger.Ledger, lsn event.LSN, events ...*event.Event) []event.Position {
	t.Helper()
	ctx := context.Background()
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn, XID: uint32(lsn), CommitTime: time.Unix(0, 0)}); err != nil {
		t.Fatalf("BeginTx(%s): %v", lsn, err)
	}
	var ps []event.Position
	for _, e := range events {
		if err := l.Append(ctx, e); err != nil {
			t.Fatalf("Append: %v", err)
		}
		ps = append(ps, e.Position)
	}
	if err := l.CommitTx(ctx, lsn+1); err != nil {
		t.Fatalf("CommitTx: %v", err)
	}
	return ps
}

// table returns the table of the i-th event the tests write: a, b or c.
func table(i int) string { return string(rune('a' + i%3)) }

// writeN writes n transactions from lsn, the i-th holding sizes[i%len(sizes)] events of
// the tables a, b, c in turn with ids i, and Syncs. It returns the events.
func writeN(t *testing.T, l ledger.Ledger, lsn event.LSN, n int, sizes ...int) []*event.Event {
	t.Helper()
	var all []*event.Event
	k := 0
	for i := range n {
		var es []*event.Event
		for j := range sizes[i%len(sizes)] {
			es = append(es, Event(lsn+event.LSN(i), uint32(j), table(k), k%7))
			k++
		}
		WriteTx(t, l, lsn+event.LSN(i), es...)
		all = append(all, es...)
	}
	mustSync(t, l)
	return all
}

func mustSync(t testing.TB, l ledger.Ledger) {
	t.Helper()
	if err := l.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

func positions(es []event.Event) []event.Position {
	ps := make([]event.Position, 0, len(es))
	for _, e := range es {
		ps = append(ps, e.Position)
	}
	return ps
}

func samePositions(t *testing.T, what string, got []event.Event, want []event.Position) {
	t.Helper()
	g := positions(got)
	if len(g) == 0 && len(want) == 0 {
		return
	}
	if !slices.Equal(g, want) {
		t.Fatalf("%s: got positions %v, want %v", what, g, want)
	}
}

func testEmpty(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	if st := l.State(); st != (ledger.State{}) {
		t.Fatalf("State of an empty ledger = %+v, want zero", st)
	}
	if es, err := l.Read(ctx, 0, 10); err != nil || len(es) != 0 {
		t.Fatalf("Read = %v, %v; want nothing", es, err)
	}
	if es, err := l.ReadKeys(ctx, []string{"a"}, 0, 10); err != nil || len(es) != 0 {
		t.Fatalf("ReadKeys = %v, %v; want nothing", es, err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatalf("Sync of an empty ledger: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := l.Wait(wctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on an empty ledger = %v, want DeadlineExceeded", err)
	}
}

func testPositions(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	next := event.Position(1)
	for i, n := range []int{1, 3, 1, 10, 2} {
		var es []*event.Event
		for j := range n {
			es = append(es, Event(event.LSN(100+i), uint32(j), "a", j))
		}
		ps := WriteTx(t, l, event.LSN(100+i), es...)
		if want := Span(next, next+event.Position(n)-1); !slices.Equal(ps, want) {
			t.Fatalf("transaction %d got positions %v, want %v", i, ps, want)
		}
		next += event.Position(n)
		if i%2 == 1 {
			mustSync(t, l)
		}
	}
	mustSync(t, l)
	all := ReadAll(t, l)
	samePositions(t, "Read", all, Span(1, next-1))
	if st := l.State(); st.Head != next-1 {
		t.Fatalf("Head = %d, want %d", st.Head, next-1)
	}
}

func testVisibleAfterSync(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	WriteTx(t, l, 10, Event(10, 0, "a", 1), Event(10, 1, "b", 2))
	if st := l.State(); st.Head != 0 || st.LastCommitLSN != 0 {
		t.Fatalf("State before Sync = %+v, want zero", st)
	}
	if es := ReadAll(t, l); len(es) != 0 {
		t.Fatalf("Read before Sync returned %d events", len(es))
	}
	if es, err := l.ReadKeys(ctx, []string{"a", "b"}, 0, 10); err != nil || len(es) != 0 {
		t.Fatalf("ReadKeys before Sync = %d events, %v", len(es), err)
	}
	mustSync(t, l)
	samePositions(t, "Read after Sync", ReadAll(t, l), Span(1, 2))
	es, err := l.ReadKeys(ctx, []string{"a", "b"}, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "ReadKeys after Sync", es, Span(1, 2))
}

func testOpenTxAcrossSync(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	WriteTx(t, l, 10, Event(10, 0, "a", 1))
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := l.Append(ctx, Event(20, uint32(i), "b", i)); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, l) // makes transaction 10 visible, not the open one
	if st := l.State(); st.Head != 1 || st.LastCommitLSN != 10 {
		t.Fatalf("State = %+v, want head 1 at LSN 10", st)
	}
	samePositions(t, "Read with an open transaction", ReadAll(t, l), Span(1, 1))
	if es, err := l.ReadKeys(ctx, []string{"b"}, 0, 100); err != nil || len(es) != 0 {
		t.Fatalf("ReadKeys of the open transaction's key = %d events, %v", len(es), err)
	}
	for i := 50; i < 100; i++ {
		if err := l.Append(ctx, Event(20, uint32(i), "b", i)); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, l)
	samePositions(t, "Read with an open transaction", ReadAll(t, l), Span(1, 1))
	if err := l.CommitTx(ctx, 21); err != nil {
		t.Fatal(err)
	}
	samePositions(t, "Read before the second Sync", ReadAll(t, l), Span(1, 1))
	mustSync(t, l)
	samePositions(t, "Read after the second Sync", ReadAll(t, l), Span(1, 101))
	es, err := l.ReadKeys(ctx, []string{"b"}, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "ReadKeys after the second Sync", es, Span(2, 101))
}

func testEmptyTx(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	WriteTx(t, l, 10, Event(10, 0, "a", 1))
	WriteTx(t, l, 20)
	mustSync(t, l)
	want := ledger.State{Head: 1, LastCommitLSN: 20, LastEndLSN: 21}
	if st := l.State(); st != want {
		t.Fatalf("State = %+v, want %+v", st, want)
	}
	if ps := WriteTx(t, l, 30, Event(30, 0, "a", 2)); ps[0] != 2 {
		t.Fatalf("next position = %d, want 2", ps[0])
	}
}

func testAbort(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	WriteTx(t, l, 10, Event(10, 0, "a", 1), Event(10, 1, "a", 2))
	WriteTx(t, l, 15, Event(15, 0, "a", 3)) // committed, not synced: an abort keeps it
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		if err := l.Append(ctx, Event(20, uint32(i), "gone", i)); err != nil {
			t.Fatal(err)
		}
		if i == 100 {
			mustSync(t, l)
		}
	}
	if err := l.AbortTx(ctx); err != nil {
		t.Fatalf("AbortTx: %v", err)
	}
	if err := l.AbortTx(ctx); !errors.Is(err, ledger.ErrNoTx) {
		t.Fatalf("second AbortTx = %v, want ErrNoTx", err)
	}
	// The aborted LSN may be appended again, at the aborted positions.
	ps := WriteTx(t, l, 20, Event(20, 0, "b", 1), Event(20, 1, "b", 2))
	if !slices.Equal(ps, Span(4, 5)) {
		t.Fatalf("positions after the abort = %v, want [4 5]", ps)
	}
	mustSync(t, l)
	all := ReadAll(t, l)
	samePositions(t, "Read", all, Span(1, 5))
	for _, e := range all {
		if e.Name == "gone" {
			t.Fatalf("aborted event visible at %d", e.Position)
		}
	}
	for _, k := range []string{"gone", "gone/3", "gone/299"} {
		if es, err := l.ReadKeys(ctx, []string{k}, 0, 1000); err != nil || len(es) != 0 {
			t.Fatalf("ReadKeys(%s) after the abort = %v, %v; want nothing", k, positions(es), err)
		}
	}
	es, err := l.ReadKeys(ctx, []string{"b", "a"}, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "ReadKeys(b, a)", es, Span(1, 5))
	if st := l.State(); st.LastCommitLSN != 20 || st.Head != 5 {
		t.Fatalf("State = %+v", st)
	}
}

func testOutOfOrder(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 0}); !errors.Is(err, ledger.ErrOutOfOrder) {
		t.Fatalf("BeginTx(0) on an empty ledger = %v, want ErrOutOfOrder", err)
	}
	WriteTx(t, l, 100, Event(100, 0, "a", 1))
	for _, lsn := range []event.LSN{1, 99, 100} {
		if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); !errors.Is(err, ledger.ErrOutOfOrder) {
			t.Fatalf("BeginTx(%d) after an unsynced 100 = %v, want ErrOutOfOrder", lsn, err)
		}
	}
	mustSync(t, l)
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 100}); !errors.Is(err, ledger.ErrOutOfOrder) {
		t.Fatalf("BeginTx(100) after a synced 100 = %v, want ErrOutOfOrder", err)
	}
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 200}); err != nil {
		t.Fatal(err)
	}
	if err := l.AbortTx(ctx); err != nil {
		t.Fatal(err)
	}
	// An aborted transaction does not move the last commit LSN.
	WriteTx(t, l, 150, Event(150, 0, "a", 2))
	mustSync(t, l)
	if st := l.State(); st.LastCommitLSN != 150 || st.Head != 2 {
		t.Fatalf("State = %+v", st)
	}
}

func testTxErrors(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	if err := l.Append(ctx, Event(1, 0, "a", 1)); !errors.Is(err, ledger.ErrNoTx) {
		t.Fatalf("Append without a transaction = %v, want ErrNoTx", err)
	}
	if err := l.CommitTx(ctx, 2); !errors.Is(err, ledger.ErrNoTx) {
		t.Fatalf("CommitTx without a transaction = %v, want ErrNoTx", err)
	}
	if err := l.AbortTx(ctx); !errors.Is(err, ledger.ErrNoTx) {
		t.Fatalf("AbortTx without a transaction = %v, want ErrNoTx", err)
	}
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 5}); err != nil {
		t.Fatal(err)
	}
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 6}); !errors.Is(err, ledger.ErrTxOpen) {
		t.Fatalf("BeginTx with a transaction open = %v, want ErrTxOpen", err)
	}
	if err := l.Append(ctx, Event(5, 0, "a", 1)); err != nil {
		t.Fatal(err)
	}
	if err := l.CommitTx(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if err := l.CommitTx(ctx, 6); !errors.Is(err, ledger.ErrNoTx) {
		t.Fatalf("second CommitTx = %v, want ErrNoTx", err)
	}
	mustSync(t, l)
	samePositions(t, "Read", ReadAll(t, l), Span(1, 1))
}

func testState(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	WriteTx(t, l, 0x16_0000_1000, Event(0x16_0000_1000, 0, "a", 1))
	mustSync(t, l)
	want := ledger.State{Head: 1, LastCommitLSN: 0x16_0000_1000, LastEndLSN: 0x16_0000_1001}
	if st := l.State(); st != want {
		t.Fatalf("State = %+v, want %+v", st, want)
	}
	if err := l.SetAcked(ctx, 0x16_0000_0800); err != nil {
		t.Fatal(err)
	}
	want.AckedLSN = 0x16_0000_0800
	if st := l.State(); st != want {
		t.Fatalf("State after SetAcked = %+v, want %+v", st, want)
	}
	o := ledger.Origin{SystemID: "7340422612718047236", Timeline: 3, Database: "app", Slot: "walflow"}
	if err := l.SetOrigin(ctx, o); err != nil {
		t.Fatal(err)
	}
	want.Origin = o
	if st := l.State(); st != want {
		t.Fatalf("State after SetOrigin = %+v, want %+v", st, want)
	}
	// SetAcked does not publish committed, unsynced transactions; Sync keeps the acked
	// LSN and the origin.
	WriteTx(t, l, 0x16_0000_2000, Event(0x16_0000_2000, 0, "a", 2))
	if err := l.SetAcked(ctx, 0x16_0000_1001); err != nil {
		t.Fatal(err)
	}
	want.AckedLSN = 0x16_0000_1001
	if st := l.State(); st != want {
		t.Fatalf("State after SetAcked with an unsynced transaction = %+v, want %+v", st, want)
	}
	mustSync(t, l)
	want.Head, want.LastCommitLSN, want.LastEndLSN = 2, 0x16_0000_2000, 0x16_0000_2001
	if st := l.State(); st != want {
		t.Fatalf("State after Sync = %+v, want %+v", st, want)
	}
	samePositions(t, "Read", ReadAll(t, l), Span(1, 2))
}

// Read with every after and limit around a ledger of 12 events.
func testRead(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	writeN(t, l, 10, 5, 3, 1, 4)
	const head = 12
	for after := event.Position(0); after <= head+2; after++ {
		for limit := -1; limit <= head+2; limit++ {
			es, err := l.Read(ctx, after, limit)
			if err != nil {
				t.Fatalf("Read(%d, %d): %v", after, limit, err)
			}
			var want []event.Position
			for p := after + 1; p <= head && len(want) < limit; p++ {
				want = append(want, p)
			}
			samePositions(t, fmt.Sprintf("Read(%d, %d)", after, limit), es, want)
		}
	}
}

func testReadKeys(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	written := writeN(t, l, 10, 8, 4, 1, 3)
	// An unsynced transaction with the same keys stays invisible.
	WriteTx(t, l, 100, Event(100, 0, "a", 1), Event(100, 1, "b", 1))
	head := event.Position(len(written))
	model := map[string][]event.Position{}
	for _, e := range written {
		for _, k := range Indexer(e, nil) {
			model[k] = append(model[k], e.Position)
		}
	}
	keySets := [][]string{
		{"a"}, {"b", "c"}, {"c", "a"}, {"a", "b", "c"}, {"a/1"}, {"a/1", "b/1", "c/1"},
		{"a", "a"}, {"a", "a/1", "a/2"}, {"nope"}, {"nope", "b/3"}, {"b/3", "a", "c/6", "zzz"},
	}
	for _, keys := range keySets {
		var all []event.Position
		for _, k := range keys {
			all = append(all, model[k]...)
		}
		slices.Sort(all)
		all = slices.Compact(all)
		for after := event.Position(0); after <= head+1; after += 2 {
			for _, limit := range []int{0, 1, 2, 3, 5, 1000} {
				es, err := l.ReadKeys(ctx, keys, after, limit)
				if err != nil {
					t.Fatalf("ReadKeys(%q, %d, %d): %v", keys, after, limit, err)
				}
				var want []event.Position
				for _, p := range all {
					if p > after && len(want) < limit {
						want = append(want, p)
					}
				}
				samePositions(t, fmt.Sprintf("ReadKeys(%q, %d, %d)", keys, after, limit), es, want)
				for _, e := range es {
					if !slices.ContainsFunc(Indexer(&e, nil), func(k string) bool { return slices.Contains(keys, k) }) {
						t.Fatalf("ReadKeys(%q) returned %d, which has keys %q", keys, e.Position, Indexer(&e, nil))
					}
				}
			}
		}
	}
	if es, err := l.ReadKeys(ctx, nil, 0, 10); err != nil || len(es) != 0 {
		t.Fatalf("ReadKeys(no keys) = %v, %v; want nothing", positions(es), err)
	}
}

func testInvalidKeys(t *testing.T, newLedger NewFunc) {
	ctx := context.Background()
	bad := func(e *event.Event, dst []string) []string {
		if e.Name == "bad" {
			return append(dst, "ok", "a\x00b")
		}
		if e.Name == "empty" {
			return append(dst, "")
		}
		return append(dst, e.Name)
	}
	l := newLedger(t, bad)
	t.Cleanup(func() { l.Close() })
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 1}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bad", "empty"} {
		e := Event(1, 0, name, 1)
		if err := l.Append(ctx, e); err == nil {
			t.Fatalf("Append with an indexer key of %s: no error", name)
		}
		if e.Position != 0 {
			t.Fatalf("failed Append set the position to %d", e.Position)
		}
	}
	if err := l.Append(ctx, Event(1, 0, "good", 1)); err != nil {
		t.Fatal(err)
	}
	if err := l.CommitTx(ctx, 2); err != nil {
		t.Fatal(err)
	}
	mustSync(t, l)
	samePositions(t, "Read", ReadAll(t, l), Span(1, 1))
	for _, keys := range [][]string{{""}, {"a\x00b"}, {"good", ""}} {
		if _, err := l.ReadKeys(ctx, keys, 0, 10); err == nil {
			t.Fatalf("ReadKeys(%q): no error", keys)
		}
	}
	es, err := l.ReadKeys(ctx, []string{"ok", "good"}, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "ReadKeys", es, Span(1, 1))
}

func testWait(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- l.Wait(ctx, 0) }()
	WriteTx(t, l, 10, Event(10, 0, "a", 1))
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before Sync", err)
	case <-time.After(30 * time.Millisecond):
	}
	mustSync(t, l)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Wait: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Sync did not wake Wait")
	}
	if err := l.Wait(ctx, 0); err != nil {
		t.Fatalf("Wait below the head: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { done <- l.Wait(cctx, 1) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not end Wait")
	}
	if err := l.Wait(cctx, 0); !errors.Is(err, context.Canceled) && err != nil {
		t.Fatalf("Wait with a cancelled context = %v", err)
	}
	// Many waiters, woken by one Sync; SetAcked alone wakes nobody.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- l.Wait(ctx, 1)
		}()
	}
	if err := l.SetAcked(ctx, 5); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if len(errs) != 0 {
		t.Fatalf("SetAcked woke Wait: %v", <-errs)
	}
	WriteTx(t, l, 20, Event(20, 0, "a", 2))
	mustSync(t, l)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Wait: %v", err)
		}
	}
}

func testWaitClose(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	done := make(chan error, 1)
	go func() { done <- l.Wait(context.Background(), 0) }()
	time.Sleep(10 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ledger.ErrClosed) {
			t.Fatalf("Wait after Close = %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end Wait")
	}
}

func testClosed(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	writeN(t, l, 10, 2, 2)
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 50}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ledger.ErrClosed) {
			t.Fatalf("%s after Close = %v, want ErrClosed", what, err)
		}
	}
	check("Append", l.Append(ctx, Event(50, 0, "a", 1)))
	check("CommitTx", l.CommitTx(ctx, 51))
	check("AbortTx", l.AbortTx(ctx))
	check("BeginTx", l.BeginTx(ctx, event.TxMeta{CommitLSN: 60}))
	check("Sync", l.Sync(ctx))
	check("SetAcked", l.SetAcked(ctx, 1))
	check("SetOrigin", l.SetOrigin(ctx, ledger.Origin{Slot: "s"}))
	check("Truncate", l.Truncate(ctx, 1))
	_, err := l.Read(ctx, 0, 10)
	check("Read", err)
	_, err = l.ReadKeys(ctx, []string{"a"}, 0, 10)
	check("ReadKeys", err)
	check("Wait", l.Wait(ctx, 0))
	check("Wait past the head", l.Wait(ctx, 100))
	_ = l.Close() // must not panic
}

// testConcurrent has readers check, while one writer appends and syncs, that they only
// ever see whole transactions at gap-free positions.
func testConcurrent(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const txs = 150
	size := func(lsn event.LSN) int { return 1 + int(lsn*7%5) }
	var total event.Position
	for i := range txs {
		total += event.Position(size(event.LSN(1000 + i)))
	}
	// checkWhole reports a transaction cut short in a Read from position 1.
	checkWhole := func(es []event.Event) error {
		for i, e := range es {
			if e.Position != event.Position(i+1) {
				return fmt.Errorf("event %d at position %d", i, e.Position)
			}
			last := i == len(es)-1 || es[i+1].LSN != e.LSN
			if last && int(e.Ordinal) != size(e.LSN)-1 {
				return fmt.Errorf("transaction %s cut after ordinal %d", e.LSN, e.Ordinal)
			}
		}
		return nil
	}
	errc := make(chan error, 8)
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- func() error {
				var seen event.Position
				for seen < total {
					if err := l.Wait(ctx, seen); err != nil {
						return fmt.Errorf("Wait(%d): %w", seen, err)
					}
					head := l.State().Head
					if head <= seen {
						return fmt.Errorf("head %d <= %d after Wait returned", head, seen)
					}
					var es []event.Event
					var err error
					if r%2 == 0 {
						es, err = l.Read(ctx, 0, 1<<30)
					} else {
						es, err = l.ReadKeys(ctx, []string{"a", "b", "c"}, 0, 1<<30)
					}
					if err != nil {
						return err
					}
					if event.Position(len(es)) < head {
						return fmt.Errorf("read %d events, head was %d", len(es), head)
					}
					if err := checkWhole(es); err != nil {
						return err
					}
					seen = event.Position(len(es))
					// Read small pages too, from a recent position.
					if _, err := l.Read(ctx, seen/2, 3); err != nil {
						return err
					}
				}
				return nil
			}()
		}()
	}
	k := 0
	for i := range txs {
		lsn := event.LSN(1000 + i)
		var es []*event.Event
		for j := range size(lsn) {
			es = append(es, Event(lsn, uint32(j), table(k), k))
			k++
		}
		WriteTx(t, l, lsn, es...)
		if i%3 == 2 || i == txs-1 {
			mustSync(t, l)
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := checkWhole(ReadAll(t, l)); err != nil {
		t.Fatal(err)
	}
}

// RoundTripEvents returns events with every field and kind of value set, for comparing a
// read event with reflect.DeepEqual. Their positions are zero.
func RoundTripEvents(lsn event.LSN) []*event.Event {
	cols := []event.Column{
		{Name: "id", Type: "bigint", OID: 20, Key: true},
		{Name: "body", Type: "text", OID: 25},
		{Name: "doc", Type: "jsonb", OID: 3802},
		{Name: "note", Type: "character varying(255)", OID: 1043},
		{Name: "mood", Type: "mood", OID: 25},
	}
	ts := time.Date(2024, 7, 23, 12, 0, 0, 123456000, time.UTC)
	return []*event.Event{{
		LSN: lsn, Ordinal: 0, XID: 4242, Name: "posts", Type: event.Update,
		Source: event.Source{DB: "app", Schema: "public", Table: "posts", Columns: cols},
		NewRecord: event.Record{
			{Name: "id", Value: event.Text(20, "42")},
			{Name: "body", Value: event.Unchanged(25)},
			{Name: "doc", Value: event.Text(3802, `{"a": [1, 2, null], "é": "\u0000"}`)},
			{Name: "note", Value: event.Null(1043)},
			{Name: "extra", Value: event.Text(25, "not a column, with a \x00 byte")},
		},
		OldRecord: event.Record{
			{Name: "id", Value: event.Text(20, "42")},
			{Name: "body", Value: event.Text(25, "")},
			{Name: "doc", Value: event.Null(3802)},
			{Name: "note", Value: event.Text(1043, "old")},
			{Name: "mood", Value: event.Text(25, "happy")},
		},
		Changes: event.Changes{
			{Column: "doc", OldValue: event.Null(3802), NewValue: event.Text(3802, `{"a": [1, 2, null], "é": "\u0000"}`)},
			{Column: "note", OldValue: event.Text(1043, "old"), NewValue: event.Null(1043)},
		},
		Timestamp: ts,
	}, {
		LSN: lsn, Ordinal: 1, XID: 4242, Name: "posts", Type: event.Delete,
		Source:    event.Source{DB: "app", Schema: "public", Table: "posts", Columns: cols[:1]},
		OldRecord: event.Record{{Name: "id", Value: event.Text(20, "7")}},
		Timestamp: ts,
	}, {
		LSN: lsn, Ordinal: 2, XID: 4242, Name: "posts", Type: event.Insert,
		Source:    event.Source{DB: "app", Schema: "public", Table: "posts", Columns: cols},
		NewRecord: event.Record{},
		Changes:   event.Changes{},
		Timestamp: time.UnixMicro(-1).UTC(),
	}, {
		LSN: lsn, Ordinal: 3, XID: 4242, Name: "posts", Type: event.Truncate,
		Source:    event.Source{DB: "app", Schema: "public", Table: "posts"},
		Timestamp: ts,
	}}
}

func testRoundTrip(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	in := RoundTripEvents(0x1_0000_0010)
	WriteTx(t, l, 0x1_0000_0010, in...)
	mustSync(t, l)
	got := ReadAll(t, l)
	if len(got) != len(in) {
		t.Fatalf("read %d events, want %d", len(got), len(in))
	}
	for i := range in {
		if in[i].Position != event.Position(i+1) {
			t.Fatalf("Append set position %d, want %d", in[i].Position, i+1)
		}
		if !reflect.DeepEqual(got[i], *in[i]) {
			t.Fatalf("event %d:\n got %#v\nwant %#v", i, got[i], *in[i])
		}
	}
	byKey, err := l.ReadKeys(ctx, []string{"posts"}, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(byKey, got) {
		t.Fatalf("ReadKeys differs from Read:\n got %#v\nwant %#v", byKey, got)
	}
}

// testNoReference changes events after Append: the ledger must have kept copies.
func testNoReference(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	in := RoundTripEvents(77)
	var want []event.Event
	for _, e := range RoundTripEvents(77) {
		want = append(want, *e)
	}
	WriteTx(t, l, 77, in...)
	for i, e := range in {
		want[i].Position = e.Position
		e.Name = "changed"
		e.Source.Columns = nil
		for j := range e.NewRecord {
			e.NewRecord[j] = event.Field{Name: "x", Value: event.Text(25, "changed")}
		}
		e.Changes = nil
	}
	mustSync(t, l)
	got := ReadAll(t, l)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events changed after Append are read back changed:\n got %#v\nwant %#v", got, want)
	}
	// Events read are fresh copies too.
	got[0].NewRecord[0] = event.Field{Name: "y"}
	if again := ReadAll(t, l); !reflect.DeepEqual(again, want) {
		t.Fatal("changing a read event changed the ledger")
	}
	if again, err := l.ReadKeys(ctx, []string{"posts"}, 0, 100); err != nil || !reflect.DeepEqual(again, want) {
		t.Fatalf("ReadKeys after changing a read event = %v, %v", again, err)
	}
}

// testCloseDuringReads closes the ledger under readers and waiters: each must end with
// ErrClosed, and nothing may crash.
func testCloseDuringReads(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	writeN(t, l, 10, 50, 20)
	errc := make(chan error, 6)
	started := make(chan struct{}, 6)
	for r := range 6 {
		go func() {
			started <- struct{}{}
			for {
				var err error
				switch r % 3 {
				case 0:
					_, err = l.Read(ctx, 0, 1<<30)
				case 1:
					_, err = l.ReadKeys(ctx, []string{"a", "b", "c/3"}, 0, 1<<30)
				case 2:
					err = l.Wait(ctx, l.State().Head)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	for range 6 {
		<-started
	}
	time.Sleep(20 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range 6 {
		select {
		case err := <-errc:
			if !errors.Is(err, ledger.ErrClosed) {
				t.Fatalf("a read ended with %v, want ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a read did not end after Close")
		}
	}
}
