package pgwal

import (
	"encoding/binary"
	"errors"
	"testing"
)

// msgBuilder writes pgoutput messages the way PostgreSQL does, for tests and fuzz seeds.
type msgBuilder []byte

func (b msgBuilder) u8(v byte) msgBuilder    { return append(b, v) }
func (b msgBuilder) u16(v uint16) msgBuilder { return binary.BigEndian.AppendUint16(b, v) }
func (b msgBuilder) u32(v uint32) msgBuilder { return binary.BigEndian.AppendUint32(b, v) }
func (b msgBuilder) u64(v uint64) msgBuilder { return binary.BigEndian.AppendUint64(b, v) }
func (b msgBuilder) str(s string) msgBuilder { return append(append(b, s...), 0) }
func (b msgBuilder) text(s string) msgBuilder {
	return append(b.u8('t').u32(uint32(len(s))), s...)
}

func seedMessages() [][]byte {
	rel := msgBuilder{'R'}.u32(16384).str("public").str("comments").u8('f').u16(3).
		u8(1).str("id").u32(23).u32(0xffffffff).
		u8(0).str("body").u32(25).u32(0xffffffff).
		u8(0).str("post_id").u32(23).u32(0xffffffff)
	return [][]byte{
		msgBuilder{'B'}.u64(0x16B374D848).u64(775_000_000_000).u32(777),
		msgBuilder{'C'}.u8(0).u64(0x16B374D848).u64(0x16B374D878).u64(775_000_000_000),
		rel,
		msgBuilder{'I'}.u32(16384).u8('N').u16(3).text("7").text("hello").text("42"),
		msgBuilder{'U'}.u32(16384).u8('O').u16(3).text("7").text("hello").text("42").u8('N').u16(3).text("7").u8('u').text("43"),
		msgBuilder{'U'}.u32(16384).u8('N').u16(3).text("7").u8('n').text("43"),
		msgBuilder{'D'}.u32(16384).u8('K').u16(3).text("7").u8('n').u8('n'),
		msgBuilder{'T'}.u32(2).u8(0).u32(16384).u32(16385),
		msgBuilder{'Y'}.u32(16400).str("public").str("mood"),
		msgBuilder{'O'}.u64(1).str("origin"),
		msgBuilder{'M'}.u8(1).u64(5).str("prefix").u32(3).u8('a').u8('b').u8('c'),
	}
}

func TestParseMessageSeeds(t *testing.T) {
	t.Parallel()
	for _, m := range seedMessages() {
		if _, err := parseMessage(m); err != nil {
			t.Errorf("%c: %v", m[0], err)
		}
		// Every strict prefix is malformed and must say so without panicking.
		for i := 0; i < len(m); i++ {
			if _, err := parseMessage(m[:i]); err == nil && i > 0 && m[0] != 'T' {
				t.Errorf("%c: prefix of %d bytes accepted", m[0], i)
			} else if err != nil && !errors.Is(err, ErrProtocol) {
				t.Errorf("%c: error does not wrap ErrProtocol: %v", m[0], err)
			}
		}
	}
}

func TestParseTupleLengthGuard(t *testing.T) {
	t.Parallel()
	// A value claiming 4 GiB in a short buffer must be rejected, not read.
	m := msgBuilder{'I'}.u32(1).u8('N').u16(1).u8('t').u32(0xffffffff).u8('x')
	if _, err := parseMessage(m); !errors.Is(err, ErrProtocol) {
		t.Fatalf("got %v", err)
	}
	m = msgBuilder{'I'}.u32(1).u8('N').u16(0xffff)
	if _, err := parseMessage(m); !errors.Is(err, ErrProtocol) {
		t.Fatalf("huge column count: got %v", err)
	}
	m = msgBuilder{'T'}.u32(0x40000000).u8(0)
	if _, err := parseMessage(m); !errors.Is(err, ErrProtocol) {
		t.Fatalf("huge truncate count: got %v", err)
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, m := range seedMessages() {
		f.Add(m)
	}
	f.Add([]byte{})
	f.Add([]byte{'I', 0, 0, 0, 1, 'N', 0xff, 0xff})
	f.Add([]byte{'R', 0, 0, 0, 1, 0, 0, 'd', 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseMessage(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error does not wrap ErrProtocol: %v", err)
			}
			return
		}
		// A relation accepted by the parser must build events without panicking, whatever
		// its tuples hold.
		if rm, ok := m.(relationMsg); ok {
			rel := &relation{msg: rm}
			for _, c := range rm.Columns {
				rel.columns = append(rel.columns, eventColumn(c))
			}
			_, _ = rel.record(make([]tupleCol, len(rm.Columns)), false, 0)
		}
	})
}

func FuzzParseCopyData(f *testing.F) {
	f.Add([]byte(append(msgBuilder{'w'}.u64(1).u64(2).u64(3), seedMessages()[0]...)))
	f.Add([]byte(msgBuilder{'k'}.u64(1).u64(2).u8(1)))
	f.Add([]byte{'w'})
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := parseCopyData(b)
		if err == nil && !x.Keepalive {
			_, _ = parseMessage(x.Data)
		}
	})
}
