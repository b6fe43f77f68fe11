package walflow_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/jetstream/embedded"
)

// TestClusterChannelIndexDir opens cluster nodes on one machine: each keeps its channel
// index beside its ledger directory, one directory per node name, and a second engine
// of the same node and ledger directory is refused at once with an error naming the
// directory and the fix.
func TestClusterChannelIndexDir(t *testing.T) {
	s, err := embedded.Start(embedded.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	ledgerDir := filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	open := func(node string) (*walflow.Engine, error) {
		return walflow.Open(ctx, walflow.Config{
			DatabaseURL: "postgres://app@127.0.0.1:1/app", ProcessStatus: "none", LedgerDir: ledgerDir,
			Logger:  testLogger(t),
			Cluster: &cluster.Config{URLs: []string{s.ClientURL()}, NodeName: node, Replicas: 1},
		})
	}
	a, err := open("node-1")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := open("node-2")
	if err != nil {
		t.Fatalf("a second node with its own name: %v", err)
	}
	defer b.Close()
	for _, node := range []string{"node-1", "node-2"} {
		if _, err := os.Stat(filepath.Join(ledgerDir+".channels", node, "LOCK")); err != nil {
			t.Errorf("no channel index of %s beside the ledger directory: %v", node, err)
		}
	}
	_, err = open("node-1")
	var iu *ledger.InUseError
	want := filepath.Join(ledgerDir+".channels", "node-1")
	if !errors.As(err, &iu) || iu.Dir != want {
		t.Fatalf("a second engine of node-1 = %v, want a ledger.InUseError naming %s", err, want)
	}
	if !strings.Contains(err.Error(), "another directory") {
		t.Errorf("the error does not say the fix: %v", err)
	}
}
