package index_test

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexmem "github.com/walflow/walflow/index/memory"
	"github.com/walflow/walflow/ledger"
)

// feedIndexers are the indexers of the feed tests: a column, the type, and one whose
// values come from the event's strings (which a writer may overwrite after Append).
func feedIndexers() []index.Indexer {
	return []index.Indexer{index.Field("user_id", "user_id"), index.Type("type"), index.Table("table")}
}

// status returns the named indexer's status.
func status(t *testing.T, r *index.Runner, name string) index.Status {
	t.Helper()
	sts, err := r.Status(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sts {
		if s.Indexer == name {
			return s
		}
	}
	t.Fatalf("no status for %s in %+v", name, sts)
	return index.Status{}
}

// rebuilt indexes the ledger again, by reading it back, into a fresh store, and returns
// each indexer's entries: what a fed runner must have stored.
func rebuilt(t *testing.T, l ledger.Ledger) map[string][]index.Entry {
	t.Helper()
	store := indexmem.New()
	r, err := index.New(index.Config{Ledger: l, Store: store, Indexers: feedIndexers()})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, r)
	waitAll(t, r, l, "user_id", "type", "table")
	stop()
	out := map[string][]index.Entry{}
	for _, ix := range feedIndexers() {
		out[ix.Name] = dump(t, store, ix.Name)
	}
	return out
}

func checkEntries(t *testing.T, store index.Store, l ledger.Ledger) {
	t.Helper()
	want := rebuilt(t, l)
	for name, w := range want {
		if got := dump(t, store, name); !reflect.DeepEqual(got, w) {
			t.Errorf("%s: fed entries differ from a rebuild:\n got %v\nwant %v", name, got, w)
		}
	}
}

// TestFeedIndexesAtAppend: a live runner fed by the writer stores every event's entries
// from the values computed at Append, without reading one event back, and they equal a
// rebuild's. The writer overwrites each event after Append, as the WAL decoder reuses its
// buffers: the fed values must be copies.
func TestFeedIndexesAtAppend(t *testing.T) {
	t.Parallel()
	l := newLedger(t)
	store := indexmem.New()
	r, err := index.New(index.Config{Ledger: l, Store: store, Indexers: feedIndexers()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	fed := r.Feed(l)
	ctx := testContext(t)
	n := 0
	for tx := range 50 {
		lsn := event.LSN(100 * (tx + 1))
		if err := fed.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
			t.Fatal(err)
		}
		for i := range 7 {
			buf := []byte("posts" + "user-" + strconv.Itoa(n%13))
			e := insert(unsafe.String(&buf[0], 5), event.Record{{Name: "user_id", Value: event.Text(25, unsafe.String(&buf[5], len(buf)-5))}})
			e.LSN, e.Ordinal = lsn, uint32(i)
			if n%5 == 0 {
				e.Type = event.Update
				e.OldRecord = event.Record{{Name: "user_id", Value: event.Text(25, "user-"+strconv.Itoa(n%7))}}
			}
			if err := fed.Append(ctx, e); err != nil {
				t.Fatal(err)
			}
			// The writer reuses its event and the buffer its strings point into.
			*e = event.Event{Name: "overwritten"}
			for j := range buf {
				buf[j] = 'X'
			}
			n++
		}
		if err := fed.CommitTx(ctx, lsn+1); err != nil {
			t.Fatal(err)
		}
		if tx%3 == 0 || tx == 49 {
			if err := fed.Sync(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitAll(t, r, l, "user_id", "type", "table")
	for _, ix := range feedIndexers() {
		s := status(t, r, ix.Name)
		if s.Fed != uint64(n) || s.ReadBack != 0 {
			t.Errorf("%s: fed %d and read back %d events; want all %d fed, none read back", ix.Name, s.Fed, s.ReadBack, n)
		}
	}
	checkEntries(t, store, l)
}

// TestFeedFallsBack: what the feed cannot give is read back, and the entries are still
// exact: events written before the runner was fed, an aborted transaction's values (never
// published), a transaction too large to feed, and a Func that fails on the writer's side.
func TestFeedFallsBack(t *testing.T) {
	t.Parallel()
	l := newLedger(t)
	writeUsers(t, l, 30, 4) // before the feed: read back
	store := indexmem.New()
	r, err := index.New(index.Config{Ledger: l, Store: store, Indexers: feedIndexers()})
	if err != nil {
		t.Fatal(err)
	}
	fed := r.Feed(l)
	ctx := testContext(t)

	// An aborted transaction: the same positions are appended again with other values.
	lsn := l.State().LastCommitLSN + 10
	if err := fed.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		e := insert("posts", row("user_id", "aborted"))
		e.LSN, e.Ordinal = lsn, uint32(i)
		if err := fed.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := fed.AbortTx(ctx); err != nil {
		t.Fatal(err)
	}
	writeUsers(t, fed, 20, 3)

	// Larger than the feed holds: read back.
	big := make([]*event.Event, index.FeedCapacity+10)
	for i := range big {
		big[i] = insert("posts", row("user_id", "big-"+strconv.Itoa(i%3)))
	}
	write(t, fed, big...)
	writeUsers(t, fed, 20, 5)

	run(t, r)
	waitAll(t, r, l, "user_id", "type", "table")
	s := status(t, r, "user_id")
	if s.ReadBack == 0 || s.Fed+s.ReadBack != uint64(l.State().Head) {
		t.Errorf("fed %d, read back %d, head %d: want some read back and every event indexed once", s.Fed, s.ReadBack, l.State().Head)
	}
	checkEntries(t, store, l)
	for _, e := range dump(t, store, "user_id") {
		if e.Value == "aborted" {
			t.Fatalf("the aborted transaction's value was indexed: %v", e)
		}
	}
}

// TestFeedFailingFunc: a Func whose value has a NUL byte fails the runner with the same
// error whether or not the runner is fed.
func TestFeedFailingFunc(t *testing.T) {
	t.Parallel()
	l := newLedger(t)
	bad := index.Indexer{Name: "bad", Func: func(e *event.Event, dst []string) []string {
		v, _ := e.NewRecord.Get("user_id")
		s, _ := v.Text()
		return append(dst, s)
	}}
	r, err := index.New(index.Config{Ledger: l, Store: indexmem.New(), Indexers: []index.Indexer{bad}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	fed := r.Feed(l)
	write(t, fed, insert("posts", row("user_id", "fine")))
	write(t, fed, insert("posts", row("user_id", "nul\x00byte")))
	select {
	case err = <-done:
	case <-ctx.Done():
		t.Fatal("Run did not fail on a value with a NUL byte")
	}
	if err == nil || !strings.Contains(err.Error(), "contains a NUL byte") || !strings.Contains(err.Error(), "position 2") {
		t.Fatalf("Run: %v; want the NUL byte error at position 2", err)
	}
	if s := status(t, r, "bad"); s.Checkpoint != 1 {
		t.Fatalf("checkpoint %d; want 1 (the good event only)", s.Checkpoint)
	}
}

// syncFails is a ledger whose Sync fails once when armed.
type syncFails struct {
	ledger.Ledger
	fail bool
}

var errSync = errors.New("sync failed")

func (l *syncFails) Sync(ctx context.Context) error {
	if l.fail {
		l.fail = false
		return errSync
	}
	return l.Ledger.Sync(ctx)
}

// TestFeedFailedSync: values published for a Sync that fails are withdrawn, so that the
// events appended again at those positions are indexed with their own values.
func TestFeedFailedSync(t *testing.T) {
	t.Parallel()
	l := newLedger(t)
	store := indexmem.New()
	r, err := index.New(index.Config{Ledger: l, Store: store, Indexers: feedIndexers()})
	if err != nil {
		t.Fatal(err)
	}
	under := &syncFails{Ledger: l}
	fed := r.Feed(under)
	ctx := testContext(t)
	write(t, fed, insert("posts", row("user_id", "a")))
	lsn := l.State().LastCommitLSN + 5 // before the next write's

	if err := fed.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
		t.Fatal(err)
	}
	e := insert("posts", row("user_id", "lost"))
	e.LSN = lsn
	if err := fed.Append(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := fed.CommitTx(ctx, lsn+1); err != nil {
		t.Fatal(err)
	}
	under.fail = true
	if err := fed.Sync(ctx); !errors.Is(err, errSync) {
		t.Fatalf("Sync: %v; want the armed failure", err)
	}
	// The memory ledger keeps the committed transaction and makes it visible at the next
	// Sync; the feed must not have kept "lost" as published in between, nor lose it.
	write(t, fed, insert("posts", row("user_id", "b")))
	run(t, r)
	waitAll(t, r, l, "user_id", "type", "table")
	checkEntries(t, store, l)
}
