package snapshot

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/walflow/walflow/event"
)

// tokenVersion prefixes every token, so that a later format can be told apart.
const tokenVersion = "s1"

// maxTokenXip bounds the in-flight transactions a parsed token may list (PostgreSQL lists at
// most max_connections of them, plus prepared transactions), so a forged token cannot make
// the gateway allocate without bound.
const maxTokenXip = 1 << 16

// Token is where a subscription resumes from to receive, exactly once, every change a
// [Page] does not contain. It is a ledger position plus the visibility of the PostgreSQL
// snapshot the rows were read in; see the package documentation for why both are needed
// and [Token.Deliver] for the rule. Its text form (String, MarshalText) is URL-safe.
type Token struct {
	// After is the ledger position to read from (exclusive). It is at or before every
	// event of a transaction the snapshot does not see.
	After event.Position
	// LSN is the WAL insert position read inside the snapshot: every transaction the
	// snapshot sees committed before it, so every event with a commit LSN at or after it is
	// delivered without looking at its transaction.
	LSN event.LSN
	// Xmin, Xmax and Xip are the snapshot's visibility (pg_current_snapshot()), as 64-bit
	// transaction ids (epoch << 32 | xid): a transaction is visible when its id is below
	// Xmin, or below Xmax and not in Xip. Xip is sorted.
	Xmin, Xmax uint64
	Xip        []uint64
}

// Deliver reports whether a subscriber from the token must deliver e: e is after After and
// its transaction is not visible in the snapshot (its changes are not in the rows). An
// event with a commit LSN at or after LSN is always delivered: no transaction the snapshot
// sees committed there.
func (t *Token) Deliver(e *event.Event) bool {
	if e.Position <= t.After {
		return false
	}
	if e.LSN >= t.LSN {
		return true
	}
	return !t.Visible(FullXID(t.Xmax, e.XID))
}

// Visible reports whether the transaction with 64-bit id xid is visible in the snapshot.
func (t *Token) Visible(xid uint64) bool {
	if xid < t.Xmin {
		return true
	}
	if xid >= t.Xmax {
		return false
	}
	_, inFlight := slices.BinarySearch(t.Xip, xid)
	return !inFlight
}

// FullXID widens a 32-bit transaction id (as events carry it) to the 64-bit id nearest to
// ref, a 64-bit id of the same era (the snapshot's xmax): PostgreSQL keeps every id it still
// has to compare within 2^31 of the next one, so the nearest widening is the right one. An
// id that would fall below 0 stays in epoch 0.
func FullXID(ref uint64, xid uint32) uint64 {
	d := int64(int32(xid - uint32(ref))) // xid - ref, wrapped into [-2^31, 2^31)
	if d < 0 && uint64(-d) > ref {
		return uint64(xid)
	}
	return uint64(int64(ref) + d)
}

// String returns the token's text form: s1.after.lsn.xmin.xmax[.xip...], all decimal.
func (t Token) String() string {
	var b strings.Builder
	b.WriteString(tokenVersion)
	for _, n := range []uint64{uint64(t.After), uint64(t.LSN), t.Xmin, t.Xmax} {
		b.WriteByte('.')
		b.WriteString(strconv.FormatUint(n, 10))
	}
	for _, x := range t.Xip {
		b.WriteByte('.')
		b.WriteString(strconv.FormatUint(x, 10))
	}
	return b.String()
}

// ErrBadToken is matched (with errors.Is) by the errors of [ParseToken].
var ErrBadToken = errors.New("snapshot: invalid token")

// ParseToken parses the text form of a token.
func ParseToken(s string) (Token, error) {
	bad := func(why string) (Token, error) {
		return Token{}, fmt.Errorf("%w %q: %s; pass the token of a snapshot response unchanged", ErrBadToken, truncate(s), why)
	}
	parts := strings.Split(s, ".")
	if parts[0] != tokenVersion {
		return bad("it does not start with " + tokenVersion + ".")
	}
	if len(parts) < 5 {
		return bad("it has too few fields")
	}
	if len(parts)-5 > maxTokenXip {
		return bad("it lists too many transactions")
	}
	nums := make([]uint64, len(parts)-1)
	for i, p := range parts[1:] {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return bad(fmt.Sprintf("field %d is not a number", i+2))
		}
		nums[i] = n
	}
	t := Token{After: event.Position(nums[0]), LSN: event.LSN(nums[1]), Xmin: nums[2], Xmax: nums[3]}
	if t.Xmin > t.Xmax {
		return bad("its xmin is after its xmax")
	}
	if len(nums) > 4 {
		t.Xip = nums[4:]
	}
	for i, x := range t.Xip {
		if x < t.Xmin || x >= t.Xmax || (i > 0 && x <= t.Xip[i-1]) {
			return bad("its in-flight transactions are not sorted within xmin and xmax")
		}
	}
	return t, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// MarshalText writes the text form.
func (t Token) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText parses the text form.
func (t *Token) UnmarshalText(b []byte) error {
	v, err := ParseToken(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// parseSnapshot parses pg_snapshot's text form, xmin:xmax:xip,xip.
func parseSnapshot(s string) (xmin, xmax uint64, xip []uint64, err error) {
	f := strings.Split(s, ":")
	if len(f) != 3 {
		return 0, 0, nil, fmt.Errorf("snapshot: PostgreSQL returned the snapshot %q, not xmin:xmax:xip", s)
	}
	if xmin, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return 0, 0, nil, fmt.Errorf("snapshot: xmin of %q: %w", s, err)
	}
	if xmax, err = strconv.ParseUint(f[1], 10, 64); err != nil {
		return 0, 0, nil, fmt.Errorf("snapshot: xmax of %q: %w", s, err)
	}
	if f[2] != "" {
		for _, p := range strings.Split(f[2], ",") {
			x, err := strconv.ParseUint(p, 10, 64)
			if err != nil {
				return 0, 0, nil, fmt.Errorf("snapshot: in-flight transaction of %q: %w", s, err)
			}
			xip = append(xip, x)
		}
	}
	slices.Sort(xip)
	return xmin, xmax, slices.Compact(xip), nil
}
