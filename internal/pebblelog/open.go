package pebblelog

import (
	"io"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// OpenOptions are the settings of [Open].
type OpenOptions struct {
	// Store names the store in its fatal errors and slow-disk warnings ("index: store").
	Store string
	// Log receives Pebble's messages and the slow-disk warnings.
	Log *slog.Logger
	// SlowAfter is how long a disk operation may take before it is logged as slow.
	SlowAfter time.Duration
	// CacheBytes is the block cache's size, MemTableBytes the memtable's.
	CacheBytes, MemTableBytes int64
}

// Open opens the Pebble database in dir the way every walflow store on Pebble does: its
// messages go to o.Log through a [Logger] whose fatal errors go to the returned [Fatal],
// slow disk operations are logged, and the format is Pebble's newest. The caller closes
// the database, then fsClose (the disk health checks, which Pebble does not stop itself
// when Open fails; Open stops them on failure). Open's error is Pebble's, unwrapped, so
// that callers can recognise a directory another process holds (lockholder.Pebble).
func Open(dir string, o OpenOptions) (db *pebble.DB, fatal *Fatal, fsClose io.Closer, err error) {
	log := o.Log
	fs, fsClose := vfs.WithDiskHealthChecks(vfs.Default, o.SlowAfter, nil, func(info vfs.DiskSlowInfo) {
		log.Warn("slow disk", "store", o.Store, "dir", dir, "path", info.Path, "op", info.OpType.String(), "duration", info.Duration)
	})
	cache := pebble.NewCache(o.CacheBytes)
	defer cache.Unref()
	fatal = &Fatal{Store: o.Store, Dir: dir}
	db, err = pebble.Open(dir, &pebble.Options{
		FS:                 fs,
		Cache:              cache,
		MemTableSize:       uint64(o.MemTableBytes),
		Logger:             Logger{Log: log, Fatal: fatal},
		FormatMajorVersion: pebble.FormatNewest,
	})
	if err != nil {
		fsClose.Close()
		return nil, nil, nil, err
	}
	return db, fatal, fsClose, nil
}

// Close closes a database [Open] opened, then stops its disk health checks (fsClose).
// After a fatal error (fatal.Err is set) it only stops the checks and returns nil: Pebble
// cannot be closed cleanly then, and the call that met the error returned it. Its error is
// Pebble's, unwrapped, for the caller to name the store.
func Close(db *pebble.DB, fatal *Fatal, fsClose io.Closer) error {
	if fatal.Err() != nil {
		fsClose.Close()
		return nil
	}
	err := db.Close()
	fsClose.Close()
	return err
}
