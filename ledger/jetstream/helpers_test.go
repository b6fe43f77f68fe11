package jetstream_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/jetstream/embedded"
)

// startServer starts an embedded server on a random loopback port (or port), its store in
// dir (t.TempDir() when empty), shut down when the test ends. It syncs the store every
// minute, not at every message: the tests check the ledger's logic, and a process crash
// (not a power loss) keeps what the kernel holds; TestSyncAlways covers sync always.
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

// open opens a ledger on stream with conn, closed when the test ends.
func open(t testing.TB, nc *nats.Conn, stream string, indexer ledger.Indexer) *jetstream.Ledger {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: stream, Indexer: indexer, SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
