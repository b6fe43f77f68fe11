package walflow

import (
	"testing"
	"time"

	"github.com/walflow/walflow/realtime"
)

// TestConsoleHistoryRing: the history keeps the newest samples of its window, numbers them
// without gaps, answers the ones after a sequence number, and computes the rates and the
// interval's latency quantiles from the previous sample.
func TestConsoleHistoryRing(t *testing.T) {
	t.Parallel()
	h := newConsoleHistory(ConsoleWindow / 3) // room for 3 samples
	t0 := time.Unix(1000, 0)
	bounds := []float64{0.01, 0.1, 1}
	lat := []realtime.LatencyHistogram{
		{Bounds: bounds, Counts: []uint64{0, 0, 0}},
		{Bounds: bounds, Counts: []uint64{10, 10, 10}, Count: 10},    // 10 messages under 10ms
		{Bounds: bounds, Counts: []uint64{10, 110, 110}, Count: 110}, // then 100 between 10ms and 100ms
		{Bounds: bounds, Counts: []uint64{10, 110, 110}, Count: 110}, // then none
	}
	for i := range 4 {
		s := h.add(ConsoleSample{Time: t0.Add(time.Duration(i) * 2 * time.Second), EventsAppended: uint64(i * 100),
			Realtime: &ConsoleRealtime{MessagesSent: uint64(i * 10)}}, lat[i])
		if s.Seq != uint64(i+1) {
			t.Fatalf("sample %d has seq %d", i, s.Seq)
		}
	}
	all := h.after(0)
	if len(all) != 3 || all[0].Seq != 2 || all[2].Seq != 4 {
		t.Fatalf("after(0) = %+v, want seqs 2..4 (the ring holds 3)", all)
	}
	for _, s := range all {
		if s.EventsPerSecond != 50 || s.Realtime.MessagesPerSecond != 5 {
			t.Errorf("seq %d: %v events/s, %v messages/s; want 50 and 5 (100 events, 10 messages in 2s)", s.Seq, s.EventsPerSecond, s.Realtime.MessagesPerSecond)
		}
	}
	if p := all[0].Realtime.LatencyP99Seconds; p == nil || *p > 0.01 {
		t.Errorf("seq 2 p99 = %v, want at most 0.01 (every message under 10ms)", p)
	}
	if p := all[1].Realtime.LatencyP50Seconds; p == nil || *p <= 0.01 || *p > 0.1 {
		t.Errorf("seq 3 p50 = %v, want within (0.01, 0.1] (the interval's 100 messages, not the 10 before)", p)
	}
	if all[2].Realtime.LatencyP50Seconds != nil {
		t.Errorf("seq 4 p50 = %v, want null: no message in the interval", *all[2].Realtime.LatencyP50Seconds)
	}
	if got := h.after(3); len(got) != 1 || got[0].Seq != 4 {
		t.Errorf("after(3) = %+v, want seq 4 alone", got)
	}
	if got := h.after(4); len(got) != 0 {
		t.Errorf("after(4) = %+v, want none", got)
	}
}
