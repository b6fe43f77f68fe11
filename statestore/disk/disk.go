package disk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pebblelog"
	"github.com/walflow/walflow/statestore"
)

// ErrClosed is returned by every method of a closed [Store].
var ErrClosed = errors.New("statestore/disk: closed")

// Pebble tuning for a small footprint.
const (
	blockCacheBytes = 8 << 20
	memTableBytes   = 16 << 20
	// diskSlowAfter is how long a disk operation takes before it is logged as slow.
	diskSlowAfter = 5 * time.Second
	// runLocks is how many locks the runs' writes are spread over.
	runLocks = 64
	// checkEvery is how many entities a loop handles between checks of its context.
	checkEvery = 1024
)

// Key prefixes; see the package doc.
const (
	prefixRun    = 'r'
	prefixHeader = 'h'
	prefixEntity = 'e'
)

// headerFormat is the first byte of a header, so that a later format can be told apart.
const (
	headerFormat = 1
	headerBytes  = 1 + 8 + 8 + 4
)

// Options configures a [Store].
type Options struct {
	// Logger receives Pebble's messages (information at debug level, errors at error level)
	// and slow-disk warnings. Default: discarded.
	Logger *slog.Logger
}

// Store is a [statestore.Storage] in a Pebble database. Create it with [Open] and release it
// with [Store.Close]. It is safe for concurrent use.
type Store struct {
	dir     string
	db      *pebble.DB
	fsClose io.Closer // stops the disk health checks
	// fatal holds Pebble's fatal error: after a failed log write every write returns it.
	fatal *pebblelog.Fatal

	// closeMu is held shared by every call that uses db, and exclusively by Close, so that
	// the database is never closed under a call.
	closeMu sync.RWMutex
	closed  bool

	// locks serialize the writes of a run (runs hash onto them), so that a save checks
	// the timestamp and takes the number after the previous write of the run committed.
	seed  maphash.Seed
	locks [runLocks]sync.Mutex
}

var (
	_ statestore.Storage = (*Store)(nil)
	_ statestore.Lister  = (*Store)(nil)
)

// Open opens the store in dir, creating the directory and the database when missing.
// Only one Store may have dir open at a time. opts may be nil.
func Open(ctx context.Context, dir string, opts *Options) (*Store, error) {
	if opts == nil {
		opts = &Options{}
	}
	if dir == "" {
		return nil, errors.New("statestore/disk: open: no directory given; pass the directory to keep the savepoints in")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("statestore/disk: open %s: %w", dir, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(slog.String("component", "statestore.disk"))
	db, fatal, fsClose, err := pebblelog.Open(dir, pebblelog.OpenOptions{Store: "statestore/disk: store", Log: log, SlowAfter: diskSlowAfter, CacheBytes: blockCacheBytes, MemTableBytes: memTableBytes})
	if err != nil {
		return nil, fmt.Errorf("statestore/disk: open %s: %w", dir, err)
	}
	return &Store{dir: dir, db: db, fsClose: fsClose, fatal: fatal, seed: maphash.MakeSeed()}, nil
}

// Close closes the database. Savepoints are synced as they are saved, so Close loses
// nothing. Calls after Close, and a second Close, return [ErrClosed]. After a fatal Pebble
// error (a write returned a *pebblelog.Error) Close only releases what it can: Pebble
// cannot be closed cleanly then.
func (s *Store) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	if err := pebblelog.Close(s.db, s.fatal, s.fsClose); err != nil {
		return fmt.Errorf("statestore/disk: close %s: %w", s.dir, err)
	}
	return nil
}

// begin starts a call: it validates runID and ctx and takes closeMu shared. On success the
// caller must call s.closeMu.RUnlock.
func (s *Store) begin(ctx context.Context, op, runID string) error {
	if err := statestore.ValidateRunID(runID); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, err)
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, ErrClosed)
	}
	return nil
}

// lock takes the write lock of runID and returns its unlock.
func (s *Store) lock(runID string) func() {
	m := &s.locks[maphash.String(s.seed, runID)%runLocks]
	m.Lock()
	return m.Unlock
}

// InitRun initializes the run; see [statestore.Storage.InitRun].
func (s *Store) InitRun(ctx context.Context, runID string) error {
	const op = "init"
	if err := s.begin(ctx, op, runID); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	defer s.lock(runID)()
	_, ok, err := nextNumber(s.db, runID)
	if err == nil && !ok {
		err = s.fatal.Do(func() error {
			return s.db.Set(runKey(runID), binary.BigEndian.AppendUint64(nil, 1), pebble.Sync)
		})
	}
	if err != nil {
		return fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, err)
	}
	return nil
}

// IsInitialized reports whether the run is initialized; see
// [statestore.Storage.IsInitialized].
func (s *Store) IsInitialized(ctx context.Context, runID string) (bool, error) {
	const op = "check"
	if err := s.begin(ctx, op, runID); err != nil {
		return false, err
	}
	defer s.closeMu.RUnlock()
	_, ok, err := nextNumber(s.db, runID)
	if err != nil {
		return false, fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, err)
	}
	return ok, nil
}

// SaveSavepoint saves sp in one synced batch; see [statestore.Storage.SaveSavepoint].
func (s *Store) SaveSavepoint(ctx context.Context, runID string, sp statestore.Savepoint) error {
	const op = "save a savepoint"
	if err := s.begin(ctx, op, runID); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if err := sp.Validate(); err != nil {
		return err
	}
	defer s.lock(runID)()
	if err := s.save(ctx, runID, sp); err != nil {
		return fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, err)
	}
	return nil
}

// save writes sp; the run's lock must be held, so that the database is read as of the run's
// last write.
func (s *Store) save(ctx context.Context, runID string, sp statestore.Savepoint) error {
	n, ok, err := nextNumber(s.db, runID)
	if err != nil {
		return err
	}
	if !ok {
		return statestore.ErrNotInitialized
	}
	last, found, err := lastHeader(s.db, runID)
	if err != nil {
		return err
	}
	if found && sp.Timestamp < last.Timestamp {
		return fmt.Errorf("timestamp %d is before the latest savepoint's %d; use %d or later: %w",
			sp.Timestamp, last.Timestamp, last.Timestamp, statestore.ErrOutOfOrder)
	}
	size := headerBytes + 64
	for _, e := range sp.Entities {
		size += len(e.ID) + len(e.State) + 64
	}
	b := s.db.NewBatch(pebble.WithInitialSizeBytes(min(size, 64<<20)))
	defer b.Close()
	hdr := make([]byte, 0, headerBytes)
	hdr = append(hdr, headerFormat)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(sp.Timestamp))
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(sp.Position))
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(len(sp.Entities)))
	if err := b.Set(headerKey(runID, n), hdr, nil); err != nil {
		return err
	}
	prefix := entityPrefix(runID, n)
	var key, val []byte
	for i, e := range sp.Entities {
		if i%checkEvery == checkEvery-1 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		key = binary.BigEndian.AppendUint32(append(key[:0], prefix...), uint32(i))
		val = binary.AppendUvarint(val[:0], uint64(len(e.ID)))
		val = append(append(val, e.ID...), e.State...)
		// Set copies key and value into the batch.
		if err := b.Set(key, val, nil); err != nil {
			return err
		}
	}
	if err := b.Set(runKey(runID), binary.BigEndian.AppendUint64(nil, n+1), nil); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.fatal.Do(func() error { return b.Commit(pebble.Sync) })
}

// LatestSavepoint reads the latest savepoint from one snapshot; see
// [statestore.Storage.LatestSavepoint].
func (s *Store) LatestSavepoint(ctx context.Context, runID string) (statestore.Savepoint, error) {
	const op = "read the latest savepoint"
	if err := s.begin(ctx, op, runID); err != nil {
		return statestore.Savepoint{}, err
	}
	defer s.closeMu.RUnlock()
	snap := s.db.NewSnapshot()
	defer snap.Close()
	sp, err := latest(ctx, snap, runID)
	if err != nil {
		return statestore.Savepoint{}, fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, err)
	}
	return sp, nil
}

func latest(ctx context.Context, r reader, runID string) (statestore.Savepoint, error) {
	h, err := latestHeader(r, runID)
	if err != nil {
		return statestore.Savepoint{}, err
	}
	sp := statestore.Savepoint{Timestamp: h.Timestamp, Position: h.Position}
	if h.Entities == 0 {
		return sp, nil
	}
	prefix := entityPrefix(runID, h.number)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: entityPrefix(runID, h.number+1)})
	if err != nil {
		return statestore.Savepoint{}, err
	}
	sp.Entities = make([]statestore.Entity, 0, h.Entities)
	for valid := it.First(); valid; valid = it.Next() {
		if len(sp.Entities)%checkEvery == checkEvery-1 {
			if err := ctx.Err(); err != nil {
				it.Close()
				return statestore.Savepoint{}, err
			}
		}
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return statestore.Savepoint{}, err
		}
		idLen, n := binary.Uvarint(v)
		k := it.Key()
		if n <= 0 || idLen > uint64(len(v)-n) || len(k) != len(prefix)+4 ||
			int(binary.BigEndian.Uint32(k[len(prefix):])) != len(sp.Entities) {
			it.Close()
			return statestore.Savepoint{}, fmt.Errorf("corrupt entity %d of savepoint %d: key %x", len(sp.Entities), h.number, k)
		}
		id := string(v[n : n+int(idLen)])
		state := append([]byte(nil), v[n+int(idLen):]...) // v is valid until the next step only
		sp.Entities = append(sp.Entities, statestore.Entity{ID: id, State: state})
	}
	if err := it.Close(); err != nil {
		return statestore.Savepoint{}, err
	}
	if len(sp.Entities) != h.Entities {
		return statestore.Savepoint{}, fmt.Errorf("corrupt savepoint %d: %d entities found, its header says %d", h.number, len(sp.Entities), h.Entities)
	}
	return sp, nil
}

// LatestTimestamp reads the latest savepoint's header; see
// [statestore.Storage.LatestTimestamp].
func (s *Store) LatestTimestamp(ctx context.Context, runID string) (int64, error) {
	const op = "read the latest savepoint timestamp"
	if err := s.begin(ctx, op, runID); err != nil {
		return 0, err
	}
	defer s.closeMu.RUnlock()
	snap := s.db.NewSnapshot()
	defer snap.Close()
	h, err := latestHeader(snap, runID)
	if err != nil {
		return 0, fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, err)
	}
	return h.Timestamp, nil
}

// latestHeader returns the run's latest header, or ErrNotInitialized or ErrNoSavepoint.
func latestHeader(r reader, runID string) (header, error) {
	_, ok, err := nextNumber(r, runID)
	if err != nil {
		return header{}, err
	}
	if !ok {
		return header{}, statestore.ErrNotInitialized
	}
	h, found, err := lastHeader(r, runID)
	if err != nil {
		return header{}, err
	}
	if !found {
		return header{}, statestore.ErrNoSavepoint
	}
	return h, nil
}

// ListSavepoints lists the run's savepoints, oldest first; see [statestore.Lister].
func (s *Store) ListSavepoints(ctx context.Context, runID string) ([]statestore.SavepointInfo, error) {
	const op = "list savepoints"
	if err := s.begin(ctx, op, runID); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	snap := s.db.NewSnapshot()
	defer snap.Close()
	infos, err := list(snap, runID)
	if err != nil {
		return nil, fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, err)
	}
	return infos, nil
}

func list(r reader, runID string) ([]statestore.SavepointInfo, error) {
	_, ok, err := nextNumber(r, runID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, statestore.ErrNotInitialized
	}
	lo, hi := headerRange(runID)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	infos := []statestore.SavepointInfo{}
	for valid := it.First(); valid; valid = it.Next() {
		h, err := decodeHeader(it)
		if err != nil {
			it.Close()
			return nil, err
		}
		infos = append(infos, h.SavepointInfo)
	}
	return infos, it.Close()
}

// DeleteOldSavepoints deletes all but the keep latest savepoints with range deletions in one
// synced batch; see [statestore.Storage.DeleteOldSavepoints].
func (s *Store) DeleteOldSavepoints(ctx context.Context, runID string, keep int) error {
	const op = "delete old savepoints"
	if err := s.begin(ctx, op, runID); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	if keep < 0 {
		return fmt.Errorf("statestore/disk: %s of run %q: keep is %d; use 0 to delete every savepoint, or more to keep that many", op, runID, keep)
	}
	defer s.lock(runID)()
	if err := s.deleteOld(runID, keep); err != nil {
		return fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, err)
	}
	return nil
}

// deleteOld deletes the savepoints older than the keep latest; the run's lock must be held.
func (s *Store) deleteOld(runID string, keep int) error {
	_, ok, err := nextNumber(s.db, runID)
	if err != nil {
		return err
	}
	if !ok {
		return statestore.ErrNotInitialized
	}
	lo, hi := headerRange(runID)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	// Step back over the savepoints to keep; the one reached, if any, is the newest to
	// delete.
	valid := it.Last()
	for i := 0; i < keep && valid; i++ {
		valid = it.Prev()
	}
	var cut header
	if valid {
		cut, err = decodeHeader(it)
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil || !valid {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(lo, headerKey(runID, cut.number+1), nil); err != nil {
		return err
	}
	elo, _ := entityRange(runID)
	if err := b.DeleteRange(elo, entityPrefix(runID, cut.number+1), nil); err != nil {
		return err
	}
	return s.fatal.Do(func() error { return b.Commit(pebble.Sync) })
}

// DeleteRun deletes the run and its savepoints in one synced batch; see
// [statestore.Storage.DeleteRun].
func (s *Store) DeleteRun(ctx context.Context, runID string) error {
	const op = "delete"
	if err := s.begin(ctx, op, runID); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	defer s.lock(runID)()
	err := func() error {
		_, ok, err := nextNumber(s.db, runID)
		if err != nil || !ok {
			return err
		}
		b := s.db.NewBatch()
		defer b.Close()
		if err := b.Delete(runKey(runID), nil); err != nil {
			return err
		}
		hlo, hhi := headerRange(runID)
		if err := b.DeleteRange(hlo, hhi, nil); err != nil {
			return err
		}
		elo, ehi := entityRange(runID)
		if err := b.DeleteRange(elo, ehi, nil); err != nil {
			return err
		}
		return s.fatal.Do(func() error { return b.Commit(pebble.Sync) })
	}()
	if err != nil {
		return fmt.Errorf("statestore/disk: %s of run %q: %w", op, runID, err)
	}
	return nil
}

// reader is what reads use of a *pebble.DB or a *pebble.Snapshot.
type reader interface {
	Get(key []byte) ([]byte, io.Closer, error)
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// nextNumber returns the number the run's next savepoint gets, and whether the run is
// initialized.
func nextNumber(r reader, runID string) (uint64, bool, error) {
	v, closer, err := r.Get(runKey(runID))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, false, fmt.Errorf("corrupt run record %x", v)
	}
	return binary.BigEndian.Uint64(v), true, nil
}

// header is a decoded savepoint header.
type header struct {
	statestore.SavepointInfo
	number uint64
}

// lastHeader returns the run's latest savepoint header, if it has one.
func lastHeader(r reader, runID string) (header, bool, error) {
	lo, hi := headerRange(runID)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return header{}, false, err
	}
	var h header
	found := it.Last()
	if found {
		h, err = decodeHeader(it)
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return header{}, false, err
	}
	return h, found, nil
}

// decodeHeader decodes the header the iterator is at.
func decodeHeader(it *pebble.Iterator) (header, error) {
	k := it.Key()
	v, err := it.ValueAndErr()
	if err != nil {
		return header{}, err
	}
	if len(k) < 8 || len(v) != headerBytes || v[0] != headerFormat {
		return header{}, fmt.Errorf("corrupt savepoint header %x at key %x", v, k)
	}
	return header{
		SavepointInfo: statestore.SavepointInfo{
			Timestamp: int64(binary.BigEndian.Uint64(v[1:])),
			Position:  event.Position(binary.BigEndian.Uint64(v[9:])),
			Entities:  int(binary.BigEndian.Uint32(v[17:])),
		},
		number: binary.BigEndian.Uint64(k[len(k)-8:]),
	}, nil
}

func runKey(runID string) []byte {
	return append([]byte{prefixRun}, runID...)
}

// runPrefix returns p + runID + 0x00.
func runPrefix(p byte, runID string) []byte {
	b := make([]byte, 0, len(runID)+2+8+4)
	b = append(b, p)
	b = append(b, runID...)
	return append(b, 0)
}

// runRange returns the bounds of the keys of prefix p of the run: p + runID + 0x00 up to,
// not including, p + runID + 0x01.
func runRange(p byte, runID string) (lo, hi []byte) {
	lo = runPrefix(p, runID)
	hi = append([]byte(nil), lo...)
	hi[len(hi)-1] = 1
	return lo, hi
}

func headerRange(runID string) (lo, hi []byte) { return runRange(prefixHeader, runID) }
func entityRange(runID string) (lo, hi []byte) { return runRange(prefixEntity, runID) }

func headerKey(runID string, n uint64) []byte {
	return binary.BigEndian.AppendUint64(runPrefix(prefixHeader, runID), n)
}

// entityPrefix returns the prefix of the entity keys of savepoint n.
func entityPrefix(runID string, n uint64) []byte {
	return binary.BigEndian.AppendUint64(runPrefix(prefixEntity, runID), n)
}
