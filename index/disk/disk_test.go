package disk_test

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/index/disk"
	"github.com/walflow/walflow/index/indextest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func open(t *testing.T, dir string) *disk.Store {
	t.Helper()
	s, err := disk.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	indextest.Run(t, func(t *testing.T) index.Store {
		s := open(t, t.TempDir())
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	st := index.State{Checkpoint: 5, Since: 1, Version: "v2"}
	if err := s.Write(ctx, index.Batch{Indexer: "users", State: st, Entries: []index.Entry{{Value: "7", Position: 5}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	defer s.Close()
	got, ok, err := s.State(ctx, "users")
	if err != nil || !ok || got != st {
		t.Fatalf("State after reopening = %+v, %v, %v; want %+v", got, ok, err, st)
	}
	if d := indextest.Dump(t, s, "users"); len(d) != 1 || d[0] != (index.Entry{Value: "7", Position: 5}) {
		t.Fatalf("entries after reopening = %v", d)
	}
}

func TestOpenNoDir(t *testing.T) {
	t.Parallel()
	if _, err := disk.Open(context.Background(), "", nil); err == nil {
		t.Fatal("Open with no directory succeeded")
	}
}
