package index_test

import (
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/walflow/walflow/index"
	indexdisk "github.com/walflow/walflow/index/disk"
	ledgerdisk "github.com/walflow/walflow/ledger/disk"
)

// TestDiskDeleteWhileStopped runs on the disk ledger and the disk store: a restart resumes
// from the stored checkpoints, and deleting the store's directory while stopped rebuilds
// every index identically.
func TestDiskDeleteWhileStopped(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	root := t.TempDir()
	led, err := ledgerdisk.Open(ctx, filepath.Join(root, "ledger"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { led.Close() })
	dir := filepath.Join(root, "index")
	var calls atomic.Int64
	indexers := []index.Indexer{counted(index.Field("user_id", "user_id"), &calls), index.Type("types"), tags}
	names := []string{"user_id", "types", "tags"}
	// session opens the store, runs the indexers to the head, and returns every dump.
	session := func() map[string][]index.Entry {
		store, err := indexdisk.Open(ctx, dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: indexers, Batch: 100, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, r)
		waitAll(t, r, led, names...)
		evs, err := r.Read(ctx, "user_id", "3", 0, 1000)
		if err != nil || len(evs) == 0 {
			t.Fatalf("Read: %d events, %v", len(evs), err)
		}
		stop()
		out := map[string][]index.Entry{}
		for _, n := range names {
			out[n] = dump(t, store, n)
		}
		return out
	}

	writeUsers(t, led, 1000, 17)
	first := session()
	if len(first["user_id"]) != 1000 || len(first["types"]) != 1000 {
		t.Fatalf("first run: %d user_id and %d types entries; want 1000 each", len(first["user_id"]), len(first["types"]))
	}

	// A restart indexes only the new events.
	writeUsers(t, led, 250, 17)
	calls.Store(0)
	second := session()
	if n := calls.Load(); n != 250 {
		t.Fatalf("restart called Func %d times; want 250 (the new events only)", n)
	}
	if len(second["user_id"]) != 1250 {
		t.Fatalf("after restart: %d entries; want 1250", len(second["user_id"]))
	}

	// Deleting the directory while stopped rebuilds identically.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	calls.Store(0)
	third := session()
	if n := calls.Load(); n != 1250 {
		t.Fatalf("rebuild called Func %d times; want 1250", n)
	}
	for _, n := range names {
		if !slices.Equal(third[n], second[n]) {
			t.Errorf("%s rebuilt with %d entries differing from the %d deleted", n, len(third[n]), len(second[n]))
		}
	}
}
