package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestLocalClusterSurvivesOneServerDown stops one of three servers, appends to an R3
// stream while it is down, restarts it, and reads everything back from it.
func TestLocalClusterSurvivesOneServerDown(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	lc, err := StartLocalCluster(ctx, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lc.Shutdown)
	if len(lc.URLs()) != 3 || lc.Replicas() != 3 {
		t.Fatalf("URLs %v, replicas %d", lc.URLs(), lc.Replicas())
	}
	nc, err := nats.Connect(strings.Join(lc.URLs(), ","), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "t", Subjects: []string{"t.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	publish := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			// A publish may land in the moments the stream elects a new leader: retry
			// those, as a client does (the message id keeps it once).
			for {
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := js.Publish(pctx, "t.x", []byte(fmt.Sprint(i)), jetstream.WithMsgID(fmt.Sprint(i)))
				cancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
			}
		}
	}
	publish(0, 10)
	victim := lc.Servers()[0]
	victim.Stop()
	if victim.Running() {
		t.Fatal("stopped server still running")
	}
	publish(10, 20)
	if err := victim.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// Read the stream through the restarted server alone, once it has caught up.
	nc1, err := nats.Connect(victim.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc1.Close)
	js1, err := jetstream.New(nc1)
	if err != nil {
		t.Fatal(err)
	}
	for {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := js1.Stream(ictx, "t")
		var msgs uint64
		if err == nil {
			msgs = s.CachedInfo().State.Msgs
		}
		cancel()
		if msgs == 20 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("stream after restart: %d messages (err %v), want 20", msgs, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestStartServerSingle(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	cfg := Config{NodeName: "solo", Server: &ServerConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()}}.WithDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	conn, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	if conn.Server == nil || conn.Server.Name() != "solo" || conn.Server.ClusterURL() != "" {
		t.Fatalf("embedded server: %+v", conn.Server)
	}
	if err := WaitJetStream(ctx, conn.NC); err != nil {
		t.Fatal(err)
	}
}

func TestConnectNoServer(t *testing.T) {
	t.Parallel()
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{NodeName: "n", URLs: []string{fmt.Sprintf("nats://127.0.0.1:%d", ports[0])}}.WithDefaults()
	_, err = Connect(testContext(t, time.Minute), cfg)
	if err == nil || !strings.Contains(err.Error(), "no NATS server answers") {
		t.Fatalf("Connect to a closed port = %v, want ErrNoServer", err)
	}
}
