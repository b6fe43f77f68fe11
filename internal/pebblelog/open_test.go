package pebblelog

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// closeCounter counts its Close calls.
type closeCounter struct{ n int }

func (c *closeCounter) Close() error { c.n++; return nil }

// openForClose opens a database in a new directory. Its health checks are stopped at once:
// the returned counter stands in for them in Close.
func openForClose(t *testing.T) (*pebble.DB, *Fatal, *closeCounter) {
	t.Helper()
	db, fatal, fsClose, err := Open(t.TempDir(), OpenOptions{Store: "test: store", Log: slog.New(slog.DiscardHandler),
		SlowAfter: time.Minute, CacheBytes: 1 << 20, MemTableBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	fsClose.Close()
	return db, fatal, &closeCounter{}
}

// dbClosed reports whether db was closed: Pebble panics on a second Close.
func dbClosed(db io.Closer) (closed bool) {
	defer func() { closed = recover() != nil }()
	_ = db.Close()
	return false
}

// TestClose closes a database and its health checks, and after a fatal error only the
// checks, leaving the database as it is.
func TestClose(t *testing.T) {
	t.Run("healthy", func(t *testing.T) {
		db, fatal, checks := openForClose(t)
		if err := Close(db, fatal, checks); err != nil || checks.n != 1 {
			t.Fatalf("Close = %v, stopping the health checks %d times; want nil and once", err, checks.n)
		}
		if !dbClosed(db) {
			t.Fatal("Close left the database open")
		}
	})
	t.Run("after a fatal error", func(t *testing.T) {
		db, fatal, checks := openForClose(t)
		fatal.record("write 000002.log: no space left on device")
		if err := Close(db, fatal, checks); err != nil || checks.n != 1 {
			t.Fatalf("Close after a fatal error = %v, stopping the health checks %d times; want nil and once", err, checks.n)
		}
		if dbClosed(db) {
			t.Fatal("Close after a fatal error closed the database")
		}
	})
}
