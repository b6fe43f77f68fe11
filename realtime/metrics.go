package realtime

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var (
	connectionsDesc   = prometheus.NewDesc("walflow_realtime_connections", "Streams open now.", nil, nil)
	subscriptionsDesc = prometheus.NewDesc("walflow_realtime_subscriptions", "Channel subscriptions of the open streams.", nil, nil)
	messagesDesc      = prometheus.NewDesc("walflow_realtime_messages_sent_total", "Event messages written to clients.", nil, nil)
	rejectedDesc      = prometheus.NewDesc("walflow_realtime_rejected_total", "Refused subscription requests by HTTP status.", []string{"status"}, nil)
	disconnectsDesc   = prometheus.NewDesc("walflow_realtime_disconnects_total", "Ended streams by reason.", []string{"reason"}, nil)
	resyncsDesc       = prometheus.NewDesc("walflow_realtime_resyncs_total", "Subscriptions whose resume position was older than the ledger's retention.", nil, nil)
	waitingDesc       = prometheus.NewDesc("walflow_realtime_resume_waiting", "Subscriptions waiting for this node's ledger head to reach their resume position.", nil, nil)
)

// newLatencyHistogram is the delivery latency: from the commit in PostgreSQL to the write
// to the client's socket. Its buckets span a live stream (ms) to a resumed backlog (min).
func newLatencyHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "walflow_realtime_delivery_latency_seconds",
		Help:    "Time from an event's commit in PostgreSQL to its write to a client; events resent from a resume backlog count with their full age.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	})
}

// Collector returns a Prometheus collector of the gateway's [Stats]; register it with your
// registry.
func (g *Gateway) Collector() prometheus.Collector { return collector{g} }

type collector struct{ g *Gateway }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connectionsDesc, subscriptionsDesc, messagesDesc, rejectedDesc, disconnectsDesc, resyncsDesc, waitingDesc} {
		ch <- d
	}
	c.g.latency.Describe(ch)
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.Stats()
	ch <- prometheus.MustNewConstMetric(connectionsDesc, prometheus.GaugeValue, float64(s.Connections))
	ch <- prometheus.MustNewConstMetric(subscriptionsDesc, prometheus.GaugeValue, float64(s.Subscriptions))
	ch <- prometheus.MustNewConstMetric(messagesDesc, prometheus.CounterValue, float64(s.MessagesSent))
	ch <- prometheus.MustNewConstMetric(resyncsDesc, prometheus.CounterValue, float64(s.Resyncs))
	ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(s.Waiting))
	c.g.latency.Collect(ch)
	for status, n := range s.Rejected {
		ch <- prometheus.MustNewConstMetric(rejectedDesc, prometheus.CounterValue, float64(n), strconv.Itoa(status))
	}
	for reason, n := range s.Disconnects {
		// Label values are snake_case like every other key: "client gone" → client_gone.
		ch <- prometheus.MustNewConstMetric(disconnectsDesc, prometheus.CounterValue, float64(n), strings.ReplaceAll(reason.String(), " ", "_"))
	}
}

// LatencyHistogram is the delivery latency's distribution since the gateway started:
// Counts[i] messages took at most Bounds[i] seconds from their commit to their write
// (cumulative, as in Prometheus), and Count took any time. Subtract two of them to get an
// interval's distribution ([LatencyHistogram.Sub]).
type LatencyHistogram struct {
	Bounds []float64
	Counts []uint64
	Count  uint64
}

// DeliveryLatency returns the histogram of walflow_realtime_delivery_latency_seconds.
func (g *Gateway) DeliveryLatency() LatencyHistogram {
	var m dto.Metric
	if err := g.latency.Write(&m); err != nil || m.Histogram == nil {
		return LatencyHistogram{}
	}
	h := LatencyHistogram{Count: m.Histogram.GetSampleCount()}
	for _, b := range m.Histogram.GetBucket() {
		h.Bounds = append(h.Bounds, b.GetUpperBound())
		h.Counts = append(h.Counts, b.GetCumulativeCount())
	}
	return h
}

// Sub returns the messages counted by h and not by the earlier old: an interval's
// distribution. old must be an earlier histogram of the same gateway (or the zero value).
func (h LatencyHistogram) Sub(old LatencyHistogram) LatencyHistogram {
	out := LatencyHistogram{Bounds: h.Bounds, Counts: make([]uint64, len(h.Counts)), Count: h.Count - min(h.Count, old.Count)}
	for i, c := range h.Counts {
		if i < len(old.Counts) {
			c -= min(c, old.Counts[i])
		}
		out.Counts[i] = c
	}
	return out
}

// Quantile estimates the q-quantile (0 < q < 1) of the latencies in seconds, by linear
// interpolation within the bucket that holds it, as Prometheus's histogram_quantile does.
// A quantile beyond the last bound is reported as that bound. ok is false when h counts no
// message.
func (h LatencyHistogram) Quantile(q float64) (seconds float64, ok bool) {
	if h.Count == 0 || len(h.Bounds) == 0 {
		return 0, false
	}
	rank := q * float64(h.Count)
	lower, below := 0.0, uint64(0)
	for i, c := range h.Counts {
		if float64(c) >= rank {
			in := c - below
			if in == 0 {
				return h.Bounds[i], true
			}
			return lower + (h.Bounds[i]-lower)*(rank-float64(below))/float64(in), true
		}
		lower, below = h.Bounds[i], c
	}
	return h.Bounds[len(h.Bounds)-1], true
}
