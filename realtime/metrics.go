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
)

// Collector returns a Prometheus collector of the gateway's [Stats]; register it with your
// registry.
func (g *Gateway) Collector() prometheus.Collector { return collector{g} }

type collector struct{ g *Gateway }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connectionsDesc, subscriptionsDesc, messagesDesc, rejectedDesc, disconnectsDesc} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.Stats()
	ch <- prometheus.MustNewConstMetric(connectionsDesc, prometheus.GaugeValue, float64(s.Connections))
	ch <- prometheus.MustNewConstMetric(subscriptionsDesc, prometheus.GaugeValue, float64(s.Subscriptions))
	ch <- prometheus.MustNewConstMetric(messagesDesc, prometheus.CounterValue, float64(s.MessagesSent))
	for status, n := range s.Rejected {
		ch <- prometheus.MustNewConstMetric(rejectedDesc, prometheus.CounterValue, float64(n), strconv.Itoa(status))
	}
	for reason, n := range s.Disconnects {
		// Label values are snake_case like every other key: "client gone" → client_gone.
		ch <- prometheus.MustNewConstMetric(disconnectsDesc, prometheus.CounterValue, float64(n), strings.ReplaceAll(reason.String(), " ", "_"))
	}
}
