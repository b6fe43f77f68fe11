package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/walflow/walflow/snapshot"
)

// Snapshotter reads channel snapshots for the gateway's snapshot endpoint. *walflow.Engine
// satisfies it (Engine.Snapshot). It must be safe for concurrent use; the gateway calls it
// only for an authorized channel.
type Snapshotter interface {
	Snapshot(ctx context.Context, channel string, opts *snapshot.Opts) (*snapshot.Page, error)
}

// serveSnapshot answers GET .../snapshot?channel=C[&cursor=X][&limit=N]: a page of C's rows
// and the token to subscribe from. It is authorized as a subscription to C, before anything
// else is checked.
func (g *Gateway) serveSnapshot(w http.ResponseWriter, r *http.Request) {
	chans, keys, status, reason := g.parseChannels(r)
	if status != 0 {
		g.reject(w, r, status, reason)
		return
	}
	if len(chans) != 1 {
		g.reject(w, r, http.StatusBadRequest, "a snapshot is of one channel; give exactly one channel parameter")
		return
	}
	if d := g.authorize(r, chans[0]); !d.Allow {
		g.reject(w, r, d.Status, d.Reason)
		return
	}
	if err := g.checkChannels(chans); err != nil {
		g.reject(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if g.cfg.Snapshots == nil {
		g.reject(w, r, http.StatusNotFound, "this gateway serves no snapshots; set GatewayConfig.Snapshots (Engine.Gateway does)")
		return
	}
	q := r.URL.Query()
	opts := &snapshot.Opts{Cursor: q.Get("cursor")}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > snapshot.LimitMax {
			g.reject(w, r, http.StatusBadRequest, "limit "+strconv.Quote(s)+" is not a number of rows from 1 to "+strconv.Itoa(snapshot.LimitMax))
			return
		}
		opts.Limit = n
	}
	page, err := g.cfg.Snapshots.Snapshot(r.Context(), keys[0], opts)
	switch {
	case errors.Is(err, snapshot.ErrBadRequest):
		g.reject(w, r, http.StatusBadRequest, err.Error())
		return
	case errors.Is(err, snapshot.ErrCursorExpired):
		g.reject(w, r, http.StatusGone, err.Error())
		return
	case errors.Is(err, snapshot.ErrBusy):
		w.Header().Set("Retry-After", "1")
		g.reject(w, r, http.StatusServiceUnavailable, err.Error())
		return
	case err != nil && r.Context().Err() != nil:
		return
	case err != nil:
		g.log.ErrorContext(r.Context(), "snapshot failed", slog.String("channel", keys[0]), slog.String("error", err.Error()))
		g.reject(w, r, http.StatusInternalServerError, "reading the snapshot failed; see the server log")
		return
	}
	b, err := json.Marshal(page)
	if err != nil {
		g.reject(w, r, http.StatusInternalServerError, "encoding the snapshot failed")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}
