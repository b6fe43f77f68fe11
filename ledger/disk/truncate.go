package disk

import (
	"context"
	"fmt"
	"slices"

	"github.com/walflow/walflow/event"
)

// Truncate removes every event at or before through (clamped to the head), and makes
// through the tail, durably. It records the new tail in the meta file first, publishes it
// (reads from before it fail with [ledger.ErrTruncated] from then on), then deletes every
// segment file, with its index file, whose events are all at or before the tail. The
// events of the segment the tail falls in stay in its file, out of reach of every read,
// until the tail passes the segment's end. The active segment is never deleted.
//
// It is safe for concurrent use with the writer and readers; concurrent Truncates run one
// after the other. An interrupted Truncate leaves the tail recorded and the segments
// behind it, which the next Open deletes.
func (l *Ledger) Truncate(ctx context.Context, through event.Position) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	if l.readOnly {
		return fmt.Errorf("%w: %s", ErrReadOnly, l.dir)
	}
	l.truncMu.Lock()
	defer l.truncMu.Unlock()
	through = min(through, l.pub.Head())
	if through <= l.pub.Tail() {
		return nil
	}
	l.stateMu.Lock()
	st := l.pub.State()
	st.Tail = through
	err := writeFileAtomic(l.dir, metaName, encodeMeta(st))
	if err == nil {
		l.pub.SetTail(through)
	}
	l.stateMu.Unlock()
	if err != nil {
		return fmt.Errorf("ledger: truncate %s through position %d: record the tail: %w", l.dir, through, err)
	}

	l.removeMu.Lock()
	defer l.removeMu.Unlock()
	l.mu.Lock()
	n := 0
	for n < len(l.segs)-1 && l.segs[n+1].first-1 <= through {
		n++
	}
	gone := slices.Clone(l.segs[:n])
	l.segs = slices.Delete(l.segs, 0, n)
	l.mu.Unlock()
	if n == 0 {
		return nil
	}
	for _, s := range gone {
		s.closeFiles()
		l.removeSegFiles(s.first)
	}
	if err := syncDir(l.dir); err != nil {
		return fmt.Errorf("ledger: truncate %s through position %d: %w", l.dir, through, err)
	}
	return nil
}
