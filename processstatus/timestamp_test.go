package processstatus_test

import (
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/processstatus"
)

func TestParseMicros(t *testing.T) {
	t.Parallel()
	base := time.Date(2024, 7, 23, 12, 0, 0, 0, time.UTC).UnixMicro()
	tests := []struct {
		in   string
		want int64
	}{
		// timestamptz, as PostgreSQL's ISO DateStyle prints it
		{"2024-07-23 12:00:00+00", base},
		{"2024-07-23 12:00:00.123456+00", base + 123456},
		{"2024-07-23 12:00:00.5+00", base + 500000},
		{"2024-07-23 17:30:00+05:30", base},
		{"2024-07-23 08:30:00-03:30", base},
		{"2024-07-23 12:53:28+00:53:28", base},
		{"2024-07-23 11:00:00.000001-01", base + 1},
		// timestamp without time zone: UTC
		{"2024-07-23 12:00:00", base},
		{"2024-07-23 12:00:00.5", base + 500000},
		// ISO 8601 spellings
		{"2024-07-23T12:00:00Z", base},
		{"2024-07-23T12:00:00.123456789Z", base + 123456},
		// bigint microseconds
		{"1721736000123456", base + 123456},
		{"0", 0},
		{"-1", -1},
		// edges
		{"1970-01-01 00:00:00+00", 0},
		{"1969-12-31 23:59:59.999999+00", -1},
		{"2000-02-29 00:00:00", time.Date(2000, 2, 29, 0, 0, 0, 0, time.UTC).UnixMicro()},
		{"10000-01-01 00:00:00+00", time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()},
	}
	for _, tc := range tests {
		got, err := processstatus.ParseMicros(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseMicros(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	bad := []string{
		"", "-", "infinity", "-infinity", "2024-07-23 12:00:00 BC", "0044-03-15 12:00:00+00 BC",
		"2024-07-23", "2024-07-23 12:00", "2024-13-01 00:00:00", "2023-02-29 00:00:00",
		"2024-07-23 24:00:00", "2024-07-23 12:60:00", "2024-07-23 12:00:60", "2024-07-23 12:00:00.",
		"2024-07-23 12:00:00+", "2024-07-23 12:00:00+16", "2024-07-23 12:00:00+05:", "2024-07-23 12:00:00 +00",
		"2024-07-23 12:00:00+00x", "99999999999999999999", "1.5", "12:00:00", "2024-7-23 12:00:00",
		"999999-01-01 00:00:00",
	}
	for _, in := range bad {
		if got, err := processstatus.ParseMicros(in); err == nil {
			t.Errorf("ParseMicros(%q) = %d, want an error", in, got)
		} else if !strings.HasPrefix(err.Error(), "processstatus: ") {
			t.Errorf("ParseMicros(%q) error %q lacks the package prefix", in, err)
		}
	}
}

// FuzzParseMicros: no input panics, and what time.Format writes parses back.
func FuzzParseMicros(f *testing.F) {
	for _, s := range []string{"2024-07-23 12:00:00.123456+00", "2024-07-23 12:00:00", "1721736000123456", "", "-", "2024-07-23 12:00:00+05:30:15", "infinity"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = processstatus.ParseMicros(s)
	})
}

func FuzzParseMicrosRoundTrip(f *testing.F) {
	f.Add(int64(0))
	f.Add(int64(1721736000123456))
	f.Add(int64(-62135596800000000)) // year 1
	f.Fuzz(func(t *testing.T, micros int64) {
		ts := time.UnixMicro(micros).UTC()
		if ts.Year() < 1 || ts.Year() > 9999 {
			return
		}
		for _, s := range []string{
			ts.Format("2006-01-02 15:04:05.999999") + "+00",
			ts.Format("2006-01-02 15:04:05.999999"),
			ts.In(time.FixedZone("", 5*3600+30*60)).Format("2006-01-02 15:04:05.999999-07:00"),
		} {
			got, err := processstatus.ParseMicros(s)
			if err != nil || got != micros {
				t.Fatalf("ParseMicros(%q) = %d, %v; want %d", s, got, err, micros)
			}
		}
	})
}
