package disk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/lockholder"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/notify"
)

// Defaults of [Options].
const (
	// SegmentBytesDefault is the default [Options.SegmentBytes]: 64 MiB.
	SegmentBytesDefault = 64 << 20
	// ChunkBytesDefault is the default [Options.ChunkBytes]: 1 MiB.
	ChunkBytesDefault = 1 << 20
)

// checkEvery is how many events a loop handles between checks for Close and ctx.
const checkEvery = 256

// ErrReadOnly is returned by the write methods of a ledger opened with [OpenReadOnly].
var ErrReadOnly = errors.New("ledger: opened read-only")

// Options configures a disk ledger.
type Options struct {
	// Indexer gives each event its index keys; nil indexes nothing. Open must be given the
	// same Indexer as the run that wrote the ledger: it indexes the newest segment's events
	// again when it opens the ledger.
	Indexer ledger.Indexer
	// Logger receives the ledger's messages; nil discards them.
	Logger *slog.Logger
	// SegmentBytes is the size past which the writer starts a new segment file; 0 means
	// SegmentBytesDefault.
	SegmentBytes int64
	// ChunkBytes is how many bytes are gathered in memory before they are written (without
	// fsync); 0 means ChunkBytesDefault.
	ChunkBytes int
}

// Ledger is a [ledger.Ledger] stored in segment files. Create it with [Open], or open a
// running ledger's files for reading with [OpenReadOnly].
type Ledger struct {
	dir      string
	log      *slog.Logger
	indexer  ledger.Indexer
	segBytes int64
	chunk    int
	readOnly bool
	lock     *os.File // the writer's exclusive lock; nil when read-only
	pub      *notify.Publisher

	// closeMu is held shared by every call that uses the files, and exclusively by Close.
	closeMu sync.RWMutex
	// stateMu is held by every write of the meta file and the publication of state, so
	// that the writer and Truncate never write back an older copy of each other's part.
	stateMu sync.Mutex
	// truncMu serializes Truncate.
	truncMu sync.Mutex
	// removeMu is held shared by every read of the segment files, and exclusively while
	// segments are closed and removed (Truncate, an abort across segments).
	removeMu sync.RWMutex
	// mu guards segs and the growing fields of the active segment.
	mu   sync.RWMutex
	segs []*segment

	// Writer state, used by the writer goroutine only (and Close).
	active  *segment
	buf     []byte // bytes of the active segment not yet written, from bufOff
	bufOff  int64
	end     int64 // the active segment's length, written or not
	synced  int64 // the active segment's length at the last Sync
	next    event.Position
	pending ledger.State // the state once the committed transactions are synced
	dirty   bool
	inTx    bool
	txMeta  event.TxMeta
	txStart event.Position
	txSeg   *segment
	txOff   int64
	werr    error
	keys    []string
	rec     []byte
}

var _ ledger.Ledger = (*Ledger)(nil)

// Open opens the ledger in dir for writing, creating it if needed, and takes an exclusive
// lock on it. It recovers the ledger to the last valid record of the newest segment and
// removes an interrupted transaction, before it returns. opts may be nil.
func Open(ctx context.Context, dir string, opts *Options) (*Ledger, error) {
	return open(ctx, dir, opts, false)
}

// OpenReadOnly opens the ledger in dir for reading, without a lock, so that it works while
// a writer holds the ledger. It reads the ledger as it is when OpenReadOnly runs: events
// synced later are not visible (open it again to see them), and the write methods and
// Truncate fail with [ErrReadOnly]. It changes nothing in dir.
func OpenReadOnly(ctx context.Context, dir string, opts *Options) (*Ledger, error) {
	return open(ctx, dir, opts, true)
}

func open(ctx context.Context, dir string, opts *Options, readOnly bool) (*Ledger, error) {
	if opts == nil {
		opts = &Options{}
	}
	if dir == "" {
		return nil, errors.New("ledger: open: no directory given")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ledger: open %s: %w", dir, err)
	}
	l := &Ledger{
		dir:      dir,
		log:      opts.Logger,
		indexer:  opts.Indexer,
		segBytes: opts.SegmentBytes,
		chunk:    opts.ChunkBytes,
		readOnly: readOnly,
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.segBytes <= 0 {
		l.segBytes = SegmentBytesDefault
	}
	if l.chunk <= 0 {
		l.chunk = ChunkBytesDefault
	}
	var st ledger.State
	var err error
	for attempt := 1; ; attempt++ {
		st, err = l.openDir(ctx)
		if err == nil {
			break
		}
		for _, s := range l.segs {
			s.closeFiles()
		}
		if l.active != nil && !slices.Contains(l.segs, l.active) {
			l.active.closeFiles()
		}
		l.segs, l.active = nil, nil
		if l.lock != nil {
			l.lock.Close()
		}
		// A reader beside a writer may list a segment that Truncate removes before it
		// opens it: it lists the directory again.
		if iu := (*ledger.InUseError)(nil); errors.As(err, &iu) {
			return nil, err
		}
		if !readOnly || !errors.Is(err, os.ErrNotExist) || attempt == 3 {
			return nil, fmt.Errorf("ledger: open %s: %w", dir, err)
		}
	}
	l.pending = st
	l.next = st.Head + 1
	l.pub = notify.New(st)
	return l, nil
}

// afterList is called by open after it lists the directory and reads the meta file;
// tests set it.
var afterList func(dir string)

// otherBackend returns an error when dir holds a ledger of another backend.
func otherBackend(names []string) error {
	for _, n := range names {
		if n == "CURRENT" || strings.HasPrefix(n, "MANIFEST-") || strings.HasPrefix(n, "OPTIONS-") {
			return errors.New("this directory holds a ledger of the pebble backend (walflow before segment files); set ledger.backend: pebble to keep using it, convert it with walflow ledger migrate, or point ledger.dir at a new directory for the disk backend")
		}
	}
	return nil
}

// openDir locks, reads and recovers the directory; it returns the recovered state.
func (l *Ledger) openDir(ctx context.Context) (ledger.State, error) {
	if !l.readOnly {
		if err := os.MkdirAll(l.dir, 0o755); err != nil {
			return ledger.State{}, err
		}
	}
	ents, err := os.ReadDir(l.dir)
	if err != nil {
		return ledger.State{}, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if err := otherBackend(names); err != nil {
		return ledger.State{}, err
	}

	if !l.readOnly {
		if err := l.takeLock(); err != nil {
			return ledger.State{}, err
		}
	}
	var firsts []event.Position
	for _, n := range names {
		if p, ok := parseSegName(n); ok {
			firsts = append(firsts, p)
		} else if !l.readOnly && strings.HasSuffix(n, tmpExt) {
			os.Remove(filepath.Join(l.dir, n)) // an interrupted atomic write
		}
	}
	slices.Sort(firsts)
	meta, err := os.ReadFile(filepath.Join(l.dir, metaName))
	var st ledger.State
	switch {
	case errors.Is(err, os.ErrNotExist) && len(firsts) == 0:
		if l.readOnly {
			return ledger.State{}, errors.New("no ledger here yet (no " + metaName + ")")
		}
		if err := writeFileAtomic(l.dir, metaName, encodeMeta(st)); err != nil {
			return ledger.State{}, fmt.Errorf("create %s: %w", metaName, err)
		}
	case err != nil:
		return ledger.State{}, fmt.Errorf("read %s: %w", metaName, err)
	default:
		if st, err = decodeMeta(meta); err != nil {
			return ledger.State{}, fmt.Errorf("%s: %w", filepath.Join(l.dir, metaName), err)
		}
	}
	if afterList != nil {
		afterList(l.dir)
	}
	if err := ctx.Err(); err != nil {
		return ledger.State{}, err
	}
	return l.recover(st, firsts)
}

// takeLock takes the writer's exclusive lock on the directory and writes this process's
// id into the lock file, so that a second writer's error can name the holder.
func (l *Ledger) takeLock() error {
	path := filepath.Join(l.dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			h := lockholder.FromPIDFile(path)
			return &ledger.InUseError{Dir: l.dir, PID: h.PID, Command: h.Command, Err: err}
		}
		return fmt.Errorf("lock %s: %w", lockName, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0) // best effort: only names the holder
	}
	l.lock = f
	return nil
}

// damaged is the error for a damaged segment that holds synced data.
func (l *Ledger) damaged(path string, err error) error {
	return fmt.Errorf("segment %s holds synced events but is damaged (%w); this is a disk failure, not an interrupted write, and walflow will not skip it: restore %s from a backup, or move it aside and start a new ledger (readers must then reload from the database)",
		path, err, l.dir)
}

// recover opens the segments whose first positions are firsts, finds the last whole
// transaction, removes what follows it (unless read-only) and returns the state.
func (l *Ledger) recover(st ledger.State, firsts []event.Position) (ledger.State, error) {
	// Segments left by a Truncate interrupted before it removed them.
	for len(firsts) > 1 && firsts[1]-1 <= st.Tail {
		if !l.readOnly {
			l.removeSegFiles(firsts[0])
		}
		firsts = firsts[1:]
	}
	var sc *scanned
	var seg *segment
	newest := true
	for len(firsts) > 0 {
		first := firsts[len(firsts)-1]
		path := filepath.Join(l.dir, segName(first))
		f, err := l.openSeg(path)
		if err != nil {
			return st, err
		}
		s, err := scanSegment(f, first, l.indexer, !newest)
		if err != nil {
			f.Close()
			if errors.As(err, new(*damageError)) {
				return st, l.damaged(path, err)
			}
			return st, fmt.Errorf("read segment %s: %w", path, err)
		}
		if s.commits || s.keep > 0 || (st.Head+1 == first && s.end > 0) {
			sc, seg = s, &segment{first: first, path: path, f: f}
			break
		}
		// Nothing committed in this segment: its events belong to an interrupted
		// transaction, unless the meta file says some were synced.
		if st.Head >= first {
			f.Close()
			reason := "no commit record"
			if s.damage != nil {
				reason = s.damage.Error()
			}
			return st, l.damaged(path, errors.New(reason))
		}
		f.Close()
		if !l.readOnly {
			l.removeSegFiles(first)
			if err := syncDir(l.dir); err != nil {
				return st, err
			}
		}
		firsts = firsts[:len(firsts)-1]
		newest = false
	}
	if seg == nil {
		// No segment: a new ledger, or every segment removed.
		if l.readOnly {
			seg = &segment{first: st.Head + 1, keys: map[string][]uint32{}}
		} else {
			var err error
			if seg, err = l.createSeg(st.Head + 1); err != nil {
				return st, err
			}
		}
		l.segs = []*segment{seg}
		l.active = seg
		l.end, l.bufOff, l.synced = segHeaderLen, segHeaderLen, segHeaderLen
		return st, nil
	}
	if sc.commits {
		if sc.commit.head < st.Head || sc.commit.commitLSN < st.LastCommitLSN {
			err := fmt.Errorf("its last whole transaction ends at position %d, but position %d was synced", sc.commit.head, st.Head)
			if sc.damage != nil {
				err = fmt.Errorf("%w, and it stops at a %w", err, sc.damage)
			}
			return st, l.damaged(seg.path, err)
		}
		st.Head, st.LastCommitLSN, st.LastEndLSN = sc.commit.head, sc.commit.commitLSN, sc.commit.endLSN
	} else if st.Head+1 != seg.first {
		return st, l.damaged(seg.path, fmt.Errorf("it starts at position %d, but the ledger's head is %d", seg.first, st.Head))
	}
	switch {
	case sc.damage != nil:
		// A torn write, or damage to synced records after the head the meta file knows:
		// the two cannot be told apart, so it is said loudly.
		l.log.Warn("ledger: the newest segment ends in a damaged record; recovered to the last whole transaction before it",
			"dir", l.dir, "segment", seg.path, "head", uint64(st.Head), "discarded_bytes_from", sc.cut, "damage", sc.damage.Error())
	case sc.cut < sc.end:
		l.log.Info("ledger: removed the records of an interrupted transaction", "dir", l.dir, "segment", seg.path,
			"head", uint64(st.Head), "discarded_bytes_from", sc.cut)
	}
	mem := segment{count: sc.count, offsets: sc.offsets, keys: sc.keys}
	mem.trim(sc.keep)
	seg.count, seg.offsets, seg.keys = mem.count, mem.offsets, mem.keys
	seg.commit, seg.commits = sc.commit, sc.commits
	if !l.readOnly {
		if fi, err := seg.f.Stat(); err != nil {
			return st, err
		} else if fi.Size() != sc.cut {
			if err := seg.f.Truncate(sc.cut); err != nil {
				return st, fmt.Errorf("truncate segment %s: %w", seg.path, err)
			}
			if err := seg.f.Sync(); err != nil {
				return st, fmt.Errorf("sync segment %s: %w", seg.path, err)
			}
		}
		if sc.cut == 0 {
			if _, err := seg.f.WriteAt(segHeader(seg.first), 0); err != nil {
				return st, fmt.Errorf("write segment %s: %w", seg.path, err)
			}
			sc.cut = segHeaderLen
		}
		// The segment is active again: its index file, if any, is out of date.
		if err := os.Remove(filepath.Join(l.dir, idxName(seg.first))); err == nil {
			if err := syncDir(l.dir); err != nil {
				return st, err
			}
		}
	}
	l.end, l.bufOff, l.synced = sc.cut, sc.cut, sc.cut
	l.active = seg
	// The older, sealed segments.
	firsts = firsts[:len(firsts)-1]
	segs := make([]*segment, 0, len(firsts)+1)
	for i, first := range firsts {
		next := seg.first
		if i+1 < len(firsts) {
			next = firsts[i+1]
		}
		s, err := l.openSealed(first, next)
		if err != nil {
			for _, s := range segs {
				s.closeFiles()
			}
			seg.closeFiles()
			return st, err
		}
		segs = append(segs, s)
	}
	l.segs = append(segs, seg)
	if l.segs[0].first > st.Tail+1 {
		return st, fmt.Errorf("the oldest segment starts at position %d, but the events after position %d should be kept: segment files are missing from %s", l.segs[0].first, st.Tail, l.dir)
	}
	return st, nil
}

func (l *Ledger) openSeg(path string) (*os.File, error) {
	flag := os.O_RDWR
	if l.readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open segment: %w", err)
	}
	return f, nil
}

// openSealed opens a sealed segment, whose next segment starts at next, with its index
// file; a missing or damaged index file is rebuilt from the segment.
func (l *Ledger) openSealed(first, next event.Position) (*segment, error) {
	path := filepath.Join(l.dir, segName(first))
	f, err := l.openSeg(path)
	if err != nil {
		return nil, err
	}
	s := &segment{first: first, path: path, f: f}
	ipath := filepath.Join(l.dir, idxName(first))
	if idx, err := os.Open(ipath); err == nil {
		fi, err := idx.Stat()
		if err == nil {
			var info segInfo
			s.idxDir, info, err = decodeIndexFooter(idx, fi.Size(), first)
			if err == nil && info.count != int(next-first) {
				err = fmt.Errorf("index file counts %d events, but the next segment starts at position %d", info.count, next)
			}
			if err == nil {
				s.idx, s.count, s.offsets, s.commit, s.commits = idx, info.count, info.offsets, info.commit, info.commits
				return s, nil
			}
		}
		idx.Close()
		l.log.Warn("ledger: rebuilding a segment's index file", "path", ipath, "error", err)
	}
	sc, err := scanSegment(f, first, l.indexer, true)
	if err != nil {
		f.Close()
		if errors.As(err, new(*damageError)) {
			return nil, l.damaged(path, err)
		}
		return nil, fmt.Errorf("read segment %s: %w", path, err)
	}
	if sc.count != int(next-first) {
		f.Close()
		return nil, l.damaged(path, fmt.Errorf("it holds %d events, but the next segment starts at position %d", sc.count, next))
	}
	s.count, s.offsets, s.keys, s.commit, s.commits = sc.count, sc.offsets, sc.keys, sc.commit, sc.commits
	if !l.readOnly {
		if err := l.writeIndex(s, sc.end); err != nil {
			f.Close()
			return nil, err
		}
	}
	return s, nil
}

// writeIndex writes the index file of segment s, of size bytes, from its in-memory index,
// and switches s to it.
func (l *Ledger) writeIndex(s *segment, size int64) error {
	data, dir := encodeIndex(s.first, s.keys, segInfo{count: s.count, size: size, offsets: s.offsets, commit: s.commit, commits: s.commits})
	name := idxName(s.first)
	if err := writeFileAtomic(l.dir, name, data); err != nil {
		return fmt.Errorf("write index file %s: %w", filepath.Join(l.dir, name), err)
	}
	idx, err := os.Open(filepath.Join(l.dir, name))
	if err != nil {
		return fmt.Errorf("open index file: %w", err)
	}
	l.mu.Lock()
	s.idx, s.idxDir, s.keys = idx, dir, nil
	l.mu.Unlock()
	return nil
}

// createSeg creates the segment file whose first position is first, durably.
func (l *Ledger) createSeg(first event.Position) (*segment, error) {
	path := filepath.Join(l.dir, segName(first))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create segment: %w", err)
	}
	if _, err = f.Write(segHeader(first)); err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = syncDir(l.dir)
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create segment %s: %w", path, err)
	}
	return &segment{first: first, path: path, f: f, keys: map[string][]uint32{}}, nil
}

// removeSegFiles removes the segment file whose first position is first, and its index.
func (l *Ledger) removeSegFiles(first event.Position) {
	os.Remove(filepath.Join(l.dir, segName(first)))
	os.Remove(filepath.Join(l.dir, idxName(first)))
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

// enterWrite is enter for the write methods, which also fail after a write error and on
// a read-only ledger.
func (l *Ledger) enterWrite(ctx context.Context) error {
	if err := l.enter(); err != nil {
		return err
	}
	var err error
	switch {
	case l.readOnly:
		err = fmt.Errorf("%w: %s", ErrReadOnly, l.dir)
	case l.werr != nil:
		err = l.werr
	default:
		err = ctx.Err()
	}
	if err != nil {
		l.closeMu.RUnlock()
	}
	return err
}

func (l *Ledger) leave() { l.closeMu.RUnlock() }

// fail records a write error: what was written since the last Sync is in doubt, so the
// writer stops, and nothing after the last Sync is ever published.
func (l *Ledger) fail(step string, err error) error {
	l.werr = ledger.WriteFailed(fmt.Errorf("ledger: %s %s: %w", step, l.dir, err))
	l.log.Error("ledger: write failed; the ledger accepts no more writes until walflow restarts", "dir", l.dir, "error", err)
	return l.werr
}

// write adds a record to the active segment, writing full chunks.
func (l *Ledger) write(rec []byte) error {
	l.buf = append(l.buf, rec...)
	l.end += int64(len(rec))
	if len(l.buf) >= l.chunk {
		return l.flush()
	}
	return nil
}

// flush writes the gathered bytes (without fsync).
func (l *Ledger) flush() error {
	if len(l.buf) == 0 {
		return nil
	}
	if _, err := l.active.f.WriteAt(l.buf, l.bufOff); err != nil {
		return err
	}
	l.bufOff += int64(len(l.buf))
	l.buf = l.buf[:0]
	return nil
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
	l.txSeg, l.txOff = l.active, l.end
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
	if l.active.count > 0 && l.end >= l.segBytes {
		if err := l.seal(); err != nil {
			return l.fail("append: start a new segment", err)
		}
		if l.next == l.txStart {
			// The transaction starts in the new segment: an abort never goes back to
			// the old one, which Truncate may remove as a whole.
			l.txSeg, l.txOff = l.active, l.end
		}
	}
	l.rec = append(l.rec[:0], 0, 0, 0, 0, 0, 0, 0, 0) // the frame header, filled in below
	l.rec = append(l.rec, recEvent)
	l.rec = event.AppendBinary(l.rec, e)
	frameHeader(l.rec, l.rec[frameLen:])
	off := l.end
	if err := l.write(l.rec); err != nil {
		return l.fail("append", err)
	}
	s := l.active
	rel := uint32(pos - s.first)
	l.mu.Lock()
	if s.count%sparseEvery == 0 {
		s.offsets = append(s.offsets, off)
	}
	for _, k := range l.keys {
		s.keys[k] = append(s.keys[k], rel)
	}
	s.count++
	l.mu.Unlock()
	l.next++
	return nil
}

// seal ends the active segment: it is written and fsynced with its index file, and a new
// segment starts at the next position.
func (l *Ledger) seal() error {
	s := l.active
	if err := l.flush(); err != nil {
		return err
	}
	if err := s.f.Sync(); err != nil {
		return err
	}
	if err := l.writeIndex(s, l.end); err != nil {
		return err
	}
	ns, err := l.createSeg(l.next)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.segs = append(l.segs, ns)
	l.mu.Unlock()
	l.active = ns
	l.end, l.bufOff, l.synced = segHeaderLen, segHeaderLen, segHeaderLen
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
	c := commitRec{head: l.next - 1, commitLSN: l.txMeta.CommitLSN, endLSN: endLSN}
	l.rec = append(l.rec[:0], 0, 0, 0, 0, 0, 0, 0, 0) // the frame header, filled in below
	l.rec = appendCommit(l.rec, c)
	frameHeader(l.rec, l.rec[frameLen:])
	if err := l.write(l.rec); err != nil {
		return l.fail("commit", err)
	}
	l.active.commit, l.active.commits = c, true
	l.pending.Head = c.head
	l.pending.LastCommitLSN = c.commitLSN
	l.pending.LastEndLSN = endLSN
	l.inTx = false
	l.dirty = true
	return nil
}

// AbortTx drops the open transaction: its records are cut from the segment files, its
// index entries dropped, and its positions reused.
func (l *Ledger) AbortTx(ctx context.Context) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	if l.readOnly {
		return fmt.Errorf("%w: %s", ErrReadOnly, l.dir)
	}
	if l.werr != nil {
		return l.werr
	}
	if !l.inTx {
		return ledger.ErrNoTx
	}
	if err := l.abort(); err != nil {
		return l.fail("abort transaction", err)
	}
	l.next = l.txStart
	l.inTx = false
	return nil
}

func (l *Ledger) abort() error {
	s := l.txSeg
	if s != l.active {
		// The transaction started new segments: remove them and make its first segment
		// active again. Readers never read past the head, which is before them, but they
		// may be reading s through its index file.
		l.removeMu.Lock()
		defer l.removeMu.Unlock()
		l.mu.Lock()
		i := slices.Index(l.segs, s)
		if i < 0 {
			l.mu.Unlock()
			return fmt.Errorf("the segment %s where the transaction started is gone", s.path)
		}
		gone := slices.Clone(l.segs[i+1:])
		l.segs = l.segs[:i+1]
		l.mu.Unlock()
		for _, g := range gone {
			g.closeFiles()
			l.removeSegFiles(g.first)
		}
		if err := os.Remove(filepath.Join(l.dir, idxName(s.first))); err != nil {
			return err
		}
		if err := s.f.Truncate(l.txOff); err != nil {
			return err
		}
		sc, err := scanSegment(s.f, s.first, l.indexer, true)
		if err != nil {
			return err
		}
		if err := syncDir(l.dir); err != nil {
			return err
		}
		l.mu.Lock()
		s.idx.Close()
		s.idx, s.idxDir = nil, nil
		s.count, s.offsets, s.keys = sc.count, sc.offsets, sc.keys
		l.mu.Unlock()
		l.active = s
		l.buf = l.buf[:0]
		l.end, l.bufOff = l.txOff, l.txOff
		l.synced = min(l.synced, l.txOff)
		return nil
	}
	if l.txOff >= l.bufOff {
		l.buf = l.buf[:l.txOff-l.bufOff]
	} else {
		l.buf = l.buf[:0]
		if err := s.f.Truncate(l.txOff); err != nil {
			return err
		}
		l.bufOff = l.txOff
	}
	l.end = l.txOff
	l.mu.Lock()
	s.trim(int(l.txStart - s.first))
	l.mu.Unlock()
	return nil
}

// Sync writes the committed transactions and fsyncs the active segment (segments sealed
// since the last Sync were fsynced when sealed), then publishes the new state to readers
// and wakes Wait. An open transaction stays open and invisible. One Sync makes every
// transaction committed since the last durable together: the source calls it once per
// sync_delay, which is the group commit.
func (l *Ledger) Sync(ctx context.Context) error {
	if err := l.enterWrite(ctx); err != nil {
		return err
	}
	defer l.leave()
	if !l.dirty {
		return nil
	}
	if err := l.flush(); err != nil {
		return l.fail("sync", err)
	}
	if err := l.active.f.Sync(); err != nil {
		return l.fail("sync", err)
	}
	l.synced = l.end
	l.dirty = false
	l.stateMu.Lock()
	l.pub.Publish(l.pending)
	l.stateMu.Unlock()
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

// setState changes the published state (not the pending transactions) and writes it to
// the meta file.
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
	if err := writeFileAtomic(l.dir, metaName, encodeMeta(st)); err != nil {
		return l.fail(step, err)
	}
	l.pub.Publish(st)
	return nil
}

// State returns the durable state.
func (l *Ledger) State() ledger.State { return l.pub.State() }

// Wait blocks until the head is past after, ctx ends or the ledger is closed.
func (l *Ledger) Wait(ctx context.Context, after event.Position) error {
	return l.pub.Wait(ctx, after)
}

// Close closes the files and releases the lock. It does not Sync: what was committed
// since the last Sync is cut from the active segment, as an open transaction is (a
// segment sealed since then was fsynced whole and keeps its transactions). Reads
// and waits in progress end with [ledger.ErrClosed], and so do later calls.
func (l *Ledger) Close() error {
	if !l.pub.Close() {
		return ledger.ErrClosed
	}
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	var err error
	if !l.readOnly && l.werr == nil && l.active.f != nil {
		if fi, serr := l.active.f.Stat(); serr == nil && fi.Size() > l.synced {
			err = l.active.f.Truncate(l.synced)
		}
	}
	l.mu.Lock()
	for _, s := range l.segs {
		s.closeFiles()
	}
	l.mu.Unlock()
	if l.lock != nil {
		l.lock.Close()
	}
	if err != nil {
		return fmt.Errorf("ledger: close %s: %w", l.dir, err)
	}
	return nil
}
