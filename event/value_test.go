package event_test

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walflow/walflow/event"
)

func TestValueJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		v    event.Value
		want string
	}{
		{"int", event.Text(pgtype.Int8OID, "-9223372036854775808"), `-9223372036854775808`},
		{"float", event.Text(pgtype.Float8OID, "1.5e+300"), `1.5e+300`},
		{"float nan", event.Text(pgtype.Float8OID, "NaN"), `"NaN"`},
		{"float -inf", event.Text(pgtype.Float4OID, "-Infinity"), `"-Infinity"`},
		{"numeric huge", event.Text(pgtype.NumericOID, "123456789012345678901234567890.000000000000000000001"), `123456789012345678901234567890.000000000000000000001`},
		{"numeric nan", event.Text(pgtype.NumericOID, "NaN"), `"NaN"`},
		{"bool", event.Text(pgtype.BoolOID, "t"), `true`},
		{"text escapes", event.Text(pgtype.TextOID, "a\"b\\c\n<\x01"), `"a\"b\\c\n\u003c\u0001"`},
		{"jsonb", event.Text(pgtype.JSONBOID, `{"a": [1, 2]}`), `{"a":[1,2]}`},
		{"timestamptz", event.Text(pgtype.TimestamptzOID, "2024-07-23 12:00:00.123456+00"), `"2024-07-23T12:00:00.123456Z"`},
		{"timestamp infinity", event.Text(pgtype.TimestampOID, "-infinity"), `"-infinity"`},
		{"int array 2d", event.Text(pgtype.Int4ArrayOID, "{{1,2},{NULL,4}}"), `[[1,2],[null,4]]`},
		{"text array quoted", event.Text(pgtype.TextArrayOID, `{"a,b","NULL",NULL,"q\"x"}`), `["a,b","NULL",null,"q\"x"]`},
		{"empty array", event.Text(pgtype.Int4ArrayOID, "{}"), `[]`},
		{"bounded array", event.Text(pgtype.Int4ArrayOID, "[0:1]={7,8}"), `[7,8]`},
		{"null", event.Null(pgtype.TextOID), `null`},
		{"unchanged", event.Unchanged(pgtype.TextOID), `{"unchanged_toast":true}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestValueAny(t *testing.T) {
	t.Parallel()
	v, err := event.Text(pgtype.Float8OID, "NaN").Any()
	if err != nil || !math.IsNaN(v.(float64)) {
		t.Fatalf("NaN: got %v, %v", v, err)
	}
	v, err = event.Text(pgtype.NumericOID, "3.14159265358979323846264338327950288").Any()
	if err != nil {
		t.Fatal(err)
	}
	n := v.(pgtype.Numeric)
	if s, _ := n.MarshalJSON(); string(s) != "3.14159265358979323846264338327950288" {
		t.Fatalf("numeric lost digits: %s", s)
	}
	if _, err := event.Unchanged(pgtype.TextOID).Any(); err != event.ErrUnchanged {
		t.Fatalf("unchanged: got %v", err)
	}
	if v, _ := event.Null(pgtype.Int4OID).Any(); v != nil {
		t.Fatalf("null: got %v", v)
	}
}

func TestParseArrayErrors(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "{", "{1,", "{1}}", "{{1},2}", `{"a}`, "{,}", "[1:2]{1}"} {
		if _, err := event.ParseArray(s); err == nil {
			t.Errorf("ParseArray(%q) accepted malformed input", s)
		}
	}
}

func TestLSN(t *testing.T) {
	t.Parallel()
	l, err := event.ParseLSN("16/B374D848")
	if err != nil || l != event.LSN(0x16_B374D848) || l.String() != "16/B374D848" {
		t.Fatalf("got %v %v", l, err)
	}
	for _, bad := range []string{"", "16", "/1", "1/", "G/1", "123456789/1"} {
		if _, err := event.ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) accepted", bad)
		}
	}
}
