package pebble

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/lockholder"
	"github.com/walflow/walflow/internal/pebblelog"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/notify"
	"github.com/walflow/walflow/ledger/internal/varint"
)

// ChunkBytesDefault is the default [Options.ChunkBytes]: 4 MiB.
const ChunkBytesDefault = 4 << 20

// Pebble tuning for a small footprint.
const (
	blockCacheBytes = 16 << 20
	memTableBytes   = 16 << 20
	// diskSlowAfter is how long a disk operation takes before it is logged as slow.
	diskSlowAfter = 5 * time.Second
	// compactAfterBytesDefault is how many bytes of events Truncate removes before it
	// compacts the removed range, so that the space is reclaimed now rather than whenever
	// Pebble's own compactions reach it.
	compactAfterBytesDefault = 64 << 20
	// truncateChunkEvents bounds how many events one Truncate batch removes, so that
	// truncating a long stretch never builds a huge batch, and the writer (which waits for
	// each batch to commit before it syncs) is held up only briefly.
	truncateChunkEvents = 16 << 10
	// rangeDeleteMin is how many index entries of one key a Truncate batch removes before
	// it removes them with one range deletion rather than one deletion each: the
	// channels of busy tables get range deletions, the channels of single rows point ones.
	rangeDeleteMin = 8
)

// Key prefixes.
const (
	prefixEvent = 'e'
	prefixIndex = 'k'
	prefixMeta  = 'm'
)

// stateKey holds the durable state (see encodeState).
var stateKey = []byte{prefixMeta, 's', 't', 'a', 't', 'e'}

// checkEvery is how many events a loop handles between checks for Close and ctx.
const checkEvery = 256

// Options configures a disk ledger.
type Options struct {
	// Indexer gives each event its index keys; nil indexes nothing. Open must be given the
	// same Indexer as the run that wrote the ledger: it recomputes the index keys of an
	// interrupted transaction's events to delete them.
	Indexer ledger.Indexer
	// Logger receives the ledger's and Pebble's messages (Pebble's at debug level, its
	// errors at error level); nil discards them.
	Logger *slog.Logger
	// ChunkBytes is how many bytes of an open transaction are gathered before they are
	// written (without fsync); 0 means ChunkBytesDefault.
	ChunkBytes int
}

// Ledger is a [ledger.Ledger] stored in a Pebble database. Create it with [Open].
type Ledger struct {
	dir     string
	db      *pebbledb.DB
	fsClose io.Closer        // stops the disk health checks
	fatal   *pebblelog.Fatal // Pebble's fatal error, after which no write calls Pebble
	log     *slog.Logger
	indexer ledger.Indexer
	chunk   int
	pub     *notify.Publisher

	// closeMu is held shared by every call that uses db, and exclusively by Close, so the
	// database is never closed under a reader or the writer.
	closeMu sync.RWMutex
	// stateMu is held by every write of the state key and the publication that follows
	// (Sync, SetAcked, SetOrigin, each Truncate batch), so that the writer and Truncate,
	// which run in different goroutines, never write back an older copy of each other's
	// part of the state, and the published state is the durable one.
	stateMu sync.Mutex

	// Truncate's state, under truncMu: one Truncate runs at a time.
	truncMu      sync.Mutex
	truncBytes   int64 // bytes of events removed since the last compaction
	compactAfter int64 // compactAfterBytesDefault; tests change it
	truncEvents  int   // truncateChunkEvents; tests lower it

	// Writer state, used by the writer goroutine only.
	batch   *pebbledb.Batch
	next    event.Position // position of the next appended event
	pending ledger.State   // the state once the committed transactions are synced
	dirty   bool           // transactions were committed since the last Sync
	inTx    bool
	txMeta  event.TxMeta
	txStart event.Position
	werr    error // a failed write; the writer cannot go on
	keys    []string
	buf     []byte
	kbuf    []byte
}

var _ ledger.Ledger = (*Ledger)(nil)

// Open opens the ledger in dir, creating it if needed. A transaction a crash interrupted
// is deleted, events and index entries, before Open returns. opts may be nil.
func Open(ctx context.Context, dir string, opts *Options) (*Ledger, error) {
	if opts == nil {
		opts = &Options{}
	}
	if dir == "" {
		return nil, errors.New("ledger: open: no directory given")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	chunk := opts.ChunkBytes
	if chunk <= 0 {
		chunk = ChunkBytesDefault
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ledger: open %s: %w", dir, err)
	}
	if err := otherBackend(dir); err != nil {
		return nil, fmt.Errorf("ledger: open %s: %w", dir, err)
	}
	db, fatal, fsClose, err := pebblelog.Open(dir, pebblelog.OpenOptions{Store: "ledger: store", Log: log, SlowAfter: diskSlowAfter, CacheBytes: blockCacheBytes, MemTableBytes: memTableBytes})
	if err != nil {
		if h, ok := lockholder.Pebble(dir, err); ok {
			return nil, &ledger.InUseError{Dir: dir, PID: h.PID, Command: h.Command, Err: err}
		}
		return nil, fmt.Errorf("ledger: open %s: %w", dir, err)
	}
	l := &Ledger{
		dir:          dir,
		db:           db,
		fsClose:      fsClose,
		fatal:        fatal,
		log:          log,
		indexer:      opts.Indexer,
		chunk:        chunk,
		compactAfter: compactAfterBytesDefault,
		truncEvents:  truncateChunkEvents,
	}
	l.batch = l.newBatch()
	st, err := l.readState()
	if err == nil {
		err = l.recover(ctx, st)
	}
	if err != nil {
		if fatal.Err() == nil {
			l.batch.Close()
			db.Close()
		}
		fsClose.Close()
		if pebblelog.IsFatal(err) {
			return nil, err
		}
		return nil, fmt.Errorf("ledger: open %s: %w", dir, err)
	}
	l.pending = st
	l.next = st.Head + 1
	l.pub = notify.New(st)
	return l, nil
}

// IsLedgerDir reports whether dir holds a Pebble database (a ledger of this backend).
func IsLedgerDir(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if n := e.Name(); n == "CURRENT" || strings.HasPrefix(n, "MANIFEST-") || strings.HasPrefix(n, "OPTIONS-") {
			return true
		}
	}
	return false
}

// otherBackend returns an error when dir holds a ledger of the disk backend (segment files).
func otherBackend(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil // Pebble reports a directory it cannot read, or creates a missing one
	}
	for _, e := range ents {
		if n := e.Name(); n == "ledger.meta" || strings.HasSuffix(n, ".seg") {
			return errors.New("this directory holds a ledger of the disk backend (segment files); set ledger.backend: disk (the default) to use it, or point ledger.dir at a new directory for the pebble backend")
		}
	}
	return nil
}

func (l *Ledger) newBatch() *pebbledb.Batch {
	return l.db.NewBatch(pebbledb.WithMaxRetainedSizeBytes(2*l.chunk + 64<<10))
}

// readState reads the durable state; a new ledger has the zero state.
func (l *Ledger) readState() (ledger.State, error) {
	v, closer, err := l.db.Get(stateKey)
	if errors.Is(err, pebbledb.ErrNotFound) {
		return ledger.State{}, nil
	}
	if err != nil {
		return ledger.State{}, fmt.Errorf("read metadata: %w", err)
	}
	defer closer.Close()
	st, err := decodeState(v)
	if err != nil {
		return ledger.State{}, fmt.Errorf("read metadata: %w", err)
	}
	return st, nil
}

// recover deletes the events past the durable head, and their index entries, that a
// crash left behind.
func (l *Ledger) recover(ctx context.Context, st ledger.State) error {
	n, err := l.dropFrom(ctx, st.Head+1)
	if err != nil {
		return fmt.Errorf("remove interrupted transaction: %w", err)
	}
	if n == 0 {
		return nil
	}
	if err := l.commit(pebbledb.Sync); err != nil {
		return fmt.Errorf("remove interrupted transaction: %w", err)
	}
	l.log.Info("ledger: removed the events of an interrupted transaction",
		"dir", l.dir, "events", n, "head", uint64(st.Head))
	return nil
}

// storedKeys decodes the stored event at the iterator and appends its index keys (those
// the index holds: valid ones) to keys. size is the stored event's length.
func (l *Ledger) storedKeys(it *pebbledb.Iterator, keys []string) (pos event.Position, size int, _ []string, err error) {
	pos, ok := parseEventKey(it.Key())
	if !ok {
		return 0, 0, keys, fmt.Errorf("malformed event key %x", it.Key())
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return pos, 0, keys, fmt.Errorf("event at position %d: %w", pos, err)
	}
	e, err := event.DecodeBinary(v)
	if err != nil {
		return pos, 0, keys, fmt.Errorf("event at position %d: %w", pos, err)
	}
	if l.indexer == nil {
		return pos, len(v), keys, nil
	}
	n := len(keys)
	keys = l.indexer(&e, keys)
	valid := keys[:n]
	for _, k := range keys[n:] {
		if notify.ValidKey(k) {
			valid = append(valid, k)
		}
	}
	clear(keys[len(valid):])
	return pos, len(v), valid, nil
}

// dropFrom adds to the batch the deletion of every stored event at position from or
// later, with its index entries, writing full chunks as it goes. It returns how many
// events it deleted.
func (l *Ledger) dropFrom(ctx context.Context, from event.Position) (int, error) {
	it, err := l.db.NewIter(&pebbledb.IterOptions{
		LowerBound: eventKey(nil, from),
		UpperBound: []byte{prefixEvent + 1},
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		if n%checkEvery == 0 {
			if err := ctx.Err(); err != nil {
				it.Close()
				return n, err
			}
		}
		pos, _, keys, err := l.storedKeys(it, l.keys[:0])
		if err != nil {
			it.Close()
			return n, err
		}
		for _, k := range keys {
			l.kbuf = indexKey(l.kbuf[:0], k, pos)
			if err := l.batch.Delete(l.kbuf, nil); err != nil {
				it.Close()
				return n, err
			}
		}
		clear(keys)
		l.keys = keys[:0]
		if err := l.batch.Delete(it.Key(), nil); err != nil {
			it.Close()
			return n, err
		}
		n++
		if err := l.flushIfFull(); err != nil {
			it.Close()
			return n, err
		}
	}
	if err := it.Close(); err != nil {
		return n, err
	}
	return n, nil
}

// flushIfFull writes the batch without fsync once it holds a chunk.
func (l *Ledger) flushIfFull() error {
	if l.batch.Len() < l.chunk {
		return nil
	}
	return l.commit(pebbledb.NoSync)
}

// commit writes the batch and starts a new one. After a fatal Pebble error the batch is
// left alone (Pebble's commit pipeline may still hold it) and the error is returned.
func (l *Ledger) commit(o *pebbledb.WriteOptions) error {
	err := l.fatal.Do(func() error { return l.batch.Commit(o) })
	if pebblelog.IsFatal(err) {
		return err
	}
	l.batch.Reset()
	return err
}

// enter holds closeMu shared; it fails once the ledger is closed.
func (l *Ledger) enter() error {
	l.closeMu.RLock()
	if l.pub.Closed() {
		l.closeMu.RUnlock()
		return ledger.ErrClosed
	}
	return nil
}

// enterWrite is enter for the write methods, which also fail after a write error.
func (l *Ledger) enterWrite(ctx context.Context) error {
	if err := l.enter(); err != nil {
		return err
	}
	if l.werr != nil {
		l.closeMu.RUnlock()
		return l.werr
	}
	if err := ctx.Err(); err != nil {
		l.closeMu.RUnlock()
		return err
	}
	return nil
}

func (l *Ledger) leave() { l.closeMu.RUnlock() }

// fail records a write error: the batch may have lost writes, so the writer stops.
func (l *Ledger) fail(step string, err error) error {
	if pebblelog.IsFatal(err) {
		l.werr = ledger.WriteFailed(err) // it names the ledger and its directory
		return l.werr
	}
	l.werr = ledger.WriteFailed(fmt.Errorf("ledger: %s %s: %w", step, l.dir, err))
	return l.werr
}

// BeginTx opens a transaction. meta.CommitLSN must be after the commit LSN of the last
// committed transaction, synced or not, or BeginTx fails with [ledger.ErrOutOfOrder].
func (l *Ledger) BeginTx(ctx context.Context, meta event.TxMeta) error {
	if err := l.enterWrite(ctx); err != nil {
		return err
	}
	defer l.leave()
	if l.inTx {
		return ledger.ErrTxOpen
	}
	if meta.CommitLSN <= l.pending.LastCommitLSN {
		return fmt.Errorf("%w (commit LSN %s, last %s)", ledger.ErrOutOfOrder, meta.CommitLSN, l.pending.LastCommitLSN)
	}
	l.inTx = true
	l.txMeta = meta
	l.txStart = l.next
	return nil
}

// Append adds e to the open transaction and sets e.Position. The event reaches the disk
// once a chunk is full; it is visible only after CommitTx and Sync.
func (l *Ledger) Append(ctx context.Context, e *event.Event) error {
	if err := l.enterWrite(ctx); err != nil {
		return err
	}
	defer l.leave()
	if !l.inTx {
		return ledger.ErrNoTx
	}
	pos := l.next
	old := e.Position
	e.Position = pos
	l.keys = l.keys[:0]
	if l.indexer != nil {
		l.keys = l.indexer(e, l.keys)
	}
	defer func() {
		clear(l.keys)
		l.keys = l.keys[:0]
	}()
	for _, k := range l.keys {
		if !notify.ValidKey(k) {
			e.Position = old
			return fmt.Errorf("ledger: append event at position %d: indexer returned invalid key %q (keys must be non-empty and contain no NUL byte)", pos, k)
		}
	}
	l.buf = event.AppendBinary(l.buf[:0], e)
	l.kbuf = eventKey(l.kbuf[:0], pos)
	if err := l.batch.Set(l.kbuf, l.buf, nil); err != nil {
		return l.fail("append", err)
	}
	for _, k := range l.keys {
		l.kbuf = indexKey(l.kbuf[:0], k, pos)
		if err := l.batch.Set(l.kbuf, nil, nil); err != nil {
			return l.fail("append", err)
		}
	}
	l.next++
	if err := l.flushIfFull(); err != nil {
		return l.fail("append: write chunk", err)
	}
	return nil
}

// CommitTx closes the open transaction, whose commit record ends at endLSN. It becomes
// durable and visible at the next Sync.
func (l *Ledger) CommitTx(ctx context.Context, endLSN event.LSN) error {
	if err := l.enterWrite(ctx); err != nil {
		return err
	}
	defer l.leave()
	if !l.inTx {
		return ledger.ErrNoTx
	}
	l.pending.Head = l.next - 1
	l.pending.LastCommitLSN = l.txMeta.CommitLSN
	l.pending.LastEndLSN = endLSN
	l.inTx = false
	l.dirty = true
	return nil
}

// AbortTx drops the open transaction: the events it already wrote are read back to
// delete them with their index entries, and their positions are reused.
func (l *Ledger) AbortTx(ctx context.Context) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	if l.werr != nil {
		return l.werr
	}
	if !l.inTx {
		return ledger.ErrNoTx
	}
	if l.next > l.txStart {
		// Write what the batch holds, so every event of the transaction can be read back.
		if !l.batch.Empty() {
			if err := l.commit(pebbledb.NoSync); err != nil {
				return l.fail("abort transaction", err)
			}
		}
		if _, err := l.dropFrom(context.WithoutCancel(ctx), l.txStart); err != nil {
			return l.fail("abort transaction", err)
		}
	}
	l.next = l.txStart
	l.inTx = false
	return nil
}

// Sync writes the committed transactions with the new state, fsyncs, publishes the state
// to readers and wakes Wait. An open transaction stays open and invisible.
func (l *Ledger) Sync(ctx context.Context) error {
	if err := l.enterWrite(ctx); err != nil {
		return err
	}
	defer l.leave()
	if !l.dirty {
		return nil
	}
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	st := l.pending
	st.Tail = l.pub.Tail()
	l.buf = encodeState(l.buf[:0], st)
	if err := l.batch.Set(stateKey, l.buf, nil); err != nil {
		return l.fail("sync", err)
	}
	if err := l.commit(pebbledb.Sync); err != nil {
		return l.fail("sync", err)
	}
	l.dirty = false
	l.pub.Publish(st)
	return nil
}

// SetAcked durably records the highest LSN that may be acknowledged to the slot.
func (l *Ledger) SetAcked(ctx context.Context, lsn event.LSN) error {
	return l.setState(ctx, "set acked LSN", func(st *ledger.State) { st.AckedLSN = lsn })
}

// SetOrigin durably records the database and slot the ledger follows.
func (l *Ledger) SetOrigin(ctx context.Context, o ledger.Origin) error {
	return l.setState(ctx, "set origin", func(st *ledger.State) { st.Origin = o })
}

// setState changes the published state (not the pending transactions) and writes it
// durably, apart from the batch.
func (l *Ledger) setState(ctx context.Context, step string, set func(*ledger.State)) error {
	if err := l.enterWrite(ctx); err != nil {
		return err
	}
	defer l.leave()
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	st := l.pub.State()
	set(&st)
	set(&l.pending)
	if err := l.fatal.Do(func() error { return l.db.Set(stateKey, encodeState(nil, st), pebbledb.Sync) }); err != nil {
		return l.fail(step, err)
	}
	l.pub.Publish(st)
	return nil
}

// State returns the durable state.
func (l *Ledger) State() ledger.State { return l.pub.State() }

// Read returns up to limit events after position after, in order, up to the head.
func (l *Ledger) Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := l.enter(); err != nil {
		return nil, err
	}
	defer l.leave()
	if err := l.pub.CheckTail(after); err != nil {
		return nil, err
	}
	head := l.pub.Head()
	if limit <= 0 || after >= head {
		return nil, nil
	}
	end := head
	if uint64(limit) < uint64(head-after) {
		end = after + event.Position(limit)
	}
	it, err := l.db.NewIterWithContext(ctx, &pebbledb.IterOptions{
		LowerBound: eventKey(nil, after+1),
		UpperBound: append(eventKey(nil, end), 0),
	})
	if err != nil {
		return nil, fmt.Errorf("ledger: read %s: %w", l.dir, err)
	}
	// Truncate publishes a tail before it deletes up to it: an iterator opened before the
	// tail below was published sees every event after it.
	if err := l.pub.CheckTail(after); err != nil {
		it.Close()
		return nil, err
	}
	out, err := l.readRange(ctx, it, after+1, end)
	if cerr := it.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("ledger: read %s: %w", l.dir, cerr)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// readRange decodes the events from..to of an iterator bounded to them.
func (l *Ledger) readRange(ctx context.Context, it *pebbledb.Iterator, from, to event.Position) ([]event.Event, error) {
	out := make([]event.Event, 0, min(uint64(to-from+1), 4096))
	want := from
	for valid := it.First(); valid; valid = it.Next() {
		if err := l.check(ctx, len(out)); err != nil {
			return nil, err
		}
		pos, ok := parseEventKey(it.Key())
		if !ok {
			return nil, fmt.Errorf("ledger: read %s: malformed event key %x", l.dir, it.Key())
		}
		if pos != want {
			return nil, fmt.Errorf("ledger: read %s: event at position %d is missing", l.dir, want)
		}
		e, err := l.decode(it, pos)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
		want++
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("ledger: read %s: %w", l.dir, err)
	}
	if want <= to {
		return nil, fmt.Errorf("ledger: read %s: event at position %d is missing", l.dir, want)
	}
	return out, nil
}

// check fails once the ledger is closed, and every checkEvery events once ctx ends.
func (l *Ledger) check(ctx context.Context, n int) error {
	if l.pub.Closed() {
		return ledger.ErrClosed
	}
	if n%checkEvery == checkEvery-1 {
		return ctx.Err()
	}
	return nil
}

// decode decodes the event at the iterator, which is at position pos.
func (l *Ledger) decode(it *pebbledb.Iterator, pos event.Position) (event.Event, error) {
	v, err := it.ValueAndErr()
	if err == nil {
		var e event.Event
		if e, err = event.DecodeBinary(v); err == nil {
			if e.Position == pos {
				return e, nil
			}
			err = fmt.Errorf("stored event says position %d", e.Position)
		}
	}
	return event.Event{}, fmt.Errorf("ledger: read %s: event at position %d: %w", l.dir, pos, err)
}

// ReadKeys returns up to limit events after position after that carry any of keys, in
// position order, each once, up to the head. It merges the keys' index ranges, then
// fetches the events.
func (l *Ledger) ReadKeys(ctx context.Context, keys []string, after event.Position, limit int) ([]event.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, k := range keys {
		if !notify.ValidKey(k) {
			return nil, fmt.Errorf("ledger: read keys: invalid key %q (keys are non-empty and contain no NUL byte)", k)
		}
	}
	if err := l.enter(); err != nil {
		return nil, err
	}
	defer l.leave()
	if err := l.pub.CheckTail(after); err != nil {
		return nil, err
	}
	head := l.pub.Head()
	if limit <= 0 || after >= head || len(keys) == 0 {
		return nil, nil
	}
	positions, err := l.mergeIndex(ctx, keys, after, head, limit)
	if err != nil {
		return nil, err
	}
	if len(positions) == 0 {
		// The index entries may be missing because Truncate removed them meanwhile.
		return nil, l.pub.CheckTail(after)
	}
	it, err := l.db.NewIterWithContext(ctx, &pebbledb.IterOptions{
		LowerBound: eventKey(nil, positions[0]),
		UpperBound: append(eventKey(nil, positions[len(positions)-1]), 0),
	})
	if err != nil {
		return nil, fmt.Errorf("ledger: read keys %s: %w", l.dir, err)
	}
	defer it.Close()
	// As in Read: this iterator holds every event after a tail published later.
	if err := l.pub.CheckTail(after); err != nil {
		return nil, err
	}
	out := make([]event.Event, 0, len(positions))
	var key []byte
	for _, pos := range positions {
		if err := l.check(ctx, len(out)); err != nil {
			return nil, err
		}
		key = eventKey(key[:0], pos)
		if !it.SeekGE(key) || !bytes.Equal(it.Key(), key) {
			if err := it.Error(); err != nil {
				return nil, fmt.Errorf("ledger: read keys %s: %w", l.dir, err)
			}
			return nil, fmt.Errorf("ledger: read keys %s: the index names position %d but its event is missing", l.dir, pos)
		}
		e, err := l.decode(it, pos)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// mergeIndex returns up to limit positions in (after, head] indexed under any of keys,
// ascending and without duplicates.
func (l *Ledger) mergeIndex(ctx context.Context, keys []string, after, head event.Position, limit int) ([]event.Position, error) {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	h := make(cursorHeap, 0, len(keys))
	defer func() {
		for _, c := range h {
			c.it.Close()
		}
	}()
	for _, k := range keys {
		it, err := l.db.NewIterWithContext(ctx, &pebbledb.IterOptions{
			LowerBound: indexKey(nil, k, after+1),
			UpperBound: append(indexKey(nil, k, head), 0),
		})
		if err != nil {
			return nil, fmt.Errorf("ledger: read keys %s: %w", l.dir, err)
		}
		c := &cursor{it: it, plen: len(k) + 2}
		if err := c.load(it.First()); err != nil {
			it.Close()
			return nil, fmt.Errorf("ledger: read keys %s: key %q: %w", l.dir, k, err)
		}
		if c.ok {
			h = append(h, c)
		} else {
			it.Close()
		}
	}
	heap.Init(&h)
	var out []event.Position
	for len(h) > 0 && len(out) < limit {
		if err := l.check(ctx, len(out)); err != nil {
			return nil, err
		}
		c := h[0]
		if n := len(out); n == 0 || out[n-1] != c.pos {
			out = append(out, c.pos)
		}
		if err := c.load(c.it.Next()); err != nil {
			return nil, fmt.Errorf("ledger: read keys %s: %w", l.dir, err)
		}
		if c.ok {
			heap.Fix(&h, 0)
		} else {
			heap.Pop(&h)
			c.it.Close()
		}
	}
	return out, nil
}

// cursor is one key's index iterator in the merge.
type cursor struct {
	it   *pebbledb.Iterator
	plen int // length of the key's prefix: 'k' + key + 0x00
	pos  event.Position
	ok   bool
}

// load reads the position the iterator is at; valid is what positioning it returned.
func (c *cursor) load(valid bool) error {
	c.ok = false
	if !valid {
		return c.it.Error()
	}
	k := c.it.Key()
	if len(k) != c.plen+8 {
		return fmt.Errorf("malformed index key %x", k)
	}
	c.pos = event.Position(binary.BigEndian.Uint64(k[c.plen:]))
	c.ok = true
	return nil
}

type cursorHeap []*cursor

func (h cursorHeap) Len() int           { return len(h) }
func (h cursorHeap) Less(i, j int) bool { return h[i].pos < h[j].pos }
func (h cursorHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *cursorHeap) Push(x any)        { *h = append(*h, x.(*cursor)) }
func (h *cursorHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return c
}

// Wait blocks until the head is past after, ctx ends or the ledger is closed.
func (l *Ledger) Wait(ctx context.Context, after event.Position) error {
	return l.pub.Wait(ctx, after)
}

// Close closes the database. It does not Sync: transactions committed since the last
// Sync are dropped, as an open one is. Reads and waits in progress end with
// [ledger.ErrClosed], and so do later calls.
func (l *Ledger) Close() error {
	if !l.pub.Close() {
		return ledger.ErrClosed
	}
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.fatal.Err() != nil {
		// Pebble cannot be closed cleanly after a fatal error; the write that met it
		// returned the error.
		l.fsClose.Close()
		return nil
	}
	l.batch.Close()
	err := l.db.Close()
	l.fsClose.Close()
	if err != nil {
		return fmt.Errorf("ledger: close %s: %w", l.dir, err)
	}
	return nil
}

// eventKey appends the key of the event at pos to b.
func eventKey(b []byte, pos event.Position) []byte {
	b = append(b, prefixEvent)
	return binary.BigEndian.AppendUint64(b, uint64(pos))
}

// parseEventKey returns the position of an event key.
func parseEventKey(k []byte) (event.Position, bool) {
	if len(k) != 9 || k[0] != prefixEvent {
		return 0, false
	}
	return event.Position(binary.BigEndian.Uint64(k[1:])), true
}

// indexKey appends the index entry of key for the event at pos to b.
func indexKey(b []byte, key string, pos event.Position) []byte {
	b = append(b, prefixIndex)
	b = append(b, key...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint64(b, uint64(pos))
}

// The first byte of the encoded state. Version 2 adds the tail; a ledger never truncated
// keeps writing version 1, which earlier walflow versions read.
const (
	stateVersion     = 1
	stateVersionTail = 2
)

// encodeState appends the state's compact form to b.
func encodeState(b []byte, st ledger.State) []byte {
	if st.Tail == 0 {
		b = append(b, stateVersion)
	} else {
		b = append(b, stateVersionTail)
		b = binary.AppendUvarint(b, uint64(st.Tail))
	}
	b = binary.AppendUvarint(b, uint64(st.Head))
	b = binary.AppendUvarint(b, uint64(st.LastCommitLSN))
	b = binary.AppendUvarint(b, uint64(st.LastEndLSN))
	b = binary.AppendUvarint(b, uint64(st.AckedLSN))
	b = appendString(b, st.Origin.SystemID)
	b = binary.AppendVarint(b, int64(st.Origin.Timeline))
	b = appendString(b, st.Origin.Database)
	return appendString(b, st.Origin.Slot)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeState decodes encodeState's form.
func decodeState(b []byte) (ledger.State, error) {
	if len(b) == 0 {
		return ledger.State{}, errors.New("empty metadata")
	}
	if b[0] != stateVersion && b[0] != stateVersionTail {
		return ledger.State{}, fmt.Errorf("unknown metadata version %d (this walflow reads versions %d and %d; upgrade walflow)", b[0], stateVersion, stateVersionTail)
	}
	d := varint.Decoder{B: b[1:]}
	var st ledger.State
	if b[0] == stateVersionTail {
		st.Tail = event.Position(d.Uvarint())
	}
	st.Head = event.Position(d.Uvarint())
	st.LastCommitLSN = event.LSN(d.Uvarint())
	st.LastEndLSN = event.LSN(d.Uvarint())
	st.AckedLSN = event.LSN(d.Uvarint())
	st.Origin.SystemID = d.String()
	tl := d.Varint()
	st.Origin.Timeline = int32(tl)
	st.Origin.Database = d.String()
	st.Origin.Slot = d.String()
	if d.Bad || len(d.B) != 0 || int64(st.Origin.Timeline) != tl || st.Tail > st.Head {
		return ledger.State{}, fmt.Errorf("malformed metadata %x", b)
	}
	return st, nil
}
