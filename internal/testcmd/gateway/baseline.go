package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/poshash"
)

// baseline is the in-process subscriber: it records, for every event, the latency from its
// commit timestamp to its receipt, and per channel the events it received.
type baseline struct {
	router *channel.Router
	keys   []string // canonical, in subscription order
	sub    *walflow.Subscription
	cancel context.CancelFunc // ends sub
	done   chan struct{}
	once   sync.Once
	behind string // why stop did not wait for the head, if it did not

	// Owned by run until done is closed.
	latencies  []time.Duration
	channels   map[string]*channelTally
	last       event.Position
	outOfOrder int
	unmatched  int
	err        error
}

// channelTally is what one channel received.
type channelTally struct {
	events int
	hash   uint64 // FNV-1a of the positions in order, each 8 bytes big-endian
}

func newBaseline(r *channel.Router, chans []string, sub *walflow.Subscription, cancel context.CancelFunc) *baseline {
	b := &baseline{router: r, sub: sub, cancel: cancel, done: make(chan struct{}), channels: map[string]*channelTally{}}
	for _, s := range chans {
		// Engine.Subscribe has parsed them already.
		c, _ := channel.Parse(s)
		k := c.String()
		b.keys = append(b.keys, k)
		b.channels[k] = &channelTally{hash: poshash.Offset}
	}
	return b
}

// run reads the subscription until it ends.
func (b *baseline) run() {
	defer close(b.done)
	sub := b.sub
	var matched []string
	for e := range sub.Events() {
		now := time.Now()
		// Commit timestamps have microsecond precision and come from the same clock.
		b.latencies = append(b.latencies, now.Sub(e.Timestamp))
		if e.Position <= b.last {
			b.outOfOrder++
		}
		b.last = e.Position
		matched = b.router.Channels(&e, matched[:0])
		var t *channelTally
		for _, k := range b.keys {
			if slices.Contains(matched, k) {
				t = b.channels[k]
				break
			}
		}
		if t == nil {
			b.unmatched++
			continue
		}
		t.events++
		t.hash = poshash.Add(t.hash, e.Position)
	}
	<-sub.Done()
	b.err = sub.Err()
}

// stop ends the subscription once it has handed over every event up to head, or after
// timeout, and waits for run to have read everything handed over. A zero timeout stops at
// once. Only the first call counts.
func (b *baseline) stop(head event.Position, timeout time.Duration) {
	b.once.Do(func() {
		if timeout > 0 {
			deadline := time.Now().Add(timeout)
			for b.sub.Position() < head {
				if time.Now().After(deadline) {
					b.behind = fmt.Sprintf("the baseline reached position %d of head %d within %s", b.sub.Position(), head, timeout)
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		// The subscription closes its channel after the events it holds, so run reads them.
		b.cancel()
		<-b.done
	})
}

// baselineStats is the baseline's part of the stats line.
type baselineStats struct {
	Events     int     `json:"events"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	OutOfOrder int     `json:"out_of_order"`
	Unmatched  int     `json:"unmatched"`
	Error      string  `json:"error,omitempty"`
	// Channels has, per channel, the events received and the FNV-1a hash of their positions
	// in order (8 bytes big-endian each), so a client's stream can be compared with it.
	Channels map[string]channelStats `json:"channels"`
}

type channelStats struct {
	Events int    `json:"events"`
	Hash   uint64 `json:"hash"`
}

// result summarizes the run; call it after done is closed.
func (b *baseline) result() *baselineStats {
	s := &baselineStats{Events: len(b.latencies), OutOfOrder: b.outOfOrder, Unmatched: b.unmatched,
		Channels: map[string]channelStats{}}
	if b.err != nil {
		s.Error = b.err.Error()
	} else if b.behind != "" {
		s.Error = b.behind
	}
	for k, t := range b.channels {
		s.Channels[k] = channelStats{Events: t.events, Hash: t.hash}
	}
	if len(b.latencies) > 0 {
		l := slices.Clone(b.latencies)
		slices.Sort(l)
		s.P50Ms = ms(percentile(l, 0.50))
		s.P99Ms = ms(percentile(l, 0.99))
		s.MaxMs = ms(l[len(l)-1])
	}
	return s
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(float64(len(sorted))*q)) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
