package disk

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/notify"
)

// segment is one segment file: the events at positions first .. first+count-1, each
// followed at some point by the commit record of its transaction.
//
// The active (newest) segment's count, offsets and keys grow as the writer appends, under
// Ledger.mu; a sealed segment's fields do not change.
type segment struct {
	first event.Position
	path  string
	f     *os.File

	count   int
	offsets []int64 // offset of the events first, first+sparseEvery, ...

	// The channel index: keys (positions relative to first) while the segment is active or
	// when its index file could not be used; otherwise idx, read a block at a time.
	keys   map[string][]uint32
	idx    *os.File
	idxDir []idxBlock

	// The last commit record written to the segment (the writer's, for sealing).
	commit  commitRec
	commits bool
}

// closeFiles closes the segment's files.
func (s *segment) closeFiles() {
	if s.f != nil {
		s.f.Close()
	}
	if s.idx != nil {
		s.idx.Close()
	}
}

// trim drops every event at or after relative position n from the segment's in-memory
// index and offsets.
func (s *segment) trim(n int) {
	s.count = n
	s.offsets = s.offsets[:(n+sparseEvery-1)/sparseEvery]
	for k, ps := range s.keys {
		i := len(ps)
		for i > 0 && ps[i-1] >= uint32(n) {
			i--
		}
		if i == 0 {
			delete(s.keys, k)
		} else if i < len(ps) {
			s.keys[k] = ps[:i]
		}
	}
}

// damageError is a record that fails its checks.
type damageError struct {
	off    int64
	reason string
}

func (e *damageError) Error() string {
	return fmt.Sprintf("damaged record at offset %d: %s", e.off, e.reason)
}

// recReader reads a segment's records from an offset.
type recReader struct {
	size    int // read-ahead in bytes; 0 means 64 KiB
	r       *bufio.Reader
	off     int64 // offset of the next record
	hdr     [frameLen]byte
	payload []byte
}

func newRecReader(f *os.File, off int64) *recReader {
	rr := &recReader{}
	rr.reset(f, off)
	return rr
}

func (rr *recReader) reset(f *os.File, off int64) {
	sr := io.NewSectionReader(f, off, 1<<62)
	if rr.r == nil {
		rr.r = bufio.NewReaderSize(sr, cmp.Or(rr.size, 64<<10))
	} else {
		rr.r.Reset(sr)
	}
	rr.off = off
}

// next reads the next record's payload, checked against its length and checksum. It
// returns io.EOF at a clean end of the file, and a *damageError for a record cut short or
// failing its checksum. The payload is valid until the next call.
func (rr *recReader) next() ([]byte, error) {
	n, err := io.ReadFull(rr.r, rr.hdr[:])
	if err == io.EOF {
		return nil, io.EOF
	}
	if err == io.ErrUnexpectedEOF {
		return nil, &damageError{rr.off, fmt.Sprintf("frame header cut short after %d bytes", n)}
	}
	if err != nil {
		return nil, err
	}
	size := binary.LittleEndian.Uint32(rr.hdr[0:4])
	sum := binary.LittleEndian.Uint32(rr.hdr[4:8])
	if size == 0 || size > maxRecord {
		return nil, &damageError{rr.off, fmt.Sprintf("record length %d", size)}
	}
	if cap(rr.payload) < int(size) {
		rr.payload = make([]byte, size)
	}
	p := rr.payload[:size]
	if _, err := io.ReadFull(rr.r, p); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, &damageError{rr.off, fmt.Sprintf("record of %d bytes cut short", size)}
		}
		return nil, err
	}
	if crc(p) != sum {
		return nil, &damageError{rr.off, "checksum mismatch"}
	}
	if p[0] != recEvent && p[0] != recCommit {
		return nil, &damageError{rr.off, fmt.Sprintf("unknown record type %q", p[0])}
	}
	if p[0] == recCommit && len(p) != commitLen {
		return nil, &damageError{rr.off, "malformed commit record"}
	}
	rr.off += frameLen + int64(size)
	return p, nil
}

// scanned is what a scan of a segment found, up to its cut: the end of the last whole
// transaction (after the last commit record, before the events that follow it).
type scanned struct {
	count   int // events of the valid records, all indexed in offsets and keys
	keep    int // events before the cut
	offsets []int64
	keys    map[string][]uint32
	commit  commitRec
	commits bool
	cut     int64 // offset where the kept records end
	end     int64 // offset where the valid records end
	damage  error // the damaged record the scan stopped at; nil when it reached the end
}

// readHeader checks a segment file's header.
func readHeader(f *os.File, first event.Position) error {
	h := make([]byte, segHeaderLen)
	if _, err := f.ReadAt(h, 0); err != nil {
		if errors.Is(err, io.EOF) {
			return &damageError{0, "segment header cut short"}
		}
		return err
	}
	if string(h[:len(segMagic)]) != segMagic {
		return &damageError{0, "not a walflow segment header"}
	}
	if got := event.Position(binary.BigEndian.Uint64(h[len(segMagic):])); got != first {
		return &damageError{0, fmt.Sprintf("the header says first position %d, the name %d", got, first)}
	}
	return nil
}

// scanSegment reads every record of the segment in f whose first position is first,
// checking each, and indexes its events with indexer. A damaged record ends the scan:
// with an error when strict, recorded in the result otherwise.
func scanSegment(f *os.File, first event.Position, indexer ledger.Indexer, strict bool) (*scanned, error) {
	s := &scanned{keys: map[string][]uint32{}, cut: segHeaderLen, end: segHeaderLen}
	if err := readHeader(f, first); err != nil {
		var de *damageError
		if !strict && errors.As(err, &de) {
			s.damage = err
			s.cut, s.end = 0, 0
			return s, nil
		}
		return nil, err
	}
	rr := newRecReader(f, segHeaderLen)
	count := 0
	var offsets []int64
	var keys []string
	afterCommit := int64(-1) // offset of the first event after the last commit record
	for {
		off := rr.off
		p, err := rr.next()
		if err == io.EOF {
			break
		}
		if err == nil && p[0] == recEvent {
			var e event.Event
			e, err = event.DecodeBinary(p[1:])
			if err == nil && e.Position != first+event.Position(count) {
				err = fmt.Errorf("event at position %d where position %d belongs", e.Position, first+event.Position(count))
			}
			if err != nil {
				err = &damageError{off, err.Error()}
			} else {
				if afterCommit < 0 {
					afterCommit = off
				}
				if count%sparseEvery == 0 {
					offsets = append(offsets, off)
				}
				if indexer != nil {
					keys = indexer(&e, keys[:0])
					for _, k := range keys {
						if notify.ValidKey(k) {
							s.keys[k] = append(s.keys[k], uint32(count))
						}
					}
				}
				count++
			}
		} else if err == nil {
			c, _ := decodeCommit(p)
			if c.head != first+event.Position(count)-1 {
				err = &damageError{off, fmt.Sprintf("commit record of head %d after the event at position %d", c.head, first+event.Position(count)-1)}
			} else {
				s.commit, s.commits = c, true
				s.keep = count
				afterCommit = -1
			}
		}
		if err != nil {
			var de *damageError
			if !errors.As(err, &de) || strict {
				return nil, err
			}
			s.damage = err
			break
		}
		s.end = rr.off
	}
	s.count, s.offsets = count, offsets
	if afterCommit >= 0 {
		s.cut = afterCommit
	} else {
		s.cut = s.end
		s.keep = count
	}
	return s, nil
}
