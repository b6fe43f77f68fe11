package walflow

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/consoleui"
	"github.com/walflow/walflow/operator"
)

// ConsolePath is the prefix of the console's assets and API; the page itself is at /.
const ConsolePath = "/console/"

// minAdminToken is the shortest Config.AdminToken accepted.
const minAdminToken = 16

// validateConsole checks the console's settings.
func (c Config) validateConsole() error {
	if c.AdminToken != "" && len(c.AdminToken) < minAdminToken {
		return fmt.Errorf("walflow: AdminToken has %d characters; use at least %d random ones (for example the output of openssl rand -hex 32), or leave it empty to turn the console's actions off",
			len(c.AdminToken), minAdminToken)
	}
	if c.ConsoleInterval < 0 {
		return fmt.Errorf("walflow: ConsoleInterval %s is negative; leave it 0 for the default (%s)", c.ConsoleInterval, ConsoleIntervalDefault)
	}
	if c.Realtime != nil && strings.HasPrefix(c.Realtime.Path, ConsolePath) {
		return fmt.Errorf("walflow: Realtime.Path %q is under the console's %s; mount the gateway elsewhere, like /realtime/", c.Realtime.Path, ConsolePath)
	}
	return nil
}

// ConsoleError is the body of a refused or failed console API request.
type ConsoleError struct {
	Error string `json:"error"`
}

// ConsoleSession is the body of GET /console/api/session: whether the console's actions
// are available to the request.
type ConsoleSession struct {
	// AdminTokenSet reports whether Config.AdminToken is set.
	AdminTokenSet bool `json:"admin_token_set"`
	// Admin reports whether the request sent the admin token.
	Admin bool `json:"admin"`
}

// ConsoleActionResult is the body of a console action's success.
type ConsoleActionResult struct {
	Operator string `json:"operator"`
	Action   string `json:"action"`
	// Skipped is the position a skip moved the operator past.
	Skipped event.Position `json:"skipped,omitempty"`
	// Discarded are the positions of the discarded parked events.
	Discarded []event.Position `json:"discarded,omitempty"`
}

// mountConsole serves the console on mux: the page at / (unless the realtime gateway is
// mounted there) and at ConsolePath, its assets under ConsolePath and its API under
// ConsolePath + "api/".
func (e *Engine) mountConsole(mux *http.ServeMux) {
	web, err := fs.Sub(consoleui.Files, "web")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	page := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		http.ServeFileFS(w, r, web, "index.html")
	}
	if e.cfg.Realtime == nil || e.cfg.Realtime.Path != "/" {
		mux.HandleFunc("GET /{$}", page)
	}
	// Also under ConsolePath, for servers that mount Handler below their own page at /.
	mux.HandleFunc("GET "+ConsolePath+"{$}", page)
	mux.HandleFunc("GET "+ConsolePath+"{file}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, web, r.PathValue("file"))
	})
	api := ConsolePath + "api/"
	mux.HandleFunc("GET "+api+"history", e.serveHistory)
	mux.HandleFunc("GET "+api+"config", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, e.ConsoleConfig()) })
	mux.HandleFunc("GET "+api+"session", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, ConsoleSession{AdminTokenSet: e.cfg.AdminToken != "", Admin: e.cfg.AdminToken != "" && e.adminToken(r)})
	})
	mux.HandleFunc("GET "+api+"operators/{name}/parked", e.admin(e.withOperators(e.serveParked)))
	mux.HandleFunc("POST "+api+"operators/{name}/{action}", e.admin(e.withOperators(e.serveAction)))
	mux.HandleFunc("GET "+ConsolePath+IndexEventsPath, e.admin(e.serveIndexEvents))
	// Anything else under the API is a JSON 404, not the file server's page.
	mux.HandleFunc(api, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, ConsoleError{Error: fmt.Sprintf("no console API at %s %s", r.Method, r.URL.Path)})
	})
}

// serveHistory answers the samples after ?after=SEQ (all of them without it).
func (e *Engine) serveHistory(w http.ResponseWriter, r *http.Request) {
	var after uint64
	if s := r.URL.Query().Get("after"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, ConsoleError{Error: fmt.Sprintf("after=%q is not a sample number; pass the seq of the last sample you have", s)})
			return
		}
		after = n
	}
	writeJSON(w, http.StatusOK, ConsoleHistory{
		IntervalMS: e.cfg.ConsoleInterval.Milliseconds(), WindowSeconds: int64(ConsoleWindow.Seconds()), Samples: e.console.after(after),
	})
}

// adminToken reports whether r carries Config.AdminToken as its bearer token. The
// comparison takes the same time whatever the token sent.
func (e *Engine) adminToken(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || e.cfg.AdminToken == "" {
		return false
	}
	a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(e.cfg.AdminToken))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// admin lets only requests with the admin token reach h: 403 when no token is configured,
// 401 when the request lacks it. The token travels in the Authorization header, never in
// a cookie, so another site's page cannot make a browser send it (no CSRF).
func (e *Engine) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if e.cfg.AdminToken == "" {
			writeJSON(w, http.StatusForbidden, ConsoleError{Error: "the console's actions are off: no admin token is configured; set http.admin_token_env or http.admin_token_file in walflow.yaml (Config.AdminToken) and restart walflow"})
			return
		}
		if !e.adminToken(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="walflow console"`)
			writeJSON(w, http.StatusUnauthorized, ConsoleError{Error: "this action needs the admin token: send Authorization: Bearer TOKEN with the token of http.admin_token_env or http.admin_token_file (Config.AdminToken)"})
			return
		}
		h(w, r)
	}
}

// withOperators answers 404 when no operator is configured, else runs h.
func (e *Engine) withOperators(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if e.ops == nil {
			writeJSON(w, http.StatusNotFound, ConsoleError{Error: "no operators are configured"})
			return
		}
		h(w, r)
	}
}

// serveParked lists an operator's parked rows.
func (e *Engine) serveParked(w http.ResponseWriter, r *http.Request) {
	rows, err := e.ops.Parked(r.Context(), r.PathValue("name"))
	if err != nil {
		writeActionError(w, err)
		return
	}
	if rows == nil {
		rows = []operator.ParkedRow{}
	}
	writeJSON(w, http.StatusOK, rows)
}

// consoleActionBody is the optional JSON body of an action: the derived row of a retry or
// discard.
type consoleActionBody struct {
	ID string `json:"id"`
}

// serveAction runs restart, skip, retry or discard on an operator.
func (e *Engine) serveAction(w http.ResponseWriter, r *http.Request) {
	name, action := r.PathValue("name"), r.PathValue("action")
	var body consoleActionBody
	if r.ContentLength != 0 {
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
			writeJSON(w, http.StatusBadRequest, ConsoleError{Error: fmt.Sprintf("the body is not JSON like {\"id\": \"42\"}: %v", err)})
			return
		}
	}
	res := ConsoleActionResult{Operator: name, Action: action}
	var err error
	switch action {
	case "restart":
		err = e.ops.Restart(r.Context(), name)
	case "skip":
		res.Skipped, err = e.ops.Skip(r.Context(), name)
	case "retry":
		err = e.ops.Retry(r.Context(), name, body.ID)
	case "discard":
		if body.ID == "" {
			writeJSON(w, http.StatusBadRequest, ConsoleError{Error: "discard needs the derived row: send {\"id\": \"ID\"} (the parked list shows the ids)"})
			return
		}
		res.Discarded, err = e.ops.Discard(r.Context(), name, body.ID)
	default:
		writeJSON(w, http.StatusNotFound, ConsoleError{Error: fmt.Sprintf("%q is not an operator action; use restart, skip, retry or discard", action)})
		return
	}
	if err != nil {
		writeActionError(w, err)
		return
	}
	e.log.InfoContext(r.Context(), "console action", slog.String("operator", name), slog.String("action", action), slog.String("id", body.ID))
	writeJSON(w, http.StatusOK, res)
}

// writeActionError answers an operator call's error with the status its kind calls for.
func writeActionError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, operator.ErrUnknown):
		status = http.StatusNotFound
	case errors.Is(err, operator.ErrNotHalted), errors.Is(err, operator.ErrForeignLedger):
		status = http.StatusConflict
	}
	writeJSON(w, status, ConsoleError{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
