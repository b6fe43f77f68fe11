package jetstream_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCluster starts three routed JetStream servers on loopback with the store's sync
// interval (0: sync always), shut down when the test ends, and waits until JetStream has
// a meta leader.
func startCluster(t testing.TB, sync time.Duration) []*server.Server {
	t.Helper()
	var routes []*url.URL
	ports := make([]int, 3)
	for i := range ports {
		ports[i] = freePort(t)
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", ports[i])})
	}
	servers := make([]*server.Server, 3)
	for i := range servers {
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			NoLog:      true,
			Cluster:    server.ClusterOpts{Name: "walflow", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
		}
		if sync > 0 {
			o.SyncInterval = sync
		} else {
			o.SyncAlways, o.SyncInterval = true, 2*time.Minute
		}
		s, err := server.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
		servers[i] = s
	}
	for _, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("a cluster server did not start")
		}
	}
	eventually(t, "a JetStream meta leader", func() bool {
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				return true
			}
		}
		return false
	})
	return servers
}

// TestR3 writes to an R3 stream through one server and reads through another; a
// server is stopped and the writer goes on, as the source would. Nothing is lost or
// stored twice.
func TestR3(t *testing.T) {
	servers := startCluster(t, 0)
	ctx := context.Background()
	stream := newStream()
	openR3 := func(s *server.Server) *jetstream.Ledger {
		var l *jetstream.Ledger
		var err error
		eventually(t, "the R3 stream to open", func() bool {
			octx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			l, err = jetstream.Open(octx, jetstream.Options{Conn: connect(t, s), Stream: stream, Replicas: 3, Indexer: ledgertest.Indexer, SpoolDir: t.TempDir()})
			if err != nil {
				t.Logf("Open: %v", err)
			}
			return err == nil
		})
		t.Cleanup(func() { l.Close() })
		return l
	}
	w := openR3(servers[0])
	if err := w.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	r := openR3(servers[1])
	size := func(event.LSN) int { return 5 }
	var lsns []event.LSN
	for i := range 60 {
		lsns = append(lsns, event.LSN(100+i))
	}
	stopped := make(chan struct{})
	failures := writeRecovering(t, w, 100, 60, size, func(i int) {
		if i == 20 {
			// Stop a server: two of three still form a quorum. A stream leader change
			// may fail the writes in flight; the writer leads again and replays.
			servers[2].Shutdown()
			servers[2].WaitForShutdown()
			close(stopped)
		}
	})
	<-stopped
	t.Logf("%d write failures across the server stop", failures)
	head := w.State().Head
	eventually(t, "the reader to reach the head", func() bool { return r.State().Head == head })
	checkLedger(t, readAll(t, r), 1, lsns, size)
}
