package walflow_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
)

func TestClusterConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		cfg   walflow.Config
		want  string
		field string // the cluster.ConfigError's field, when it is one
	}{
		{"memory ledger", walflow.Config{MemoryLedger: true, Cluster: &cluster.Config{URLs: []string{"nats://127.0.0.1:4222"}}}, "MemoryLedger and Cluster", ""},
		{"temporary slot", walflow.Config{TemporarySlot: true, Cluster: &cluster.Config{URLs: []string{"nats://127.0.0.1:4222"}}}, "TemporarySlot and Cluster", ""},
		{"no server", walflow.Config{Cluster: &cluster.Config{NodeName: "n1"}}, "cluster: URLs: no NATS server", "URLs"},
		{"replicas", walflow.Config{Cluster: &cluster.Config{NodeName: "n1", Server: &cluster.ServerConfig{}, Replicas: 3}}, "cluster: Replicas: is 3 but the embedded server runs alone", "Replicas"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := tt.cfg
			cfg.DatabaseURL = "postgres://app@127.0.0.1:1/app"
			cfg.LedgerDir = t.TempDir()
			eng, err := walflow.Open(t.Context(), cfg)
			if err == nil {
				_ = eng.Close()
				t.Fatal("Open accepted the config")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open = %q, want %q", err, tt.want)
			}
			var ce *cluster.ConfigError
			if got := errors.As(err, &ce); got != (tt.field != "") || (got && ce.Field != tt.field) {
				t.Fatalf("Open = %#v, want a cluster.ConfigError on %q", err, tt.field)
			}
		})
	}
}

// TestClusterConfigExample: docs/cluster.md's three-node configuration is valid.
func TestClusterConfigExample(t *testing.T) {
	t.Parallel()
	c := clusterConfigExample().Cluster.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("docs/cluster.md's configuration: %v", err)
	}
	if c.Replicas != 3 {
		t.Errorf("replicas %d, want 3 for three routed servers", c.Replicas)
	}
}
