package jetstream_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"

	"github.com/nats-io/nats.go"
	js "github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// logBuf is a slog handler's output, safe for concurrent use.
type logBuf struct {
	mu  gosync.Mutex
	buf bytes.Buffer
}

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// writeTxs appends and syncs the test transactions first..first+n-1, of size(lsn) events.
func writeTxs(t testing.TB, w ledger.Ledger, first event.LSN, n int, size func(event.LSN) int) {
	t.Helper()
	ctx := context.Background()
	for lsn := first; lsn < first+event.LSN(n); lsn++ {
		if err := w.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
			t.Fatal(err)
		}
		for _, e := range txEvents(lsn, size(lsn)) {
			if err := w.Append(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.CommitTx(ctx, lsn+1); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}

// indexReads returns what l's channel reads return: the positions under each of a few
// key sets, read whole and in pages, from the tail on.
func indexReads(t testing.TB, l ledger.Ledger) map[string][]event.Position {
	t.Helper()
	ctx := context.Background()
	out := map[string][]event.Position{}
	for _, keys := range [][]string{{"a"}, {"b"}, {"a", "c"}, {"a", "b", "c"}, {"b/1004001", "c/1012002", "a/1003000"}, {"none"}} {
		name := strings.Join(keys, ",")
		es, err := l.ReadKeys(ctx, keys, l.State().Tail, 1<<30)
		if err != nil {
			t.Fatalf("ReadKeys(%v): %v", keys, err)
		}
		for _, e := range es {
			out[name] = append(out[name], e.Position)
		}
		var paged []event.Position
		for after := l.State().Tail; ; {
			es, err := l.ReadKeys(ctx, keys, after, 5)
			if err != nil {
				t.Fatalf("ReadKeys(%v, %d, 5): %v", keys, after, err)
			}
			if len(es) == 0 {
				break
			}
			for _, e := range es {
				paged = append(paged, e.Position)
			}
			after = es[len(es)-1].Position
		}
		out[name+" paged"] = paged
	}
	return out
}

// sameReads checks that got's channel reads return what want's do.
func sameReads(t testing.TB, got, want ledger.Ledger) {
	t.Helper()
	g, w := indexReads(t, got), indexReads(t, want)
	for k, ps := range w {
		if !slices.Equal(g[k], ps) {
			t.Errorf("ReadKeys(%s) = %v, want %v", k, g[k], ps)
		}
	}
	if len(w["a"]) == 0 {
		t.Fatal("the reference ledger has nothing under key a: the test checks nothing")
	}
}

// indexSize gives the test transactions 1 to 5 events.
func indexSize(lsn event.LSN) int { return 1 + int(lsn%5) }

// indexFixture is a stream written by a leader, and a reference reader with its channel
// index in memory.
type indexFixture struct {
	t      *testing.T
	nc     *nats.Conn
	stream string
	w      *jetstream.Ledger
	ref    *jetstream.Ledger
}

func newIndexFixture(t *testing.T, txs int) *indexFixture {
	s := startServer(t, "", 0)
	f := &indexFixture{t: t, nc: connect(t, s), stream: newStream()}
	f.w = lead(t, f.nc, f.stream)
	writeTxs(t, f.w, 1000, txs, indexSize)
	f.ref = openOpts(t, jetstream.Options{Conn: f.nc, Stream: f.stream, Indexer: ledgertest.Indexer})
	return f
}

// open opens a reader with its channel index in dir, logging to log (when not nil); the
// caller closes it.
func (f *indexFixture) open(dir string, log *slog.Logger) *jetstream.Ledger {
	f.t.Helper()
	l, err := jetstream.Open(context.Background(), jetstream.Options{Conn: f.nc, Stream: f.stream, Indexer: ledgertest.Indexer, IndexDir: dir, Logger: log})
	if err != nil {
		f.t.Fatal(err)
	}
	return l
}

// caughtUp waits until l's head is the writer's.
func (f *indexFixture) caughtUp(l ledger.Ledger) {
	f.t.Helper()
	head := f.w.State().Head
	eventually(f.t, "the reader to reach the writer's head", func() bool { return l.State().Head == head })
	eventually(f.t, "the reference reader to reach the writer's head", func() bool { return f.ref.State().Head == head })
}

// TestIndexDirReused reopens a reader whose channel index is in a directory: it reads no
// message of the stream it indexed before, even across a NATS server restart, catches up
// with what was appended meanwhile only, and its reads equal those of an index built in
// memory.
func TestIndexDirReused(t *testing.T) {
	sdir := t.TempDir()
	s := startServer(t, sdir, 0)
	port := s.Addr().(*net.TCPAddr).Port
	stream := newStream()
	w := lead(t, connect(t, s), stream)
	writeTxs(t, w, 1000, 200, indexSize)
	head := w.State().Head
	dir := t.TempDir()
	opts := func(nc *nats.Conn, log *slog.Logger) jetstream.Options {
		return jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer, IndexDir: dir, Logger: log}
	}
	var log logBuf
	r, err := jetstream.Open(context.Background(), opts(connect(t, s), log.logger()))
	if err != nil {
		t.Fatal(err)
	}
	if n := jetstream.Applied(r); n != int64(head) {
		t.Errorf("the first Open applied %d messages, want the stream's %d", n, head)
	}
	if !strings.Contains(log.String(), "holds no index") {
		t.Errorf("the first Open did not log why it builds the index:\n%s", log.String())
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	w.Close()
	s.Shutdown()
	s.WaitForShutdown()
	s = startServer(t, sdir, port)
	nc := connect(t, s)
	log = logBuf{}
	r, err = jetstream.Open(context.Background(), opts(nc, log.logger()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if n := jetstream.Applied(r); n != 0 {
		t.Errorf("the reopened index read %d messages of the stream, want 0\n%s", n, log.String())
	}
	if !strings.Contains(log.String(), "reusing the channel index") || strings.Contains(log.String(), "rebuilding") {
		t.Errorf("the reopened index's log:\n%s", log.String())
	}
	if r.State().Head != head {
		t.Fatalf("the reopened reader's head is %d, want %d", r.State().Head, head)
	}
	w = lead(t, nc, stream)
	writeTxs(t, w, 1200, 50, indexSize)
	more := w.State().Head - head
	eventually(t, "the reader to follow the new transactions", func() bool { return r.State().Head == w.State().Head })
	if n := jetstream.Applied(r); n != int64(more) {
		t.Errorf("the reopened index read %d messages, want the %d appended since", n, more)
	}
	ref := openOpts(t, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer})
	sameReads(t, r, ref)
}

// TestIndexDirRebuilt reopens a reader after its channel index was deleted, cut
// mid-write, or overwritten with garbage, when the indexer changed, or when the stream
// holds another message at the index's checkpoint: it rebuilds the
// index from the stream, says why, and its reads equal those of an index built in memory.
func TestIndexDirRebuilt(t *testing.T) {
	f := newIndexFixture(t, 150)
	for _, c := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   string // in the log
		warn   bool
		ver    string
	}{
		{"deleted", func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}, "holds no index", false, ""},
		{"cut", func(t *testing.T, dir string) {
			eachFile(t, dir, func(path string, b []byte) []byte { return b[:len(b)/2] })
		}, "rebuilding", true, ""},
		{"garbage", func(t *testing.T, dir string) {
			eachFile(t, dir, func(path string, b []byte) []byte { return bytes.Repeat([]byte("garbage!"), len(b)/8+1) })
		}, "rebuilding", true, ""},
		{"indexer changed", func(*testing.T, string) {}, "the indexer changed", true, "v2"},
		{"stream rewritten", func(t *testing.T, dir string) {
			old, err := jetstream.RewriteCheckpointID(dir, "1/0")
			if err != nil {
				t.Fatal(err)
			}
			// The index records the identity the writer gives each message, or a
			// rewritten stream would pass for the indexed one.
			if !strings.Contains(old, "/") {
				t.Fatalf("the index's checkpoint records message id %q, want the Walflow-Id <commit LSN>/<index>", old)
			}
		}, "the stream was rewritten", true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "index")
			l := f.open(dir, nil)
			f.caughtUp(l)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			c.damage(t, dir)
			var log logBuf
			l, err := jetstream.Open(context.Background(), jetstream.Options{Conn: f.nc, Stream: f.stream, Indexer: ledgertest.Indexer,
				IndexDir: dir, IndexerVersion: c.ver, Logger: log.logger()})
			if err != nil {
				t.Fatalf("Open of a damaged index = %v, want a rebuild", err)
			}
			defer l.Close()
			if n, head := jetstream.Applied(l), f.w.State().Head; n != int64(head) {
				t.Errorf("the rebuild read %d messages, want the stream's %d", n, head)
			}
			if !strings.Contains(log.String(), c.want) {
				t.Errorf("the log does not say %q:\n%s", c.want, log.String())
			}
			if c.warn && !strings.Contains(log.String(), "level=WARN") {
				t.Errorf("the rebuild is not a warning:\n%s", log.String())
			}
			sameReads(t, l, f.ref)
		})
	}
}

// eachFile replaces every regular file under dir by what fn returns for its contents.
func eachFile(t *testing.T, dir string, fn func(path string, b []byte) []byte) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if !e.Type().IsRegular() || e.Name() == "LOCK" {
			continue
		}
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, fn(p, b), 0o644); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		t.Fatalf("no file in %s to damage", dir)
	}
}

// TestIndexDirStreamRecreated reopens a reader whose channel index was built from a
// stream that was deleted and created again with the same name, and other contents: it
// rebuilds the index, says why, and reads the new stream's events.
func TestIndexDirStreamRecreated(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s)
	stream := newStream()
	w := lead(t, nc, stream)
	writeTxs(t, w, 1000, 120, indexSize)
	dir := t.TempDir()
	l := openOpts(t, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer, IndexDir: dir})
	eventually(t, "the reader to catch up", func() bool { return l.State().Head == w.State().Head })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	ctx := context.Background()
	jsc, err := js.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := jsc.DeleteStream(ctx, stream); err != nil {
		t.Fatal(err)
	}
	if err := jsc.DeleteKeyValue(ctx, stream+"_STATE"); err != nil {
		t.Fatal(err)
	}
	// The new stream is longer, so that a checkpoint read as valid would hide events.
	w = lead(t, nc, stream)
	writeTxs(t, w, 5000, 200, func(lsn event.LSN) int { return 2 })

	var log logBuf
	l = openOpts(t, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer, IndexDir: dir, Logger: log.logger()})
	if !strings.Contains(log.String(), "deleted and created again") {
		t.Errorf("the log does not say the stream was recreated:\n%s", log.String())
	}
	if n, head := jetstream.Applied(l), w.State().Head; n != int64(head) {
		t.Errorf("the rebuild read %d messages, want the stream's %d", n, head)
	}
	ref := openOpts(t, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer})
	es, err := l.ReadKeys(ctx, []string{"a"}, 0, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.LSN < 5000 {
			t.Fatalf("ReadKeys returned the old stream's event %s at %d", e.LSN, e.Position)
		}
	}
	sameReads(t, l, ref)
}

// TestIndexDirRetention truncates the stream: a live reader drops its stored entries at
// or before the new tail, and a reader whose checkpoint is before the tail rebuilds its
// index when it opens, saying why.
func TestIndexDirRetention(t *testing.T) {
	f := newIndexFixture(t, 100)
	ctx := context.Background()
	lagging := filepath.Join(t.TempDir(), "lagging")
	l := f.open(lagging, nil)
	f.caughtUp(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	liveDir := t.TempDir()
	live := f.open(liveDir, nil)
	f.caughtUp(live)
	eventually(t, "the live reader to store its index", func() bool { return jetstream.StoredBelow(live, f.w.State().Head) > 0 })

	writeTxs(t, f.w, 2000, 60, indexSize)
	through := f.w.State().Head - 40
	if err := f.w.Truncate(ctx, through); err != nil {
		t.Fatal(err)
	}
	f.caughtUp(live)
	eventually(t, "the live reader's stored entries at or before the tail to go", func() bool {
		return live.State().Tail == through && jetstream.StoredBelow(live, through) == 0
	})
	eventually(t, "the reference reader to see the tail", func() bool { return f.ref.State().Tail == through })
	sameReads(t, live, f.ref)

	// Retention while a reader is closed, short of its checkpoint: it reuses its index and
	// drops the entries at or before the new tail.
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	through = f.w.State().Head - 10
	if err := f.w.Truncate(ctx, through); err != nil {
		t.Fatal(err)
	}
	var rlog logBuf
	live = f.open(liveDir, rlog.logger())
	defer live.Close()
	if !strings.Contains(rlog.String(), "reusing the channel index") {
		t.Errorf("the reader closed during retention did not reuse its index:\n%s", rlog.String())
	}
	eventually(t, "the reopened reader's stored entries at or before the tail to go", func() bool {
		return jetstream.StoredBelow(live, through) == 0
	})
	eventually(t, "the reference reader to see the tail", func() bool { return f.ref.State().Tail == through })
	sameReads(t, live, f.ref)

	var log logBuf
	l = f.open(lagging, log.logger())
	defer l.Close()
	if !strings.Contains(log.String(), "removed (retention)") {
		t.Errorf("the log does not say the index is behind the tail:\n%s", log.String())
	}
	if got := l.State().Tail; got != through {
		t.Errorf("tail %d, want %d", got, through)
	}
	if n, want := jetstream.Applied(l), f.w.State().Head-through; n != int64(want) {
		t.Errorf("the rebuild read %d messages, want the %d after the tail", n, want)
	}
	sameReads(t, l, f.ref)
}

// TestIndexDirInUse opens two ledgers on one channel index directory: the second fails
// with a ledger.InUseError naming the directory and this process.
func TestIndexDirInUse(t *testing.T) {
	f := newIndexFixture(t, 5)
	dir := t.TempDir()
	l := f.open(dir, nil)
	defer l.Close()
	_, err := jetstream.Open(context.Background(), jetstream.Options{Conn: f.nc, Stream: f.stream, Indexer: ledgertest.Indexer, IndexDir: dir})
	var iu *ledger.InUseError
	if !errors.As(err, &iu) || iu.Dir != dir || iu.PID != os.Getpid() {
		t.Fatalf("Open of a directory in use = %v, want an InUseError naming %s and pid %d", err, dir, os.Getpid())
	}
	if !strings.Contains(err.Error(), "channel index") || !strings.Contains(err.Error(), "give this one another directory") {
		t.Errorf("the error does not say what is in use and the fix: %v", err)
	}
}
