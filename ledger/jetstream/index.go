package jetstream

import (
	"context"
	"fmt"
	"github.com/walflow/walflow/ledger/internal/keymerge"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// index is a ledger's local view of the stream, kept by its follower: the channel index,
// the latest events, and the last transaction end seen. Its methods are safe for
// concurrent use, but apply and flush are called by the follower alone (flush also by
// Close once the follower stopped).
//
// Without a store the channel index is in memory: keys holds every key's positions. With
// a store (Options.IndexDir), keys holds only the positions after flushed, the rest are
// in the store; the follower moves them there every flushEvents messages and when the
// stream is idle.
type index struct {
	indexer  ledger.Indexer
	maxCache int
	store    *chanStore // nil: in memory only
	storeID  storeMeta  // the checkpoint's identity fields (format, indexer, stream)
	log      *slog.Logger

	mu        sync.RWMutex
	keys      map[string][]event.Position // key → ascending positions, past the head too
	flushed   event.Position              // with a store: the positions through it are there
	pending   int                         // messages applied since the last flush
	tail      event.Position              // the last pruned position
	cacheBase event.Position              // cache[i] holds the message at cacheBase+i+1
	cache     [][]byte
	head      event.Position // the last message ending a transaction
	commit    event.LSN      // its transaction's commit LSN
	end       event.LSN      // and end LSN
	processed event.Position // the last sequence applied (or the tail)
	lastID    string         // its identity (storedID), with a store
	applied   int64          // messages applied since Open (what Open read of the stream)
	changed   chan struct{}  // closed and replaced when processed moves
	scratch   []string

	// The follower's alone.
	storeFailed bool           // a write of the store failed: the index stays in memory
	storeTail   event.Position // the store holds no entry at or before it (as far as known)
	pruneMore   bool           // the last prune left entries at or before the tail
}

// flushEvents is how many messages the follower applies between two writes of the store
// (tests lower it).
var flushEvents = 8192

func newIndex(indexer ledger.Indexer, maxCache int) *index {
	return &index{indexer: indexer, maxCache: maxCache, keys: map[string][]event.Position{}, changed: make(chan struct{})}
}

// reset starts the index at a stream whose messages through tail were removed.
func (x *index) reset(tail event.Position) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.processed, x.head, x.cacheBase, x.flushed, x.tail, x.lastID = tail, tail, tail, tail, tail, ""
}

// resume starts the index at the store's checkpoint m, on a stream whose messages through
// tail were removed (tail <= m.Checkpoint).
func (x *index) resume(m storeMeta, tail event.Position) {
	x.mu.Lock()
	defer x.mu.Unlock()
	cp := event.Position(m.Checkpoint)
	x.processed, x.cacheBase, x.flushed, x.tail, x.lastID = cp, cp, cp, tail, m.LastID
	x.head, x.commit, x.end = max(event.Position(m.Head), tail), event.LSN(m.Commit), event.LSN(m.End)
	// The store may hold entries at or before the tail if retention ran while this
	// ledger was closed: the follower's first flush drops them.
	x.storeTail = 0
}

// apply adds the message at seq. It reports whether it ended a transaction.
//
// An event's keys enter the index at once, before its transaction ends: lookups stop at
// the head, so they stay invisible until then, and the index holds no other copy of a
// transaction in progress, however large. The messages of an unterminated tail are at the
// positions the next writer's replay completes (it publishes only the rest), so their
// entries are the ones the finished transaction needs.
func (x *index) apply(log *slog.Logger, seq event.Position, hdr nats.Header, data []byte) bool {
	var keys []string
	if x.indexer != nil {
		e, err := event.DecodeBinary(data)
		if err != nil {
			log.Warn("ledger/jetstream: a stream message is not an event; it is indexed under no key", "position", seq, "err", err)
		} else {
			keys = x.indexer(&e, x.scratch[:0])
			x.scratch = keys
		}
	}
	endHdr := hdr.Get(hdrEnd)
	var commit, end event.LSN
	ended := false
	if endHdr != "" {
		var err error
		_, commit, end, err = parseEnd(hdr.Get(hdrTx), endHdr)
		if err != nil {
			log.Warn("ledger/jetstream: a transaction end marker is malformed; the transaction stays invisible", "position", seq, "err", err)
		} else {
			ended = true
		}
	}
	defer clear(keys)

	x.mu.Lock()
	defer x.mu.Unlock()
	if seq <= x.processed {
		return false // a redelivery
	}
	x.processed = seq
	if x.store != nil {
		x.lastID = storedID(hdr)
	}
	x.applied++
	x.pending++
	if x.store != nil && !x.storeFailed {
		if err := x.store.add(seq, keys); err != nil {
			x.failStore(err)
		}
	}
	if seq != x.cacheBase+event.Position(len(x.cache))+1 {
		clear(x.cache)
		x.cache, x.cacheBase = x.cache[:0], seq-1
	}
	x.cache = append(x.cache, data)
	if n := len(x.cache); n > x.maxCache {
		drop := n - x.maxCache
		clear(x.cache[:drop])
		x.cache = x.cache[drop:]
		x.cacheBase += event.Position(drop)
	}
	for _, k := range keys {
		ps := x.keys[k]
		if n := len(ps); n > 0 && ps[n-1] == seq {
			continue // the indexer gave this key twice
		}
		if ps == nil {
			k = strings.Clone(k)
		}
		x.keys[k] = append(ps, seq)
	}
	if ended {
		x.head, x.commit, x.end = seq, commit, end
	}
	close(x.changed)
	x.changed = make(chan struct{})
	return ended
}

// parseEnd parses a transaction end marker.
func parseEnd(tx, end string) (first event.Position, commit, endLSN event.LSN, err error) {
	c, err := strconv.ParseUint(tx, 10, 64)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("header %s %q: %w", hdrTx, tx, err)
	}
	f, e, ok := strings.Cut(end, " ")
	if !ok {
		return 0, 0, 0, fmt.Errorf("header %s %q: want \"<first sequence> <end LSN>\"", hdrEnd, end)
	}
	fv, err := strconv.ParseUint(f, 10, 64)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("header %s %q: %w", hdrEnd, end, err)
	}
	ev, err := strconv.ParseUint(e, 10, 64)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("header %s %q: %w", hdrEnd, end, err)
	}
	return event.Position(fv), event.LSN(c), event.LSN(ev), nil
}

// headState returns the last transaction end seen.
func (x *index) headState() (event.Position, event.LSN, event.LSN) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.head, x.commit, x.end
}

// waitProcessed blocks until the follower applied sequence seq (or more), ctx or the
// ledger's lctx ends.
func (x *index) waitProcessed(ctx, lctx context.Context, seq event.Position) error {
	for {
		x.mu.RLock()
		done, ch := x.processed >= seq, x.changed
		x.mu.RUnlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-lctx.Done():
			return ledger.ErrClosed
		}
	}
}

// prune drops the index entries and cached events at or before tail. The store's entries
// are dropped by the follower (flush); lookups never return them meanwhile, as they
// ask for positions after the tail.
func (x *index) prune(tail event.Position) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.tail = max(x.tail, tail)
	for k, ps := range x.keys {
		i := sort.Search(len(ps), func(i int) bool { return ps[i] > tail })
		if i == len(ps) {
			delete(x.keys, k)
		} else if i > 0 {
			x.keys[k] = ps[i:]
		}
	}
	if tail > x.cacheBase {
		drop := min(int(tail-x.cacheBase), len(x.cache))
		clear(x.cache[:drop])
		x.cache = x.cache[drop:]
		x.cacheBase += event.Position(drop)
	}
}

// lookup returns up to limit positions in (after, head] carrying any of keys, ascending.
func (x *index) lookup(keys []string, after, head event.Position, limit int) ([]event.Position, error) {
	lists := make([][]event.Position, len(keys), 2*len(keys))
	x.mu.RLock()
	for i, k := range keys {
		lists[i] = x.keys[k] // positions within a list's length never change
	}
	flushed := x.flushed
	x.mu.RUnlock()
	if x.store != nil && after < min(flushed, head) {
		for _, k := range keys {
			ps, err := x.store.positions(k, after, min(flushed, head), limit)
			if err != nil {
				return nil, err
			}
			lists = append(lists, ps)
		}
	}
	return keymerge.Positions(lists, after, head, limit), nil
}

// cached returns the cached messages at ps, nil where not cached.
func (x *index) cached(ps []event.Position) [][]byte {
	out := make([][]byte, len(ps))
	x.mu.RLock()
	defer x.mu.RUnlock()
	for i, p := range ps {
		if p > x.cacheBase && p <= x.cacheBase+event.Position(len(x.cache)) {
			out[i] = x.cache[p-x.cacheBase-1]
		}
	}
	return out
}

// failStore logs a failed write of the store and keeps the index in memory from then on.
// x.mu is held.
func (x *index) failStore(err error) {
	x.storeFailed = true
	x.log.Error("ledger/jetstream: the channel index cannot be written to its directory; it is kept in memory until the next start", "dir", x.store.dir, "err", err)
}

// flush writes the entries applied since the last flush to the store with their
// checkpoint, when at least minPending messages were applied (1: whatever was), and then
// drops the entries the store holds at or before the tail, a chunk at a time. sync makes
// the write durable.
func (x *index) flush(minPending int, sync bool) {
	if x.store == nil || x.storeFailed {
		return
	}
	x.mu.RLock()
	pending := x.pending
	m := x.storeID
	m.Checkpoint, m.Head, m.Commit, m.End, m.LastID = uint64(x.processed), uint64(x.head), uint64(x.commit), uint64(x.end), x.lastID
	tail := x.tail
	x.mu.RUnlock()
	committed := false
	if pending >= max(minPending, 1) {
		if err := x.store.commit(m, sync); err != nil {
			x.mu.Lock()
			x.failStore(err)
			x.mu.Unlock()
			return
		}
		x.mu.Lock()
		x.flushed = event.Position(m.Checkpoint)
		x.pending = 0
		clear(x.keys)
		x.mu.Unlock()
		committed = true
	}
	// Prune with the writes, when idle, and every 64 messages while a long prune goes on.
	if tail <= x.storeTail || !(committed || minPending <= 1 || (x.pruneMore && pending%64 == 0)) {
		return
	}
	done, err := x.store.prune(tail)
	if err != nil {
		x.mu.Lock()
		x.failStore(err)
		x.mu.Unlock()
		return
	}
	x.pruneMore = !done
	if done && x.flushed >= tail {
		// Entries at or before the tail still in the pending batch would reach the store
		// after this prune: it runs again after the flush that writes them.
		x.storeTail = tail
	}
}
