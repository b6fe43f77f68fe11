package event

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// binaryVersion is the first byte of the binary form; bump it when the layout changes and
// keep decoding the old one. Version 2 added the array delimiter flag of a value's kind
// byte ([kindHasDelim]); version 1 is version 2 without it.
const binaryVersion = 2

// kindHasDelim is set in a value's kind byte when the value's array delimiter byte follows
// its OID.
const kindHasDelim = 0x80

// AppendBinary appends the event's compact binary form, the one the ledger stores, to b.
func AppendBinary(b []byte, e *Event) []byte {
	b = append(b, binaryVersion)
	b = binary.AppendUvarint(b, uint64(e.Position))
	b = binary.AppendUvarint(b, uint64(e.LSN))
	b = binary.AppendUvarint(b, uint64(e.Ordinal))
	b = binary.AppendUvarint(b, uint64(e.XID))
	b = append(b, byte(e.Type))
	b = binary.AppendVarint(b, e.Timestamp.UnixMicro())
	b = appendString(b, e.Name)
	b = appendString(b, e.Source.DB)
	b = appendString(b, e.Source.Schema)
	b = appendString(b, e.Source.Table)
	b = binary.AppendUvarint(b, uint64(len(e.Source.Columns)))
	for _, c := range e.Source.Columns {
		b = appendString(b, c.Name)
		b = appendString(b, c.Type)
		b = binary.AppendUvarint(b, uint64(c.OID))
		if c.Key {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	b = appendRecord(b, e.Source.Columns, e.NewRecord)
	b = appendRecord(b, e.Source.Columns, e.OldRecord)
	if e.Changes == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(len(e.Changes)))
		for _, c := range e.Changes {
			b = appendString(b, c.Column)
			b = appendValue(b, c.OldValue)
			b = appendValue(b, c.NewValue)
		}
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendValue(b []byte, v Value) []byte {
	if v.delim != 0 {
		b = append(b, byte(v.kind)|kindHasDelim)
		b = binary.AppendUvarint(b, uint64(v.oid))
		b = append(b, v.delim)
	} else {
		b = append(b, byte(v.kind))
		b = binary.AppendUvarint(b, uint64(v.oid))
	}
	if v.kind == KindText {
		b = appendString(b, v.text)
	}
	return b
}

// appendRecord writes each field as the index of its column in cols when the name matches
// one (the common case, which saves repeating names), or as an explicit name.
func appendRecord(b []byte, cols []Column, r Record) []byte {
	if r == nil {
		return append(b, 0)
	}
	b = append(b, 1)
	b = binary.AppendUvarint(b, uint64(len(r)))
	for i, f := range r {
		if i < len(cols) && cols[i].Name == f.Name {
			b = binary.AppendUvarint(b, uint64(i)+1)
		} else {
			b = append(b, 0)
			b = appendString(b, f.Name)
		}
		b = appendValue(b, f.Value)
	}
	return b
}

// ErrMalformed is wrapped by every error [DecodeBinary] returns.
var ErrMalformed = errors.New("event: malformed binary event")

type decoder struct {
	b       []byte
	err     error
	version byte
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated or invalid %s", ErrMalformed, what)
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail(what)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) string(what string) string {
	n := d.uvarint(what)
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.fail(what)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// count reads a length and checks that at least min bytes per item remain, so a corrupt
// length cannot make the decoder allocate without bound.
func (d *decoder) count(what string, min int) int {
	n := d.uvarint(what)
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/min) {
		d.fail(what)
		return 0
	}
	return int(n)
}

func (d *decoder) value(what string) Value {
	kb := d.byte1(what)
	oid := d.uvarint(what)
	var delim byte
	k := Kind(kb)
	if kb&kindHasDelim != 0 && d.version >= 2 {
		k = Kind(kb &^ kindHasDelim)
		delim = d.byte1(what + " delimiter")
		if delim == 0 || delim == ArrayDelim(uint32(oid)) {
			d.fail(what + " delimiter") // AppendBinary writes only a delimiter that differs
		}
	}
	if d.err != nil {
		return Value{}
	}
	if oid > 1<<32-1 {
		d.fail(what)
		return Value{}
	}
	switch k {
	case KindNull, KindUnchanged:
		return Value{oid: uint32(oid), kind: k, delim: delim}
	case KindText:
		return Value{text: d.string(what), oid: uint32(oid), kind: k, delim: delim}
	}
	d.fail(what + " kind")
	return Value{}
}

func (d *decoder) record(cols []Column) Record {
	if d.byte1("record presence") == 0 || d.err != nil {
		return nil
	}
	n := d.count("record length", 3)
	r := make(Record, 0, n)
	for range n {
		idx := d.uvarint("field column")
		var name string
		if idx == 0 {
			name = d.string("field name")
		} else if idx <= uint64(len(cols)) {
			name = cols[idx-1].Name
		} else {
			d.fail("field column index")
		}
		v := d.value("field value")
		if d.err != nil {
			return nil
		}
		r = append(r, Field{Name: name, Value: v})
	}
	return r
}

// DecodeBinary decodes an event written by [AppendBinary]. It never panics; malformed input
// gives an error wrapping [ErrMalformed].
func DecodeBinary(b []byte) (Event, error) {
	d := decoder{b: b}
	if d.version = d.byte1("version"); d.err == nil && (d.version < 1 || d.version > binaryVersion) {
		return Event{}, fmt.Errorf("%w: unknown version %d (this walflow reads versions 1 to %d; upgrade walflow)", ErrMalformed, d.version, binaryVersion)
	}
	var e Event
	e.Position = Position(d.uvarint("position"))
	e.LSN = LSN(d.uvarint("lsn"))
	e.Ordinal = uint32(d.uvarint("ordinal"))
	e.XID = uint32(d.uvarint("xid"))
	e.Type = Type(d.byte1("type"))
	e.Timestamp = time.UnixMicro(d.varint("timestamp")).UTC()
	e.Name = d.string("name")
	e.Source.DB = d.string("db")
	e.Source.Schema = d.string("schema")
	e.Source.Table = d.string("table")
	n := d.count("column count", 4)
	if n > 0 {
		e.Source.Columns = make([]Column, 0, n)
	}
	for range n {
		c := Column{Name: d.string("column name"), Type: d.string("column type")}
		c.OID = uint32(d.uvarint("column oid"))
		c.Key = d.byte1("column key") == 1
		if d.err != nil {
			break
		}
		e.Source.Columns = append(e.Source.Columns, c)
	}
	e.NewRecord = d.record(e.Source.Columns)
	e.OldRecord = d.record(e.Source.Columns)
	if d.byte1("changes presence") == 1 && d.err == nil {
		n := d.count("changes length", 5)
		e.Changes = make(Changes, 0, n)
		for range n {
			c := Change{Column: d.string("change column")}
			c.OldValue = d.value("old value")
			c.NewValue = d.value("new value")
			if d.err != nil {
				break
			}
			e.Changes = append(e.Changes, c)
		}
	}
	if d.err != nil {
		return Event{}, d.err
	}
	if e.Type < Insert || e.Type > Truncate {
		return Event{}, fmt.Errorf("%w: unknown event type %d", ErrMalformed, e.Type)
	}
	if len(d.b) != 0 {
		return Event{}, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.b))
	}
	return e, nil
}
