package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/bits"
	"net"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/poshash"
)

// fanoutRun is the SSE clients of one run and what they share.
type fanoutRun struct {
	chans    []string
	prefixes [][]byte // the start of each channel's data lines: {"channel":"posts/1/comments",
	hist     latencyHist
	commits  []atomic.Int64 // commit time in Unix ns by ledger position, 0 until known
	clients  []*sseClient
	wg       sync.WaitGroup
	acks     chan error
	stopping atomic.Bool
	failed   atomic.Int64
	once     sync.Once
}

func newFanoutRun(chans []string, events int) *fanoutRun {
	r := &fanoutRun{chans: chans, commits: make([]atomic.Int64, events+1024)}
	for _, c := range chans {
		r.prefixes = append(r.prefixes, []byte(`{"channel":`+strconv.Quote(c)+`,`))
	}
	return r
}

// connect opens n clients, client i on addrs[i % len(addrs)] at the gateway path (like
// "/" or "/realtime/"), and waits until each has its subscribed message.
func (r *fanoutRun) connect(ctx context.Context, addrs []string, path string, n int) error {
	r.acks = make(chan error, n)
	r.clients = make([]*sseClient, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fanoutDialers)
	var d net.Dialer
	for i := range n {
		addr := addrs[i%len(addrs)]
		g.Go(func() error {
			conn, err := d.DialContext(gctx, "tcp", addr)
			if err != nil {
				return err
			}
			c := &sseClient{fr: r, idx: i, ch: i % len(r.chans), conn: &timedConn{Conn: conn}, hash: poshash.Offset}
			r.clients[i] = c
			req := "GET " + path + "?channel=" + r.chans[c.ch] + " HTTP/1.1\r\nHost: " + addr + "\r\nAccept: text/event-stream\r\n\r\n"
			if _, err := io.WriteString(conn, req); err != nil {
				_ = conn.Close()
				return err
			}
			r.wg.Go(c.run)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	deadline := time.NewTimer(2 * time.Minute)
	defer deadline.Stop()
	for i := range n {
		select {
		case err := <-r.acks:
			if err != nil {
				return err
			}
		case <-deadline.C:
			return fmt.Errorf("%d of %d clients subscribed within 2 minutes", i, n)
		}
	}
	return nil
}

// wait waits until every client has received the want[c] messages of its channel c or has
// failed, or until nothing has arrived for fanoutStall.
func (r *fanoutRun) wait(ctx context.Context, want []int) error {
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	var got int64
	progress := time.Now()
	for {
		var n int64
		done := true
		for _, c := range r.clients {
			k := c.received.Load()
			n += k
			if k < int64(want[c.ch]) && !c.dead.Load() {
				done = false
			}
		}
		switch {
		case done:
			return nil
		case n > got:
			got, progress = n, time.Now()
		case time.Since(progress) > fanoutStall:
			return fmt.Errorf("no delivery for %s, with %d made", fanoutStall, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// close disconnects the clients and waits for their goroutines.
func (r *fanoutRun) close() {
	r.once.Do(func() {
		r.stopping.Store(true)
		for _, c := range r.clients {
			if c != nil {
				_ = c.conn.Close()
			}
		}
		r.wg.Wait()
	})
}

// commitTime returns the commit time of the event at pos, from its data line. Every client
// of a channel receives the same events, so the first to parse an event's timestamp shares
// it: this process shares two cores with the gateway, and what it spends is not the
// gateway's to spend.
func (r *fanoutRun) commitTime(pos event.Position, data []byte) (int64, error) {
	if pos < event.Position(len(r.commits)) {
		if ns := r.commits[pos].Load(); ns != 0 {
			return ns, nil
		}
	}
	// The event's timestamp is its transaction's commit timestamp, which PostgreSQL takes
	// just before writing the commit record, in microseconds, from the clock this process
	// reads too. It is the earliest instant the event exists, so latency from it includes
	// the commit's own WAL flush. The time the writer sees COMMIT return would come later
	// and leave that out, and the writer's scheduling delays in.
	i := bytes.LastIndex(data, []byte(`"timestamp":"`))
	if i < 0 {
		return 0, errors.New("no timestamp in the event")
	}
	s := data[i+len(`"timestamp":"`):]
	j := bytes.IndexByte(s, '"')
	if j < 0 {
		return 0, errors.New("unterminated timestamp in the event")
	}
	t, err := time.Parse(time.RFC3339Nano, string(s[:j]))
	if err != nil {
		return 0, err
	}
	ns := t.UnixNano()
	if pos < event.Position(len(r.commits)) {
		r.commits[pos].Store(ns)
	}
	return ns, nil
}

// sseClient is one SSE connection: a bare socket and an HTTP/1.1 response parser, lighter
// than net/http's client (which would add two goroutines per connection).
type sseClient struct {
	fr   *fanoutRun
	idx  int
	ch   int
	conn *timedConn

	received atomic.Int64
	dead     atomic.Bool // the stream failed
	// Owned by run until the run's WaitGroup is done.
	last       event.Position
	hash       uint64 // FNV-1a of the positions received, as the gateway child computes it
	maxLatency time.Duration
	lastAt     time.Time
	problem    string
}

// timedConn records when a read last returned data: the receipt time of what it returned.
type timedConn struct {
	net.Conn
	at time.Time
}

func (c *timedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.at = time.Now()
	}
	return n, err
}

// run reads the stream until the connection is closed.
func (c *sseClient) run() {
	acked := false
	err := c.read(&acked)
	if c.fr.stopping.Load() {
		err = nil
	}
	if err != nil {
		c.problem = err.Error()
		c.fr.failed.Add(1)
		c.dead.Store(true)
	}
	if !acked {
		c.fr.acks <- fmt.Errorf("client %d: %w", c.idx, cmpErr(err, io.ErrUnexpectedEOF))
	}
}

func cmpErr(err, fallback error) error {
	if err == nil {
		return fallback
	}
	return err
}

// read parses the response: the status line and headers, then the SSE messages of its
// chunked body.
func (c *sseClient) read(acked *bool) error {
	br := bufio.NewReaderSize(c.conn, 8<<10)
	line, err := br.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("read the status line: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("status %q", bytes.TrimSpace(line))
	}
	chunked := false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("read the headers: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && strings.EqualFold(string(k), "Transfer-Encoding") {
			chunked = strings.EqualFold(strings.TrimSpace(string(v)), "chunked")
		}
	}
	var body io.Reader = br
	if chunked {
		body = httputil.NewChunkedReader(br)
	}
	lr := bufio.NewReaderSize(body, 4<<10)
	var (
		id   event.Position
		kind []byte
	)
	for {
		line, err := lr.ReadSlice('\n')
		if err != nil {
			return err
		}
		line = line[:len(line)-1]
		switch {
		case len(line) == 0:
			id, kind = 0, kind[:0]
		case line[0] == ':':
		case bytes.HasPrefix(line, []byte("id: ")):
			n, err := strconv.ParseUint(string(line[4:]), 10, 64)
			if err != nil {
				return fmt.Errorf("bad id line %q", line)
			}
			id = event.Position(n)
		case bytes.HasPrefix(line, []byte("event: ")):
			kind = append(kind[:0], line[7:]...)
		case bytes.HasPrefix(line, []byte("data: ")):
			if err := c.message(id, kind, line[6:], acked); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected line %q", line)
		}
	}
}

// message handles one SSE message; data is valid until the next read.
func (c *sseClient) message(id event.Position, kind, data []byte, acked *bool) error {
	switch string(kind) {
	case "insert":
	case "subscribed":
		if *acked || !bytes.Contains(data, []byte(strconv.Quote(c.fr.chans[c.ch]))) {
			return fmt.Errorf("unexpected subscribed message %s", data)
		}
		*acked = true
		c.last = id
		c.fr.acks <- nil
		return nil
	case "error":
		return fmt.Errorf("the gateway ended the stream: %s", data)
	default:
		return fmt.Errorf("unexpected %q message %s", kind, data)
	}
	if !*acked {
		return errors.New("an event came before the subscribed message")
	}
	if id <= c.last {
		return fmt.Errorf("event %d after event %d: duplicated or out of order", id, c.last)
	}
	if !bytes.HasPrefix(data, c.fr.prefixes[c.ch]) {
		return fmt.Errorf("event %d is not on %s: %.80s", id, c.fr.chans[c.ch], data)
	}
	commit, err := c.fr.commitTime(id, data)
	if err != nil {
		return fmt.Errorf("event %d: %w", id, err)
	}
	at := c.conn.at
	lat := time.Duration(at.UnixNano() - commit)
	c.fr.hist.add(c.idx, lat)
	c.maxLatency = max(c.maxLatency, lat)
	c.lastAt = at
	c.last = id
	c.hash = poshash.Add(c.hash, id)
	c.received.Add(1)
	return nil
}

// latencyHist counts durations in buckets 1/64 of a power of two wide (quantiles are at
// most 1.6% high), in shards so that clients rarely update the same memory at once.
type latencyHist struct {
	shards [histShards][histBuckets]atomic.Uint64
}

const (
	histSub     = 64 // buckets per power of two
	histBuckets = 48 * histSub
	histShards  = 16
)

// histBucket is the bucket of ns: exact below histSub, then histSub per power of two.
func histBucket(ns int64) int {
	if ns < histSub {
		return int(max(ns, 0))
	}
	e := bits.Len64(uint64(ns)) - 7 // ns>>e is in [64, 128)
	return min((e+1)*histSub+int(ns>>e)-histSub, histBuckets-1)
}

// histUpper is the largest duration of bucket b.
func histUpper(b int) time.Duration {
	if b < histSub {
		return time.Duration(b)
	}
	e := b/histSub - 1
	return time.Duration((int64(b%histSub+histSub)+1)<<e - 1)
}

func (h *latencyHist) add(client int, d time.Duration) {
	h.shards[client%histShards][histBucket(int64(d))].Add(1)
}

// counts returns the count of each bucket, over the shards.
func (h *latencyHist) counts() []uint64 {
	counts := make([]uint64, histBuckets)
	for s := range h.shards {
		for b := range h.shards[s] {
			counts[b] += h.shards[s][b].Load()
		}
	}
	return counts
}

// quantile returns the upper bound of the bucket holding the q-quantile (nearest rank).
func (h *latencyHist) quantile(q float64) time.Duration {
	counts := h.counts()
	var total uint64
	for _, n := range counts {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for b, n := range counts {
		seen += n
		if seen >= max(rank, 1) {
			return histUpper(b)
		}
	}
	return histUpper(histBuckets - 1)
}

// TestLatencyHist checks the histogram's buckets: each duration falls in a bucket whose upper
// bound is at most 1/64 above it, and quantiles come out of the right buckets.
func TestLatencyHist(t *testing.T) {
	t.Parallel()
	for _, d := range []time.Duration{0, 1, 63, 64, 65, 127, 128, 129, 1000, time.Millisecond, 99 * time.Millisecond,
		time.Second + 1, 77 * time.Second, time.Hour} {
		b := histBucket(int64(d))
		up := histUpper(b)
		if up < d || float64(up-d) > float64(d)/histSub {
			t.Errorf("%v: bucket %d has upper bound %v", d, b, up)
		}
		if b > 0 && histUpper(b-1) >= d {
			t.Errorf("%v: bucket %d, but the bucket before ends at %v", d, b, histUpper(b-1))
		}
	}
	var h latencyHist
	for i := 1; i <= 1000; i++ {
		h.add(i, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		if got := h.quantile(c.q); got < c.want || float64(got-c.want) > float64(c.want)/histSub {
			t.Errorf("quantile(%v) = %v, want %v within 1/%d", c.q, got, c.want, histSub)
		}
	}
}

// TestHashPosition checks that hashPosition is FNV-1a, which the gateway child computes too.
func TestHashPosition(t *testing.T) {
	t.Parallel()
	h, want := uint64(poshash.Offset), fnv.New64a()
	for _, p := range []event.Position{1, 2, 300, 1 << 40} {
		h = poshash.Add(h, p)
		_, _ = want.Write(binary.BigEndian.AppendUint64(nil, uint64(p)))
	}
	if h != want.Sum64() {
		t.Errorf("hashPosition gives %x, FNV-1a %x", h, want.Sum64())
	}
}
