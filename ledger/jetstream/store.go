package jetstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/lockholder"
	"github.com/walflow/walflow/internal/pebblelog"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/notify"
)

// The channel index on disk is a Pebble database of its own (Options.IndexDir). Every
// record is one Pebble key:
//
//	'm'                                   → the checkpoint (storeMeta, JSON)
//	'k' + key + 0x00 + position (8 bytes, big-endian) → empty: the key's entry
//	'p' + position (8 bytes, big-endian)  → the event's keys, each followed by 0x00
//
// A key's entries are in position order, so a lookup is one bounded iteration per key.
// The 'p' records let retention drop the entries of the removed events: they are in
// position order too. The follower writes the entries of many messages and the
// checkpoint that covers them in one batch, so after a crash the database holds every
// entry through its checkpoint (and possibly some after it, which are rewritten).
const (
	storeMetaKey  = 'm'
	storeKeyEntry = 'k'
	storePosEntry = 'p'
)

// storeFormat is the layout's version; a database of another format is rebuilt.
const storeFormat = 1

// Pebble tuning: the index is written in large batches and read by key; a small cache
// keeps a node's memory bounded whatever the stream's length.
const (
	storeCacheBytes    = 8 << 20
	storeMemTableBytes = 4 << 20
	storeSlowAfter     = 5 * time.Second
)

// storeMeta is the checkpoint: the stream the index was built from, the last sequence
// whose entries are stored, and the last transaction end at or before it.
type storeMeta struct {
	Format     int    `json:"format"`
	Indexer    string `json:"indexer"`
	Stream     string `json:"stream"`
	Created    int64  `json:"stream_created_unix_nano"`
	Checkpoint uint64 `json:"checkpoint"`
	Head       uint64 `json:"head"`
	Commit     uint64 `json:"commit_lsn"`
	End        uint64 `json:"end_lsn"`
	// LastID is the identity (Walflow-Id) of the message at Checkpoint: Open compares it with the
	// stream's, so that a stream rewritten under the index is not taken for its own.
	LastID string `json:"last_msg_id"`
}

// chanStore is the channel index's Pebble database. The follower goroutine alone writes
// it (add, commit, prune, clear); positions may be called concurrently until close.
type chanStore struct {
	dir     string
	db      *pebble.DB
	fsClose io.Closer
	fatal   *pebblelog.Fatal

	batch *pebble.Batch // the follower's entries since the last commit
	kbuf  []byte
	vbuf  []byte

	closeMu sync.RWMutex // held shared by reads, exclusively by close
	closed  bool
}

// openStore opens the channel index database in dir, creating it when missing. A
// database Pebble cannot open (files cut mid-write, garbage) is deleted, with a warning,
// and created anew. A directory another open ledger holds fails with a
// [ledger.InUseError].
func openStore(dir string, log *slog.Logger) (*chanStore, error) {
	s, err := openPebble(dir, log)
	if err == nil {
		return s, nil
	}
	var iu *ledger.InUseError
	if errors.As(err, &iu) || !isStoreDir(dir) {
		return nil, err
	}
	log.Warn("ledger/jetstream: the channel index cannot be opened; deleting it to rebuild it from the stream", "dir", dir, "err", err)
	if rerr := removeStoreFiles(dir); rerr != nil {
		return nil, fmt.Errorf("ledger/jetstream: remove the unreadable channel index in %s (delete the directory by hand): %w", dir, rerr)
	}
	return openPebble(dir, log)
}

func openPebble(dir string, log *slog.Logger) (*chanStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("ledger/jetstream: create the channel index directory %s: %w", dir, err)
	}
	db, fatal, fsClose, err := pebblelog.Open(dir, pebblelog.OpenOptions{Store: "ledger/jetstream: channel index", Log: log, SlowAfter: storeSlowAfter, CacheBytes: storeCacheBytes, MemTableBytes: storeMemTableBytes})
	if err != nil {
		if h, ok := lockholder.Pebble(dir, err); ok {
			return nil, fmt.Errorf("ledger/jetstream: open the channel index (every walflow node needs its own channel index directory): %w",
				&ledger.InUseError{Dir: dir, PID: h.PID, Command: h.Command, Err: err})
		}
		return nil, fmt.Errorf("ledger/jetstream: open the channel index in %s: %w", dir, err)
	}
	s := &chanStore{dir: dir, db: db, fsClose: fsClose, fatal: fatal}
	s.batch = db.NewBatch()
	return s, nil
}

// isStoreDir reports whether dir holds files of a Pebble database.
func isStoreDir(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if n := e.Name(); n == "CURRENT" || strings.HasPrefix(n, "MANIFEST-") || strings.HasPrefix(n, "OPTIONS-") || strings.HasPrefix(n, "marker.") {
			return true
		}
	}
	return false
}

// removeStoreFiles removes the regular files of dir (a Pebble database's), keeping any
// subdirectory.
func removeStoreFiles(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// meta returns the checkpoint; ok is false when there is none.
func (s *chanStore) meta() (m storeMeta, ok bool, err error) {
	v, closer, err := s.db.Get([]byte{storeMetaKey})
	if errors.Is(err, pebble.ErrNotFound) {
		return storeMeta{}, false, nil
	}
	if err != nil {
		return storeMeta{}, false, fmt.Errorf("ledger/jetstream: read the channel index checkpoint in %s: %w", s.dir, err)
	}
	defer closer.Close()
	if err := json.Unmarshal(v, &m); err != nil {
		return storeMeta{}, false, fmt.Errorf("ledger/jetstream: decode the channel index checkpoint in %s: %w", s.dir, err)
	}
	return m, true, nil
}

// add adds the entries of the event at seq to the pending batch.
func (s *chanStore) add(seq event.Position, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	s.vbuf = s.vbuf[:0]
	for _, k := range keys {
		if !notify.ValidKey(k) {
			continue // no reader can ask for it
		}
		s.kbuf = keyEntry(s.kbuf[:0], k, seq)
		if err := s.batch.Set(s.kbuf, nil, nil); err != nil {
			return err
		}
		s.vbuf = append(append(s.vbuf, k...), 0)
	}
	s.kbuf = posEntry(s.kbuf[:0], seq)
	return s.batch.Set(s.kbuf, s.vbuf, nil)
}

// commit writes the pending batch with the checkpoint m.
func (s *chanStore) commit(m storeMeta, sync bool) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := s.batch.Set([]byte{storeMetaKey}, v, nil); err != nil {
		return err
	}
	opt := pebble.NoSync
	if sync {
		opt = pebble.Sync
	}
	b := s.batch
	err = s.fatal.Do(func() error { return b.Commit(opt) })
	b.Close()
	s.batch = s.db.NewBatch()
	if err != nil {
		if pebblelog.IsFatal(err) {
			return err
		}
		return fmt.Errorf("ledger/jetstream: write the channel index in %s: %w", s.dir, err)
	}
	return nil
}

// pruneChunk bounds how many events one prune call drops the entries of.
const pruneChunk = 16384

// prune deletes the entries of up to pruneChunk events at or before tail, with their 'p'
// records. It reports whether none remain at or before tail.
func (s *chanStore) prune(tail event.Position) (done bool, err error) {
	lower := []byte{storePosEntry}
	upper := posEntry(nil, tail+1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return false, fmt.Errorf("ledger/jetstream: prune the channel index in %s: %w", s.dir, err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	n := 0
	var last []byte
	valid := it.First()
	for ; valid && n < pruneChunk; valid = it.Next() {
		k := it.Key()
		if len(k) != 9 {
			continue
		}
		seq := event.Position(binary.BigEndian.Uint64(k[1:]))
		for v := it.Value(); len(v) > 0; {
			i := bytes.IndexByte(v, 0)
			if i < 0 {
				break
			}
			if err := b.Delete(keyEntry(nil, string(v[:i]), seq), nil); err != nil {
				it.Close()
				return false, err
			}
			v = v[i+1:]
		}
		last = bytes.Clone(k)
		n++
	}
	done = !valid
	err = errors.Join(it.Error(), it.Close())
	if err != nil {
		return false, fmt.Errorf("ledger/jetstream: prune the channel index in %s: %w", s.dir, err)
	}
	if n == 0 {
		return true, nil
	}
	// One range deletion for the 'p' records, so that later iterations skip them at once.
	if err := b.DeleteRange(lower, append(last, 0), nil); err != nil {
		return false, err
	}
	if err := s.fatal.Do(func() error { return b.Commit(pebble.NoSync) }); err != nil {
		if pebblelog.IsFatal(err) {
			return false, err
		}
		return false, fmt.Errorf("ledger/jetstream: prune the channel index in %s: %w", s.dir, err)
	}
	return done, nil
}

// clear deletes every record, durably, and drops the pending batch.
func (s *chanStore) clear(ctx context.Context) error {
	s.batch.Reset()
	b := s.db.NewBatch()
	defer b.Close()
	err := b.DeleteRange([]byte{0}, []byte{0xff}, nil)
	if err == nil {
		err = s.fatal.Do(func() error { return b.Commit(pebble.Sync) })
	}
	if err == nil {
		// Reclaim the space now rather than when compactions reach the range.
		err = s.db.Compact(ctx, []byte{0}, []byte{0xff}, false)
	}
	if err != nil {
		return fmt.Errorf("ledger/jetstream: clear the channel index in %s: %w", s.dir, err)
	}
	return nil
}

// positions returns up to limit positions in (after, through] under key, ascending.
func (s *chanStore) positions(key string, after, through event.Position, limit int) ([]event.Position, error) {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return nil, ledger.ErrClosed
	}
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: keyEntry(nil, key, after+1),
		UpperBound: keyEntry(nil, key, through+1),
	})
	if err != nil {
		return nil, fmt.Errorf("ledger/jetstream: read the channel index in %s: %w", s.dir, err)
	}
	var out []event.Position
	for valid := it.First(); valid && len(out) < limit; valid = it.Next() {
		k := it.Key()
		out = append(out, event.Position(binary.BigEndian.Uint64(k[len(k)-8:])))
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return nil, fmt.Errorf("ledger/jetstream: read the channel index in %s: %w", s.dir, err)
	}
	return out, nil
}

// close closes the database once the reads in progress are done.
func (s *chanStore) close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.batch.Close()
	if err := pebblelog.Close(s.db, s.fatal, s.fsClose); err != nil {
		return fmt.Errorf("ledger/jetstream: close the channel index in %s: %w", s.dir, err)
	}
	return nil
}

func keyEntry(b []byte, key string, seq event.Position) []byte {
	b = append(b, storeKeyEntry)
	b = append(b, key...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint64(b, uint64(seq))
}

func posEntry(b []byte, seq event.Position) []byte {
	return binary.BigEndian.AppendUint64(append(b, storePosEntry), uint64(seq))
}
