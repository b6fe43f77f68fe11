package event_test

import (
	"encoding/json"
	"math"
	"reflect"
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
	for _, s := range []string{"", "{", "{1,", "{1}}", "{{1},2}", `{"a}`, "{,}", "[1:2]{1}", `{a\,b}`} {
		if _, err := event.ParseArray(s, ','); err == nil {
			t.Errorf("ParseArray(%q, ',') accepted malformed input", s)
		}
	}
	for _, s := range []string{"{1,2}x", "{{a},{b}}", "{a;}"} {
		if _, err := event.ParseArray(s, ';'); err == nil {
			t.Errorf("ParseArray(%q, ';') accepted malformed input", s)
		}
	}
	for _, d := range []byte{0, '{', '}', '"', '\\', ' ', '\t'} {
		if _, err := event.ParseArray("{a}", d); err == nil {
			t.Errorf("ParseArray with delimiter %q accepted", d)
		}
	}
}

// TestArrayDelimiters checks that each array is split on its element type's delimiter only:
// ',' for text[], ';' for box[] (whose elements contain ','), and a user type's own.
func TestArrayDelimiters(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		v    event.Value
		json string
		any  []any
	}{
		{"text semicolon", event.Text(pgtype.TextArrayOID, `{semi;colon}`), `["semi;colon"]`, []any{"semi;colon"}},
		{"text comma and semicolon", event.Text(pgtype.TextArrayOID, `{"a,b",semi;colon}`), `["a,b","semi;colon"]`, []any{"a,b", "semi;colon"}},
		{"box", event.Text(pgtype.BoxArrayOID, `{(1,1),(0,0);(2,2),(1,1)}`), `["(1,1),(0,0)","(2,2),(1,1)"]`, nil},
		{"box 2d with null", event.Text(pgtype.BoxArrayOID, `{{(1,1),(0,0);NULL};{(3,3),(2,2);(1,1),(1,1)}}`),
			`[["(1,1),(0,0)",null],["(3,3),(2,2)","(1,1),(1,1)"]]`, nil},
		{"point keeps comma", event.Text(pgtype.PointArrayOID, `{"(1,2)","(3,4)"}`), `["(1,2)","(3,4)"]`, nil},
		{"user delimiter", event.ArrayText(pgtype.TextArrayOID, '|', `{{a,b|"c|d"}|{NULL|e;f}}`), `[["a,b","c|d"],[null,"e;f"]]`,
			[]any{"a,b", "c|d", nil, "e;f"}},
		{"user semicolon", event.ArrayText(pgtype.TextArrayOID, ';', `{(1,1),(0,0);"x;y"}`), `["(1,1),(0,0)","x;y"]`,
			[]any{"(1,1),(0,0)", "x;y"}},
		{"user delimiter, typed elements", event.ArrayText(pgtype.Int4ArrayOID, '|', `{{1|NULL}|{3|-4}}`), `[[1,null],[3,-4]]`,
			[]any{int32(1), nil, int32(3), int32(-4)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.json {
				t.Fatalf("JSON %s, want %s", got, tt.json)
			}
			x, err := tt.v.Any()
			if err != nil {
				t.Fatalf("Any: %v", err)
			}
			elems, ok := x.([]any)
			if !ok {
				t.Fatalf("Any gave %T, want []any", x)
			}
			if tt.any != nil && !reflect.DeepEqual(elems, tt.any) {
				t.Fatalf("Any = %#v, want %#v", elems, tt.any)
			}
			var n int
			var parsed []any
			if err := json.Unmarshal(got, &parsed); err != nil {
				t.Fatal(err)
			}
			n = countLeaves(parsed)
			if len(elems) != n {
				t.Fatalf("Any gave %d elements, JSON %d", len(elems), n)
			}
		})
	}
}

func countLeaves(a []any) int {
	n := 0
	for _, x := range a {
		if sub, ok := x.([]any); ok {
			n += countLeaves(sub)
		} else {
			n++
		}
	}
	return n
}

func TestArrayTextDelim(t *testing.T) {
	t.Parallel()
	if d := event.ArrayDelim(pgtype.BoxArrayOID); d != ';' {
		t.Errorf("ArrayDelim(box[]) = %q, want ';'", d)
	}
	if d := event.ArrayDelim(pgtype.TextArrayOID); d != ',' {
		t.Errorf("ArrayDelim(text[]) = %q, want ','", d)
	}
	if d := event.ArrayText(pgtype.TextArrayOID, '|', "{a}").Delim(); d != '|' {
		t.Errorf("ArrayText delimiter = %q, want '|'", d)
	}
	if x, err := event.ArrayText(pgtype.TextOID, '|', "a|b").Any(); err != nil || x != "a|b" {
		t.Errorf("ArrayText of a scalar type: Any = %#v, %v; want the text", x, err)
	}
	// A delimiter equal to the OID's own is the same value as Text gives.
	if v, w := event.ArrayText(pgtype.BoxArrayOID, ';', "{}"), event.Text(pgtype.BoxArrayOID, "{}"); v != w {
		t.Errorf("ArrayText with the OID's own delimiter = %#v, want %#v", v, w)
	}
}

func FuzzParseArray(f *testing.F) {
	for _, s := range []string{"{}", "{{1,2},{NULL,4}}", `[0:1]={a,"b c"}`, `{"a\\"b",NULL,""}`, `{semi;colon}`,
		`{(1,1),(0,0);(2,2),(1,1)}`, "{", "{{{{{{{{1}}}}}}}}", `{"`, `{\`, "[", "{a,{b}}"} {
		f.Add(s, byte(','))
		f.Add(s, byte(';'))
	}
	f.Fuzz(func(t *testing.T, s string, delim byte) {
		a, err := event.ParseArray(s, delim)
		if err != nil {
			return
		}
		// Whatever parses renders as valid JSON, as a user type's array and as text[].
		for _, v := range []event.Value{event.ArrayText(pgtype.TextArrayOID, delim, s), event.ArrayText(pgtype.Int4ArrayOID, delim, s)} {
			b, err := json.Marshal(v)
			if err != nil || !json.Valid(b) {
				t.Fatalf("JSON %s, %v for parsed %q (%+v)", b, err, s, a)
			}
			_, _ = v.Any()
		}
	})
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

func TestTableName(t *testing.T) {
	for in, want := range map[string]string{"comments": "comments", "public.comments": "comments", "app.users": "users", "": ""} {
		if got := event.TableName(in); got != want {
			t.Errorf("TableName(%q) = %q, want %q", in, got, want)
		}
	}
}
