package pgwal

import (
	"fmt"
	"unsafe"

	"github.com/walflow/walflow/event"
)

// DecodeError says which value could not be decoded. The source stops before the event
// rather than skip it.
type DecodeError struct {
	Table  string
	Column string
	Type   string
	LSN    event.LSN
	Err    error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("pgwal: decode column %q (%s) of table %s in the transaction committed at %s: %v", e.Column, e.Type, e.Table, e.LSN, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// record turns a tuple into a Record. The values' text is copied into one buffer per tuple
// (the message buffer is reused by the connection), and each value is a string view of it.
// keyOnly keeps only the replica identity's columns (a 'K' old tuple sends NULL for the rest,
// which must not read as NULL values).
func (rel *relation) record(t []tupleCol, keyOnly bool, lsn event.LSN) (event.Record, error) {
	if len(t) != len(rel.columns) {
		return nil, &DecodeError{Table: rel.msg.Namespace + "." + rel.msg.Name, Column: "*", Type: "tuple", LSN: lsn,
			Err: fmt.Errorf("%w: tuple has %d columns, relation has %d", ErrProtocol, len(t), len(rel.columns))}
	}
	size := 0
	for _, c := range t {
		size += len(c.Data)
	}
	buf := make([]byte, 0, size)
	n := len(t)
	if keyOnly {
		n = 0
		for _, c := range rel.columns {
			if c.Key {
				n++
			}
		}
	}
	rec := make(event.Record, 0, n)
	for i, c := range t {
		col := &rel.columns[i]
		if keyOnly && !col.Key {
			continue
		}
		var v event.Value
		switch c.Kind {
		case 'n':
			v = event.Null(col.OID)
		case 'u':
			v = event.Unchanged(col.OID)
		case 't':
			start := len(buf)
			buf = append(buf, c.Data...)
			if rel.delims != nil && rel.delims[i] != 0 {
				v = event.ArrayText(col.OID, rel.delims[i], bytesString(buf[start:]))
			} else {
				v = event.Text(col.OID, bytesString(buf[start:]))
			}
		default:
			return nil, &DecodeError{Table: rel.msg.Namespace + "." + rel.msg.Name, Column: col.Name, Type: col.Type, LSN: lsn,
				Err: fmt.Errorf("binary value received, but walflow asks for the text format")}
		}
		rec = append(rec, event.Field{Name: col.Name, Value: v})
	}
	return rec, nil
}

// bytesString views b as a string; b is never written again after this.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// buildChange fills e from an Insert, Update or Delete of rel.
func (rel *relation) buildChange(e *event.Event, m changeMsg, lsn event.LSN) error {
	e.Name = rel.msg.Name
	e.Source.Schema = rel.msg.Namespace
	e.Source.Table = rel.msg.Name
	e.Source.Columns = rel.columns
	e.NewRecord, e.OldRecord, e.Changes = nil, nil, nil
	var err error
	switch m.Type {
	case msgInsert:
		e.Type = event.Insert
		e.NewRecord, err = rel.record(m.New, false, lsn)
	case msgDelete:
		e.Type = event.Delete
		e.OldRecord, err = rel.record(m.Old, m.OldKind == 'K', lsn)
	case msgUpdate:
		e.Type = event.Update
		if e.NewRecord, err = rel.record(m.New, false, lsn); err != nil {
			return err
		}
		if m.OldKind == 0 {
			return nil
		}
		if e.OldRecord, err = rel.record(m.Old, m.OldKind == 'K', lsn); err != nil {
			return err
		}
		if m.OldKind == 'O' {
			e.Changes = fillAndDiff(e.NewRecord, e.OldRecord)
		}
	}
	return err
}

// fillAndDiff replaces unchanged TOAST markers in the new record with the old row's values
// (the whole old row is known under REPLICA IDENTITY FULL) and lists the columns that
// changed. A column still unchanged after filling did not change, by definition.
func fillAndDiff(newRec, oldRec event.Record) event.Changes {
	var ch event.Changes
	for i := range newRec {
		nv := newRec[i].Value
		if i >= len(oldRec) || oldRec[i].Name != newRec[i].Name {
			continue
		}
		ov := oldRec[i].Value
		if nv.IsUnchanged() && !ov.IsUnchanged() {
			newRec[i].Value = ov
			continue
		}
		if nv.IsUnchanged() || ov.IsUnchanged() || nv.Equal(ov) {
			continue
		}
		ch = append(ch, event.Change{Column: newRec[i].Name, OldValue: ov, NewValue: nv})
	}
	if ch == nil {
		ch = event.Changes{}
	}
	return ch
}
