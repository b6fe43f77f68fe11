package realtime

import (
	"math"
	"testing"
)

func TestLatencyHistogramQuantile(t *testing.T) {
	t.Parallel()
	b := []float64{0.1, 1, 10}
	tests := []struct {
		name   string
		h      LatencyHistogram
		q      float64
		want   float64
		wantOK bool
	}{
		{"empty", LatencyHistogram{Bounds: b, Counts: []uint64{0, 0, 0}}, 0.5, 0, false},
		{"first bucket interpolates from 0", LatencyHistogram{Bounds: b, Counts: []uint64{10, 10, 10}, Count: 10}, 0.5, 0.05, true},
		{"second bucket", LatencyHistogram{Bounds: b, Counts: []uint64{0, 10, 10}, Count: 10}, 0.5, 0.55, true},
		{"p99 in the last bucket", LatencyHistogram{Bounds: b, Counts: []uint64{50, 99, 100}, Count: 100}, 0.99, 1, true},
		{"beyond the last bound", LatencyHistogram{Bounds: b, Counts: []uint64{0, 0, 0}, Count: 4}, 0.5, 10, true},
	}
	for _, tt := range tests {
		got, ok := tt.h.Quantile(tt.q)
		if ok != tt.wantOK || math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: Quantile(%v) = %v, %v; want %v, %v", tt.name, tt.q, got, ok, tt.want, tt.wantOK)
		}
	}
	old := LatencyHistogram{Bounds: b, Counts: []uint64{5, 6, 7}, Count: 8}
	now := LatencyHistogram{Bounds: b, Counts: []uint64{5, 16, 17}, Count: 18}
	d := now.Sub(old)
	if d.Count != 10 || d.Counts[0] != 0 || d.Counts[1] != 10 || d.Counts[2] != 10 {
		t.Errorf("Sub = %+v, want 10 messages, all between 0.1 and 1", d)
	}
}
