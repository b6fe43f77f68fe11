package event

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgtype"
)

// Kind says what a [Value] holds.
type Kind uint8

const (
	// KindNull is SQL NULL.
	KindNull Kind = iota
	// KindText is a value in PostgreSQL's text form.
	KindText
	// KindUnchanged marks an unchanged TOASTed column whose value PostgreSQL did not send and
	// walflow could not fill from the old row. It is not NULL.
	KindUnchanged
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case KindNull:
		return "null"
	case KindText:
		return "text"
	case KindUnchanged:
		return "unchanged_toast"
	default:
		return "kind(" + strconv.Itoa(int(k)) + ")"
	}
}

// Value is one column's value exactly as PostgreSQL sent it, with the OID of the type to
// decode it as (for a domain, its base type; for an enum or a type pgx does not know, text).
// An array value also knows the delimiter between its elements (see [Value.Delim]).
// The zero Value is a NULL of unknown type.
type Value struct {
	text  string
	oid   uint32
	kind  Kind
	delim byte // array element delimiter when it differs from the OID's; 0 otherwise
}

// Null returns a NULL value of the given type.
func Null(oid uint32) Value { return Value{oid: oid, kind: KindNull} }

// Text returns a value from its PostgreSQL text form.
func Text(oid uint32, text string) Value { return Value{text: text, oid: oid, kind: KindText} }

// ArrayText returns an array value from its text form, whose elements are separated by
// delim: the element type's pg_type.typdelim. Use it when the decode OID's own delimiter
// ([ArrayDelim]) may differ from the real element type's, as for an array of a user-defined
// type decoded as text[]. A delim of 0 or equal to the OID's own is not stored, so the value
// is the one [Text] gives.
func ArrayText(oid uint32, delim byte, text string) Value {
	v := Value{text: text, oid: oid, kind: KindText}
	if delim != 0 && delim != ArrayDelim(oid) {
		v.delim = delim
	}
	return v
}

// Unchanged returns the marker for an unchanged TOASTed column.
func Unchanged(oid uint32) Value { return Value{oid: oid, kind: KindUnchanged} }

// Kind reports whether the value is NULL, text or an unchanged TOAST marker.
func (v Value) Kind() Kind { return v.kind }

// IsNull reports whether the value is SQL NULL.
func (v Value) IsNull() bool { return v.kind == KindNull }

// IsUnchanged reports whether the value is an unchanged TOASTed column that was not sent.
func (v Value) IsUnchanged() bool { return v.kind == KindUnchanged }

// OID is the PostgreSQL type the value decodes as.
func (v Value) OID() uint32 { return v.oid }

// Delim is the delimiter between the elements of the value's text form when it is an array:
// the one given to [ArrayText], or else [ArrayDelim] of its OID.
func (v Value) Delim() byte {
	if v.delim != 0 {
		return v.delim
	}
	return ArrayDelim(v.oid)
}

// Text returns PostgreSQL's text form; ok is false for NULL and unchanged values.
func (v Value) Text() (text string, ok bool) { return v.text, v.kind == KindText }

// String returns the text form, "NULL" or "<unchanged toast>", for logs and display.
func (v Value) String() string {
	switch v.kind {
	case KindText:
		return v.text
	case KindNull:
		return "NULL"
	default:
		return "<unchanged toast>"
	}
}

// Equal reports whether two values are the same kind with the same text. Type OIDs are not
// compared, so a value equals itself across a column type change that kept its text.
func (v Value) Equal(w Value) bool { return v.kind == w.kind && v.text == w.text }

// typeMaps pools pgx type maps: a Map caches scan plans and is not safe for concurrent use.
var typeMaps = sync.Pool{New: func() any { return pgtype.NewMap() }}

// Any decodes the value into a Go value with pgx's default type map: int16/int32/int64,
// float32/float64, pgtype.Numeric (exact), string, bool, []byte, [16]byte for uuid,
// time.Time or pgtype.Timestamptz/Timestamp/Date for ±infinity, pgtype.Interval, the decoded
// JSON for json/jsonb, []any for arrays. NULL gives nil. An unchanged TOAST value gives
// [ErrUnchanged]. Types pgx does not know give their text form.
func (v Value) Any() (any, error) {
	switch v.kind {
	case KindNull:
		return nil, nil
	case KindUnchanged:
		return nil, ErrUnchanged
	}
	if elem, ok := arrayElems[v.oid]; ok && v.delim != 0 {
		return v.anyArray(elem)
	}
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	t, ok := m.TypeForOID(v.oid)
	if !ok {
		return v.text, nil
	}
	out, err := t.Codec.DecodeValue(m, v.oid, pgtype.TextFormatCode, []byte(v.text))
	if err != nil {
		return nil, fmt.Errorf("event: decode %q as %s: %w", v.text, t.Name, err)
	}
	return out, nil
}

// anyArray decodes an array whose delimiter pgx's codec for its OID does not use (an array
// of a user-defined type) into pgx's shape for arrays: the elements flattened in row-major
// order, each decoded as the element type, NULL as nil.
func (v Value) anyArray(elem uint32) (any, error) {
	a, err := ParseArray(v.text, v.delim)
	if err != nil {
		return nil, err
	}
	out := []any{}
	var walk func(a Array) error
	walk = func(a Array) error {
		for _, s := range a.Subs {
			if err := walk(s); err != nil {
				return err
			}
		}
		for _, e := range a.Elems {
			if e.Null {
				out = append(out, nil)
				continue
			}
			x, err := Text(elem, e.Text).Any()
			if err != nil {
				return err
			}
			out = append(out, x)
		}
		return nil
	}
	if err := walk(a); err != nil {
		return nil, err
	}
	return out, nil
}

// ErrUnchanged is returned by [Value.Any] for an unchanged TOASTed column.
var ErrUnchanged = fmt.Errorf("event: unchanged TOAST value was not sent by PostgreSQL; set REPLICA IDENTITY FULL on the table to receive it")

// jsonForm is how a type's text form becomes JSON.
type jsonForm uint8

const (
	formString jsonForm = iota // JSON string of the text form
	formNumber                 // integers: the text is a JSON number
	formFloat                  // JSON number, or a string for NaN and ±Infinity
	formBool                   // t/f
	formRaw                    // json, jsonb: the text is JSON
	formTime                   // timestamp(tz): ISO 8601 with a T (and Z in UTC)
	formArray                  // PostgreSQL array literal → JSON array
)

var scalarForms = map[uint32]jsonForm{
	pgtype.Int2OID: formNumber, pgtype.Int4OID: formNumber, pgtype.Int8OID: formNumber,
	pgtype.OIDOID: formNumber, pgtype.XIDOID: formNumber, pgtype.CIDOID: formNumber,
	pgtype.Float4OID: formFloat, pgtype.Float8OID: formFloat, pgtype.NumericOID: formFloat,
	pgtype.BoolOID: formBool, pgtype.JSONOID: formRaw, pgtype.JSONBOID: formRaw,
	pgtype.TimestampOID: formTime, pgtype.TimestamptzOID: formTime,
}

// arrayElems maps an array type's OID to its element type's OID, for the arrays pgx knows.
var arrayElems = func() map[uint32]uint32 {
	m := pgtype.NewMap()
	out := map[uint32]uint32{}
	for oid := uint32(1); oid < 10000; oid++ {
		t, ok := m.TypeForOID(oid)
		if !ok {
			continue
		}
		if ac, ok := t.Codec.(*pgtype.ArrayCodec); ok && ac.ElementType != nil {
			out[oid] = ac.ElementType.OID
		}
	}
	return out
}()

// arrayDelims maps each array type pgx knows whose elements are not separated by ',' to its
// delimiter (pgx's codec carries PostgreSQL's pg_type.typdelim: ';' for box[]).
var arrayDelims = func() map[uint32]byte {
	m := pgtype.NewMap()
	out := map[uint32]byte{}
	for oid := range arrayElems {
		t, _ := m.TypeForOID(oid)
		if ac, ok := t.Codec.(*pgtype.ArrayCodec); ok && ac.Delimiter != 0 && ac.Delimiter != ',' {
			out[oid] = ac.Delimiter
		}
	}
	return out
}()

// ArrayDelim returns the delimiter between the elements of a built-in array type's text form
// (pg_type.typdelim of its element type): ';' for box[], ',' for every other type. For an
// array of a user-defined type, ask PostgreSQL and use [ArrayText].
func ArrayDelim(array uint32) byte {
	if d, ok := arrayDelims[array]; ok {
		return d
	}
	return ','
}

// arrayOf maps an element type's OID to its array type's OID (the inverse of arrayElems).
var arrayOf = func() map[uint32]uint32 {
	out := make(map[uint32]uint32, len(arrayElems))
	for arr, elem := range arrayElems {
		out[elem] = arr
	}
	return out
}()

// ArrayOID returns the array type whose elements are of type elem, for the types pgx knows.
func ArrayOID(elem uint32) (array uint32, ok bool) {
	a, ok := arrayOf[elem]
	return a, ok
}

// ArrayElemOID returns the element type of a known array type.
func ArrayElemOID(oid uint32) (elem uint32, ok bool) {
	e, ok := arrayElems[oid]
	return e, ok
}

func formOf(oid uint32) jsonForm {
	if f, ok := scalarForms[oid]; ok {
		return f
	}
	if _, ok := arrayElems[oid]; ok {
		return formArray
	}
	return formString
}

// MarshalJSON writes the value's natural JSON form (see the package doc).
func (v Value) MarshalJSON() ([]byte, error) {
	return v.AppendJSON(nil), nil
}

// AppendJSON appends the value's JSON form to b.
func (v Value) AppendJSON(b []byte) []byte {
	switch v.kind {
	case KindNull:
		return append(b, "null"...)
	case KindUnchanged:
		return append(b, `{"unchanged_toast":true}`...)
	}
	return appendTextJSON(b, v.oid, v.Delim(), v.text)
}

// appendTextJSON appends the JSON form of the text s of type oid; delim separates the
// elements when oid is an array type.
func appendTextJSON(b []byte, oid uint32, delim byte, s string) []byte {
	switch formOf(oid) {
	case formNumber:
		if isJSONNumber(s) {
			return append(b, s...)
		}
	case formFloat:
		if isJSONNumber(s) {
			return append(b, s...)
		}
	case formBool:
		switch s {
		case "t", "true":
			return append(b, "true"...)
		case "f", "false":
			return append(b, "false"...)
		}
	case formRaw:
		if json.Valid([]byte(s)) {
			return append(b, s...)
		}
	case formTime:
		return appendJSONString(b, isoTime(s))
	case formArray:
		if out, ok := appendArrayJSON(b, arrayElems[oid], delim, s); ok {
			return out
		}
	}
	return appendJSONString(b, s)
}

// isoTime turns PostgreSQL's ISO DateStyle output (2024-07-23 12:00:00.5+00) into
// ISO 8601 (2024-07-23T12:00:00.5Z). Infinity and BC dates are left as PostgreSQL wrote them.
func isoTime(s string) string {
	if len(s) < 11 || strings.HasSuffix(s, " BC") {
		return s
	}
	i := strings.IndexByte(s, ' ')
	if i < 0 {
		return s
	}
	t := s[:i] + "T" + s[i+1:]
	if strings.HasSuffix(t, "+00") {
		t = t[:len(t)-3] + "Z"
	}
	return t
}

// isJSONNumber reports whether s is a valid JSON number (PostgreSQL writes "NaN",
// "Infinity" and forms like "1e+20"; only the first two are not JSON).
func isJSONNumber(s string) bool {
	if s == "" {
		return false
	}
	i := 0
	if s[i] == '-' {
		i++
	}
	if i >= len(s) {
		return false
	}
	if s[i] == '0' {
		i++
	} else if s[i] >= '1' && s[i] <= '9' {
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	} else {
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == j {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == j {
			return false
		}
	}
	return i == len(s)
}

const hexDigits = "0123456789abcdef"

func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendArrayJSON renders a PostgreSQL array literal as nested JSON arrays, each element in
// its element type's JSON form. ok is false when the literal cannot be parsed.
func appendArrayJSON(b []byte, elem uint32, delim byte, s string) ([]byte, bool) {
	a, err := ParseArray(s, delim)
	if err != nil {
		return b, false
	}
	return a.appendJSON(b, elem), true
}

// Array is a parsed PostgreSQL array literal: either a list of sub-arrays (a dimension) or
// a list of elements, each NULL or text.
type Array struct {
	// Elems are the elements when this is the innermost dimension.
	Elems []ArrayElem
	// Subs are the sub-arrays of an outer dimension.
	Subs []Array
}

// ArrayElem is one element of an [Array].
type ArrayElem struct {
	Text string
	Null bool
}

func (a Array) appendJSON(b []byte, elem uint32) []byte {
	b = append(b, '[')
	if a.Subs != nil {
		for i, s := range a.Subs {
			if i > 0 {
				b = append(b, ',')
			}
			b = s.appendJSON(b, elem)
		}
	} else {
		for i, e := range a.Elems {
			if i > 0 {
				b = append(b, ',')
			}
			if e.Null {
				b = append(b, "null"...)
			} else {
				b = appendTextJSON(b, elem, ArrayDelim(elem), e.Text)
			}
		}
	}
	return append(b, ']')
}

// ParseArray parses PostgreSQL's text form of an array, such as {{1,2},{NULL,4}} or
// [0:1]={a,"b c"}, whose elements are separated by delim: the element type's
// pg_type.typdelim, which is [ArrayDelim] of a built-in array type (',' except ';' for
// box[]) and [Value.Delim] of a value. Any other character, ',' and ';' included, belongs to
// the element it is in. Explicit bounds are accepted and dropped. It never panics; malformed
// input or a delimiter PostgreSQL's array syntax reserves ({ } " \ or white space) gives an
// error.
func ParseArray(s string, delim byte) (Array, error) {
	if delim == 0 || strings.IndexByte("{}\"\\ \t\n\r\v\f", delim) >= 0 {
		return Array{}, fmt.Errorf("event: array delimiter %q is reserved by the array syntax; pass the element type's pg_type.typdelim", delim)
	}
	p := arrayParser{s: s, delim: delim}
	if strings.HasPrefix(s, "[") {
		// Explicit bounds: the JSON form drops them, the elements are what matter.
		i := strings.Index(s, "=")
		if i < 0 {
			return Array{}, fmt.Errorf("event: malformed array %q: bounds without '='", s)
		}
		p.i = i + 1
	}
	a, err := p.parse(0)
	if err != nil {
		return Array{}, err
	}
	if p.i != len(s) {
		return Array{}, fmt.Errorf("event: malformed array %q: trailing text at byte %d", s, p.i)
	}
	return a, nil
}

type arrayParser struct {
	s     string
	i     int
	delim byte
}

func (p *arrayParser) errf(msg string) error {
	return fmt.Errorf("event: malformed array %q at byte %d: %s", p.s, p.i, msg)
}

func (p *arrayParser) parse(depth int) (Array, error) {
	if depth > 6 {
		return Array{}, p.errf("more than 6 dimensions")
	}
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return Array{}, p.errf("want '{'")
	}
	p.i++
	var a Array
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		a.Elems = []ArrayElem{}
		return a, nil
	}
	for {
		if p.i >= len(p.s) {
			return Array{}, p.errf("unterminated array")
		}
		if p.s[p.i] == '{' {
			if a.Elems != nil {
				return Array{}, p.errf("mixed sub-arrays and elements")
			}
			sub, err := p.parse(depth + 1)
			if err != nil {
				return Array{}, err
			}
			a.Subs = append(a.Subs, sub)
		} else {
			if a.Subs != nil {
				return Array{}, p.errf("mixed sub-arrays and elements")
			}
			e, err := p.elem()
			if err != nil {
				return Array{}, err
			}
			a.Elems = append(a.Elems, e)
		}
		if p.i >= len(p.s) {
			return Array{}, p.errf("unterminated array")
		}
		switch p.s[p.i] {
		case p.delim:
			p.i++
		case '}':
			p.i++
			return a, nil
		default:
			return Array{}, p.errf(fmt.Sprintf("want %q or '}'", p.delim))
		}
	}
}

func (p *arrayParser) elem() (ArrayElem, error) {
	if p.s[p.i] == '"' {
		p.i++
		var sb strings.Builder
		for {
			if p.i >= len(p.s) {
				return ArrayElem{}, p.errf("unterminated quoted element")
			}
			c := p.s[p.i]
			switch c {
			case '\\':
				if p.i+1 >= len(p.s) {
					return ArrayElem{}, p.errf("dangling backslash")
				}
				sb.WriteByte(p.s[p.i+1])
				p.i += 2
			case '"':
				p.i++
				return ArrayElem{Text: sb.String()}, nil
			default:
				sb.WriteByte(c)
				p.i++
			}
		}
	}
	start := p.i
	for p.i < len(p.s) && p.s[p.i] != p.delim && p.s[p.i] != '}' {
		if c := p.s[p.i]; c == '{' || c == '"' || c == '\\' {
			// PostgreSQL quotes every element holding one of these.
			return ArrayElem{}, p.errf("unexpected character in unquoted element")
		}
		p.i++
	}
	t := strings.TrimSpace(p.s[start:p.i])
	if t == "" {
		return ArrayElem{}, p.errf("empty element")
	}
	if strings.EqualFold(t, "NULL") {
		return ArrayElem{Null: true}, nil
	}
	return ArrayElem{Text: t}, nil
}
