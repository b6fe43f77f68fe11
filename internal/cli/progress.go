package cli

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/walflow/walflow/operator"
)

// progressPlainEvery is how often the plain printer writes a line.
const progressPlainEvery = 2 * time.Second

// progressBarWidth is the number of cells of the terminal bar.
const progressBarWidth = 24

// newProgressPrinter returns an operator.ProgressFunc that shows progress reports (of
// operator backfill, and of index catch-up mapped onto the same struct) on w.
//
// On a terminal it draws one progressbar line per operator and entity, redrawn in place:
//
//	post_with_comments_counts  comments  42% |##########              | (42000/100000, 4210 ids/s) [9s:13s]
//
// and ends it with a newline when the entity is finished. A run that resumes an earlier one
// counts this run's share only, and says where it resumed. Otherwise (a log, a pipe) it
// writes plain lines: when an entity starts, at most every 2 seconds while it runs, and when
// it is finished, timed by the reports' At so the output depends only on the reports:
//
//	post_with_comments_counts  comments  12,345/100,000  12.3%  4,257/s  ETA 21s
//
// It is safe for concurrent use; write errors are ignored.
func newProgressPrinter(w io.Writer, isTerminal bool, unit string) operator.ProgressFunc {
	if isTerminal {
		return (&progressBars{w: w, unit: unit}).report
	}
	var mu sync.Mutex
	var last time.Time
	var lastKey string
	return func(p operator.BackfillProgress) {
		mu.Lock()
		defer mu.Unlock()
		key := p.Operator + "\x00" + p.Entity
		if key == lastKey && !p.Finished && p.At.Sub(last) < progressPlainEvery {
			return
		}
		lastKey, last = key, p.At
		_, _ = io.WriteString(w, progressLine(p)+"\n")
	}
}

// progressBars draws the terminal form with one progressbar.ProgressBar per entity.
type progressBars struct {
	w    io.Writer
	unit string

	mu  sync.Mutex
	key string                   // the operator and entity of bar
	bar *progressbar.ProgressBar // nil before the first report and after a finished entity
	max int64                    // bar's max: the entity's Total less Resumed, at least 1
}

func (b *progressBars) report(p operator.BackfillProgress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := p.Operator + "\x00" + p.Entity
	if b.bar != nil && key != b.key {
		// Another entity starts before this one finished: keep its last state on its line.
		_ = b.bar.Exit()
		b.bar = nil
	}
	if b.bar == nil {
		b.key = key
		b.max = max(1, p.Total-p.Resumed)
		desc := p.Operator + "  " + p.Entity
		if p.Resumed > 0 {
			desc += " (resumed at " + thousands(p.Resumed) + ")"
		}
		b.bar = progressbar.NewOptions64(b.max,
			progressbar.OptionSetWriter(b.w),
			progressbar.OptionSetDescription(desc),
			progressbar.OptionSetWidth(progressBarWidth),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString(b.unit),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionUseANSICodes(true),
			progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionOnCompletion(func() { _, _ = io.WriteString(b.w, "\n") }),
		)
	}
	done := p.Done - p.Resumed
	if p.Finished {
		// Done may end below or above the estimate; the bar ends full at what was done.
		if done != b.max {
			b.max = max(1, done)
			b.bar.ChangeMax64(b.max)
		}
		_ = b.bar.Finish()
		b.bar = nil
		return
	}
	if done >= b.max {
		// Total is an estimate: rows inserted while the backfill runs push Done to it or
		// past it before the entity is finished, and a full bar would end the line.
		b.max = done + 1
		b.bar.ChangeMax64(b.max)
	}
	_ = b.bar.Set64(done)
}

// progressLine formats one report as a plain line: names, counts, percent, rate, and the
// ETA or, when finished, the time taken.
func progressLine(p operator.BackfillProgress) string {
	var b strings.Builder
	b.WriteString(p.Operator)
	b.WriteString("  ")
	b.WriteString(p.Entity)
	b.WriteString("  ")
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
