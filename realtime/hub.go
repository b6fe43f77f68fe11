package realtime

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/snapshot"
)

// Ledger is what the gateway reads: events in order and by channel, and the head and tail.
// ledger.Ledger satisfies it (Engine.Ledger()).
type Ledger interface {
	Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error)
	ReadKeys(ctx context.Context, keys []string, after event.Position, limit int) ([]event.Event, error)
	Wait(ctx context.Context, after event.Position) error
	State() ledger.State
}

// hubBatch is how many events the hub and a catching-up stream read at a time.
const hubBatch = 512

// ready is always ready: the case of a select that has work to do between waits.
var ready = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// errFellBehind is why the hub dropped a member whose queue was full: the member catches
// up from the ledger on its own, then joins again.
var errFellBehind = errors.New("fell behind the live stream")

// hub fans live events out to every stream of a gateway. One goroutine reads the ledger's
// tail once, renders each event once per channel and format, and queues the shared bytes
// on its members; each stream writes its queue in one go. A stream that is behind (a
// resume, or a queue that filled up) reads the ledger by channel on its own until it has
// reached the hub, then joins it, so live delivery costs one ledger read for all streams.
//
// The goroutine runs while the hub has members and is started again by the next join.
type hub struct {
	led    Ledger
	router *channel.Router
	log    *slog.Logger
	flush  time.Duration  // GatewayConfig.FlushInterval
	wg     sync.WaitGroup // the running goroutines

	mu      sync.Mutex
	gen     uint64             // incremented by each start; a goroutine of an older one stops
	cancel  context.CancelFunc // of the running goroutine; nil while none runs
	pos     event.Position     // every event up to it has been offered to the members
	subs    map[string]map[*member]struct{}
	members int
	pending []*member // offered events since the last flush, with flush > 0
}

func newHub(led Ledger, router *channel.Router, log *slog.Logger, flush time.Duration) *hub {
	return &hub{led: led, router: router, log: log, flush: flush, subs: map[string]map[*member]struct{}{}}
}

// format is how a member's messages are rendered.
type format uint8

const (
	formatSSE format = iota
	formatWS
)

// message is one rendered event.
type message struct {
	pos event.Position
	lsn event.LSN // the commit LSN and transaction id, for a subscription from a snapshot token
	xid uint32
	at  int64  // the commit time in Unix nanoseconds (0: unknown), for the latency histogram
	b   []byte // shared between members: never modified
}

// member is one subscription's live queue on the hub.
type member struct {
	keys   []string
	format format
	limit  int
	wake   chan struct{} // capacity 1; may be shared by the subscriptions of a connection

	// Guarded by the hub's mu.
	from    event.Position // the hub skips events up to it: the member has them already
	last    event.Position // the last event offered, so an event matching two keys goes once
	added   bool
	pending bool // in the hub's pending list

	mu   sync.Mutex
	q    []message
	fell error
}

func newMember(keys []string, f format, limit int, wake chan struct{}) *member {
	return &member{keys: keys, format: f, limit: limit, wake: wake}
}

func (m *member) notify() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// offer queues msg, or reports a full queue.
func (m *member) offer(msg message) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.q) >= m.limit {
		return false
	}
	m.q = append(m.q, msg)
	return true
}

// drop records why the hub dropped the member.
func (m *member) drop(err error) {
	m.mu.Lock()
	m.fell = err
	m.mu.Unlock()
	m.notify()
}

// take moves the queued messages to dst and returns why the hub dropped the member, if it
// did: the messages are still to be written, then the member catches up on its own.
func (m *member) take(dst []message) ([]message, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	dst = append(dst, m.q...)
	clear(m.q)
	m.q = m.q[:0]
	err := m.fell
	m.fell = nil
	return dst, err
}

// position is where a stream catching up must reach before it may join: the hub's
// position, or the ledger's head when the hub is not running.
func (h *hub) position() event.Position {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cancel != nil {
		return h.pos
	}
	return h.led.State().Head
}

// join makes m live from pos, the position up to which it has every event of its keys.
// It fails when the hub has moved past pos: catch up to position() again, then retry.
func (h *hub) join(m *member, pos event.Position) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cancel == nil {
		ctx, cancel := context.WithCancel(context.Background())
		h.cancel, h.pos = cancel, pos
		h.gen++
		h.wg.Add(1)
		go h.run(ctx, h.gen, pos)
		if h.flush > 0 {
			h.wg.Add(1)
			go h.flusher(ctx, h.gen)
		}
	}
	if h.pos > pos {
		return false
	}
	m.from, m.last, m.added = pos, 0, true
	for _, k := range m.keys {
		set := h.subs[k]
		if set == nil {
			set = map[*member]struct{}{}
			h.subs[k] = set
		}
		set[m] = struct{}{}
	}
	h.members++
	return true
}

// leave removes m if it is a member.
func (h *hub) leave(m *member) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.remove(m)
}

// remove removes m; the caller holds mu. The goroutine stops with the last member.
func (h *hub) remove(m *member) {
	if !m.added {
		return
	}
	m.added = false
	for _, k := range m.keys {
		set := h.subs[k]
		delete(set, m)
		if len(set) == 0 {
			delete(h.subs, k)
		}
	}
	h.members--
	if h.members == 0 && h.cancel != nil {
		h.cancel()
		h.cancel = nil
	}
}

// wakeAll wakes every member, so that its stream looks at the gateway's state.
func (h *hub) wakeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, set := range h.subs {
		for m := range set {
			m.notify()
		}
	}
}

// dropAll removes every member with err; the caller holds mu.
func (h *hub) dropAll(err error) {
	for _, set := range h.subs {
		for m := range set {
			h.remove(m)
			m.drop(err)
		}
	}
}

// run reads the ledger after pos and offers each event to the members of its channels.
func (h *hub) run(ctx context.Context, gen uint64, pos event.Position) {
	defer h.wg.Done()
	var keys []string
	var touched []*member // the members offered events in a batch, to wake after it
	for {
		evs, err := h.led.Read(ctx, pos, hubBatch)
		if err == nil && len(evs) == 0 {
			err = h.led.Wait(ctx, pos)
			if err == nil {
				continue
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var te *ledger.TruncatedError
			truncated := errors.As(err, &te)
			h.mu.Lock()
			if h.gen != gen {
				h.mu.Unlock()
				return
			}
			// Members catch up on their own, meeting the error themselves: a truncation
			// becomes their resync, anything else ends their streams.
			h.dropAll(err)
			if !truncated && h.cancel != nil {
				// The next join starts a new reader.
				h.cancel()
				h.cancel = nil
			}
			h.mu.Unlock()
			if truncated {
				pos = te.Tail
				continue
			}
			h.log.Error("realtime: read the ledger", slog.String("error", err.Error()))
			return
		}

		h.mu.Lock()
		if h.gen != gen {
			h.mu.Unlock()
			return
		}
		touched = touched[:0]
		if h.flush > 0 {
			touched = h.pending
		}
		for i := range evs {
			e := &evs[i]
			keys = h.router.Channels(e, keys[:0])
			var r renderer
			at := commitNanos(e)
			for _, k := range keys {
				for m := range h.subs[k] {
					if e.Position <= m.from || e.Position == m.last {
						continue
					}
					m.last = e.Position
					named := k
					if len(m.keys) > 1 {
						named = firstOf(m.keys, keys)
					}
					if m.offer(message{pos: e.Position, lsn: e.LSN, xid: e.XID, at: at, b: r.render(e, named, m.format)}) {
						if !m.pending {
							m.pending = true
							touched = append(touched, m)
						}
						continue
					}
					h.remove(m)
					m.drop(errFellBehind)
				}
			}
			h.pos = e.Position
		}
		if h.flush > 0 {
			// The flusher wakes them.
			h.pending, touched = touched, nil
			h.mu.Unlock()
			pos = evs[len(evs)-1].Position
			continue
		}
		for _, m := range touched {
			m.pending = false
		}
		h.mu.Unlock()
		for _, m := range touched {
			m.notify()
		}
		clear(touched)
		pos = evs[len(evs)-1].Position
	}
}

// flusher wakes the members offered events, once per flush interval, so that a busy
// stream writes several events per write.
func (h *hub) flusher(ctx context.Context, gen uint64) {
	defer h.wg.Done()
	t := time.NewTicker(h.flush)
	defer t.Stop()
	var wake []*member
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.mu.Lock()
		if h.gen != gen {
			h.mu.Unlock()
			return
		}
		wake, h.pending = h.pending, wake[:0]
		for _, m := range wake {
			m.pending = false
		}
		h.mu.Unlock()
		for _, m := range wake {
			m.notify()
		}
		clear(wake)
	}
}

// commitNanos is the event's commit time for message.at.
func commitNanos(e *event.Event) int64 {
	if e.Timestamp.IsZero() {
		return 0
	}
	return e.Timestamp.UnixNano()
}

// renderer renders one event for each channel and format it goes out on, once.
type renderer struct {
	json []byte // the event's JSON, without CR or LF
	out  []rendered
}

type rendered struct {
	key string
	f   format
	b   []byte
}

func (r *renderer) render(e *event.Event, key string, f format) []byte {
	for _, o := range r.out {
		if o.key == key && o.f == f {
			return o.b
		}
	}
	if r.json == nil {
		r.json = eventJSON(nil, e)
	}
	b := appendMessage(nil, f, e, key, r.json)
	r.out = append(r.out, rendered{key, f, b})
	return b
}

// firstOf returns the first of a stream's channels (in subscription order) that is one of
// the event's channels: the one its message names.
func firstOf(subscribed, eventKeys []string) string {
	for _, k := range subscribed {
		if slices.Contains(eventKeys, k) {
			return k
		}
	}
	return subscribed[0]
}

// eventJSON appends the event's JSON. A data line of SSE ends at a newline; outside JSON
// strings (where they are escaped) CR and LF are whitespace, so they become spaces and
// the JSON stays equal.
func eventJSON(dst []byte, e *event.Event) []byte {
	n := len(dst)
	dst = e.AppendJSON(dst)
	for i := n; i < len(dst); i++ {
		if dst[i] == '\n' || dst[i] == '\r' {
			dst[i] = ' '
		}
	}
	return dst
}

// appendMessage appends the message of an event on channel key: an SSE message or a
// WebSocket text message.
func appendMessage(dst []byte, f format, e *event.Event, key string, json []byte) []byte {
	if f == formatSSE {
		dst = append(dst, "id: "...)
		dst = strconv.AppendUint(dst, uint64(e.Position), 10)
		dst = append(dst, "\nevent: "...)
		dst = append(dst, e.Type.String()...)
		dst = append(dst, "\ndata: {\"channel\":"...)
		dst = appendJSONString(dst, key)
		dst = append(dst, `,"event":`...)
		dst = append(dst, json...)
		return append(dst, "}\n\n"...)
	}
	dst = append(dst, `{"type":"event","channel":`...)
	dst = appendJSONString(dst, key)
	dst = append(dst, `,"position":`...)
	dst = strconv.AppendUint(dst, uint64(e.Position), 10)
	dst = append(dst, `,"event":`...)
	dst = append(dst, json...)
	return append(dst, '}')
}

// catchUp reads the next events of keys after *pos, up to target, and appends their
// messages to dst. done is true once *pos has reached target: the stream may join.
func (h *hub) catchUp(ctx context.Context, keys []string, f format, pos *event.Position, target event.Position, dst []message) (_ []message, done bool, err error) {
	if *pos >= target {
		return dst, true, nil
	}
	evs, err := h.led.ReadKeys(ctx, keys, *pos, hubBatch)
	if err != nil {
		return dst, false, err
	}
	var matched []string
	var js []byte // the event's JSON, reused: each message gets its own bytes
	for i := range evs {
		e := &evs[i]
		if e.Position > target {
			*pos = target
			return dst, true, nil
		}
		key := keys[0]
		if len(keys) > 1 {
			matched = h.router.Channels(e, matched[:0])
			key = firstOf(keys, matched)
		}
		js = eventJSON(js[:0], e)
		dst = append(dst, message{pos: e.Position, lsn: e.LSN, xid: e.XID, at: commitNanos(e), b: appendMessage(nil, f, e, key, js)})
		*pos = e.Position
	}
	if len(evs) < hubBatch {
		*pos = target
		return dst, true, nil
	}
	return dst, false, nil
}

// cursor is where one subscription of a stream stands: live on the hub, or catching up
// from the ledger. SSE streams and WebSocket subscriptions move it the same way.
type cursor struct {
	m    *member
	keys []string
	live bool            // on the hub; otherwise catching up from the ledger
	last event.Position  // the last event written to the client: it has everything up to it
	scan event.Position  // how far the ledger was read: last or later
	snap *snapshot.Token // the snapshot token the subscription started from, if any
}

// keep removes, in place, the messages a subscription from a snapshot token must not
// deliver: those of transactions the snapshot saw (see snapshot.Token.Deliver).
func (c *cursor) keep(msgs []message) []message {
	if c.snap == nil {
		return msgs
	}
	return slices.DeleteFunc(msgs, func(m message) bool {
		e := event.Event{Position: m.pos, LSN: m.lsn, XID: m.xid}
		return !c.snap.Deliver(&e)
	})
}

// drain writes, with write, what the hub queued for c. When the hub had dropped the member
// (a full queue, a truncation, a ledger error), c catches up from the ledger again, which
// tells which.
func (c *cursor) drain(msgs []message, write func([]message) error) ([]message, error) {
	msgs, dropped := c.m.take(msgs[:0])
	if err := write(msgs); err != nil {
		return msgs, err
	}
	if dropped != nil {
		c.live, c.scan = false, c.last
	}
	return msgs, nil
}

// advance applies the outcome of a catch-up read (hub.catchUp from c.scan) to c, once its
// messages are written. When retention removed events c had not read, c goes on from the
// head as a fresh subscription and resync is the reason to tell the client; done joins the
// hub. Other read errors are returned.
func (c *cursor) advance(g *Gateway, done bool, err error) (resync, _ error) {
	switch {
	case errors.Is(err, ledger.ErrTruncated):
		c.last = g.cfg.Ledger.State().Head
		c.scan = c.last
		return err, nil
	case err != nil:
		return nil, err
	case done:
		c.live = g.hub.join(c.m, c.scan)
	}
	return nil, nil
}
