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

func TestHumanBytes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"},
		{1023, "1023 bytes"},
		{1024, "1.0 KiB (1024 bytes)"},
		{1536, "1.5 KiB (1536 bytes)"},
		{16 << 20, "16.0 MiB (16777216 bytes)"},
		{5 << 30, "5.0 GiB (5368709120 bytes)"},
		{-2048, "-2.0 KiB (-2048 bytes)"},
	}
	for _, tt := range tests {
		if got := bytesWithUnit(tt.n); got != tt.want {
			t.Errorf("bytesWithUnit(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
