package alert

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var now = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)

func summary(checks []Check) string {
	var b strings.Builder
	for _, c := range checks {
		state := "ok"
		if c.Active {
			state = "ACTIVE"
		}
		b.WriteString(c.Alert + " " + c.Kind + "/" + c.Name + " " + state + " " +
			itoa(c.Value) + "/" + itoa(c.Budget) + " " + c.Unit + "\n")
	}
	return b.String()
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestEvaluate(t *testing.T) {
	t.Parallel()
	snap := Snapshot{
		Slot: "walflow", SlotMeasured: true, SlotRetainedWAL: 3 << 30,
		Consumers: []Consumer{
			{Kind: KindOperator, Name: "counts", Lag: 50000, Oldest: now.Add(-90 * time.Second)},
			{Kind: KindProjector, Name: "feed", Lag: 10, Oldest: now.Add(-5 * time.Second)},
			{Kind: KindIndex, Name: "by_user", Lag: 0},
			{Kind: KindOperator, Name: "audit", Lag: 2_000_000, Oldest: now.Add(-time.Hour)},
		},
		Now: now,
	}
	b := Budgets{
		SlotRetainedWAL: 2 << 30,
		Lag:             Lag{Events: 1000, Age: time.Minute},
		Overrides: map[string]Lag{
			"feed":    {Events: 5},             // tighter events, default age
			"audit":   {Events: -1, Age: -1},   // both off
			"by_user": {Age: 10 * time.Second}, // default events
		},
	}
	got := summary(Evaluate(snap, b))
	want := `slot_retained_wal slot/walflow ACTIVE 3221225472/2147483648 bytes
lag_events operator/counts ACTIVE 50000/1000 events
lag_seconds operator/counts ACTIVE 90/60 seconds
lag_events projector/feed ACTIVE 10/5 events
lag_seconds projector/feed ok 5/60 seconds
lag_events index/by_user ok 0/1000 events
lag_seconds index/by_user ok 0/10 seconds
`
	if got != want {
		t.Fatalf("checks:\n%s\nwant:\n%s", got, want)
	}
	if n := len(Active(Evaluate(snap, b))); n != 4 {
		t.Fatalf("%d active, want 4", n)
	}
}

func TestEvaluateEdges(t *testing.T) {
	t.Parallel()
	b := Budgets{SlotRetainedWAL: 100, Lag: Lag{Events: 10, Age: 30 * time.Second}}
	cases := []struct {
		name string
		snap Snapshot
		want string
	}{
		{"equal is within", Snapshot{Slot: "s", SlotMeasured: true, SlotRetainedWAL: 100,
			Consumers: []Consumer{{Kind: KindOperator, Name: "o", Lag: 10, Oldest: now.Add(-30 * time.Second)}}, Now: now},
			"slot_retained_wal slot/s ok 100/100 bytes\nlag_events operator/o ok 10/10 events\nlag_seconds operator/o ok 30/30 seconds\n"},
		{"slot not measured is not evaluated", Snapshot{Slot: "s", SlotRetainedWAL: 1 << 40, Now: now}, ""},
		{"caught up has no age however old its last event", Snapshot{Slot: "s", SlotMeasured: true,
			Consumers: []Consumer{{Kind: KindIndex, Name: "i", Lag: 0, Oldest: now.Add(-time.Hour)}}, Now: now},
			"slot_retained_wal slot/s ok 0/100 bytes\nlag_events index/i ok 0/10 events\nlag_seconds index/i ok 0/30 seconds\n"},
		{"oldest in the future (clock skew) is age 0", Snapshot{Slot: "s", SlotMeasured: true,
			Consumers: []Consumer{{Kind: KindIndex, Name: "i", Lag: 3, Oldest: now.Add(time.Hour)}}, Now: now},
			"slot_retained_wal slot/s ok 0/100 bytes\nlag_events index/i ok 3/10 events\nlag_seconds index/i ok 0/30 seconds\n"},
		{"one second over is active", Snapshot{Slot: "s", SlotMeasured: true, SlotRetainedWAL: 101,
			Consumers: []Consumer{{Kind: KindProjector, Name: "p", Lag: 11, Oldest: now.Add(-31 * time.Second)}}, Now: now},
			"slot_retained_wal slot/s ACTIVE 101/100 bytes\nlag_events projector/p ACTIVE 11/10 events\nlag_seconds projector/p ACTIVE 31/30 seconds\n"},
	}
	for _, c := range cases {
		if got := summary(Evaluate(c.snap, b)); got != c.want {
			t.Errorf("%s:\n%s\nwant:\n%s", c.name, got, c.want)
		}
	}
	if got := Evaluate(Snapshot{Slot: "s", SlotMeasured: true, SlotRetainedWAL: 1 << 40,
		Consumers: []Consumer{{Kind: KindOperator, Name: "o", Lag: 1 << 40}}, Now: now}, Budgets{}); len(got) != 0 {
		t.Errorf("no budgets gave checks: %v", got)
	}
}

func TestBudgetsFor(t *testing.T) {
	t.Parallel()
	b := Budgets{Lag: Lag{Events: 10, Age: time.Minute}, Overrides: map[string]Lag{
		"a": {Events: 20}, "b": {Age: -1}, "c": {Events: -5, Age: time.Hour}}}
	for name, want := range map[string]Lag{
		"a": {Events: 20, Age: time.Minute}, "b": {Events: 10}, "c": {Age: time.Hour}, "other": {Events: 10, Age: time.Minute},
	} {
		if got := b.For(name); got != want {
			t.Errorf("For(%q) = %+v, want %+v", name, got, want)
		}
	}
	if !(Budgets{Overrides: map[string]Lag{"x": {Events: -1}}}).IsZero() {
		t.Error("only an off override: IsZero false")
	}
	if (Budgets{Overrides: map[string]Lag{"x": {Events: 1}}}).IsZero() {
		t.Error("an override with a budget: IsZero true")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		b    Budgets
		want string
	}{
		{Budgets{SlotRetainedWAL: -1}, "Alerts.SlotRetainedWAL is -1"},
		{Budgets{Lag: Lag{Events: -1}}, "Alerts.Lag has a negative field"},
		{Budgets{Lag: Lag{Age: 500 * time.Millisecond}}, "Alerts.Lag.Age is 500ms"},
		{Budgets{Overrides: map[string]Lag{"": {Events: 1}}}, "Alerts.Overrides has an empty name"},
		{Budgets{Overrides: map[string]Lag{"x": {Age: time.Millisecond}}}, `Alerts.Overrides["x"].Age is 1ms`},
	} {
		err := c.b.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want an error containing %q", c.b, err, c.want)
		}
	}
	if err := (Budgets{SlotRetainedWAL: 1, Lag: Lag{Events: 1, Age: time.Second}, Overrides: map[string]Lag{"x": {Events: -1, Age: -1}}}).Validate(); err != nil {
		t.Errorf("valid budgets: %v", err)
	}
}

func TestMonitorTransitions(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	m := NewMonitor(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx := context.Background()
	b := Budgets{SlotRetainedWAL: 100, Lag: Lag{Events: 10}}
	snap := func(wal int64, measured bool, lag uint64) Snapshot {
		return Snapshot{Slot: "s", SlotMeasured: measured, SlotRetainedWAL: wal,
			Consumers: []Consumer{{Kind: KindOperator, Name: "o", Lag: lag}}, Now: now}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collector())
	metric := func(alert, kind, name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, mt := range mf.GetMetric() {
				l := map[string]string{}
				for _, p := range mt.GetLabel() {
					l[p.GetName()] = p.GetValue()
				}
				if l["alert"] == alert && l["kind"] == kind && l["name"] == name {
					return mt.GetGauge().GetValue()
				}
			}
		}
		return -1
	}
	count := func(s string) int { return strings.Count(logs.String(), s) }

	m.Update(ctx, Evaluate(snap(50, true, 5), b))
	if logs.Len() != 0 || len(m.Active()) != 0 || metric(LagEvents, KindOperator, "o") != 0 {
		t.Fatalf("within budget: logs %q, active %v, metric %v", logs.String(), m.Active(), metric(LagEvents, KindOperator, "o"))
	}
	for range 3 { // crossing, then staying over: one WARN
		m.Update(ctx, Evaluate(snap(50, true, 11), b))
	}
	if count("level=WARN") != 1 || count("lag_events") != 1 || metric(LagEvents, KindOperator, "o") != 1 || metric(SlotRetainedWAL, KindSlot, "s") != 0 {
		t.Fatalf("after crossing: logs %q", logs.String())
	}
	if a := m.Active(); len(a) != 1 || a[0].Alert != LagEvents || !strings.Contains(a[0].Reason, "operator o is 11 events behind") {
		t.Fatalf("active = %+v", a)
	}
	m.Update(ctx, Evaluate(snap(500, true, 11), b))
	if count("level=WARN") != 2 || metric(SlotRetainedWAL, KindSlot, "s") != 1 {
		t.Fatalf("slot crossing: logs %q", logs.String())
	}
	// The slot cannot be read: its alert stays as it was, neither recovered nor logged.
	m.Update(ctx, Evaluate(snap(0, false, 11), b))
	if count("level=INFO") != 0 || metric(SlotRetainedWAL, KindSlot, "s") != 1 || len(m.Active()) != 2 {
		t.Fatalf("slot unmeasured: logs %q, active %v", logs.String(), m.Active())
	}
	for range 3 { // recovery, then staying within: one INFO each
		m.Update(ctx, Evaluate(snap(10, true, 0), b))
	}
	if count("level=INFO") != 2 || count("level=WARN") != 2 || len(m.Active()) != 0 ||
		metric(LagEvents, KindOperator, "o") != 0 || metric(SlotRetainedWAL, KindSlot, "s") != 0 {
		t.Fatalf("after recovery: logs %q, active %v", logs.String(), m.Active())
	}
}
