package event_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walflow/walflow/event"
)

func sampleEvent() event.Event {
	cols := []event.Column{
		{Name: "id", Type: "integer", OID: pgtype.Int4OID, Key: true},
		{Name: "body", Type: "text", OID: pgtype.TextOID},
		{Name: "post_id", Type: "integer", OID: pgtype.Int4OID},
	}
	return event.Event{
		Position: 42, LSN: 0x16_B374D848, Ordinal: 3, XID: 777, Name: "comments", Type: event.Update,
		Source: event.Source{DB: "app", Schema: "public", Table: "comments", Columns: cols},
		NewRecord: event.Record{
			{Name: "id", Value: event.Text(pgtype.Int4OID, "7")},
			{Name: "body", Value: event.Unchanged(pgtype.TextOID)},
			{Name: "post_id", Value: event.Text(pgtype.Int4OID, "43")},
		},
		OldRecord: event.Record{{Name: "id", Value: event.Text(pgtype.Int4OID, "7")}, {Name: "extra", Value: event.Null(pgtype.TextOID)}},
		Changes:   event.Changes{{Column: "post_id", OldValue: event.Text(pgtype.Int4OID, "42"), NewValue: event.Text(pgtype.Int4OID, "43")}},
		Timestamp: time.Date(2026, 11, 24, 12, 0, 0, 123456000, time.UTC),
	}
}

func TestBinaryRoundTrip(t *testing.T) {
	t.Parallel()
	e := sampleEvent()
	b := event.AppendBinary(nil, &e)
	got, err := event.DecodeBinary(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, e) {
		t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, e)
	}
	for i := range b {
		if _, err := event.DecodeBinary(b[:i]); err == nil {
			t.Fatalf("truncation at %d accepted", i)
		}
	}
}

func TestEventJSON(t *testing.T) {
	t.Parallel()
	e := sampleEvent()
	b, err := json.Marshal(&e)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"position":42,"lsn":"16/B374D848","xid":777,"name":"comments","type":"update",` +
		`"source":{"db":"app","schema":"public","table":"comments","columns":{"id":"integer","body":"text","post_id":"integer"}},` +
		`"new_record":{"id":7,"post_id":43},"old_record":{"id":7,"extra":null},` +
		`"changes":{"post_id":{"old_value":42,"new_value":43}},"timestamp":"2026-11-24T12:00:00.123456Z","unchanged_toast":["body"]}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	if !json.Valid(b) {
		t.Fatal("invalid JSON")
	}
}

func FuzzDecodeBinary(f *testing.F) {
	e := sampleEvent()
	f.Add(event.AppendBinary(nil, &e))
	f.Add([]byte{})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	de := sampleEvent()
	de.NewRecord[0].Value = event.ArrayText(pgtype.TextArrayOID, '|', "{a|b}")
	f.Add(event.AppendBinary(nil, &de))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := event.DecodeBinary(b)
		if err != nil {
			return
		}
		// Whatever decodes must encode and decode to the same event.
		again, err := event.DecodeBinary(event.AppendBinary(nil, &got))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !reflect.DeepEqual(got, again) {
			t.Fatalf("unstable round trip")
		}
		_, _ = json.Marshal(&got)
	})
}

func FuzzValueJSON(f *testing.F) {
	f.Add(uint32(pgtype.Int4ArrayOID), "{{1,2},{3,NULL}}")
	f.Add(uint32(pgtype.NumericOID), "NaN")
	f.Add(uint32(pgtype.TextArrayOID), `{"a\"",b}`)
	f.Add(uint32(pgtype.TimestamptzOID), "2024-01-01 00:00:00+00")
	f.Fuzz(func(t *testing.T, oid uint32, s string) {
		b, err := json.Marshal(event.Text(oid, s))
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(b) {
			t.Fatalf("invalid JSON %s for %q", b, s)
		}
	})
}

// TestBinaryArrayDelim checks that a value's own array delimiter survives the ledger's binary
// form, and that version 1 events (written before it existed) still decode.
func TestBinaryArrayDelim(t *testing.T) {
	t.Parallel()
	e := sampleEvent()
	e.NewRecord = append(e.NewRecord, event.Field{Name: "boxes", Value: event.ArrayText(pgtype.TextArrayOID, ';', `{(1,1),(0,0);"a;b"}`)})
	b := event.AppendBinary(nil, &e)
	got, err := event.DecodeBinary(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, e) {
		t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, e)
	}
	v, _ := got.NewRecord.Get("boxes")
	if j, _ := json.Marshal(v); string(j) != `["(1,1),(0,0)","a;b"]` {
		t.Fatalf("decoded value's JSON %s", j)
	}
	for i := range b {
		if _, err := event.DecodeBinary(b[:i]); err == nil {
			t.Fatalf("truncation at %d accepted", i)
		}
	}

	plain := sampleEvent()
	v1 := event.AppendBinary(nil, &plain)
	v1[0] = 1
	if got, err := event.DecodeBinary(v1); err != nil || !reflect.DeepEqual(got, plain) {
		t.Fatalf("version 1: %v, %+v", err, got)
	}
	b[0] = 1 // version 1 has no delimiter flag
	if _, err := event.DecodeBinary(b); err == nil {
		t.Fatal("version 1 event with a delimiter flag accepted")
	}
}
