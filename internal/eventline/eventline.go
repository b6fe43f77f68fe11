// Package eventline writes events as readable, aligned lines for a terminal: walflow
// ledger read and walflow demo print them.
package eventline

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
)

// Column widths of an event line. A wider value pushes the rest of its line right.
const (
	// TableWidth is the least width of the table column; LineWidth takes a wider one.
	TableWidth       = 8
	lineDetailsWidth = 50
	lineValueRunes   = 32 // longer values are cut with …
)

// ANSI colours of an event line on a terminal.
const (
	ansiReset = "\x1b[0m"
	ansiDim   = "\x1b[2m"
)

var typeColors = map[event.Type]string{
	event.Insert:   "\x1b[32m", // green
	event.Update:   "\x1b[33m", // yellow
	event.Delete:   "\x1b[31m", // red
	event.Truncate: "\x1b[35m", // magenta
}

// Line writes an event as one readable line: its position, commit LSN, table and
// type, what happened to the row, and the channels it was delivered on.
//
//	#12   0/1A4C2F8  comments  update  id=7  post_id: 1 → 2     channels: comments, ...
//
// An insert shows the new row (without the timestamp column), an update the columns it
// changed, a delete the old row's id. t is the table's channel configuration (for its id
// and timestamp columns). color adds ANSI colours for a terminal.
func Line(e *event.Event, t channel.Table, channels []string, color bool) string {
	return LineWidth(e, t, channels, color, TableWidth)
}

// LineWidth is Line with the table name padded to tableWidth runes, so that the
// lines of tables with long names stay aligned.
func LineWidth(e *event.Event, t channel.Table, channels []string, color bool, tableWidth int) string {
	t = t.WithDefaults()
	var b strings.Builder
	fmt.Fprintf(&b, "%-5s  %-11s  %s  ", "#"+e.Position.String(), e.LSN, pad(e.Name, tableWidth))
	typ := pad(e.Type.String(), len("update"))
	if color {
		typ = typeColors[e.Type] + typ + ansiReset
	}
	b.WriteString(typ)
	b.WriteString("  ")
	b.WriteString(pad(lineDetails(e, t), lineDetailsWidth))
	b.WriteString("  ")
	ch := "channels: " + strings.Join(channels, ", ")
	if color {
		ch = ansiDim + ch + ansiReset
	}
	b.WriteString(ch)
	return b.String()
}

// lineDetails says what happened to the row.
func lineDetails(e *event.Event, t channel.Table) string {
	var parts []string
	id := func(r event.Record) {
		if v, ok := r.Get(t.IDColumn); ok {
			parts = append(parts, t.IDColumn+"="+shownValue(v))
		}
	}
	switch e.Type {
	case event.Insert:
		id(e.NewRecord)
		for _, f := range e.NewRecord {
			if f.Name == t.IDColumn || f.Name == t.TimestampColumn || f.Value.IsUnchanged() {
				continue
			}
			parts = append(parts, f.Name+"="+shownValue(f.Value))
		}
	case event.Update:
		id(e.NewRecord)
		if e.Changes == nil {
			parts = append(parts, "(old row unknown: REPLICA IDENTITY FULL shows the changes)")
			break
		}
		var shown []string
		for _, c := range e.Changes {
			if c.Column == t.TimestampColumn {
				continue
			}
			shown = append(shown, c.Column+": "+shownValue(c.OldValue)+" → "+shownValue(c.NewValue))
		}
		if len(shown) == 0 {
			if c, ok := e.Changes.Get(t.TimestampColumn); ok {
				shown = append(shown, c.Column+": "+shownValue(c.OldValue)+" → "+shownValue(c.NewValue))
			} else {
				shown = append(shown, "(no column changed)")
			}
		}
		parts = append(parts, shown...)
	case event.Delete:
		id(e.OldRecord)
	case event.Truncate:
		parts = append(parts, "(every row)")
	}
	return strings.Join(parts, "  ")
}

// unquoted are the types whose values read well without quotes.
var unquoted = map[uint32]bool{
	pgtype.Int2OID: true, pgtype.Int4OID: true, pgtype.Int8OID: true, pgtype.OIDOID: true,
	pgtype.Float4OID: true, pgtype.Float8OID: true, pgtype.NumericOID: true, pgtype.BoolOID: true,
}

// shownValue writes a value for the line: numbers and booleans bare, NULL as NULL, the
// rest quoted and cut to lineValueRunes.
func shownValue(v event.Value) string {
	text, ok := v.Text()
	if !ok {
		return v.String()
	}
	if unquoted[v.OID()] {
		return text
	}
	if utf8.RuneCountInString(text) > lineValueRunes {
		r := []rune(text)
		text = string(r[:lineValueRunes-1]) + "…"
	}
	return strconv.Quote(text)
}

// pad right-pads s with spaces to width runes.
func pad(s string, width int) string {
	if n := utf8.RuneCountInString(s); n < width {
		return s + strings.Repeat(" ", width-n)
	}
	return s
}
