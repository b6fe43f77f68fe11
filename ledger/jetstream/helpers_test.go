package jetstream_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/jetstream/embedded"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// startServer starts an embedded server on a random loopback port (or port), its store in
// dir (t.TempDir() when empty), shut down when the test ends. It syncs the store every
// minute, not at every message: the tests check the ledger's logic, and a process crash
// (not a power loss) keeps what the kernel holds; TestR3 runs with sync always, and
// embedded.TestStart checks that a zero interval means it.
func startServer(t testing.TB, dir string, port int) *server.Server {
	t.Helper()
	return startServerSync(t, dir, port, time.Minute)
}

// startServerSync is startServer with the store's sync interval (0: sync always).
func startServerSync(t testing.TB, dir string, port int, sync time.Duration) *server.Server {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := embedded.Start(embedded.Options{StoreDir: dir, Port: port, SyncInterval: sync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// connect connects to s, closed when the test ends. It reconnects forever.
func connect(t testing.TB, s *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

var streams atomic.Int64

// newStream returns a stream name not used yet in this process.
func newStream() string { return fmt.Sprintf("L%d", streams.Add(1)) }

// open opens a ledger on stream with conn, its channel index in a directory of its own,
// closed when the test ends.
func open(t testing.TB, nc *nats.Conn, stream string, indexer ledger.Indexer) *jetstream.Ledger {
	t.Helper()
	return openOpts(t, jetstream.Options{Conn: nc, Stream: stream, Indexer: indexer, IndexDir: t.TempDir()})
}

// openOpts opens a ledger with opts (SpoolDir set to a temporary directory when empty),
// closed when the test ends.
func openOpts(t testing.TB, opts jetstream.Options) *jetstream.Ledger {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if opts.SpoolDir == "" {
		opts.SpoolDir = t.TempDir()
	}
	l, err := jetstream.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// lead opens a ledger indexed by ledgertest.Indexer and makes it lead.
func lead(t testing.TB, nc *nats.Conn, stream string) *jetstream.Ledger {
	t.Helper()
	l := open(t, nc, stream, ledgertest.Indexer)
	if err := l.Lead(context.Background()); err != nil {
		t.Fatalf("Lead: %v", err)
	}
	return l
}

// txEvents returns the events of the test transaction committed at lsn: n inserts into
// tables a, b, c in turn.
func txEvents(lsn event.LSN, n int) []*event.Event {
	es := make([]*event.Event, n)
	for i := range es {
		es[i] = ledgertest.Event(lsn, uint32(i), string(rune('a'+i%3)), int(lsn)*1000+i)
	}
	return es
}

// readAll returns every visible event of l.
func readAll(t testing.TB, l ledger.Ledger) []event.Event {
	t.Helper()
	es, err := l.Read(context.Background(), l.State().Tail, 1<<30)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return es
}

// checkLedger checks that es holds exactly the transactions lsns, in order, each with
// size(lsn) events with ordinals 0.., at gap-free positions from first.
func checkLedger(t testing.TB, es []event.Event, first event.Position, lsns []event.LSN, size func(event.LSN) int) {
	t.Helper()
	i := 0
	for _, lsn := range lsns {
		for j := range size(lsn) {
			if i >= len(es) {
				t.Fatalf("the ledger ends at event %d, inside transaction %s (want %d events)", i, lsn, size(lsn))
			}
			e := es[i]
			if e.LSN != lsn || e.Ordinal != uint32(j) || e.Position != first+event.Position(i) {
				t.Fatalf("event %d is %s/%d at position %d, want %s/%d at %d", i, e.LSN, e.Ordinal, e.Position, lsn, j, first+event.Position(i))
			}
			i++
		}
	}
	if i != len(es) {
		t.Fatalf("the ledger has %d events, want %d", len(es), i)
	}
}

// eventually polls cond every 10 ms until it holds, failing after 30 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
