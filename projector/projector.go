package projector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/operator"
)

// Defaults of [SequenceConfig].
const (
	SequenceColumnDefault = "id"
	SequenceStartDefault  = 1
	SequenceBufferDefault = 10000
	SequenceGraceDefault  = 30 * time.Second
)

// HandlerFunc applies one event. The event is a copy the projector owns until the call
// returns; its slices may be shared with other events and must not be modified. Its effects
// are at-least-once: an event handled just before a crash, before the projector's position
// was saved, is handed over again after the restart.
type HandlerFunc func(ctx context.Context, e event.Event) error

// TxHandlerFunc applies one event through tx, the PostgreSQL transaction that also commits
// the projector's new position: its writes happen exactly once. A returned error rolls
// them back and the event is retried.
type TxHandlerFunc func(ctx context.Context, tx pgx.Tx, e event.Event) error

// Projector is a named, ordered consumer of the ledger with a stored position. Exactly one
// of Handle and HandleTx is set.
type Projector struct {
	// Name identifies the projector: it keys its stored position, its logs and DependsOn.
	// Required.
	Name string
	// Entities are the tables whose events the projector receives. Entities and Keys
	// together filter the ledger; when both are empty the projector receives every event.
	// Default none.
	Entities []string
	// Keys are further ledger index keys to receive the events of: channels such as
	// posts/42/comments. Default none.
	Keys []string
	// Index names an indexer of Config.Indexes (a custom index, package index): the
	// projector receives the events that indexer gave one of Values, such as every event
	// of user 7 and user 9 by an index.Field on user_id. It goes live once the index has
	// caught up with the ledger. Index excludes Entities and Keys. Default "": no index.
	Index string
	// Values are the index values to receive the events of; required with Index.
	Values []string
	// Events filters the event types; nil means insert, update and delete (a TRUNCATE
	// carries no rows; list event.Truncate to receive it). With Sequence, nil means insert
	// only, and only event.Insert may be listed.
	Events []event.Type
	// Handle applies one event, at least once. Set it or HandleTx.
	Handle HandlerFunc
	// HandleTx applies one event through the transaction that commits the position, exactly
	// once. It needs Config.DB and a [TxPositionStore] (the default store is one).
	HandleTx TxHandlerFunc
	// Retry is the policy for a failing event. Default nil: Config.Retry.
	Retry *operator.RetryPolicy
	// DependsOn names projectors of the same Runner that must have applied an event before
	// this one receives it, so that its handler may read their read models. It goes live
	// only after they have. Cycles are refused. Default none.
	DependsOn []string
	// Sequence, when set, orders the events by an application sequence column instead of
	// by ledger position alone, for event tables whose ids are allocated before commit (see
	// the package documentation). Default nil.
	Sequence *SequenceConfig
}

// SequenceConfig is the application-sequence mode of a [Projector]: the events of each
// table (or of each stream, with StreamColumn) carry a contiguous integer in Column, and are
// handed to the handler in that order. An id that commits before a smaller one waits in a
// reorder buffer until the smaller one arrives, or until Grace shows that the smaller one's
// transaction rolled back; the missing ids are then skipped, with a log line.
type SequenceConfig struct {
	// Column holds the sequence number in the new record, e.g. a bigserial id. Default "id".
	Column string
	// StreamColumn, when set, makes the sequence contiguous per value of this column (for
	// example stream_identifier with a per-stream version in Column) instead of per table.
	// Default "": per table.
	StreamColumn string
	// Start is the first number of each sequence (of a table, or of a new stream). Set it to
	// the first id the ledger holds when the table had rows before walflow followed it.
	// Default 1 (zero means the default, so sequences cannot start at 0).
	Start int64
	// Buffer is the most events held back at a time. When it is full the projector halts
	// with an error wrapping [ErrBufferFull]; it never drops an event. Default 10000.
	Buffer int
	// Grace is how long a missing number may be awaited, measured both in commit time (an
	// event read that committed Grace after the first held-back one) and, once the projector
	// has read the whole ledger, in wall time. The missing numbers are then taken as rolled
	// back and skipped. Default 30s.
	Grace time.Duration
	// SkipLate drops, with an error log line, an event whose number was already taken as
	// rolled back (its transaction committed more than Grace late), instead of halting with
	// an error wrapping [ErrLate]. Default false: halt, since the read model misses it.
	SkipLate bool
}

func (c SequenceConfig) withDefaults() SequenceConfig {
	if c.Column == "" {
		c.Column = SequenceColumnDefault
	}
	if c.Start == 0 {
		c.Start = SequenceStartDefault
	}
	if c.Buffer <= 0 {
		c.Buffer = SequenceBufferDefault
	}
	if c.Grace <= 0 {
		c.Grace = SequenceGraceDefault
	}
	return c
}

// Sentinel errors.
var (
	// ErrUnknown is returned for a projector name the runner does not have.
	ErrUnknown = errors.New("projector: no such projector")
	// ErrConflict is returned by a store's Save when the stored checkpoint changed since it
	// was loaded: a reset, or another process running the same projector.
	ErrConflict = errors.New("projector: stored checkpoint changed since it was loaded")
	// ErrBufferFull is wrapped by the halt error of a projector whose reorder buffer filled
	// up while it waited for a missing sequence number.
	ErrBufferFull = errors.New("projector: reorder buffer full")
	// ErrLate is wrapped by the halt error of a projector that received a sequence number it
	// had already skipped as rolled back.
	ErrLate = errors.New("projector: sequence number arrived after it was skipped")
	// ErrSequence is wrapped by the halt error of a projector whose event has no usable
	// sequence number (a missing, NULL or non-integer column).
	ErrSequence = errors.New("projector: event has no usable sequence number")
)

// spec is a validated projector.
type spec struct {
	Projector
	keys  []string // nil: every event
	types []event.Type
	retry operator.RetryPolicy
	seq   *SequenceConfig
}

func (p Projector) spec(defaultRetry operator.RetryPolicy) (spec, error) {
	switch {
	case p.Name == "":
		return spec{}, errors.New("projector: a projector has no Name; give it one, it keys its stored position")
	case p.Handle == nil && p.HandleTx == nil:
		return spec{}, fmt.Errorf("projector %s: neither Handle nor HandleTx is set", p.Name)
	case p.Handle != nil && p.HandleTx != nil:
		return spec{}, fmt.Errorf("projector %s: both Handle and HandleTx are set; use HandleTx for writes that must commit with the position, Handle otherwise", p.Name)
	case slices.Contains(p.DependsOn, p.Name):
		return spec{}, fmt.Errorf("projector %s: DependsOn names the projector itself", p.Name)
	}
	switch {
	case p.Index != "" && (len(p.Entities) > 0 || len(p.Keys) > 0):
		return spec{}, fmt.Errorf("projector %s: Index cannot be combined with Entities or Keys; filter by the index alone, or make an indexer that gives the values you need", p.Name)
	case p.Index != "" && len(p.Values) == 0:
		return spec{}, fmt.Errorf("projector %s: Index %s has no Values; list the index values whose events the projector receives", p.Name, p.Index)
	case p.Index == "" && len(p.Values) > 0:
		return spec{}, fmt.Errorf("projector %s: Values are set without an Index; name the indexer they are values of", p.Name)
	}
	s := spec{Projector: p, types: p.Events, retry: defaultRetry.WithDefaults()}
	if p.Retry != nil {
		s.retry = p.Retry.WithDefaults()
	}
	for _, e := range p.Entities {
		if e == "" {
			return spec{}, fmt.Errorf("projector %s: an entity name is empty", p.Name)
		}
		s.keys = append(s.keys, event.TableName(e))
	}
	for _, k := range p.Keys {
		if k == "" {
			return spec{}, fmt.Errorf("projector %s: a key is empty", p.Name)
		}
		s.keys = append(s.keys, k)
	}
	if p.Sequence != nil {
		sc := p.Sequence.withDefaults()
		s.seq = &sc
		for _, t := range p.Events {
			if t != event.Insert {
				return spec{}, fmt.Errorf("projector %s: with Sequence, Events may list only insert (an event table is append-only; an update's or delete's id is not a new sequence number), not %s", p.Name, t)
			}
		}
		if len(s.types) == 0 {
			s.types = []event.Type{event.Insert}
		}
	} else if len(s.types) == 0 {
		s.types = []event.Type{event.Insert, event.Update, event.Delete}
	}
	return s, nil
}

// order checks the dependencies of specs (unknown names, cycles) and returns them in an
// order where every projector comes after those it depends on.
func order(specs []spec) ([]int, error) {
	idx := map[string]int{}
	for i, s := range specs {
		idx[s.Name] = i
	}
	for _, s := range specs {
		for _, d := range s.DependsOn {
			if _, ok := idx[d]; !ok {
				return nil, fmt.Errorf("projector %s: DependsOn names %q, which is not a projector of this runner", s.Name, d)
			}
		}
	}
	const (
		unseen = iota
		visiting
		done
	)
	mark := make([]int, len(specs))
	var out []int
	var path []string
	var visit func(i int) error
	visit = func(i int) error {
		switch mark[i] {
		case done:
			return nil
		case visiting:
			start := slices.Index(path, specs[i].Name)
			cycle := append(slices.Clone(path[start:]), specs[i].Name)
			return fmt.Errorf("projector: DependsOn forms a cycle (%s); a projector cannot wait for one that waits for it", strings.Join(cycle, " depends on "))
		}
		mark[i] = visiting
		path = append(path, specs[i].Name)
		for _, d := range specs[i].DependsOn {
			if err := visit(idx[d]); err != nil {
				return err
			}
		}
		path = path[:len(path)-1]
		mark[i] = done
		out = append(out, i)
		return nil
	}
	for i := range specs {
		if err := visit(i); err != nil {
			return nil, err
		}
	}
	return out, nil
}
