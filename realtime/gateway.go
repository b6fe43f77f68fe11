package realtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Defaults for [GatewayConfig].
const (
	MaxChannelsDefault    = 32
	MaxConnectionsDefault = 10000
	BufferDefault         = 1024
	HeartbeatDefault      = 15 * time.Second
	WriteTimeoutDefault   = 10 * time.Second
	ResumeWaitDefault     = ledger.CatchUpWait
)

// GatewayConfig configures a [Gateway].
type GatewayConfig struct {
	// Ledger is the ledger streams read from (Engine.Ledger()). Required.
	Ledger Ledger
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
	// Buffer is how many live events may wait for a client's writes (a WebSocket
	// connection shares it between its channels). The messages themselves are rendered
	// once and shared by every client, so a waiting event costs a few dozen bytes. A client
	// further behind leaves the live stream and catches up from the ledger on its own, a
	// batch at a time, so memory never grows with a client's backlog. Default
	// BufferDefault (1024).
	Buffer int
	// Heartbeat is the interval of the ": ping" comment line that keeps proxies from
	// closing an idle stream. Default HeartbeatDefault (15s).
	Heartbeat time.Duration
	// WriteTimeout bounds each write to a client; a client that does not read for this
	// long is disconnected with reason overflow. Default WriteTimeoutDefault (10s).
	WriteTimeout time.Duration
	// ResumeWait bounds how long a subscription whose resume position (Last-Event-ID, after
	// or a snapshot token) is after the ledger's head waits for the head to reach it. In a
	// cluster every node follows the shared stream, each a little behind or ahead of the
	// others, so a client that received position p from one node, or loaded a snapshot
	// there, may resume on a node that has not read p yet: that subscription starts once
	// this node has. A position still ahead after ResumeWait is refused with status 503
	// (SSE with Retry-After), which clients retry. The wait ends early when the request ends
	// or the gateway shuts down. It applies only with SharedLedger. Default
	// ResumeWaitDefault (ledger.CatchUpWait, 10s).
	ResumeWait time.Duration
	// SharedLedger says that Ledger is this node's view of a stream other nodes serve too
	// (a walflow cluster; Engine.Gateway sets it then), so a resume position after its
	// head may come from a node ahead of it and is waited for (ResumeWait). Without it,
	// such a position names events this ledger never had (the ledger was replaced, or the
	// client followed another walflow) and is refused at once with 400, so that the client
	// sees it rather than resuming later with a gap.
	SharedLedger bool
	// FlushInterval, when positive, wakes each stream at most once per interval to write
	// the live events that arrived meanwhile, in one write: under a heavy fan-out this
	// trades up to FlushInterval of latency for far fewer wake-ups and system calls. Default
	// 0: every event is written as soon as it is read.
	FlushInterval time.Duration
	// AllowedOrigins are the Origin patterns a WebSocket upgrade may come from, besides the
	// gateway's own host (always allowed, as are requests without an Origin header, which
	// browsers always send). A pattern is matched against the origin's host[:port] with
	// path.Match, e.g. "app.example.com" or "localhost:*"; a pattern with a scheme
	// ("https://app.example.com") must match the scheme too. Browsers do not apply the
	// same-origin policy to WebSockets, so this is what stops another site's page from
	// using a visitor's cookies on the gateway. Default: none.
	AllowedOrigins []string
	// Snapshots serves GET .../snapshot?channel=C: the channel's rows with a token to
	// subscribe from (see package snapshot). Engine.Gateway sets it to the engine. Default
	// nil: that path answers 404.
	Snapshots Snapshotter
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
	if c.ResumeWait <= 0 {
		c.ResumeWait = ResumeWaitDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

func (c GatewayConfig) validate() error {
	switch {
	case c.Ledger == nil:
		return configErrorf("GatewayConfig", "Ledger", "nil; pass engine.Ledger()")
	case c.Router == nil:
		return configErrorf("GatewayConfig", "Router", "nil; pass engine.Router()")
	case c.Authorizer == nil:
		return configErrorf("GatewayConfig", "Authorizer", "nil; pass a JWTAuthorizer, or realtime.AllowAll{} for tests and trusted networks")
	}
	for i, o := range c.AllowedOrigins {
		if err := checkOriginPattern(o); err != nil {
			return entryError("GatewayConfig", "AllowedOrigins", i, err)
		}
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
	// DisconnectClientClosed: a WebSocket client closed the connection cleanly.
	DisconnectClientClosed DisconnectReason = "client closed"
	// DisconnectProtocol: a WebSocket client broke the protocol (binary or oversized
	// message).
	DisconnectProtocol DisconnectReason = "protocol error"
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
	// Waiting is the number of subscriptions waiting for the ledger's head to reach their
	// resume position ([GatewayConfig.ResumeWait]): in a cluster, positions another node
	// has read and this one not yet.
	Waiting int
	// SubscriptionsTotal counts the channel subscriptions ever started.
	SubscriptionsTotal uint64
	// MessagesSent counts the event messages written to clients.
	MessagesSent uint64
	// Rejected counts refused requests and WebSocket subscribe messages by HTTP status
	// (400, 401, 403, 405, 503).
	Rejected map[int]uint64
	// Resyncs counts subscriptions that asked for events already removed by the ledger's
	// retention and were told to reload their state.
	Resyncs uint64
	// Disconnects counts ended streams by reason.
	Disconnects map[DisconnectReason]uint64
}

// Gateway serves channel events over Server-Sent Events; see the package documentation
// for the protocol. It is safe for concurrent use.
type Gateway struct {
	cfg GatewayConfig
	log *slog.Logger

	mu       sync.Mutex
	shutdown chan struct{}
	closed   atomic.Bool // set under mu by Shutdown; streams check it after each wake
	streams  sync.WaitGroup
	stats    Stats
	// waitingRequests counts the SSE requests in waitHead: they hold a connection slot of
	// MaxConnections before they are streams.
	waitingRequests int

	sent    atomic.Uint64
	latency prometheus.Histogram
	hub     *hub
}

// NewGateway returns a gateway, or an error naming the missing field.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With(slog.String("component", "realtime"))
	return &Gateway{
		cfg:      cfg,
		log:      log,
		shutdown: make(chan struct{}),
		stats:    Stats{Rejected: map[int]uint64{}, Disconnects: map[DisconnectReason]uint64{}},
		latency:  newLatencyHistogram(),
		hub:      newHub(cfg.Ledger, cfg.Router, log, cfg.FlushInterval),
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
	if !g.closed.Load() {
		g.closed.Store(true)
		close(g.shutdown)
		g.hub.wakeAll()
	}
	g.mu.Unlock()
	done := make(chan struct{})
	go func() {
		g.streams.Wait()
		// The hub stops with its last member, which every stream has left by now.
		g.hub.wg.Wait()
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

// ServeHTTP serves walflow.js, a WebSocket connection or an SSE stream; see the package
// documentation.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		g.reject(w, r, http.StatusMethodNotAllowed, "use GET")
		return
	}
	switch {
	case path.Base(r.URL.Path) == "walflow.js":
		serveClient(w, r)
	case path.Base(r.URL.Path) == "snapshot" && !isWebSocket(r):
		g.serveSnapshot(w, r)
	case isWebSocket(r):
		g.serveWebSocket(w, r)
	case r.Method == http.MethodHead:
		g.reject(w, r, http.StatusMethodNotAllowed, "use GET to open a stream")
	default:
		g.serveSSE(w, r)
	}
}

// admit counts a new connection of n subscriptions, or says why it cannot open. Call
// release when it ends.
func (g *Gateway) admit(n int) (status int, reason string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.closed.Load():
		return http.StatusServiceUnavailable, "gateway shutting down"
	case g.stats.Connections+g.waitingRequests >= g.cfg.MaxConnections:
		return http.StatusServiceUnavailable, tooManyConnections(g.cfg.MaxConnections)
	}
	g.streams.Add(1)
	g.stats.Connections++
	g.stats.ConnectionsTotal++
	g.stats.Subscriptions += n
	g.stats.SubscriptionsTotal += uint64(n)
	return 0, ""
}

func tooManyConnections(limit int) string {
	return fmt.Sprintf("too many connections (limit %d); retry later", limit)
}

// release ends a connection admitted by admit, which had n subscriptions at the end.
// It logs first, so that whoever sees the connection gone from Stats, or Shutdown
// return, finds its record in the log.
func (g *Gateway) release(r *http.Request, ended DisconnectReason, pos event.Position, n int) {
	g.log.InfoContext(r.Context(), "stream ended",
		slog.String("reason", ended.String()), slog.Uint64("position", uint64(pos)),
		slog.Int("channels", n), slog.String("remote_addr", r.RemoteAddr))
	g.mu.Lock()
	g.stats.Connections--
	g.stats.Subscriptions -= n
	g.stats.Disconnects[ended]++
	g.mu.Unlock()
	g.streams.Done()
}

// subscribed adjusts the subscription counters of an open connection by n.
func (g *Gateway) subscribed(n int) {
	g.mu.Lock()
	g.stats.Subscriptions += n
	if n > 0 {
		g.stats.SubscriptionsTotal += uint64(n)
	}
	g.mu.Unlock()
}

// rejected counts a refused WebSocket request and logs it.
func (g *Gateway) rejected(r *http.Request, status int, reason string) {
	g.mu.Lock()
	g.stats.Rejected[status]++
	g.mu.Unlock()
	g.log.InfoContext(r.Context(), "subscription rejected",
		slog.Int("status", status), slog.String("reason", reason), slog.String("remote_addr", r.RemoteAddr))
}

// resynced counts a subscription told to reload its state.
func (g *Gateway) resynced() {
	g.mu.Lock()
	g.stats.Resyncs++
	g.mu.Unlock()
}

// delivered counts the messages written to a client and observes their delivery latency:
// from the commit in PostgreSQL to the write. Events sent from a resume backlog count with
// their full age.
func (g *Gateway) delivered(msgs []message) {
	g.sent.Add(uint64(len(msgs)))
	now := time.Now().UnixNano()
	for i := range msgs {
		if msgs[i].at != 0 {
			g.latency.Observe(max(float64(now-msgs[i].at)/1e9, 0))
		}
	}
}

// authorize asks the Authorizer for ch. A denial without a status is a 403.
func (g *Gateway) authorize(r *http.Request, ch channel.Channel) Decision {
	d := g.cfg.Authorizer.Authorize(r, ch)
	if !d.Allow && d.Status == 0 {
		d.Status = http.StatusForbidden
	}
	return d
}

// checkChannels checks authorized channels against the router: a scoped channel must name
// a scope its table has. It runs after authorization, because its reasons describe the
// configured tables, which a client that may not subscribe must not learn.
func (g *Gateway) checkChannels(chans []channel.Channel) error {
	for _, c := range chans {
		if err := g.cfg.Router.Check(c); err != nil {
			return err
		}
	}
	return nil
}

// waitHead waits until the ledger's head reaches pos, for at most ResumeWait, and until ctx
// ends or the gateway shuts down. status is 0 when the head reached pos, otherwise the
// refusal: 503, which the client retries later. An SSE request (request true) holds one of
// the MaxConnections while it waits, since it is no stream yet; a WebSocket subscription's
// connection holds one already.
func (g *Gateway) waitHead(ctx context.Context, pos event.Position, request bool) (status int, reason string) {
	led := g.cfg.Ledger
	if led.State().Head >= pos {
		return 0, ""
	}
	g.mu.Lock()
	switch {
	case g.closed.Load():
		g.mu.Unlock()
		return http.StatusServiceUnavailable, "gateway shutting down"
	case request && g.stats.Connections+g.waitingRequests >= g.cfg.MaxConnections:
		g.mu.Unlock()
		return http.StatusServiceUnavailable, tooManyConnections(g.cfg.MaxConnections)
	}
	g.stats.Waiting++
	if request {
		g.waitingRequests++
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.stats.Waiting--
		if request {
			g.waitingRequests--
		}
		g.mu.Unlock()
	}()

	ctx, cancel := context.WithTimeout(ctx, g.cfg.ResumeWait)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-g.shutdown:
			cancel()
		case <-ctx.Done():
		}
	}()
	defer wg.Wait()
	defer cancel()
	for led.State().Head < pos {
		if err := led.Wait(ctx, led.State().Head); err != nil {
			break
		}
	}
	if head := led.State().Head; head < pos {
		if g.closed.Load() {
			return http.StatusServiceUnavailable, "gateway shutting down"
		}
		return http.StatusServiceUnavailable, aheadError{after: pos, head: head, wait: g.cfg.ResumeWait}.Error()
	}
	return 0, ""
}

// resumeError is resumeFrom's refusal of a resume position, with its HTTP status.
type resumeError struct {
	status int
	msg    string
}

func (e *resumeError) Error() string { return e.msg }

// resumeStatus is the HTTP status that refuses a resume position with err (from
// resumeFrom): 400 for a position this ledger never had, 503 (retry later) otherwise.
func resumeStatus(err error) int {
	var re *resumeError
	if errors.As(err, &re) {
		return re.status
	}
	return http.StatusServiceUnavailable
}

// aheadError refuses a resume position after the ledger's head.
type aheadError struct {
	after, head event.Position
	wait        time.Duration
}

func (e aheadError) Error() string {
	return fmt.Sprintf("resume position %d is after the ledger head %d, which did not reach it within %s; retry later with the same position", e.after, e.head, e.wait)
}

// resumeFrom checks a client's resume position against the ledger. It returns where
// delivery starts and, when the events after the asked position were truncated, the reason
// the client must reload its state (delivery then starts at the head). A position after
// the head is refused (see resumeStatus): on a shared ledger callers wait for the head
// first (waitHead), so it is one the head did not reach within ResumeWait.
func (g *Gateway) resumeFrom(after event.Position, resumed bool) (event.Position, string, error) {
	st := g.cfg.Ledger.State()
	switch {
	case !resumed:
		return st.Head, "", nil
	case after > st.Head && !g.cfg.SharedLedger:
		return 0, "", &resumeError{status: http.StatusBadRequest, msg: fmt.Sprintf("resume position %d is after the ledger head %d: this ledger never had it (it was replaced, or the position is another walflow's); subscribe without a position, or load a snapshot", after, st.Head)}
	case after > st.Head:
		return 0, "", &resumeError{status: http.StatusServiceUnavailable, msg: aheadError{after: after, head: st.Head, wait: g.cfg.ResumeWait}.Error()}
	case after < st.Tail:
		return st.Head, fmt.Sprintf("resume position %d is older than the ledger's retention (events through %d were removed); reload your state", after, st.Tail), nil
	}
	return after, "", nil
}

// parseChannels parses the channel parameters, dropping duplicates. A non-zero status is
// the rejection. It checks their syntax and number only; checkChannels checks them against
// the router once they are authorized.
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
