package configfile

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/alert"
)

const alertsBase = `database_url: postgres://app@localhost/app
operators:
  comment_counts:
    entities: [comments]
    target: comment_counts
    query: SELECT $1
indexes:
  by_user: {field: user_id}
`

func TestParseConfigAlerts(t *testing.T) {
	t.Parallel()
	c, err := parseConfig("walflow.yaml", []byte(alertsBase+`slot_failover: true
alerts:
  slot_retained_wal: 2GB
  lag_events: 50_000
  lag_seconds: 5m
  consumers:
    comment_counts: {lag_events: 1000, lag_seconds: off}
    by_user:
      lag_seconds: 90
`), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := alert.Budgets{SlotRetainedWAL: 2 << 30, Lag: alert.Lag{Events: 50000, Age: 5 * time.Minute},
		Overrides: map[string]alert.Lag{"comment_counts": {Events: 1000, Age: -1}, "by_user": {Age: 90 * time.Second}}}
	if !reflect.DeepEqual(c.Engine.Alerts, want) {
		t.Errorf("Alerts = %+v, want %+v", c.Engine.Alerts, want)
	}
	if !c.Engine.SlotFailover {
		t.Error("slot_failover: true gave SlotFailover false")
	}

	for in, want := range map[string]int64{"1073741824": 1 << 30, "512MB": 512 << 20, "1.5 GiB": 3 << 29, "10kB": 10 << 10, "1TB": 1 << 40, "100 B": 100, "off": 0} {
		c, err := parseConfig("walflow.yaml", []byte(alertsBase+"alerts: {slot_retained_wal: "+in+"}\n"), noEnv)
		if err != nil || c.Engine.Alerts.SlotRetainedWAL != want {
			t.Errorf("slot_retained_wal: %s = %v, %v; want %d", in, c, err, want)
		}
	}
	c, err = parseConfig("walflow.yaml", []byte(alertsBase+"alerts:\n"), noEnv)
	if err != nil || !c.Engine.Alerts.IsZero() {
		t.Errorf("empty alerts: %v, %+v", err, c)
	}
}

func TestParseConfigAlertsErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml, want string
	}{
		{"bad size", "alerts:\n  slot_retained_wal: 2 gigs\n", `walflow.yaml:10: alerts.slot_retained_wal: "2 gigs" is not a size; write it like 2GB`},
		{"zero size", "alerts:\n  slot_retained_wal: 0.1B\n", `walflow.yaml:10: alerts.slot_retained_wal: "0.1B" is out of range`},
		{"bad events", "alerts:\n  lag_events: lots\n", `walflow.yaml:10: alerts.lag_events: "lots" is not a positive number of events; write it like 50000`},
		{"negative events", "alerts:\n  lag_events: -5\n", `alerts.lag_events: "-5" is not a positive number of events`},
		{"bad seconds", "alerts:\n  lag_seconds: soon\n", `walflow.yaml:10: alerts.lag_seconds: "soon" is not a number of seconds or a duration of at least 1s`},
		{"sub-second", "alerts:\n  lag_seconds: 500ms\n", `alerts.lag_seconds: "500ms" is not a number of seconds or a duration of at least 1s`},
		{"zero seconds", "alerts:\n  lag_seconds: 0\n", `alerts.lag_seconds: "0" is not a positive number of seconds`},
		{"unknown key", "alerts:\n  lag_event: 5\n", `walflow.yaml:10: alerts.lag_event: unknown key (did you mean lag_events?); the keys of alerts are slot_retained_wal, lag_events, lag_seconds, consumers`},
		{"unknown consumer", "alerts:\n  consumers:\n    comment_count: {lag_events: 5}\n", `walflow.yaml:11: alerts.consumers.comment_count: names no operator or index of this file (did you mean comment_counts?); use one of comment_counts, by_user`},
		{"empty consumer", "alerts:\n  consumers:\n    by_user:\n", `walflow.yaml:11: alerts.consumers.by_user: empty; set lag_events, lag_seconds or both`},
		{"bad consumer seconds", "alerts:\n  consumers:\n    by_user: {lag_seconds: never}\n", `walflow.yaml:11: alerts.consumers.by_user.lag_seconds: "never" is not a number of seconds`},
		{"consumer key", "alerts:\n  consumers:\n    by_user: {lag_bytes: 5}\n", `walflow.yaml:11: alerts.consumers.by_user.lag_bytes: unknown key`},
		{"alerts a list", "alerts: [lag_events]\n", `walflow.yaml:9: alerts: want a mapping of keys, found a list`},
		{"failover temporary", "temporary_slot: true\nslot_failover: true\n", `walflow.yaml:10: slot_failover: true, but temporary_slot is true too`},
		{"failover not a bool", "slot_failover: on17\n", `walflow.yaml:9: slot_failover: want true or false`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseConfig("walflow.yaml", []byte(alertsBase+tt.yaml), noEnv)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error\n\t%v\nwant it to contain\n\t%s", err, tt.want)
			}
		})
	}
}
