// Package disk is walflow's embedded [index.Store], on Pebble, in a directory of its own.
//
// # Layout
//
// Every record is one Pebble key:
//
//	's' + indexer                                              → the indexer's state
//	'x' + indexer + 0x00 + value + 0x00 + position (8 bytes, big-endian) → empty
//
// Indexer names are identifiers and values contain no NUL byte, so an indexer's entries
// are the keys between 'x' + indexer + 0x00 and 'x' + indexer + 0x01, and a value's entries
// are in position order.
//
// # Durability
//
// Each [Store.Write] is one Pebble batch: an indexer's entries and its checkpoint are
// written together or not at all. Writes are not fsynced, since an index can always be
// rebuilt from the ledger: a machine crash may lose the last batches, and the indexer then
// indexes their events again from its older checkpoint. [Store.Reset] is fsynced.
//
// # Safe to delete
//
// The directory may be deleted while nothing has it open: every indexer rebuilds from the
// ledger at the next start.
package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/pebblelog"
)

// Key prefixes.
const (
	prefixState = 's'
	prefixEntry = 'x'
)

// stateFormat is the first byte of an encoded state.
const stateFormat = 1

// Pebble tuning for a small footprint.
const (
	blockCacheBytes = 8 << 20
	// diskSlowAfter is how long a disk operation takes before it is logged as slow.
	diskSlowAfter = 5 * time.Second
	memTableBytes = 8 << 20
)

// Options configures a disk store.
type Options struct {
	// Logger receives Pebble's messages (at debug level, its errors at error level); nil
	// discards them.
	Logger *slog.Logger
}

// Store is an [index.Store] in a Pebble database. Create it with [Open].
type Store struct {
	dir     string
	db      *pebble.DB
	fsClose io.Closer // stops the disk health checks
	fatal   *pebblelog.Fatal
}

var _ index.Store = (*Store)(nil)

// Open opens the store in dir, creating it if needed. opts may be nil. The directory must
// not be the ledger's own: give each its directory.
func Open(ctx context.Context, dir string, opts *Options) (*Store, error) {
	if opts == nil {
		opts = &Options{}
	}
	if dir == "" {
		return nil, errors.New("index: open store: no directory given; set the index directory")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("index: open store %s: %w", dir, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, fatal, fsClose, err := pebblelog.Open(dir, pebblelog.OpenOptions{Store: "index: store", Log: log, SlowAfter: diskSlowAfter, CacheBytes: blockCacheBytes, MemTableBytes: memTableBytes})
	if err != nil {
		return nil, fmt.Errorf("index: open store %s: %w", dir, err)
	}
	return &Store{dir: dir, db: db, fsClose: fsClose, fatal: fatal}, nil
}

// Close closes the store. After a fatal Pebble error (see Write) it only releases what it
// can: Pebble cannot be closed cleanly then, and the error was returned by the write.
func (s *Store) Close() error {
	if err := pebblelog.Close(s.db, s.fatal, s.fsClose); err != nil {
		return fmt.Errorf("index: close store %s: %w", s.dir, err)
	}
	return nil
}

// State returns the indexer's state.
func (s *Store) State(ctx context.Context, indexer string) (index.State, bool, error) {
	if err := ctx.Err(); err != nil {
		return index.State{}, false, err
	}
	v, closer, err := s.db.Get(stateKey(indexer))
	if errors.Is(err, pebble.ErrNotFound) {
		return index.State{}, false, nil
	}
	if err != nil {
		return index.State{}, false, fmt.Errorf("index: read state of %q in %s: %w", indexer, s.dir, err)
	}
	defer closer.Close()
	st, err := decodeState(v)
	if err != nil {
		return index.State{}, false, fmt.Errorf("index: read state of %q in %s: %w; reset the indexer to rebuild it", indexer, s.dir, err)
	}
	return st, true, nil
}

// Write applies the batches in one Pebble batch, without fsync. If Pebble cannot write its
// log (a full disk, an I/O error), Write returns a *pebblelog.Error naming the directory,
// and every later write returns it too.
func (s *Store) Write(ctx context.Context, batches ...index.Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	var k []byte
	for _, ib := range batches {
		for _, e := range ib.Entries {
			if bytes.IndexByte([]byte(e.Value), 0) >= 0 {
				return fmt.Errorf("index: write %q: value %q contains a NUL byte", ib.Indexer, e.Value)
			}
			k = entryKey(k[:0], ib.Indexer, e.Value, e.Position)
			if err := b.Set(k, nil, nil); err != nil {
				return fmt.Errorf("index: write %q in %s: %w", ib.Indexer, s.dir, err)
			}
		}
		if err := b.Set(stateKey(ib.Indexer), encodeState(nil, ib.State), nil); err != nil {
			return fmt.Errorf("index: write %q in %s: %w", ib.Indexer, s.dir, err)
		}
	}
	if err := s.fatal.Do(func() error { return b.Commit(pebble.NoSync) }); err != nil {
		if pebblelog.IsFatal(err) {
			return err
		}
		return fmt.Errorf("index: write in %s: %w", s.dir, err)
	}
	return nil
}

// Positions returns up to limit positions after after under the indexer's value.
func (s *Store) Positions(ctx context.Context, indexer, value string, after event.Position, limit int) ([]event.Position, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 || bytes.IndexByte([]byte(value), 0) >= 0 {
		return nil, nil
	}
	prefix := valuePrefix(nil, indexer, value)
	upper := append(bytes.Clone(prefix[:len(prefix)-1]), 1)
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{
		LowerBound: binary.BigEndian.AppendUint64(bytes.Clone(prefix), uint64(after)+1),
		UpperBound: upper,
	})
	if err != nil {
		return nil, fmt.Errorf("index: read %q in %s: %w", indexer, s.dir, err)
	}
	var out []event.Position
	for valid := it.First(); valid && len(out) < limit; valid = it.Next() {
		k := it.Key()
		if len(k) != len(prefix)+8 {
			it.Close()
			return nil, fmt.Errorf("index: read %q in %s: malformed entry key %x", indexer, s.dir, k)
		}
		out = append(out, event.Position(binary.BigEndian.Uint64(k[len(prefix):])))
	}
	err = errors.Join(it.Error(), it.Close())
	if err != nil {
		return nil, fmt.Errorf("index: read %q in %s: %w", indexer, s.dir, err)
	}
	return out, nil
}

// Entries calls fn with every entry of the indexer, by value then position.
func (s *Store) Entries(ctx context.Context, indexer string, fn func(index.Entry) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	lower, upper := indexerRange(indexer)
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return fmt.Errorf("index: read %q in %s: %w", indexer, s.dir, err)
	}
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()[len(lower):]
		if len(k) < 9 || k[len(k)-9] != 0 {
			it.Close()
			return fmt.Errorf("index: read %q in %s: malformed entry key %x", indexer, s.dir, it.Key())
		}
		e := index.Entry{Value: string(k[:len(k)-9]), Position: event.Position(binary.BigEndian.Uint64(k[len(k)-8:]))}
		if err := fn(e); err != nil {
			it.Close()
			return err
		}
	}
	err = errors.Join(it.Error(), it.Close())
	if err != nil {
		return fmt.Errorf("index: read %q in %s: %w", indexer, s.dir, err)
	}
	return nil
}

// Reset deletes the indexer's entries and state, durably.
func (s *Store) Reset(ctx context.Context, indexer string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	lower, upper := indexerRange(indexer)
	err := b.DeleteRange(lower, upper, nil)
	if err == nil {
		err = b.Delete(stateKey(indexer), nil)
	}
	if err == nil {
		err = s.fatal.Do(func() error { return b.Commit(pebble.Sync) })
	}
	if err != nil {
		return fmt.Errorf("index: reset %q in %s: %w", indexer, s.dir, err)
	}
	return nil
}

func stateKey(indexer string) []byte {
	return append([]byte{prefixState}, indexer...)
}

// indexerRange returns the bounds of the indexer's entry keys.
func indexerRange(indexer string) (lower, upper []byte) {
	lower = append(append([]byte{prefixEntry}, indexer...), 0)
	upper = append(append([]byte{prefixEntry}, indexer...), 1)
	return lower, upper
}

// valuePrefix appends the prefix of the value's entry keys to b.
func valuePrefix(b []byte, indexer, value string) []byte {
	b = append(b, prefixEntry)
	b = append(b, indexer...)
	b = append(b, 0)
	b = append(b, value...)
	return append(b, 0)
}

func entryKey(b []byte, indexer, value string, pos event.Position) []byte {
	return binary.BigEndian.AppendUint64(valuePrefix(b, indexer, value), uint64(pos))
}

// encodeState: format byte, checkpoint and since as uvarints, then the version.
func encodeState(b []byte, st index.State) []byte {
	b = append(b, stateFormat)
	b = binary.AppendUvarint(b, uint64(st.Checkpoint))
	b = binary.AppendUvarint(b, uint64(st.Since))
	return append(b, st.Version...)
}

func decodeState(b []byte) (index.State, error) {
	if len(b) == 0 || b[0] != stateFormat {
		return index.State{}, errors.New("unknown state format")
	}
	b = b[1:]
	cp, n := binary.Uvarint(b)
	if n <= 0 {
		return index.State{}, errors.New("malformed state")
	}
	b = b[n:]
	since, n := binary.Uvarint(b)
	if n <= 0 {
		return index.State{}, errors.New("malformed state")
	}
	return index.State{Checkpoint: event.Position(cp), Since: event.Position(since), Version: string(b[n:])}, nil
}
