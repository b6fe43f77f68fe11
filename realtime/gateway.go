package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/pubsub"
)

// Defaults for [GatewayConfig].
const (
	MaxChannelsDefault    = 32
	MaxConnectionsDefault = 10000
	BufferDefault         = 1024
	HeartbeatDefault      = 15 * time.Second
	WriteTimeoutDefault   = 10 * time.Second
)

// GatewayConfig configures a [Gateway].
type GatewayConfig struct {
	// Ledger is the ledger streams read from (Engine.Ledger()). Required.
	Ledger pubsub.Reader
	// Router checks channels and tells which subscribed channel an event matched
	// (Engine.Router()). Required.
	Router *channel.Router
	// Authorizer decides every subscription. Required: pass [AllowAll] explicitly to let
	// everyone subscribe to everything.
	Authorizer Authorizer
	// MaxChannels is the most channels one connection may subscribe to. Default
	// MaxChannelsDefault (32).
	MaxChannels int
	// MaxConnections is the most streams open at once; beyond it a request gets 503.
	// Default MaxConnectionsDefault (10000).
	MaxConnections int
	// Buffer is how many events are read ahead of a client's writes. A slow client holds
	// at most this many events in memory; its backlog stays in the ledger. Default
	// BufferDefault (1024).
	Buffer int
	// Heartbeat is the interval of the ": ping" comment line that keeps proxies from
	// closing an idle stream. Default HeartbeatDefault (15s).
	Heartbeat time.Duration
	// WriteTimeout bounds each write to a client; a client that does not read for this
	// long is disconnected with reason overflow. Default WriteTimeoutDefault (10s).
	WriteTimeout time.Duration
	// Logger receives one Info record per rejected request and per ended stream (never with
	// a token). Default: discard.
	Logger *slog.Logger
}

func (c GatewayConfig) withDefaults() GatewayConfig {
	if c.MaxChannels <= 0 {
		c.MaxChannels = MaxChannelsDefault
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = MaxConnectionsDefault
	}
	if c.Buffer <= 0 {
		c.Buffer = BufferDefault
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = HeartbeatDefault
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = WriteTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

func (c GatewayConfig) validate() error {
	switch {
	case c.Ledger == nil:
		return errors.New("realtime: GatewayConfig.Ledger is nil; pass engine.Ledger()")
	case c.Router == nil:
		return errors.New("realtime: GatewayConfig.Router is nil; pass engine.Router()")
	case c.Authorizer == nil:
		return errors.New("realtime: GatewayConfig.Authorizer is nil; pass a JWTAuthorizer, or realtime.AllowAll{} for tests and trusted networks")
	}
	return nil
}

// AllowAll is an [Authorizer] that allows every subscription with no expiry. It is for
// tests and trusted networks only: anyone who can reach the gateway reads every channel.
type AllowAll struct{}

// Authorize allows.
func (AllowAll) Authorize(*http.Request, channel.Channel) Decision { return Decision{Allow: true} }

// DisconnectReason is why the gateway ended a stream.
type DisconnectReason string

// Reasons a stream ends. Those the client can still receive are sent as the reason of the
// final error message.
const (
	// DisconnectClientGone: the client closed the connection or a write failed.
	DisconnectClientGone DisconnectReason = "client gone"
	// DisconnectOverflow: the client did not read within WriteTimeout.
	DisconnectOverflow DisconnectReason = "overflow"
	// DisconnectTokenExpired: the authorization of a channel expired.
	DisconnectTokenExpired DisconnectReason = "token expired"
	// DisconnectShutdown: the gateway is shutting down.
	DisconnectShutdown DisconnectReason = "shutdown"
	// DisconnectLedgerError: reading the ledger failed.
	DisconnectLedgerError DisconnectReason = "ledger error"
)

// String returns the reason as sent to clients.
func (r DisconnectReason) String() string { return string(r) }

// Stats are the gateway's counters.
type Stats struct {
	// Connections is the number of streams open now.
	Connections int
	// ConnectionsTotal counts the streams ever started.
	ConnectionsTotal uint64
	// Subscriptions is the number of channel subscriptions of the open streams.
	Subscriptions int
	// SubscriptionsTotal counts the channel subscriptions ever started.
	SubscriptionsTotal uint64
	// MessagesSent counts the event messages written to clients.
	MessagesSent uint64
	// Rejected counts refused requests by HTTP status (400, 401, 403, 405, 503).
	Rejected map[int]uint64
	// Disconnects counts ended streams by reason.
	Disconnects map[DisconnectReason]uint64
}

// Gateway serves channel events over Server-Sent Events; see the package documentation
// for the protocol. It is safe for concurrent use.
type Gateway struct {
	cfg GatewayConfig
	log *slog.Logger

	mu       sync.Mutex
	closing  bool
	shutdown chan struct{}
	streams  sync.WaitGroup
	stats    Stats

	sent atomic.Uint64
}

// NewGateway returns a gateway, or an error naming the missing field.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Gateway{
		cfg:      cfg,
		log:      cfg.Logger.With(slog.String("component", "realtime")),
		shutdown: make(chan struct{}),
		stats:    Stats{Rejected: map[int]uint64{}, Disconnects: map[DisconnectReason]uint64{}},
	}, nil
}

// Stats returns a copy of the gateway's counters.
func (g *Gateway) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	s.Rejected = make(map[int]uint64, len(g.stats.Rejected))
	for k, v := range g.stats.Rejected {
		s.Rejected[k] = v
	}
	s.Disconnects = make(map[DisconnectReason]uint64, len(g.stats.Disconnects))
	for k, v := range g.stats.Disconnects {
		s.Disconnects[k] = v
	}
	s.MessagesSent = g.sent.Load()
	return s
}

// Shutdown stops accepting streams, ends each open stream with an error message of reason
// shutdown and its resume position, and waits for them to end or for ctx to end.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	if !g.closing {
		g.closing = true
		close(g.shutdown)
	}
	g.mu.Unlock()
	done := make(chan struct{})
	go func() {
		g.streams.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reject answers a request that cannot stream.
func (g *Gateway) reject(w http.ResponseWriter, r *http.Request, status int, reason string) {
	g.mu.Lock()
	g.stats.Rejected[status]++
	g.mu.Unlock()
	g.log.InfoContext(r.Context(), "stream rejected",
		slog.Int("status", status), slog.String("reason", reason), slog.String("remote_addr", r.RemoteAddr))
	http.Error(w, reason, status)
}

// ServeHTTP serves one SSE stream: GET ?channel=a&channel=b[&after=N], with the
// Last-Event-ID header taking precedence over after.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		g.reject(w, r, http.StatusMethodNotAllowed, "use GET")
		return
	}
	chans, keys, status, reason := g.parseChannels(r)
	if status != 0 {
		g.reject(w, r, status, reason)
		return
	}
	head := g.cfg.Ledger.State().Head
	after, resumed, err := resumePosition(r)
	if err != nil {
		g.reject(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if resumed && after > head {
		g.reject(w, r, http.StatusBadRequest, fmt.Sprintf("resume position %d is after the ledger head %d", after, head))
		return
	}
	if !resumed {
		after = head
	}
	var expires time.Time
	for _, c := range chans {
		d := g.cfg.Authorizer.Authorize(r, c)
		if !d.Allow {
			st := d.Status
			if st == 0 {
				st = http.StatusForbidden
			}
			g.reject(w, r, st, d.Reason)
			return
		}
		if !d.Expires.IsZero() && (expires.IsZero() || d.Expires.Before(expires)) {
			expires = d.Expires
		}
	}

	g.mu.Lock()
	switch {
	case g.closing:
		g.mu.Unlock()
		g.reject(w, r, http.StatusServiceUnavailable, "gateway shutting down")
		return
	case g.stats.Connections >= g.cfg.MaxConnections:
		g.mu.Unlock()
		g.reject(w, r, http.StatusServiceUnavailable, fmt.Sprintf("too many connections (limit %d); retry later", g.cfg.MaxConnections))
		return
	}
	g.streams.Add(1)
	g.stats.Connections++
	g.stats.ConnectionsTotal++
	g.stats.Subscriptions += len(keys)
	g.stats.SubscriptionsTotal += uint64(len(keys))
	g.mu.Unlock()
	defer g.streams.Done()

	s := &stream{g: g, w: w, rc: http.NewResponseController(w), keys: keys, last: after}
	ended, pos := s.run(r, expires)

	g.mu.Lock()
	g.stats.Connections--
	g.stats.Subscriptions -= len(keys)
	g.stats.Disconnects[ended]++
	g.mu.Unlock()
	g.log.InfoContext(r.Context(), "stream ended",
		slog.String("reason", ended.String()), slog.Uint64("position", uint64(pos)),
		slog.Int("channels", len(keys)), slog.String("remote_addr", r.RemoteAddr))
}

// parseChannels parses and checks the channel parameters, dropping duplicates. A non-zero
// status is the rejection.
func (g *Gateway) parseChannels(r *http.Request) ([]channel.Channel, []string, int, string) {
	raw := r.URL.Query()["channel"]
	if len(raw) == 0 {
		return nil, nil, http.StatusBadRequest, "no channel; add ?channel=table, table/id or parent/id/table"
	}
	if len(raw) > g.cfg.MaxChannels {
		return nil, nil, http.StatusBadRequest, fmt.Sprintf("%d channels; at most %d per connection", len(raw), g.cfg.MaxChannels)
	}
	var chans []channel.Channel
	var keys []string
	for _, s := range raw {
		c, err := channel.Parse(s)
		if err == nil {
			err = g.cfg.Router.Check(c)
		}
		if err != nil {
			return nil, nil, http.StatusBadRequest, err.Error()
		}
		k := c.String()
		if slices.Contains(keys, k) {
			continue
		}
		chans = append(chans, c)
		keys = append(keys, k)
	}
	return chans, keys, 0, ""
}

// resumePosition reads Last-Event-ID, else after. ok is false when neither is given.
func resumePosition(r *http.Request) (event.Position, bool, error) {
	s, what := r.Header.Get("Last-Event-ID"), "Last-Event-ID"
	if s == "" {
		s, what = r.URL.Query().Get("after"), "after"
	}
	if s == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("%s %q is not a ledger position; use the id of the last event received", what, s)
	}
	return event.Position(n), true, nil
}

// stream is one open SSE connection.
type stream struct {
	g    *Gateway
	w    http.ResponseWriter
	rc   *http.ResponseController
	keys []string
	last event.Position // the position the client has everything up to
	buf  []byte
}

// run streams until the client goes, the stream must end, or the gateway shuts down. It
// returns why and the client's resume position.
func (s *stream) run(r *http.Request, expires time.Time) (DisconnectReason, event.Position) {
	g := s.g
	h := s.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	s.w.WriteHeader(http.StatusOK)

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	start := s.last
	sub := pubsub.Subscribe(ctx, g.cfg.Ledger, s.keys, &pubsub.Options{After: &start, Buffer: g.cfg.Buffer})
	defer func() {
		cancel()
		<-sub.Done()
	}()

	ack, _ := json.Marshal(struct {
		Channels []string       `json:"channels"`
		Position event.Position `json:"position"`
	}{s.keys, start})
	// The ack carries id so a client that reconnects before any event resumes from P.
	s.buf = fmt.Appendf(s.buf[:0], "id: %d\nevent: subscribed\ndata: %s\n\n", start, ack)
	if err := s.write(); err != nil {
		return s.writeFailed(err), s.last
	}

	var expiry <-chan time.Time
	if !expires.IsZero() {
		t := time.NewTimer(time.Until(expires))
		defer t.Stop()
		expiry = t.C
	}
	ping := time.NewTicker(g.cfg.Heartbeat)
	defer ping.Stop()
	var matched []string
	for {
		select {
		case e, ok := <-sub.Events():
			if !ok {
				<-sub.Done()
				if err := sub.Err(); err != nil {
					g.log.ErrorContext(r.Context(), "stream read the ledger", slog.String("error", err.Error()))
					s.final(DisconnectLedgerError)
					return DisconnectLedgerError, s.last
				}
				return DisconnectClientGone, s.last
			}
			matched = g.cfg.Router.Channels(&e, matched[:0])
			ch := s.keys[0]
			for _, k := range s.keys {
				if slices.Contains(matched, k) {
					ch = k
					break
				}
			}
			s.buf = fmt.Appendf(s.buf[:0], "id: %d\nevent: %s\ndata: {\"channel\":", e.Position, e.Type)
			s.buf = strconv.AppendQuote(s.buf, ch)
			s.buf = append(s.buf, `,"event":`...)
			n := len(s.buf)
			s.buf = e.AppendJSON(s.buf)
			// A data line ends at a newline. Outside JSON strings (where they are escaped)
			// CR and LF are whitespace, so replacing them keeps the JSON equal.
			for i := n; i < len(s.buf); i++ {
				if s.buf[i] == '\n' || s.buf[i] == '\r' {
					s.buf[i] = ' '
				}
			}
			s.buf = append(s.buf, "}\n\n"...)
			if err := s.write(); err != nil {
				return s.writeFailed(err), s.last
			}
			s.last = e.Position
			g.sent.Add(1)
		case <-ping.C:
			s.buf = append(s.buf[:0], ": ping\n\n"...)
			if err := s.write(); err != nil {
				return s.writeFailed(err), s.last
			}
		case <-expiry:
			s.final(DisconnectTokenExpired)
			return DisconnectTokenExpired, s.last
		case <-g.shutdown:
			s.final(DisconnectShutdown)
			return DisconnectShutdown, s.last
		case <-ctx.Done():
			return DisconnectClientGone, s.last
		}
	}
}

// final sends the error message that ends the stream, best effort.
func (s *stream) final(reason DisconnectReason) {
	data, _ := json.Marshal(struct {
		Reason   string         `json:"reason"`
		Position event.Position `json:"position"`
	}{reason.String(), s.last})
	s.buf = fmt.Appendf(s.buf[:0], "event: error\ndata: %s\n\n", data)
	_ = s.write()
}

// write writes s.buf and flushes it within WriteTimeout.
func (s *stream) write() error {
	if err := s.rc.SetWriteDeadline(time.Now().Add(s.g.cfg.WriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if _, err := s.w.Write(s.buf); err != nil {
		return err
	}
	return s.rc.Flush()
}

// writeFailed classifies a failed write: a deadline means the client stopped reading.
func (s *stream) writeFailed(err error) DisconnectReason {
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return DisconnectOverflow
	}
	return DisconnectClientGone
}
