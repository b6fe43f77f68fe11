package realtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/snapshot"
)

// serveSSE serves one SSE stream: GET ?channel=a&channel=b[&after=N], with the
// Last-Event-ID header taking precedence over after.
func (g *Gateway) serveSSE(w http.ResponseWriter, r *http.Request) {
	chans, keys, status, reason := g.parseChannels(r)
	if status != 0 {
		g.reject(w, r, status, reason)
		return
	}
	// Authorize before anything that answers from the configuration or the ledger (the
	// router's scopes, the head): a client that may not subscribe learns neither.
	var expires time.Time
	for _, c := range chans {
		d := g.authorize(r, c)
		if !d.Allow {
			g.reject(w, r, d.Status, d.Reason)
			return
		}
		if !d.Expires.IsZero() && (expires.IsZero() || d.Expires.Before(expires)) {
			expires = d.Expires
		}
	}
	if err := g.checkChannels(chans); err != nil {
		g.reject(w, r, http.StatusBadRequest, err.Error())
		return
	}
	after, resumed, err := resumePosition(r)
	if err != nil {
		g.reject(w, r, http.StatusBadRequest, err.Error())
		return
	}
	snap, err := snapshotToken(r.URL.Query().Get("snapshot"), len(chans))
	if err != nil {
		g.reject(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if snap != nil {
		// The later of the two: a stream resumed after events it received from the token.
		after, resumed = max(after, snap.After), true
	}
	if resumed && g.cfg.SharedLedger {
		// In a cluster, the position may come from a node ahead of this one.
		if status, reason := g.waitHead(r.Context(), after, true); status != 0 {
			if r.Context().Err() != nil {
				return // the client is gone
			}
			w.Header().Set("Retry-After", "1")
			g.reject(w, r, status, reason)
			return
		}
	}
	start, resync, err := g.resumeFrom(after, resumed)
	if err != nil {
		status := resumeStatus(err)
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		g.reject(w, r, status, err.Error())
		return
	}
	if status, reason := g.admit(len(keys)); status != 0 {
		g.reject(w, r, status, reason)
		return
	}
	s := &stream{g: g, w: w, rc: http.NewResponseController(w), cursor: cursor{keys: keys, last: start, scan: start, snap: snap}}
	ended := s.run(r, expires, resync)
	g.release(r, ended, s.last, len(keys))
}

// snapshotToken parses a snapshot token parameter, if one is given (nil otherwise), for a
// subscription to n channels.
func snapshotToken(s string, n int) (*snapshot.Token, error) {
	if s == "" {
		return nil, nil
	}
	if n != 1 {
		return nil, fmt.Errorf("a snapshot token is for the one channel its snapshot was read from, but %d channels were given; open one stream per snapshot", n)
	}
	t, err := snapshot.ParseToken(s)
	if err != nil {
		return nil, err
	}
	return &t, nil
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
	cursor
	g   *Gateway
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf []byte
}

// run streams until the client goes, the stream must end, or the gateway shuts down. It
// returns why; s.last is then the client's resume position. A non-empty resync is the
// reason the client's resume position could not be honoured.
func (s *stream) run(r *http.Request, expires time.Time, resync string) DisconnectReason {
	g := s.g
	h := s.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	s.w.WriteHeader(http.StatusOK)
	ctx := r.Context()
	if err := s.ack(resync); err != nil {
		return s.writeFailed(err)
	}

	// One timer for the heartbeat and the expiry, and no channel shared with other streams
	// in the select: with thousands of streams, a shared channel's lock is contended.
	hb := g.cfg.Heartbeat
	nextPing := time.Now().Add(hb)
	timer := time.NewTimer(time.Until(nextFire(nextPing, expires)))
	defer timer.Stop()

	s.m = newMember(s.keys, formatSSE, g.cfg.Buffer, make(chan struct{}, 1))
	defer g.hub.leave(s.m)
	var msgs []message
	for {
		if g.closed.Load() {
			s.final(DisconnectShutdown)
			return DisconnectShutdown
		}
		wake := ready // catching up: go on unless something else is ready
		if s.live {
			wake = s.m.wake
		}
		select {
		case <-wake:
		case <-timer.C:
			now := time.Now()
			if !expires.IsZero() && !now.Before(expires) {
				s.final(DisconnectTokenExpired)
				return DisconnectTokenExpired
			}
			if !now.Before(nextPing) {
				s.buf = append(s.buf[:0], ": ping\n\n"...)
				if err := s.write(); err != nil {
					return s.writeFailed(err)
				}
				nextPing = now.Add(hb)
			}
			timer.Reset(time.Until(nextFire(nextPing, expires)))
			continue
		case <-ctx.Done():
			return DisconnectClientGone
		}

		if s.live {
			var err error
			if msgs, err = s.drain(msgs, s.writeMessages); err != nil {
				return s.writeFailed(err)
			}
			continue
		}

		var done bool
		var err error
		msgs, done, err = g.hub.catchUp(ctx, s.keys, formatSSE, &s.scan, g.hub.position(), msgs[:0])
		if werr := s.writeMessages(msgs); werr != nil {
			return s.writeFailed(werr)
		}
		resync, err := s.advance(g, done, err)
		switch {
		case resync != nil:
			if err := s.ack(resync.Error()); err != nil {
				return s.writeFailed(err)
			}
		case err != nil && ctx.Err() != nil:
			return DisconnectClientGone
		case err != nil:
			g.log.ErrorContext(ctx, "stream read the ledger", slog.String("error", err.Error()))
			s.final(DisconnectLedgerError)
			return DisconnectLedgerError
		}
	}
}

// nextFire is when a stream's timer must fire next: the heartbeat, or the expiry if sooner.
func nextFire(ping, expires time.Time) time.Time {
	if !expires.IsZero() && expires.Before(ping) {
		return expires
	}
	return ping
}

// writeChunk is the size of the writes a batch of messages is gathered into.
const writeChunk = 16 << 10

// writeMessages writes messages and flushes them once.
func (s *stream) writeMessages(msgs []message) error {
	msgs = s.keep(msgs)
	if len(msgs) == 0 {
		return nil
	}
	if err := s.deadline(); err != nil {
		return err
	}
	// Gathered into writes of up to writeChunk bytes: few system calls, and a stream never
	// holds more than a chunk, however far behind it is.
	s.buf = s.buf[:0]
	for i := range msgs {
		s.buf = append(s.buf, msgs[i].b...)
		if len(s.buf) >= writeChunk || i == len(msgs)-1 {
			if _, err := s.w.Write(s.buf); err != nil {
				return err
			}
			s.buf = s.buf[:0]
		}
	}
	if cap(s.buf) > 2*writeChunk {
		s.buf = nil // one huge message: do not keep its buffer
	}
	if err := s.rc.Flush(); err != nil {
		return err
	}
	s.g.delivered(msgs)
	s.last = max(s.last, msgs[len(msgs)-1].pos)
	return nil
}

// ack sends the subscribed message, or the resync message when resync is the reason the
// client's position could not be honoured. Both carry id so that a client reconnecting
// before any event resumes from s.last.
func (s *stream) ack(resync string) error {
	kind, reason := "subscribed", ""
	if resync != "" {
		kind, reason = "resync", resync
		s.g.resynced()
	}
	data, _ := json.Marshal(struct {
		Channels []string       `json:"channels"`
		Position event.Position `json:"position"`
		Reason   string         `json:"reason,omitempty"`
	}{s.keys, s.last, reason})
	s.buf = fmt.Appendf(s.buf[:0], "id: %d\nevent: %s\ndata: %s\n\n", s.last, kind, data)
	return s.write()
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
	if err := s.deadline(); err != nil {
		return err
	}
	if _, err := s.w.Write(s.buf); err != nil {
		return err
	}
	return s.rc.Flush()
}

// deadline bounds the next writes by WriteTimeout.
func (s *stream) deadline() error {
	if err := s.rc.SetWriteDeadline(time.Now().Add(s.g.cfg.WriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// writeFailed classifies a failed write: a deadline means the client stopped reading.
func (s *stream) writeFailed(err error) DisconnectReason {
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return DisconnectOverflow
	}
	return DisconnectClientGone
}
