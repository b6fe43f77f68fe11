package walflow

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/walflow/walflow/event"
)

// IndexEventsPath is the path, under ConsolePath, of the admin API that reads one value's
// events through an index: GET ConsolePath + "api/indexes/NAME/events?value=V&after=P&limit=N"
// with the admin token as bearer token. It answers IndexEventsType.
const IndexEventsPath = "api/indexes/{name}/events"

// IndexEventsType is the media type of the index events API's answer: each event as its
// length (uvarint) and its binary encoding (event.AppendBinary), in position order. The
// ledger head when the events were read is in the X-Walflow-Head header. Decode it with
// [DecodeIndexEvents].
const IndexEventsType = "application/x-walflow-events"

// IndexEventsLimit bounds how many events one call of the index events API returns; a
// reader pages with after.
const IndexEventsLimit = 10_000

// serveIndexEvents answers the events of one value of an index, for `walflow ledger read
// --index` beside a running walflow, whose index store only this process may open.
func (e *Engine) serveIndexEvents(w http.ResponseWriter, r *http.Request) {
	if e.idx == nil {
		writeJSON(w, http.StatusNotFound, ConsoleError{Error: "no indexes are configured"})
		return
	}
	q := r.URL.Query()
	if !q.Has("value") {
		writeJSON(w, http.StatusBadRequest, ConsoleError{Error: "value is missing; pass ?value=V, the index value whose events to read"})
		return
	}
	var after event.Position
	limit := IndexEventsLimit
	if s := q.Get("after"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, ConsoleError{Error: fmt.Sprintf("after=%q is not a ledger position; pass the position of the last event you have, or 0", s)})
			return
		}
		after = event.Position(n)
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > IndexEventsLimit {
			writeJSON(w, http.StatusBadRequest, ConsoleError{Error: fmt.Sprintf("limit=%q is not a count from 1 to %d", s, IndexEventsLimit)})
			return
		}
		limit = n
	}
	head := e.led.State().Head
	evs, err := e.idx.Read(r.Context(), r.PathValue("name"), q.Get("value"), after, limit)
	if err != nil {
		writeJSON(w, http.StatusNotFound, ConsoleError{Error: err.Error()})
		return
	}
	w.Header().Set("Content-Type", IndexEventsType)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Walflow-Head", strconv.FormatUint(uint64(head), 10))
	bw := bufio.NewWriter(w)
	var buf []byte
	for i := range evs {
		buf = event.AppendBinary(buf[:0], &evs[i])
		var n [binary.MaxVarintLen64]byte
		if _, err := bw.Write(n[:binary.PutUvarint(n[:], uint64(len(buf)))]); err != nil {
			return
		}
		if _, err := bw.Write(buf); err != nil {
			return
		}
	}
	_ = bw.Flush()
}

// maxIndexEvent bounds one encoded event of the index events API, so that a corrupt length
// cannot make the reader allocate without limit (PostgreSQL rows are at most 1 GB).
const maxIndexEvent = 1 << 30

// DecodeIndexEvents reads an answer of the index events API (see [IndexEventsType]).
func DecodeIndexEvents(r io.Reader) ([]event.Event, error) {
	br := bufio.NewReader(r)
	var out []event.Event
	var buf []byte
	for {
		n, err := binary.ReadUvarint(br)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("walflow: index events: length of event %d: %w", len(out)+1, err)
		}
		if n > maxIndexEvent {
			return nil, fmt.Errorf("walflow: index events: event %d claims %d bytes; the answer is not an index events stream", len(out)+1, n)
		}
		if uint64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, fmt.Errorf("walflow: index events: event %d cut short: %w", len(out)+1, err)
		}
		ev, err := event.DecodeBinary(buf)
		if err != nil {
			return nil, fmt.Errorf("walflow: index events: event %d: %w", len(out)+1, err)
		}
		out = append(out, ev)
	}
}
