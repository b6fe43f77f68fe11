package processstatus

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
)

// Request headers the [Middleware] reads.
const (
	// HeaderEntityTimestamp carries entity/microseconds: the entity (table) a client wrote
	// and the value of its timestamp column, in microseconds since the Unix epoch, as
	// [HeaderValue] formats them: posts/1422057007123000.
	HeaderEntityTimestamp = "X-Walflow-Entity-Timestamp"
	// HeaderLSN carries an LSN in PostgreSQL's form, as [CurrentLSN] returns it: 16/B374D848.
	HeaderLSN = "X-Walflow-LSN"
)

// RetryAfterDefault is the default MiddlewareOpts.RetryAfter.
const RetryAfterDefault = time.Second

// maxEntityLen is PostgreSQL's identifier limit (NAMEDATALEN - 1).
const maxEntityLen = 63

// MiddlewareOpts configures [Middleware]. The zero value, or nil, answers at once with
// Retry-After: 1.
type MiddlewareOpts struct {
	// RetryAfter is what the Retry-After header of a 425 response tells the client to wait,
	// rounded up to whole seconds (at least 1). Default 1s.
	RetryAfter time.Duration
	// Wait is how long a request whose write is not processed yet waits for it before the
	// middleware answers 425. It never waits longer, and stops when the request's context
	// ends. Default 0: answer at once.
	Wait time.Duration
}

// Middleware returns HTTP middleware that holds back requests whose client has written
// something not processed yet: the read-your-writes check for derived data.
//
// A request without [HeaderEntityTimestamp] or [HeaderLSN] passes through. With one or
// both, it passes through when what they name is processed ([Tracker.Processed],
// [Tracker.ProcessedLSN]). Otherwise, after waiting up to opts.Wait, the middleware answers
// 425 Too Early with a Retry-After header and a JSON body:
//
//	{"error":"too_early","entity":"posts","timestamp":1422057007123000,"processed_through":1422057006000000}
//	{"error":"too_early","lsn":"16/B374D848","processed_through_lsn":"16/B3740000"}
//
// processed_through is null when no write of the entity is known processed. A malformed
// header, or one given more than once, gets 400 Bad Request with a JSON body naming the
// header, the reason and the expected form:
//
//	{"error":"malformed_header","header":"X-Walflow-LSN","reason":"...","expected":"..."}
func Middleware(t *Tracker, opts *MiddlewareOpts) func(http.Handler) http.Handler {
	if opts == nil {
		opts = &MiddlewareOpts{}
	}
	retryAfter := strconv.FormatInt(retrySeconds(opts.RetryAfter), 10)
	wait := opts.Wait
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, bad := parseCheck(r.Header)
			if bad != nil {
				writeJSON(w, http.StatusBadRequest, bad)
				return
			}
			if c == nil || c.processed(t) {
				next.ServeHTTP(w, r)
				return
			}
			if wait > 0 {
				ctx, cancel := context.WithTimeout(r.Context(), wait)
				err := t.waitUntil(ctx, func() bool { return c.processed(t) })
				cancel()
				if err == nil {
					next.ServeHTTP(w, r)
					return
				}
			}
			w.Header().Set("Retry-After", retryAfter)
			writeJSON(w, http.StatusTooEarly, c.tooEarly(t))
		})
	}
}

// retrySeconds rounds d up to whole seconds, at least 1; 0 means the default.
func retrySeconds(d time.Duration) int64 {
	if d <= 0 {
		d = RetryAfterDefault
	}
	return max(1, int64(math.Ceil(d.Seconds())))
}

// check is what a request's headers ask to be processed.
type check struct {
	entity    string
	micros    int64
	hasEntity bool
	lsn       event.LSN
	hasLSN    bool
}

func (c *check) processed(t *Tracker) bool {
	return (!c.hasEntity || t.Processed(c.entity, c.micros)) && (!c.hasLSN || t.ProcessedLSN(c.lsn))
}

// tooEarly is the body of a 425 response. It is built from the status at answer time, so
// its processed_through may already cover a field that was not processed when checked.
func (c *check) tooEarly(t *Tracker) map[string]any {
	body := map[string]any{"error": "too_early"}
	if c.hasEntity {
		body["entity"] = c.entity
		body["timestamp"] = c.micros
		if v, ok := t.Watermark(c.entity); ok {
			body["processed_through"] = v
		} else {
			body["processed_through"] = nil
		}
	}
	if c.hasLSN {
		body["lsn"] = c.lsn.String()
		body["processed_through_lsn"] = t.WatermarkLSN().String()
	}
	return body
}

// badHeader is the body of a 400 response.
type badHeader struct {
	Error    string `json:"error"`
	Header   string `json:"header"`
	Reason   string `json:"reason"`
	Expected string `json:"expected"`
}

const (
	expectEntity = "entity/microseconds: a table name, a slash and the row's timestamp in microseconds since 1970, e.g. posts/1422057007123000"
	expectLSN    = "an LSN as PostgreSQL prints it: two hexadecimal numbers separated by a slash, e.g. 16/B374D848"
)

// parseCheck reads the request's headers: nil when there is nothing to check.
func parseCheck(h http.Header) (*check, *badHeader) {
	var c check
	if v, ok, bad := single(h, HeaderEntityTimestamp, expectEntity); bad != nil {
		return nil, bad
	} else if ok {
		entity, micros, reason := parseEntityTimestamp(v)
		if reason != "" {
			return nil, &badHeader{Error: "malformed_header", Header: HeaderEntityTimestamp, Reason: reason, Expected: expectEntity}
		}
		c.entity, c.micros, c.hasEntity = entity, micros, true
	}
	if v, ok, bad := single(h, HeaderLSN, expectLSN); bad != nil {
		return nil, bad
	} else if ok {
		lsn, err := event.ParseLSN(v)
		if err != nil {
			return nil, &badHeader{Error: "malformed_header", Header: HeaderLSN,
				Reason: fmt.Sprintf("%s is not an LSN", quote(v)), Expected: expectLSN}
		}
		c.lsn, c.hasLSN = lsn, true
	}
	if !c.hasEntity && !c.hasLSN {
		return nil, nil
	}
	return &c, nil
}

// single returns the one value of header name, trimmed; ok is false when it is absent.
func single(h http.Header, name, expected string) (v string, ok bool, bad *badHeader) {
	vs := h.Values(name)
	switch {
	case len(vs) == 0:
		return "", false, nil
	case len(vs) > 1 || strings.Contains(vs[0], ","):
		return "", false, &badHeader{Error: "malformed_header", Header: name,
			Reason: "the header is given more than once; send one value", Expected: expected}
	}
	v = strings.TrimSpace(vs[0])
	if v == "" {
		return "", false, &badHeader{Error: "malformed_header", Header: name, Reason: "the header is empty", Expected: expected}
	}
	return v, true, nil
}

// parseEntityTimestamp parses entity/micros; reason says what is wrong, or is "".
func parseEntityTimestamp(v string) (entity string, micros int64, reason string) {
	entity, ts, found := strings.Cut(v, "/")
	if !found {
		return "", 0, fmt.Sprintf("%s has no slash between the entity and the timestamp", quote(v))
	}
	if p := entityProblem(entity); p != "" {
		return "", 0, fmt.Sprintf("entity %s %s", quote(entity), p)
	}
	switch {
	case ts == "":
		return "", 0, "the timestamp after the slash is empty"
	case strings.HasPrefix(ts, "-") && isInteger(ts):
		return "", 0, fmt.Sprintf("timestamp %s is negative", quote(ts))
	case !isDigits(ts):
		return "", 0, fmt.Sprintf("timestamp %s is not a decimal number of microseconds", quote(ts))
	}
	micros, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", 0, fmt.Sprintf("timestamp %s is out of range", quote(ts))
	}
	return entity, micros, ""
}

// entityProblem says what is wrong with an entity name, or "" when it is a table name:
// [A-Za-z_][A-Za-z0-9_$]*, at most 63 bytes, optionally schema-qualified.
func entityProblem(s string) string {
	for part := range strings.SplitSeq(s, ".") {
		switch {
		case part == "":
			return "is not a table name (empty name)"
		case len(part) > maxEntityLen:
			return fmt.Sprintf("is not a table name (longer than PostgreSQL's %d-byte limit)", maxEntityLen)
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
			case i > 0 && (c >= '0' && c <= '9' || c == '$'):
			default:
				return "is not a table name (use letters, digits, _ and $, not starting with a digit)"
			}
		}
	}
	if strings.Count(s, ".") > 1 {
		return "is not a table name (at most one dot, as in schema.table)"
	}
	return ""
}

// isDigits reports whether s is one or more decimal digits.
func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// quote quotes s for an error message, shortened when long.
func quote(s string) string {
	const maxLen = 100
	if len(s) > maxLen {
		return strconv.Quote(s[:maxLen]) + "..."
	}
	return strconv.Quote(s)
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	b, err := json.Marshal(body)
	if err != nil {
		// The bodies are maps and structs of strings and numbers; this cannot happen.
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// HeaderValue returns the [HeaderEntityTimestamp] value for a row of entity whose timestamp
// column holds ts: "posts/1422057007123000". Use the value PostgreSQL stored (RETURNING
// updated_at), which has microsecond precision; a Go time with nanoseconds is truncated to
// the microsecond, as pgx does when it sends one.
func HeaderValue(entity string, ts time.Time) string {
	return entity + "/" + strconv.FormatInt(ts.UnixMicro(), 10)
}

// Querier runs a query returning one row: *pgx.Conn, *pgxpool.Pool and pgx.Tx satisfy it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// CurrentLSN returns an LSN at or after the commit of every transaction that committed
// before the call: the token to send in [HeaderLSN] (formatted with its String method) after
// a write. Call it right after the write's transaction committed, on any connection to the
// primary (not inside the transaction, whose commit is not written yet).
//
// It reads pg_current_wal_insert_lsn() rather than pg_current_wal_lsn(): with
// synchronous_commit = off a commit returns before its WAL is written, so the write position
// may still be before it, while the insert position is always past it. The token is one
// less than the insert position, the last byte of WAL before the call: the commit record of
// the write ends at or before the insert position, so it starts at or before the token,
// and [Tracker.ProcessedLSN] of the token covers it. On an otherwise idle database the token
// then becomes processed as soon as the write is, once walflow has acknowledged the WAL up
// to the insert position.
func CurrentLSN(ctx context.Context, q Querier) (event.LSN, error) {
	var s string
	if err := q.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		return 0, fmt.Errorf("processstatus: read pg_current_wal_insert_lsn(): %w", err)
	}
	lsn, err := event.ParseLSN(s)
	if err != nil {
		return 0, fmt.Errorf("processstatus: read pg_current_wal_insert_lsn(): %w", err)
	}
	if lsn > 0 {
		lsn--
	}
	return lsn, nil
}
