package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/alert"
)

func TestWriteStatusAlerts(t *testing.T) {
	t.Parallel()
	st := walflow.Status{Slot: "walflow", SlotExists: true, Streaming: true, Alerts: []alert.Check{
		{Alert: alert.LagEvents, Kind: alert.KindOperator, Name: "comment_counts", Active: true, Reason: "operator comment_counts is 5000 events behind the ledger head (budget 1000)"},
	}}
	var b bytes.Buffer
	writeStatus(&b, st, statusSource{running: true, where: "http://127.0.0.1:9187/status"})
	if !strings.Contains(b.String(), "ALERT lag_events") || !strings.Contains(b.String(), "operator comment_counts is 5000 events behind the ledger head (budget 1000)") {
		t.Fatalf("status does not show the alert:\n%s", b.String())
	}
}
