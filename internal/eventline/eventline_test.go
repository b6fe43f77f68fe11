package eventline

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
)

var update = flag.Bool("update", false, "rewrite the testdata/*.golden files")

// golden compares got with testdata/name, or rewrites the file with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestEventLine(t *testing.T) {
	t.Parallel()
	router, err := channel.NewRouter([]channel.Table{
		{Name: "posts"},
		{Name: "comments", Scopes: []channel.Scope{{{Column: "post_id", Table: "posts"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	num := func(s string) event.Value { return event.Text(pgtype.Int4OID, s) }
	text := func(s string) event.Value { return event.Text(pgtype.TextOID, s) }
	ts := func(s string) event.Value { return event.Text(pgtype.TimestamptzOID, s) }
	at := time.Date(2025, 11, 24, 16, 5, 0, 0, time.UTC)
	comment := func(id, post, body, updated string) event.Record {
		return event.Record{{Name: "id", Value: num(id)}, {Name: "post_id", Value: num(post)}, {Name: "body", Value: text(body)}, {Name: "updated_at", Value: ts(updated)}}
	}
	events := []event.Event{
		{Position: 1, LSN: 0x16_B374D848, Name: "posts", Type: event.Insert, Timestamp: at,
			NewRecord: event.Record{{Name: "id", Value: num("1")}, {Name: "title", Value: text("Hello, WAL")}, {Name: "body", Value: text("Draft.")}, {Name: "updated_at", Value: ts("2025-11-24 16:05:00+00")}}},
		{Position: 2, LSN: 0x16_B374D9A0, Name: "comments", Type: event.Insert, Timestamp: at,
			NewRecord: comment("7", "1", `She said "first!"`, "2025-11-24 16:05:00+00")},
		{Position: 12, LSN: 0x16_B374DB10, Name: "comments", Type: event.Update, Timestamp: at,
			OldRecord: comment("7", "1", "x", "2025-11-24 16:05:00+00"), NewRecord: comment("7", "2", "x", "2025-11-24 16:06:00+00"),
			Changes: event.Changes{
				{Column: "post_id", OldValue: num("1"), NewValue: num("2")},
				{Column: "updated_at", OldValue: ts("2025-11-24 16:05:00+00"), NewValue: ts("2025-11-24 16:06:00+00")},
			}},
		{Position: 13, LSN: 0x16_B374DC00, Name: "comments", Type: event.Update, Timestamp: at,
			NewRecord: comment("7", "2", "A very long comment that goes on and on about logical decoding", "2025-11-24 16:07:00+00"),
			Changes: event.Changes{
				{Column: "body", OldValue: text("x"), NewValue: text("A very long comment that goes on and on about logical decoding")},
			}},
		{Position: 14, LSN: 0x16_B374DD00, Name: "comments", Type: event.Update, Timestamp: at,
			NewRecord: comment("7", "2", "x", "2025-11-24 16:08:00+00"),
			Changes: event.Changes{
				{Column: "updated_at", OldValue: ts("2025-11-24 16:07:00+00"), NewValue: ts("2025-11-24 16:08:00+00")},
			}},
		{Position: 15, LSN: 0x16_B374DE00, Name: "comments", Type: event.Update, Timestamp: at,
			NewRecord: comment("7", "2", "x", "2025-11-24 16:08:00+00"), Changes: event.Changes{}},
		{Position: 16, LSN: 0x16_B374DF00, Name: "posts", Type: event.Update, Timestamp: at,
			NewRecord: event.Record{{Name: "id", Value: num("1")}, {Name: "title", Value: text("Hi")}, {Name: "body", Value: event.Unchanged(pgtype.TextOID)}}},
		{Position: 17, LSN: 0x16_B374E000, Name: "comments", Type: event.Delete, Timestamp: at,
			OldRecord: comment("7", "2", "x", "2025-11-24 16:08:00+00")},
		{Position: 18, LSN: 0x16_B374E100, Name: "posts", Type: event.Insert, Timestamp: at,
			NewRecord: event.Record{{Name: "id", Value: num("2")}, {Name: "title", Value: text("Déjà vu")}, {Name: "body", Value: event.Null(pgtype.TextOID)}, {Name: "updated_at", Value: ts("2025-11-24 16:05:00+00")}}},
		{Position: 1042, LSN: 0xFFFFFFFF_FFFFFFFF, Name: "comments", Type: event.Truncate, Timestamp: at},
	}
	var b strings.Builder
	for i := range events {
		e := &events[i]
		b.WriteString(Line(e, router.Table(e.Name), router.Channels(e, nil), false))
		b.WriteByte('\n')
	}
	golden(t, "event_lines.golden", b.String())

	colored := Line(&events[2], router.Table("comments"), router.Channels(&events[2], nil), true)
	if !strings.Contains(colored, "\x1b[33mupdate\x1b[0m") || !strings.Contains(colored, "\x1b[2mchannels: ") {
		t.Errorf("colored line lacks its colours: %q", colored)
	}
}
