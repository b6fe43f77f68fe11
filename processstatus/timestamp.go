package processstatus

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/walflow/walflow/event"
)

// maxYear bounds the years ParseMicros accepts, so that microseconds since 1970 fit an int64
// (PostgreSQL itself stops at 294276 AD).
const maxYear = 290000

// ParseMicros parses the text form of a timestamp column into microseconds since the Unix
// epoch. It accepts what PostgreSQL sends for the three kinds of column process status
// supports:
//
//   - timestamp with time zone, in the ISO DateStyle: 2024-07-23 12:00:00.123456+00, with an
//     offset of ±hh, ±hh:mm or ±hh:mm:ss;
//   - timestamp without time zone (2024-07-23 12:00:00.5), taken as UTC;
//   - bigint holding microseconds since the epoch: a decimal integer such as 1721736000123456.
//
// The ISO 8601 spellings (a T between date and time, Z for UTC) are accepted too. Digits past
// the microsecond are truncated. infinity, -infinity, BC dates and anything else are errors.
func ParseMicros(s string) (int64, error) {
	if s == "" {
		return 0, errors.New("processstatus: empty timestamp")
	}
	if isInteger(s) {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("processstatus: timestamp %q is out of range for microseconds since 1970", s)
		}
		return v, nil
	}
	v, ok := parseISO(s)
	if !ok {
		return 0, fmt.Errorf("processstatus: malformed timestamp %q: want PostgreSQL's ISO form (2024-07-23 12:00:00.123456+00) or microseconds since 1970 (1721736000123456)", s)
	}
	return v, nil
}

// isInteger reports whether s is an optional minus sign followed by decimal digits.
func isInteger(s string) bool {
	if s[0] == '-' {
		s = s[1:]
	}
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isoParser reads an ISO timestamp left to right.
type isoParser struct {
	s string
	i int
}

// num reads between minDigits and maxDigits decimal digits.
func (p *isoParser) num(minDigits, maxDigits int) (int, bool) {
	v, n := 0, 0
	for p.i < len(p.s) && n < maxDigits && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		v = v*10 + int(p.s[p.i]-'0')
		p.i++
		n++
	}
	return v, n >= minDigits
}

// lit reads the byte c.
func (p *isoParser) lit(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// parseISO parses YYYY-MM-DD[ T]hh:mm:ss[.ffffff][Z|±hh[:mm[:ss]]] into microseconds since
// the Unix epoch.
func parseISO(s string) (int64, bool) {
	p := &isoParser{s: s}
	year, ok := p.num(4, 6)
	if !ok || year > maxYear || !p.lit('-') {
		return 0, false
	}
	month, ok := p.num(2, 2)
	if !ok || month < 1 || month > 12 || !p.lit('-') {
		return 0, false
	}
	day, ok := p.num(2, 2)
	if !ok || day < 1 || day > daysIn(time.Month(month), year) {
		return 0, false
	}
	if !p.lit(' ') && !p.lit('T') {
		return 0, false
	}
	hour, ok1 := p.num(2, 2)
	okc1 := p.lit(':')
	minute, ok2 := p.num(2, 2)
	okc2 := p.lit(':')
	sec, ok3 := p.num(2, 2)
	if !ok1 || !okc1 || !ok2 || !okc2 || !ok3 || hour > 23 || minute > 59 || sec > 59 {
		return 0, false
	}
	var frac int64
	if p.lit('.') {
		start := p.i
		for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
			if p.i-start < 6 {
				frac = frac*10 + int64(p.s[p.i]-'0')
			}
			p.i++
		}
		n := p.i - start
		if n == 0 {
			return 0, false
		}
		for ; n < 6; n++ {
			frac *= 10
		}
	}
	offset := 0 // seconds east of UTC
	switch {
	case p.i == len(p.s):
	case p.lit('Z'):
	case p.i < len(p.s) && (p.s[p.i] == '+' || p.s[p.i] == '-'):
		sign := 1
		if p.s[p.i] == '-' {
			sign = -1
		}
		p.i++
		oh, ok := p.num(2, 2)
		if !ok || oh > 15 {
			return 0, false
		}
		om, os := 0, 0
		if p.lit(':') {
			if om, ok = p.num(2, 2); !ok || om > 59 {
				return 0, false
			}
			if p.lit(':') {
				if os, ok = p.num(2, 2); !ok || os > 59 {
					return 0, false
				}
			}
		}
		offset = sign * (oh*3600 + om*60 + os)
	default:
		return 0, false
	}
	if p.i != len(p.s) {
		return 0, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, 0, time.UTC)
	return t.UnixMicro() + frac - int64(offset)*1_000_000, true
}

// daysIn returns the number of days of month in year.
func daysIn(m time.Month, year int) int {
	return time.Date(year, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// eventMicros returns the timestamp an event carries in column, if any: the column of the
// new record of an insert or update, parsed with [ParseMicros]. Deletes and truncates carry
// none. A NULL or missing column gives ok false and no error; a malformed one an error.
func eventMicros(e *event.Event, column string) (micros int64, ok bool, err error) {
	if column == "" || e.NewRecord == nil || (e.Type != event.Insert && e.Type != event.Update) {
		return 0, false, nil
	}
	v, found := e.NewRecord.Get(column)
	if !found {
		return 0, false, nil
	}
	text, isText := v.Text()
	if !isText {
		return 0, false, nil
	}
	micros, err = ParseMicros(text)
	if err != nil {
		return 0, false, err
	}
	return micros, true, nil
}
