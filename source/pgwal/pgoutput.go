package pgwal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/walflow/walflow/event"
)

// This file decodes pgoutput protocol version 1 messages. It keeps I/O out so it can be
// tested and fuzzed with bytes alone, and it checks every length before trusting it:
// a message that is short or inconsistent gives an error wrapping ErrProtocol, never a
// panic or a read past the buffer.

// ErrProtocol is wrapped by every error about a malformed replication message.
var ErrProtocol = errors.New("pgwal: malformed replication message")

// pgEpoch is PostgreSQL's timestamp origin.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func pgTime(micros int64) time.Time { return pgEpoch.Add(time.Duration(micros) * time.Microsecond) }

// msgType is a pgoutput message type byte.
type msgType byte

const (
	msgBegin    msgType = 'B'
	msgCommit   msgType = 'C'
	msgOrigin   msgType = 'O'
	msgRelation msgType = 'R'
	msgType_    msgType = 'Y'
	msgInsert   msgType = 'I'
	msgUpdate   msgType = 'U'
	msgDelete   msgType = 'D'
	msgTruncate msgType = 'T'
	msgMessage  msgType = 'M'
)

func (t msgType) String() string {
	switch t {
	case msgBegin:
		return "Begin"
	case msgCommit:
		return "Commit"
	case msgOrigin:
		return "Origin"
	case msgRelation:
		return "Relation"
	case msgType_:
		return "Type"
	case msgInsert:
		return "Insert"
	case msgUpdate:
		return "Update"
	case msgDelete:
		return "Delete"
	case msgTruncate:
		return "Truncate"
	case msgMessage:
		return "Message"
	}
	return fmt.Sprintf("unknown(%q)", byte(t))
}

// beginMsg starts a transaction.
type beginMsg struct {
	FinalLSN   event.LSN
	CommitTime time.Time
	XID        uint32
}

// commitMsg ends a transaction.
type commitMsg struct {
	CommitLSN  event.LSN
	EndLSN     event.LSN
	CommitTime time.Time
}

// relationColumn is one column of a Relation message.
type relationColumn struct {
	Key    bool
	Name   string
	OID    uint32
	TypMod int32
}

// relationMsg describes a table; it precedes the first change of that table on a
// connection and follows every schema change.
type relationMsg struct {
	ID              uint32
	Namespace       string
	Name            string
	ReplicaIdentity byte // d default, n nothing, f full, i index
	Columns         []relationColumn
}

// tupleCol is one column of a tuple: kind is 'n' (NULL), 'u' (unchanged TOAST), 't' (text)
// or 'b' (binary). Data aliases the message buffer.
type tupleCol struct {
	Kind byte
	Data []byte
}

// changeMsg is an Insert, Update or Delete.
type changeMsg struct {
	Type     msgType
	Relation uint32
	// OldKind is 'K' (key columns only), 'O' (whole old row) or 0 (none).
	OldKind byte
	Old     []tupleCol
	New     []tupleCol
}

// truncateMsg truncates one or more tables.
type truncateMsg struct {
	Options   byte
	Relations []uint32
}

type reader struct {
	b   []byte
	err error
	msg msgType
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s message: truncated or invalid %s", ErrProtocol, r.msg, what)
	}
}

func (r *reader) u8(what string) byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 1 {
		r.fail(what)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) u16(what string) uint16 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 2 {
		r.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *reader) u32(what string) uint32 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 4 {
		r.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) u64(what string) uint64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

// cstr reads a NUL-terminated string.
func (r *reader) cstr(what string) string {
	if r.err != nil {
		return ""
	}
	for i, c := range r.b {
		if c == 0 {
			s := string(r.b[:i])
			r.b = r.b[i+1:]
			return s
		}
	}
	r.fail(what + " (no terminating NUL)")
	return ""
}

func (r *reader) bytes(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.fail(what)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) done() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %s message: %d unexpected trailing bytes", ErrProtocol, r.msg, len(r.b))
	}
	return r.err
}

// tuple reads TupleData. Each column takes at least one byte, which bounds the count
// before anything is allocated.
func (r *reader) tuple() []tupleCol {
	n := int(r.u16("tuple column count"))
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.fail("tuple column count")
		return nil
	}
	cols := make([]tupleCol, n)
	for i := range cols {
		k := r.u8("tuple column kind")
		switch k {
		case 'n', 'u':
			cols[i].Kind = k
		case 't', 'b':
			l := r.u32("tuple value length")
			if l > uint32(len(r.b)) {
				r.fail("tuple value length")
				return nil
			}
			cols[i] = tupleCol{Kind: k, Data: r.bytes(int(l), "tuple value")}
		default:
			if r.err == nil {
				r.err = fmt.Errorf("%w: %s message: unknown tuple column kind %q", ErrProtocol, r.msg, k)
			}
		}
		if r.err != nil {
			return nil
		}
	}
	return cols
}

// parseMessage decodes one pgoutput message. The result may alias data.
func parseMessage(data []byte) (any, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty message", ErrProtocol)
	}
	r := &reader{b: data[1:], msg: msgType(data[0])}
	switch r.msg {
	case msgBegin:
		m := beginMsg{FinalLSN: event.LSN(r.u64("final LSN"))}
		m.CommitTime = pgTime(int64(r.u64("commit time")))
		m.XID = r.u32("xid")
		return m, r.done()
	case msgCommit:
		r.u8("flags")
		m := commitMsg{CommitLSN: event.LSN(r.u64("commit LSN")), EndLSN: event.LSN(r.u64("end LSN"))}
		m.CommitTime = pgTime(int64(r.u64("commit time")))
		return m, r.done()
	case msgOrigin:
		r.u64("origin LSN")
		r.cstr("origin name")
		return nil, r.done()
	case msgType_:
		r.u32("type OID")
		r.cstr("type namespace")
		r.cstr("type name")
		return nil, r.done()
	case msgMessage:
		r.u8("flags")
		r.u64("message LSN")
		r.cstr("message prefix")
		n := r.u32("message length")
		r.bytes(int(n), "message content")
		return nil, r.done()
	case msgRelation:
		m := relationMsg{ID: r.u32("relation id")}
		m.Namespace = r.cstr("namespace")
		m.Name = r.cstr("relation name")
		m.ReplicaIdentity = r.u8("replica identity")
		n := int(r.u16("column count"))
		if r.err == nil && n > len(r.b)/10 {
			// A column takes at least 10 bytes (flags, name NUL, OID, typmod).
			r.fail("column count")
		}
		if r.err != nil {
			return nil, r.err
		}
		m.Columns = make([]relationColumn, n)
		for i := range m.Columns {
			c := &m.Columns[i]
			c.Key = r.u8("column flags")&1 == 1
			c.Name = r.cstr("column name")
			c.OID = r.u32("column type OID")
			c.TypMod = int32(r.u32("column type modifier"))
		}
		return m, r.done()
	case msgInsert:
		m := changeMsg{Type: msgInsert, Relation: r.u32("relation id")}
		if k := r.u8("tuple marker"); r.err == nil && k != 'N' {
			return nil, fmt.Errorf("%w: Insert message: tuple marker %q, want 'N'", ErrProtocol, k)
		}
		m.New = r.tuple()
		return m, r.done()
	case msgUpdate:
		m := changeMsg{Type: msgUpdate, Relation: r.u32("relation id")}
		k := r.u8("tuple marker")
		if k == 'K' || k == 'O' {
			m.OldKind = k
			m.Old = r.tuple()
			k = r.u8("tuple marker")
		}
		if r.err == nil && k != 'N' {
			return nil, fmt.Errorf("%w: Update message: tuple marker %q, want 'N'", ErrProtocol, k)
		}
		m.New = r.tuple()
		return m, r.done()
	case msgDelete:
		m := changeMsg{Type: msgDelete, Relation: r.u32("relation id")}
		k := r.u8("tuple marker")
		if r.err == nil && k != 'K' && k != 'O' {
			return nil, fmt.Errorf("%w: Delete message: tuple marker %q, want 'K' or 'O'", ErrProtocol, k)
		}
		m.OldKind = k
		m.Old = r.tuple()
		return m, r.done()
	case msgTruncate:
		n := r.u32("relation count")
		m := truncateMsg{Options: r.u8("options")}
		if r.err == nil && uint64(n)*4 != uint64(len(r.b)) {
			return nil, fmt.Errorf("%w: Truncate message: %d relations need %d bytes, have %d", ErrProtocol, n, uint64(n)*4, len(r.b))
		}
		if r.err != nil {
			return nil, r.err
		}
		m.Relations = make([]uint32, n)
		for i := range m.Relations {
			m.Relations[i] = r.u32("relation id")
		}
		return m, r.done()
	}
	return nil, fmt.Errorf("%w: unknown message type %q", ErrProtocol, data[0])
}

// Replication stream framing (inside CopyData).

type xlogData struct {
	WALStart  event.LSN
	WALEnd    event.LSN
	Data      []byte
	Keepalive bool
	Reply     bool
}

// parseCopyData decodes an XLogData ('w') or primary keepalive ('k') message.
func parseCopyData(b []byte) (xlogData, error) {
	if len(b) == 0 {
		return xlogData{}, fmt.Errorf("%w: empty CopyData", ErrProtocol)
	}
	switch b[0] {
	case 'w':
		if len(b) < 25 {
			return xlogData{}, fmt.Errorf("%w: XLogData of %d bytes, want at least 25", ErrProtocol, len(b))
		}
		return xlogData{
			WALStart: event.LSN(binary.BigEndian.Uint64(b[1:])),
			WALEnd:   event.LSN(binary.BigEndian.Uint64(b[9:])),
			Data:     b[25:],
		}, nil
	case 'k':
		if len(b) != 18 {
			return xlogData{}, fmt.Errorf("%w: keepalive of %d bytes, want 18", ErrProtocol, len(b))
		}
		return xlogData{
			WALEnd:    event.LSN(binary.BigEndian.Uint64(b[1:])),
			Keepalive: true,
			Reply:     b[17] != 0,
		}, nil
	}
	return xlogData{}, fmt.Errorf("%w: unknown CopyData type %q", ErrProtocol, b[0])
}
