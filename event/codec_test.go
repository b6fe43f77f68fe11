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
