package disk_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/walflow/walflow/statestore"
	"github.com/walflow/walflow/statestore/disk"
	"github.com/walflow/walflow/statestore/statestoretest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// open opens a store in dir, closed when the test ends unless closed before.
func open(t *testing.T, dir string) *disk.Store {
	t.Helper()
	s, err := disk.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatalf("disk.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, disk.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	statestoretest.Run(t, func(t *testing.T) statestore.Storage { return open(t, t.TempDir()) })
}

func TestReopen(t *testing.T) {
	t.Parallel()
	statestoretest.RunReopen(t, func(t *testing.T) func() statestore.Storage {
		dir := t.TempDir()
		var cur *disk.Store
		return func() statestore.Storage {
			if cur != nil {
				if err := cur.Close(); err != nil {
					t.Fatalf("Close before reopening: %v", err)
				}
			}
			cur = open(t, dir)
			return cur
		}
	})
}

func TestClosed(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir())
	ctx := t.Context()
	if err := s.InitRun(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); !errors.Is(err, disk.ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
	if _, err := s.IsInitialized(ctx, "r"); !errors.Is(err, disk.ErrClosed) {
		t.Errorf("IsInitialized after Close: %v, want ErrClosed", err)
	}
	if err := s.SaveSavepoint(ctx, "r", statestoretest.Savepoint(1, 1, "a")); !errors.Is(err, disk.ErrClosed) {
		t.Errorf("SaveSavepoint after Close: %v, want ErrClosed", err)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	if _, err := disk.Open(t.Context(), "", nil); err == nil {
		t.Errorf("Open with no directory: no error")
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Open(t.Context(), file, nil); err == nil {
		t.Errorf("Open on a file: no error")
	}
	// One store at a time per directory.
	dir := t.TempDir()
	open(t, dir)
	if s, err := disk.Open(t.Context(), dir, nil); err == nil {
		s.Close()
		t.Errorf("second Open of %s while the first is open: no error", dir)
	}
}
