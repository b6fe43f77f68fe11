package realtime

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	connectionsDesc   = prometheus.NewDesc("walflow_realtime_connections", "Streams open now.", nil, nil)
	subscriptionsDesc = prometheus.NewDesc("walflow_realtime_subscriptions", "Channel subscriptions of the open streams.", nil, nil)
	messagesDesc      = prometheus.NewDesc("walflow_realtime_messages_sent_total", "Event messages written to clients.", nil, nil)
	rejectedDesc      = prometheus.NewDesc("walflow_realtime_rejected_total", "Refused subscription requests by HTTP status.", []string{"status"}, nil)
	disconnectsDesc   = prometheus.NewDesc("walflow_realtime_disconnects_total", "Ended streams by reason.", []string{"reason"}, nil)
	resyncsDesc       = prometheus.NewDesc("walflow_realtime_resyncs_total", "Subscriptions whose resume position was older than the ledger's retention.", nil, nil)
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
	for _, d := range []*prometheus.Desc{connectionsDesc, subscriptionsDesc, messagesDesc, rejectedDesc, disconnectsDesc, resyncsDesc} {
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
	c.g.latency.Collect(ch)
	for status, n := range s.Rejected {
		ch <- prometheus.MustNewConstMetric(rejectedDesc, prometheus.CounterValue, float64(n), strconv.Itoa(status))
	}
	for reason, n := range s.Disconnects {
		// Label values are snake_case like every other key: "client gone" → client_gone.
		ch <- prometheus.MustNewConstMetric(disconnectsDesc, prometheus.CounterValue, float64(n), strings.ReplaceAll(reason.String(), " ", "_"))
	}
}
