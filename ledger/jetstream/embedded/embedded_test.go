package embedded_test

import (
	"testing"
	"time"

	"github.com/walflow/walflow/ledger/jetstream/embedded"
)

func TestStart(t *testing.T) {
	if _, err := embedded.Start(embedded.Options{}); err == nil {
		t.Fatal("Start without a store directory succeeded")
	}
	dir := t.TempDir()
	for _, c := range []struct {
		sync       time.Duration
		wantAlways bool
	}{{0, true}, {time.Second, false}} {
		s, err := embedded.Start(embedded.Options{StoreDir: dir, SyncInterval: c.sync})
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.JetStreamConfig()
		s.Shutdown()
		s.WaitForShutdown()
		if cfg == nil || cfg.SyncAlways != c.wantAlways || cfg.StoreDir == "" {
			t.Fatalf("SyncInterval %s: JetStream config %+v, want sync always %t", c.sync, cfg, c.wantAlways)
		}
		if c.sync > 0 && cfg.SyncInterval != c.sync {
			t.Fatalf("sync interval %s, want %s", cfg.SyncInterval, c.sync)
		}
	}
}
