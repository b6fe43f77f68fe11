package event

import (
	"strconv"
	"time"
)

// MarshalJSON writes the event's JSON form: position, lsn, xid, name, type, source
// (db, schema, table, columns as name → type), new_record, old_record, changes
// (column → {old_value, new_value}), timestamp, and unchanged_toast when some column of the
// new record is an unchanged TOAST value (that column is then left out of new_record).
func (e *Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, 512)), nil
}

// AppendJSON appends the event's JSON form to b.
func (e *Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"position":`...)
	b = strconv.AppendUint(b, uint64(e.Position), 10)
	b = append(b, `,"lsn":"`...)
	b = append(b, e.LSN.String()...)
	b = append(b, `","xid":`...)
	b = strconv.AppendUint(b, uint64(e.XID), 10)
	b = append(b, `,"name":`...)
	b = appendJSONString(b, e.Name)
	b = append(b, `,"type":"`...)
	b = append(b, e.Type.String()...)
	b = append(b, `","source":{"db":`...)
	b = appendJSONString(b, e.Source.DB)
	b = append(b, `,"schema":`...)
	b = appendJSONString(b, e.Source.Schema)
	b = append(b, `,"table":`...)
	b = appendJSONString(b, e.Source.Table)
	b = append(b, `,"columns":{`...)
	for i, c := range e.Source.Columns {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, c.Name)
		b = append(b, ':')
		b = appendJSONString(b, c.Type)
	}
	b = append(b, `}},"new_record":`...)
	b = appendRecordJSON(b, e.NewRecord)
	b = append(b, `,"old_record":`...)
	b = appendRecordJSON(b, e.OldRecord)
	b = append(b, `,"changes":`...)
	if e.Changes == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '{')
		for i, c := range e.Changes {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, c.Column)
			b = append(b, `:{"old_value":`...)
			b = c.OldValue.AppendJSON(b)
			b = append(b, `,"new_value":`...)
			b = c.NewValue.AppendJSON(b)
			b = append(b, '}')
		}
		b = append(b, '}')
	}
	b = append(b, `,"timestamp":"`...)
	b = e.Timestamp.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if u := e.UnchangedTOAST(); u != nil {
		b = append(b, `,"unchanged_toast":[`...)
		for i, n := range u {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, n)
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

func appendRecordJSON(b []byte, r Record) []byte {
	if r == nil {
		return append(b, "null"...)
	}
	b = append(b, '{')
	first := true
	for _, f := range r {
		if f.Value.IsUnchanged() {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, f.Name)
		b = append(b, ':')
		b = f.Value.AppendJSON(b)
	}
	return append(b, '}')
}

// MarshalJSON writes the record as a JSON object in column order.
func (r Record) MarshalJSON() ([]byte, error) { return appendRecordJSON(nil, r), nil }
