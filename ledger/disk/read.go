package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/notify"
)

// segView is what a reader needs of a segment, taken under Ledger.mu.
type segView struct {
	s       *segment
	f       *os.File
	first   event.Position
	count   int
	offsets []int64
}

func (v *segView) last() event.Position { return v.first + event.Position(v.count) - 1 }

// views returns the segments holding positions from..to, in order.
func (l *Ledger) views(from, to event.Position) []segView {
	l.mu.RLock()
	defer l.mu.RUnlock()
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].first > from }) - 1
	i = max(i, 0)
	var out []segView
	for ; i < len(l.segs) && l.segs[i].first <= to; i++ {
		s := l.segs[i]
		out = append(out, segView{s: s, f: s.f, first: s.first, count: s.count, offsets: s.offsets[:len(s.offsets):len(s.offsets)]})
	}
	return out
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

// cursor reads the events of one segment in position order.
type cursor struct {
	v   *segView
	rr  recReader
	pos event.Position // position of the next event record
	ok  bool           // rr is positioned
}

// seek reads up to the event at position p (in v) and returns it.
func (c *cursor) event(l *Ledger, v *segView, p event.Position) (event.Event, error) {
	if c.v != v || !c.ok || c.pos > p || p-c.pos >= 2*sparseEvery {
		i := int(p-v.first) / sparseEvery
		if v.f == nil || i >= len(v.offsets) {
			return event.Event{}, l.readErr(v, p, errors.New("the event is missing"))
		}
		c.v = v
		c.rr.reset(v.f, v.offsets[i])
		c.pos = v.first + event.Position(i*sparseEvery)
		c.ok = true
	}
	for {
		payload, err := c.rr.next()
		if err != nil {
			c.ok = false
			if err == io.EOF {
				err = errors.New("the event is missing")
			}
			return event.Event{}, l.readErr(v, p, err)
		}
		if payload[0] != recEvent {
			continue
		}
		if c.pos < p {
			c.pos++
			continue
		}
		c.pos++
		e, err := event.DecodeBinary(payload[1:])
		if err == nil && e.Position != p {
			err = fmt.Errorf("stored event says position %d", e.Position)
		}
		if err != nil {
			c.ok = false
			return event.Event{}, l.readErr(v, p, err)
		}
		return e, nil
	}
}

func (l *Ledger) readErr(v *segView, p event.Position, err error) error {
	if errors.As(err, new(*damageError)) {
		return fmt.Errorf("ledger: read %s: event at position %d: %w", l.dir, p, l.damaged(v.s.path, err))
	}
	return fmt.Errorf("ledger: read %s: segment %s: event at position %d: %w", l.dir, v.s.path, p, err)
}

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
	l.removeMu.RLock()
	defer l.removeMu.RUnlock()
	// Truncate publishes a tail before it removes segments under removeMu.
	if err := l.pub.CheckTail(after); err != nil {
		return nil, err
	}
	out := make([]event.Event, 0, min(uint64(end-after), 4096))
	var c cursor
	p := after + 1
	views := l.views(p, end)
	for i := range views {
		v := &views[i]
		for p <= end && p <= v.last() {
			if err := l.check(ctx, len(out)); err != nil {
				return nil, err
			}
			e, err := c.event(l, v, p)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
			p++
		}
	}
	if p <= end {
		return nil, fmt.Errorf("ledger: read %s: event at position %d is missing: no segment holds it", l.dir, p)
	}
	return out, nil
}

// ReadKeys returns up to limit events after position after that carry any of keys, in
// position order, each once, up to the head. Segment by segment, it looks the keys up in
// the segment's index and reads the events it names.
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
	l.removeMu.RLock()
	defer l.removeMu.RUnlock()
	if err := l.pub.CheckTail(after); err != nil {
		return nil, err
	}
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	var out []event.Event
	var c cursor
	// The events are apart: read ahead a few sparse intervals' worth, not a scan's.
	c.rr.size = 8 << 10
	views := l.views(after+1, head)
	for i := range views {
		v := &views[i]
		ps, err := l.lookup(v, keys, after, head)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			if len(out) >= limit {
				return out, nil
			}
			if err := l.check(ctx, len(out)); err != nil {
				return nil, err
			}
			e, err := c.event(l, v, p)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// lookup returns the positions in (after, head] of segment v indexed under any of keys,
// ascending and without duplicates.
func (l *Ledger) lookup(v *segView, keys []string, after, head event.Position) ([]event.Position, error) {
	lo, hi := uint32(0), uint32(v.count) // relative positions wanted: [lo, hi)
	if after >= v.first {
		lo = uint32(after - v.first + 1)
	}
	if head < v.last() {
		hi = uint32(head - v.first + 1)
	}
	var rel []uint32
	add := func(ps []uint32) {
		i, _ := slices.BinarySearch(ps, lo)
		for ; i < len(ps) && ps[i] < hi; i++ {
			rel = append(rel, ps[i])
		}
	}
	l.mu.RLock()
	mem := v.s.keys != nil
	if mem {
		for _, k := range keys {
			add(v.s.keys[k])
		}
	}
	idx, dir := v.s.idx, v.s.idxDir
	l.mu.RUnlock()
	if !mem {
		for _, k := range keys {
			ps, err := l.lookupIndex(v, idx, dir, k)
			if err != nil {
				return nil, err
			}
			add(ps)
		}
	}
	if len(keys) > 1 {
		slices.Sort(rel)
		rel = slices.Compact(rel)
	}
	out := make([]event.Position, len(rel))
	for i, r := range rel {
		out[i] = v.first + event.Position(r)
	}
	return out, nil
}

// lookupIndex reads key's positions from a sealed segment's index file.
func (l *Ledger) lookupIndex(v *segView, idx *os.File, dir []idxBlock, key string) ([]uint32, error) {
	i := sort.Search(len(dir), func(i int) bool { return dir[i].first > key }) - 1
	if i < 0 {
		return nil, nil
	}
	blk := dir[i]
	b := make([]byte, blk.n)
	if _, err := idx.ReadAt(b, blk.off); err != nil {
		return nil, fmt.Errorf("ledger: read keys %s: index of segment %s: %w", l.dir, v.s.path, err)
	}
	if crc(b) != blk.sum {
		return nil, fmt.Errorf("ledger: read keys %s: the index file of segment %s is damaged (block at offset %d fails its checksum); stop walflow and delete %s: it is rebuilt from the segment at the next start",
			l.dir, v.s.path, blk.off, idx.Name())
	}
	ps, err := findInBlock(b, key)
	if err != nil {
		return nil, fmt.Errorf("ledger: read keys %s: index file %s: %w", l.dir, idx.Name(), err)
	}
	return ps, nil
}
