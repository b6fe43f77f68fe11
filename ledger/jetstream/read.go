package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/notify"
)

// Read returns up to limit events after position after, up to the head. It fails with a
// [*ledger.TruncatedError] when after is before the tail.
func (l *Ledger) Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error) {
	if l.pub.Closed() {
		return nil, ledger.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
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
	ps := make([]event.Position, 0, int(end-after))
	for p := after + 1; p <= end; p++ {
		ps = append(ps, p)
	}
	return l.events(ctx, after, ps)
}

// ReadKeys returns up to limit events after position after that carry any of keys, in
// position order, each once, up to the head. It fails with a [*ledger.TruncatedError]
// when after is before the tail.
func (l *Ledger) ReadKeys(ctx context.Context, keys []string, after event.Position, limit int) ([]event.Event, error) {
	if l.pub.Closed() {
		return nil, ledger.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, k := range keys {
		if !notify.ValidKey(k) {
			return nil, fmt.Errorf("ledger/jetstream: read keys: invalid key %q (keys are non-empty and contain no NUL byte)", k)
		}
	}
	if err := l.pub.CheckTail(after); err != nil {
		return nil, err
	}
	head := l.pub.Head()
	if limit <= 0 || after >= head || len(keys) == 0 {
		return nil, nil
	}
	ps, err := l.idx.lookup(keys, after, head, limit)
	if err != nil {
		return nil, l.closedErr(err)
	}
	return l.events(ctx, after, ps)
}

// events returns the events at positions ps (ascending), from the cache or the stream.
func (l *Ledger) events(ctx context.Context, after event.Position, ps []event.Position) ([]event.Event, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	ctx, cancel := l.opCtx(ctx)
	defer cancel()
	raw := l.idx.cached(ps)
	out := make([]event.Event, 0, len(ps))
	for i := 0; i < len(ps); {
		if raw[i] == nil {
			j := i
			for j < len(ps) && raw[j] == nil {
				j++
			}
			if err := l.fetch(ctx, after, ps[i:j], raw[i:j]); err != nil {
				return nil, l.closedErr(err)
			}
		}
		e, err := event.DecodeBinary(raw[i])
		if err != nil {
			return nil, fmt.Errorf("ledger/jetstream: decode the event at position %d of stream %s: %w", ps[i], l.opts.Stream, err)
		}
		if e.Position != ps[i] {
			return nil, fmt.Errorf("ledger/jetstream: the message at sequence %d of stream %s holds the event of position %d; the stream was written by something other than this ledger", ps[i], l.opts.Stream, e.Position)
		}
		out = append(out, e)
		i++
	}
	if l.pub.Closed() {
		return nil, ledger.ErrClosed
	}
	return out, nil
}

// fetchWait is how long a fetch of a range waits for its first message at first; each
// fetch that gets nothing doubles it, up to fetchWaitMax.
var fetchWait = 5 * time.Second

const fetchWaitMax = time.Minute

// fetch fills raw with the messages at ps from the stream: one by one when they are few
// or scattered, with an ordered consumer over their range otherwise. A fetch that gets
// nothing within its wait (a slow or loaded server) is not a missing message: fetch then
// gets the message it waits for by its sequence, which tells a slow server (it is there:
// fetch goes on, waiting longer) from a message gone (truncated or deleted).
func (l *Ledger) fetch(ctx context.Context, after event.Position, ps []event.Position, raw [][]byte) error {
	span := ps[len(ps)-1] - ps[0] + 1
	if len(ps) <= 8 || span > 4*event.Position(len(ps)) {
		for i, p := range ps {
			b, err := l.getMsg(ctx, after, p)
			if err != nil {
				return err
			}
			raw[i] = b
		}
		return nil
	}
	cons, err := l.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{l.opts.Subject},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       uint64(ps[0]),
		InactiveThreshold: 10 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("ledger/jetstream: read stream %s from sequence %d: %w", l.opts.Stream, ps[0], err)
	}
	wait := fetchWait
	i := 0
	for i < len(ps) {
		want := int(ps[len(ps)-1]-ps[i]) + 1
		batch, err := cons.Fetch(min(want, 1024), jetstream.FetchMaxWait(wait))
		if err != nil {
			return fmt.Errorf("ledger/jetstream: read stream %s from sequence %d: %w", l.opts.Stream, ps[i], err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("ledger/jetstream: read stream %s: %w", l.opts.Stream, err)
			}
			seq := event.Position(md.Sequence.Stream)
			if seq > ps[i] {
				return l.missing(ctx, after, ps[i])
			}
			if seq == ps[i] {
				raw[i] = m.Data()
				i++
				if i == len(ps) {
					break
				}
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, context.Canceled) && i < len(ps) {
			return fmt.Errorf("ledger/jetstream: read stream %s from sequence %d: %w", l.opts.Stream, ps[i], err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if got == 0 && i < len(ps) {
			b, err := l.getMsg(ctx, after, ps[i])
			if err != nil {
				return err
			}
			raw[i] = b
			i++
			wait = min(2*wait, fetchWaitMax)
		}
	}
	return nil
}

// getMsg returns the message at p.
func (l *Ledger) getMsg(ctx context.Context, after, p event.Position) ([]byte, error) {
	m, err := l.stream.GetMsg(ctx, uint64(p))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, l.missing(ctx, after, p)
	}
	if err != nil {
		return nil, fmt.Errorf("ledger/jetstream: get the message at sequence %d of stream %s: %w", p, l.opts.Stream, err)
	}
	return m.Data, nil
}

// missing returns the error of a read whose message at p is gone: a TruncatedError when
// Truncate removed it meanwhile.
func (l *Ledger) missing(ctx context.Context, after, p event.Position) error {
	tail, err := l.refreshTail(ctx)
	if err != nil {
		return err
	}
	if p <= tail {
		return &ledger.TruncatedError{After: after, Tail: tail}
	}
	return fmt.Errorf("ledger/jetstream: the message at sequence %d of stream %s is missing although the stream's tail is %d; was it deleted by hand?", p, l.opts.Stream, tail)
}
