package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
)

// wsReadLimit bounds one client message; subscribe messages are tiny, so anything near
// this is abuse.
const wsReadLimit = 64 << 10

// Close codes of the WebSocket protocol, beyond the standard ones.
const (
	closeTokenExpired websocket.StatusCode = 4001
)

// isWebSocket tells a WebSocket upgrade from an SSE request.
func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// checkOriginPattern rejects an AllowedOrigins entry path.Match cannot use.
func checkOriginPattern(p string) error {
	host := p
	if i := strings.Index(p, "://"); i >= 0 {
		host = p[i+3:]
	}
	if host == "" || strings.Contains(host, "/") {
		return fmt.Errorf("%q is not an origin pattern; write host[:port] or scheme://host[:port], e.g. \"app.example.com\" or \"http://localhost:*\"", p)
	}
	if _, err := path.Match(host, ""); err != nil {
		return fmt.Errorf("%q: %w", p, err)
	}
	return nil
}

// originAllowed applies the Origin allow-list of a WebSocket upgrade.
func (g *Gateway) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, p := range g.cfg.AllowedOrigins {
		target := strings.ToLower(u.Host)
		if strings.Contains(p, "://") {
			target = strings.ToLower(u.Scheme + "://" + u.Host)
		}
		if ok, _ := path.Match(strings.ToLower(p), target); ok {
			return true
		}
	}
	return false
}

// serveWebSocket upgrades the request and serves the WebSocket protocol on it.
func (g *Gateway) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	if !g.originAllowed(r) {
		g.reject(w, r, http.StatusForbidden, "origin not allowed; add it to the gateway's allowed origins")
		return
	}
	if status, reason := g.admit(0); status != 0 {
		g.reject(w, r, status, reason)
		return
	}
	// The Origin was checked above, against our own list.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		// Accept has answered the request with the reason.
		g.release(r, DisconnectClientGone, 0, 0)
		return
	}
	c.SetReadLimit(wsReadLimit)
	ws := &wsConn{
		g:    g,
		c:    c,
		req:  r,
		subs: map[string]*wsSub{},
		ctrl: make(chan wsRequest),
		wake: make(chan struct{}, 1),

		waits:   map[string]*wsWait{},
		resumed: make(chan *wsWait),
	}
	ended, pos := ws.run()
	g.release(r, ended, pos, len(ws.subs))
}

// wsRequest is a client message.
type wsRequest struct {
	Type    string          `json:"type"`
	Ref     string          `json:"ref,omitempty"`
	Channel string          `json:"channel,omitempty"`
	After   *event.Position `json:"after,omitempty"`
	Token   string          `json:"token,omitempty"`
	// Snapshot is a snapshot token to subscribe from.
	Snapshot string `json:"snapshot,omitempty"`
	// bad is why the message could not be read, for an error reply.
	bad string
	// waited marks a subscribe handled again once its wait for the ledger's head ended.
	waited bool
}

// wsReply is a control message to the client.
type wsReply struct {
	Type     string          `json:"type"`
	Ref      string          `json:"ref,omitempty"`
	Channel  string          `json:"channel,omitempty"`
	Position *event.Position `json:"position,omitempty"`
	Status   int             `json:"status,omitempty"`
	Reason   *string         `json:"reason,omitempty"`
}

// wsSub is one channel subscription of a connection.
type wsSub struct {
	cursor
	key     string
	expires time.Time
}

// wsWait is a subscribe waiting for the ledger's head to reach its resume position.
type wsWait struct {
	m      wsRequest
	after  event.Position
	cancel context.CancelFunc
}

// wsConn is one WebSocket connection. Its run loop owns subs and waits and is the only
// writer; one goroutine reads client messages, and one per entry of waits waits for the
// ledger's head, then hands the subscribe back to the run loop through resumed. The hub queues the live events of every subscription and
// wakes the loop through one channel; subscriptions that are behind catch up from the
// ledger a batch at a time between the loop's other work, each in ledger order.
type wsConn struct {
	g    *Gateway
	c    *websocket.Conn
	req  *http.Request // with the current token
	ctx  context.Context
	subs map[string]*wsSub
	ctrl chan wsRequest
	wake chan struct{}
	// waits are the subscribes waiting for the head, by channel; resumed hands them back.
	waits   map[string]*wsWait
	resumed chan *wsWait
	waiters sync.WaitGroup
	msgs    []message
	last    event.Position // the highest position sent, for the log
}

func (ws *wsConn) run() (DisconnectReason, event.Position) {
	g := ws.g
	ctx, cancel := context.WithCancel(ws.req.Context())
	ws.ctx = ctx
	readErr := make(chan error, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		ws.read(ctx, readErr)
	}()
	defer func() {
		cancel()
		for _, s := range ws.subs {
			g.hub.leave(s.m)
		}
		_ = ws.c.CloseNow()
		<-readDone
		ws.waiters.Wait()
	}()

	var expiry *time.Timer
	defer func() {
		if expiry != nil {
			expiry.Stop()
		}
	}()
	var expiryC <-chan time.Time
	setExpiry := func() {
		var at time.Time
		for _, s := range ws.subs {
			if !s.expires.IsZero() && (at.IsZero() || s.expires.Before(at)) {
				at = s.expires
			}
		}
		if expiry != nil {
			expiry.Stop()
			expiry, expiryC = nil, nil
		}
		if !at.IsZero() {
			expiry = time.NewTimer(time.Until(at))
			expiryC = expiry.C
		}
	}
	ping := time.NewTicker(g.cfg.Heartbeat)
	defer ping.Stop()

	for {
		var step <-chan struct{}
		for _, s := range ws.subs {
			if !s.live {
				step = ready
				break
			}
		}
		var err error
		select {
		case m := <-ws.ctrl:
			err = ws.handle(m)
			setExpiry()
		case w := <-ws.resumed:
			// Not when it was unsubscribed meanwhile.
			if ws.waits[w.m.Channel] == w {
				delete(ws.waits, w.m.Channel)
				w.m.waited = true
				err = ws.subscribe(w.m)
				setExpiry()
			}
		case <-ws.wake:
			err = ws.drain()
		case <-step:
			err = ws.catchUp()
		case <-ping.C:
			// The head only to a connection with an authorized subscription: the
			// connection itself is not authorized.
			var head *event.Position
			if len(ws.subs) > 0 {
				h := g.cfg.Ledger.State().Head
				head = &h
			}
			err = ws.reply(wsReply{Type: "heartbeat", Position: head})
		case <-expiryC:
			return ws.close(closeTokenExpired, DisconnectTokenExpired)
		case <-g.shutdown:
			return ws.close(websocket.StatusGoingAway, DisconnectShutdown)
		case err := <-readErr:
			switch websocket.CloseStatus(err) {
			case websocket.StatusNormalClosure, websocket.StatusGoingAway:
				return DisconnectClientClosed, ws.last
			case websocket.StatusMessageTooBig, websocket.StatusUnsupportedData:
				return DisconnectProtocol, ws.last
			}
			return DisconnectClientGone, ws.last
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, errLedger):
			return ws.close(websocket.StatusInternalError, DisconnectLedgerError)
		case errors.Is(err, context.DeadlineExceeded):
			return DisconnectOverflow, ws.last
		}
		return DisconnectClientGone, ws.last
	}
}

// errLedger marks a subscription that ended on a ledger error.
var errLedger = errors.New("ledger error")

// drain writes the events the hub queued for the live subscriptions.
func (ws *wsConn) drain() error {
	for _, s := range ws.subs {
		if !s.live {
			continue
		}
		var err error
		if ws.msgs, err = s.drain(ws.msgs, func(msgs []message) error { return ws.send(s, msgs) }); err != nil {
			return err
		}
	}
	return nil
}

// catchUp moves every subscription that is behind the hub one batch on, and joins those
// that reach it.
func (ws *wsConn) catchUp() error {
	g := ws.g
	for _, s := range ws.subs {
		if s.live {
			continue
		}
		var done bool
		var err error
		ws.msgs, done, err = g.hub.catchUp(ws.ctx, s.keys, formatWS, &s.scan, g.hub.position(), ws.msgs[:0])
		if werr := ws.send(s, ws.msgs); werr != nil {
			return werr
		}
		resync, err := s.advance(g, done, err)
		switch {
		case resync != nil:
			if err := ws.ack(s, "", resync.Error()); err != nil {
				return err
			}
		case err != nil && ws.ctx.Err() != nil:
			return err
		case err != nil:
			g.log.ErrorContext(ws.ctx, "stream read the ledger", slog.String("channel", s.key), slog.String("error", err.Error()))
			return fmt.Errorf("%w: %w", errLedger, err)
		}
	}
	return nil
}

// send writes the messages of subscription s, one WebSocket message each.
func (ws *wsConn) send(s *wsSub, msgs []message) error {
	msgs = s.keep(msgs)
	n := 0
	defer func() { ws.g.delivered(msgs[:n]) }()
	for ; n < len(msgs); n++ {
		if err := ws.write(msgs[n].b); err != nil {
			return err
		}
		s.last = msgs[n].pos
		ws.last = max(ws.last, s.last)
	}
	return nil
}

// close ends the connection with code and the reason as close reason.
func (ws *wsConn) close(code websocket.StatusCode, reason DisconnectReason) (DisconnectReason, event.Position) {
	ctx, cancel := context.WithTimeout(context.Background(), ws.g.cfg.WriteTimeout)
	defer cancel()
	// Close waits for the client's close frame; bound it so a dead client cannot hold us.
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ws.c.Close(code, reason.String())
	}()
	select {
	case <-done:
	case <-ctx.Done():
		_ = ws.c.CloseNow()
		<-done
	}
	return reason, ws.last
}

// read forwards client messages to the run loop until the connection fails.
func (ws *wsConn) read(ctx context.Context, errc chan<- error) {
	for {
		typ, data, err := ws.c.Read(ctx)
		if err != nil {
			errc <- err
			return
		}
		var m wsRequest
		if typ != websocket.MessageText {
			_ = ws.c.Close(websocket.StatusUnsupportedData, "send JSON text messages")
			errc <- websocket.CloseError{Code: websocket.StatusUnsupportedData}
			return
		}
		if err := json.Unmarshal(data, &m); err != nil {
			m = wsRequest{bad: "message is not a JSON object: " + err.Error()}
		}
		select {
		case ws.ctrl <- m:
		case <-ctx.Done():
			return
		}
	}
}

// handle carries out one client message. Only a failed write is returned.
func (ws *wsConn) handle(m wsRequest) error {
	switch {
	case m.bad != "":
		return ws.refuse(m, http.StatusBadRequest, m.bad)
	case m.Type == "subscribe":
		return ws.subscribe(m)
	case m.Type == "unsubscribe":
		return ws.unsubscribe(m)
	case m.Type == "auth":
		return ws.auth(m)
	case m.Type == "":
		return ws.refuse(m, http.StatusBadRequest, `message has no "type"; use subscribe, unsubscribe or auth`)
	}
	return ws.refuse(m, http.StatusBadRequest, fmt.Sprintf("unknown message type %q; use subscribe, unsubscribe or auth", m.Type))
}

// refuse answers a request with an error message and counts it.
func (ws *wsConn) refuse(m wsRequest, status int, reason string) error {
	ws.g.rejected(ws.req, status, reason)
	return ws.reply(wsReply{Type: "error", Ref: m.Ref, Channel: m.Channel, Status: status, Reason: &reason})
}

func (ws *wsConn) subscribe(m wsRequest) error {
	g := ws.g
	c, err := channel.Parse(m.Channel)
	if err != nil {
		return ws.refuse(m, http.StatusBadRequest, err.Error())
	}
	key := c.String()
	m.Channel = key
	// Authorize before anything that answers from the configuration or the ledger (the
	// router's scopes, the head), as for SSE.
	d := g.authorize(ws.req, c)
	if !d.Allow {
		return ws.refuse(m, d.Status, d.Reason)
	}
	if err := g.checkChannels([]channel.Channel{c}); err != nil {
		return ws.refuse(m, http.StatusBadRequest, err.Error())
	}
	var after event.Position
	if m.After != nil {
		after = *m.After
	}
	snap, err := snapshotToken(m.Snapshot, 1)
	if err != nil {
		return ws.refuse(m, http.StatusBadRequest, err.Error())
	}
	resumed := m.After != nil
	if snap != nil {
		after, resumed = max(after, snap.After), true
	}
	_, sub := ws.subs[key]
	_, waiting := ws.waits[key]
	if sub || waiting {
		return ws.refuse(m, http.StatusBadRequest, "already subscribed to "+key+"; unsubscribe first to resume from another position")
	}
	if len(ws.subs)+len(ws.waits) >= g.cfg.MaxChannels {
		return ws.refuse(m, http.StatusBadRequest, fmt.Sprintf("at most %d channels per connection; unsubscribe from one first", g.cfg.MaxChannels))
	}
	if resumed && g.cfg.SharedLedger && !m.waited && after > g.cfg.Ledger.State().Head {
		// In a cluster, the position may come from a node ahead of this one. The
		// connection goes on meanwhile; the subscribe is answered once the wait ends.
		ws.wait(m, after)
		return nil
	}
	start, resync, err := g.resumeFrom(after, resumed)
	if err != nil {
		return ws.refuse(m, resumeStatus(err), err.Error())
	}
	s := ws.start(key, start, d.Expires)
	s.snap = snap
	g.subscribed(1)
	return ws.ack(s, m.Ref, resync)
}

// wait waits, without holding up the connection, for the ledger's head to reach after,
// then hands m back to the run loop, which subscribes or refuses it then.
func (ws *wsConn) wait(m wsRequest, after event.Position) {
	ctx, cancel := context.WithCancel(ws.ctx)
	w := &wsWait{m: m, after: after, cancel: cancel}
	ws.waits[m.Channel] = w
	ws.waiters.Add(1)
	go func() {
		defer ws.waiters.Done()
		defer cancel()
		// Refused or not, the run loop checks the head again and answers.
		ws.g.waitHead(ctx, after, false)
		select {
		case ws.resumed <- w:
		case <-ws.ctx.Done():
		}
	}()
}

// start begins delivering key's events after pos: from the ledger until it reaches the
// hub, then live.
func (ws *wsConn) start(key string, pos event.Position, expires time.Time) *wsSub {
	// A connection holds at most about Buffer events in all, whatever its channels.
	limit := max(16, ws.g.cfg.Buffer/ws.g.cfg.MaxChannels)
	keys := []string{key}
	s := &wsSub{key: key, expires: expires, cursor: cursor{m: newMember(keys, formatWS, limit, ws.wake), keys: keys, last: pos, scan: pos}}
	ws.subs[key] = s
	return s
}

// ack confirms a subscription, as resync when its position could not be honoured.
func (ws *wsConn) ack(s *wsSub, ref, resync string) error {
	pos := s.last
	if resync == "" {
		return ws.reply(wsReply{Type: "subscribed", Ref: ref, Channel: s.key, Position: &pos})
	}
	ws.g.resynced()
	return ws.reply(wsReply{Type: "resync", Ref: ref, Channel: s.key, Position: &pos, Reason: &resync})
}

func (ws *wsConn) unsubscribe(m wsRequest) error {
	// Syntax only: every subscribed channel passed the router, and the router's answer
	// for another would describe the configured tables to a client that may not subscribe.
	c, err := channel.Parse(m.Channel)
	if err != nil {
		return ws.refuse(m, http.StatusBadRequest, err.Error())
	}
	key := c.String()
	if w, ok := ws.waits[key]; ok {
		// A subscribe still waiting for the head: it is never answered.
		w.cancel()
		delete(ws.waits, key)
		pos, none := w.after, ""
		return ws.reply(wsReply{Type: "unsubscribed", Ref: m.Ref, Channel: key, Position: &pos, Reason: &none})
	}
	s, ok := ws.subs[key]
	if !ok {
		m.Channel = key
		return ws.refuse(m, http.StatusBadRequest, "not subscribed to "+key)
	}
	ws.drop(s)
	pos, none := s.last, ""
	return ws.reply(wsReply{Type: "unsubscribed", Ref: m.Ref, Channel: key, Position: &pos, Reason: &none})
}

// drop ends a subscription.
func (ws *wsConn) drop(s *wsSub) {
	ws.g.hub.leave(s.m)
	delete(ws.subs, s.key)
	ws.g.subscribed(-1)
}

// auth replaces the connection's token and authorizes every subscription again with it.
func (ws *wsConn) auth(m wsRequest) error {
	if m.Token == "" {
		return ws.refuse(m, http.StatusBadRequest, `auth message has no "token"`)
	}
	r := ws.req.Clone(ws.req.Context())
	r.Header.Set("Authorization", "Bearer "+m.Token)
	q := r.URL.Query()
	q.Del("access_token")
	r.URL.RawQuery = q.Encode()
	r.RequestURI = r.URL.RequestURI()
	ws.req = r
	for _, s := range ws.subs {
		c, err := channel.Parse(s.key)
		if err != nil {
			// A channel the gateway accepted parses again the same way.
			panic(fmt.Sprintf("realtime: subscribed channel %q no longer parses: %v", s.key, err))
		}
		d := ws.g.authorize(r, c)
		if d.Allow {
			s.expires = d.Expires
			continue
		}
		ws.drop(s)
		ws.g.rejected(r, d.Status, d.Reason)
		pos, reason := s.last, d.Reason
		if err := ws.reply(wsReply{Type: "unsubscribed", Channel: s.key, Position: &pos, Status: d.Status, Reason: &reason}); err != nil {
			return err
		}
	}
	return ws.reply(wsReply{Type: "authorized", Ref: m.Ref})
}

// reply writes a control message.
func (ws *wsConn) reply(r wsReply) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return ws.write(b)
}

// write writes one message within WriteTimeout.
func (ws *wsConn) write(b []byte) error {
	ctx, cancel := context.WithTimeout(ws.ctx, ws.g.cfg.WriteTimeout)
	defer cancel()
	err := ws.c.Write(ctx, websocket.MessageText, b)
	if err != nil && ctx.Err() == context.DeadlineExceeded && ws.ctx.Err() == nil {
		return context.DeadlineExceeded
	}
	return err
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}
