package pebble

import (
	"context"
	"fmt"

	pebbledb "github.com/cockroachdb/pebble/v2"

	"github.com/walflow/walflow/event"
)

// Truncate removes every event at or before through (clamped to the head), with its index
// entries, and makes through the tail, durably. It works in batches of at most
// truncateChunkEvents events, each of which deletes its events with one range deletion, their
// index entries, and records the new tail in the state key, so that an interrupted Truncate
// leaves a consistent, shorter ledger. It is safe for concurrent use with the writer and
// readers; concurrent Truncates run one after the other.
//
// The index entries of an event are found by giving it to the Indexer again, as Open does
// for an interrupted transaction, which is why the Indexer must stay the same.
func (l *Ledger) Truncate(ctx context.Context, through event.Position) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	l.truncMu.Lock()
	defer l.truncMu.Unlock()
	through = min(through, l.pub.Head())
	tail := l.pub.Tail()
	if through <= tail {
		return nil
	}
	it, err := l.db.NewIterWithContext(ctx, &pebbledb.IterOptions{
		LowerBound: eventKey(nil, tail+1),
		UpperBound: eventKey(nil, through+1),
	})
	if err != nil {
		return fmt.Errorf("ledger: truncate %s through position %d: %w", l.dir, through, err)
	}
	c := truncChunk{l: l, from: tail + 1, index: map[string][]event.Position{}}
	removed, err := c.run(ctx, it, through)
	if cerr := it.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ledger: truncate %s through position %d (the tail is now %d): %w", l.dir, through, l.pub.Tail(), err)
	}
	l.truncBytes += removed
	if l.truncBytes >= l.compactAfter {
		// The range deletion lets Pebble drop the files it covers, but only once a
		// compaction reaches them; compacting the removed range now returns the space.
		// Compacting the index would rewrite all of it, so its deletions are left to
		// Pebble's compactions of tombstone-dense files.
		if err := l.db.Compact(ctx, eventKey(nil, 0), eventKey(nil, through+1), false); err != nil {
			return fmt.Errorf("ledger: compact %s after truncating through position %d: %w", l.dir, through, err)
		}
		l.truncBytes = 0
	}
	return nil
}

// truncChunk gathers the deletions of one Truncate batch.
type truncChunk struct {
	l     *Ledger
	from  event.Position              // the first position of the batch
	n     int                         // events in the batch
	index map[string][]event.Position // index key → positions to delete, ascending
	keys  []string                    // an event's index keys, reused
}

// run removes the events of the iterator, bounded to (tail, through], batch by batch. It
// returns how many bytes of events it removed.
func (c *truncChunk) run(ctx context.Context, it *pebbledb.Iterator, through event.Position) (int64, error) {
	l := c.l
	var removed int64
	for valid := it.First(); valid; valid = it.Next() {
		if err := l.check(ctx, c.n); err != nil {
			return removed, err
		}
		pos, size, keys, err := l.storedKeys(it, c.keys[:0])
		if err != nil {
			return removed, err
		}
		removed += int64(size)
		for _, k := range keys {
			c.index[k] = append(c.index[k], pos)
		}
		clear(keys)
		c.keys = keys[:0]
		c.n++
		if c.n >= l.truncEvents && pos < through {
			if err := c.commit(pos, false); err != nil {
				return removed, err
			}
		}
	}
	if err := it.Error(); err != nil {
		return removed, err
	}
	return removed, c.commit(through, true)
}

// commit deletes the events from c.from through upTo with the index entries gathered,
// records upTo as the tail in the same batch, and starts the next batch after upTo. Only
// the last batch of a Truncate is synced: Pebble applies batches in order, so a durable
// last batch makes the earlier ones durable too, and a crash before it leaves a consistent
// prefix.
func (c *truncChunk) commit(upTo event.Position, sync bool) error {
	l := c.l
	b := l.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(eventKey(nil, c.from), eventKey(nil, upTo+1), nil); err != nil {
		return err
	}
	var kb []byte
	for k, ps := range c.index {
		if len(ps) >= rangeDeleteMin {
			if err := b.DeleteRange(indexKey(nil, k, ps[0]), indexKey(nil, k, ps[len(ps)-1]+1), nil); err != nil {
				return err
			}
			continue
		}
		for _, p := range ps {
			kb = indexKey(kb[:0], k, p)
			if err := b.Delete(kb, nil); err != nil {
				return err
			}
		}
	}
	o := pebbledb.NoSync
	if sync {
		o = pebbledb.Sync
	}
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	// Under stateMu no state write is under way, so the published state is the durable one.
	st := l.pub.State()
	st.Tail = upTo
	if err := b.Set(stateKey, encodeState(nil, st), nil); err != nil {
		return err
	}
	// Publish the tail before the deletions become visible: a reader that opens its
	// iterator and then finds the old tail is sure to see every event after that tail.
	l.pub.SetTail(upTo)
	if err := b.Commit(o); err != nil {
		return err
	}
	c.from = upTo + 1
	c.n = 0
	clear(c.index)
	return nil
}
