package operator

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// BackfillProgress is a backfill's progress through one source entity, as reported to
// [BackfillOpts].Progress.
type BackfillProgress struct {
	// Operator is the operator's name.
	Operator string
	// Entity is the source entity being walked, as written in the operator's Entities.
	Entity string
	// Done counts the ids (SQL operator) or rows (Func operator) of Entity handled so far,
	// including those of an earlier, interrupted run that this one resumes.
	Done int64
	// Total is the number of ids or rows counted when this run started on Entity. It is an
	// estimate: rows inserted or deleted while the backfill runs change the real number, so
	// Done may end a little below or above it.
	Total int64
	// Resumed is Done as it was when this run started on Entity: non-zero when resuming.
	Resumed int64
	// Started is when this run started on Entity.
	Started time.Time
	// At is when this report was made.
	At time.Time
	// Finished reports that every id or row of Entity has been handled.
	Finished bool
}

// ProgressFunc receives a backfill's progress. Backfill calls it from the goroutine that
// called Backfill, once when it starts on an entity and after each committed batch.
type ProgressFunc func(BackfillProgress)

// Rate is the number of ids or rows handled per second by this run (work resumed from an
// earlier run is not counted).
func (p BackfillProgress) Rate() float64 {
	el := p.At.Sub(p.Started).Seconds()
	if el <= 0 {
		return 0
	}
	return float64(p.Done-p.Resumed) / el
}

// ETA estimates the time left on Entity at the current rate. It is 0 when the entity is
// finished or Done has reached Total, and negative when no rate is known yet.
func (p BackfillProgress) ETA() time.Duration {
	left := p.Total - p.Done
	if p.Finished || left <= 0 {
		return 0
	}
	r := p.Rate()
	if r <= 0 {
		return -1
	}
	return time.Duration(float64(left) / r * float64(time.Second))
}

// Percent is Done as a share of Total, from 0 to 100. An empty entity is 100% done once
// finished.
func (p BackfillProgress) Percent() float64 {
	if p.Total <= 0 {
		if p.Finished {
			return 100
		}
		return 0
	}
	return min(100, 100*float64(p.Done)/float64(p.Total))
}

// progressPlainEvery is how often the plain printer writes a line.
const progressPlainEvery = 2 * time.Second

// progressBarWidth is the number of cells of the terminal bar.
const progressBarWidth = 24

// NewProgressPrinter returns a ProgressFunc that writes a backfill's progress to w, for
// the walflow operator backfill command.
//
// On a terminal (isTerminal) it redraws one line per entity with a carriage return:
//
//	post_with_comments_counts  comments  [#########...............]  12,345/100,000  12.3%  4,210/s  ETA 21s
//
// and ends it with a newline when the entity is finished. Otherwise (a log, a pipe) it
// writes the same figures, without the bar, as plain lines: when an entity starts, at most
// every 2 seconds while it runs, and when it is finished. The time between lines is measured
// with [BackfillProgress].At, so the output depends only on the reports. The printer is
// safe for concurrent use; write errors are ignored.
func NewProgressPrinter(w io.Writer, isTerminal bool) ProgressFunc {
	var mu sync.Mutex
	var last time.Time
	var lastKey string
	open := false // a terminal line is being redrawn
	return func(p BackfillProgress) {
		mu.Lock()
		defer mu.Unlock()
		key := p.Operator + "\x00" + p.Entity
		if isTerminal {
			if open && key != lastKey {
				io.WriteString(w, "\n")
			}
			lastKey = key
			line := "\r" + progressLine(p, true) + "\x1b[K"
			if p.Finished {
				line += "\n"
			}
			open = !p.Finished
			io.WriteString(w, line)
			return
		}
		if key == lastKey && !p.Finished && p.At.Sub(last) < progressPlainEvery {
			return
		}
		lastKey, last = key, p.At
		io.WriteString(w, progressLine(p, false)+"\n")
	}
}

// progressLine formats one report: names, optional bar, counts, percent, rate, and the ETA
// or, when finished, the time taken.
func progressLine(p BackfillProgress, bar bool) string {
	var b strings.Builder
	b.WriteString(p.Operator)
	b.WriteString("  ")
	b.WriteString(p.Entity)
	b.WriteString("  ")
	if bar {
		n := int(p.Percent() / 100 * progressBarWidth)
		b.WriteString("[" + strings.Repeat("#", n) + strings.Repeat(".", progressBarWidth-n) + "]  ")
	}
	fmt.Fprintf(&b, "%s/%s  %.1f%%  %s/s  ", thousands(p.Done), thousands(p.Total), p.Percent(), thousands(int64(math.Round(p.Rate()))))
	switch eta := p.ETA(); {
	case p.Finished:
		b.WriteString("done in " + roundDuration(p.At.Sub(p.Started)).String())
	case eta < 0:
		b.WriteString("ETA ?")
	default:
		b.WriteString("ETA " + roundDuration(eta).String())
	}
	return b.String()
}

// roundDuration keeps a tenth of a second below 10s and whole seconds above.
func roundDuration(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

// thousands formats n with comma separators: 12,345.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
