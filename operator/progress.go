package operator

import "time"

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
