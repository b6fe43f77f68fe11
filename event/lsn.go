package event

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL write-ahead log position. It prints as PostgreSQL does: 16/B374D848.
type LSN uint64

// String formats the LSN as PostgreSQL does, two hexadecimal halves separated by a slash.
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// ParseLSN parses the PostgreSQL text form of an LSN, such as 16/B374D848.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("event: malformed LSN %q: want two hexadecimal numbers separated by a slash, like 16/B374D848", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("event: malformed LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("event: malformed LSN %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

// MarshalText writes the LSN in PostgreSQL's form; JSON therefore shows "16/B374D848".
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses PostgreSQL's form of an LSN.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// Position is an event's place in the ledger. Positions start at 1, have no gaps and follow
// commit order. The zero Position means "before the first event".
type Position uint64

// String formats the position in decimal.
func (p Position) String() string { return strconv.FormatUint(uint64(p), 10) }

// ParsePosition parses a decimal ledger position.
func ParsePosition(s string) (Position, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("event: malformed ledger position %q: want a decimal number such as 1042", s)
	}
	return Position(v), nil
}
