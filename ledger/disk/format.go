package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/internal/varint"
)

// File names in a ledger directory.
const (
	metaName = "ledger.meta"
	lockName = "ledger.lock"
	segExt   = ".seg"
	idxExt   = ".idx"
	tmpExt   = ".tmp"
)

// Segment and record framing.
const (
	segMagic     = "WFLSEG01"
	segHeaderLen = 16 // segMagic + first position (8 bytes, big-endian)
	frameLen     = 8  // payload length (4 bytes, little-endian) + CRC32C of the payload (4)
	// maxRecord bounds a record's payload: a longer length is a damaged frame.
	maxRecord = 1 << 30

	recEvent  = 'E' // 'E' + event.AppendBinary
	recCommit = 'C' // 'C' + head (8) + commit LSN (8) + end LSN (8), big-endian
	commitLen = 25

	// sparseEvery is how many events apart the position → offset index records an offset.
	sparseEvery = 32
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// segName is the file name of the segment whose first position is first.
func segName(first event.Position) string { return fmt.Sprintf("%020d%s", uint64(first), segExt) }

func idxName(first event.Position) string { return fmt.Sprintf("%020d%s", uint64(first), idxExt) }

// parseSegName returns the first position a segment file name encodes.
func parseSegName(name string) (event.Position, bool) {
	s, ok := strings.CutSuffix(name, segExt)
	if !ok || len(s) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	return event.Position(n), true
}

func segHeader(first event.Position) []byte {
	b := append([]byte(nil), segMagic...)
	return binary.BigEndian.AppendUint64(b, uint64(first))
}

// appendFrame appends the frame header of payload p (which follows it) to b.
func frameHeader(b []byte, payload []byte) {
	binary.LittleEndian.PutUint32(b[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[4:8], crc(payload))
}

// commitRec is a transaction's commit record.
type commitRec struct {
	head      event.Position // the last position of the transaction (of the ledger after it)
	commitLSN event.LSN
	endLSN    event.LSN
}

func appendCommit(b []byte, c commitRec) []byte {
	b = append(b, recCommit)
	b = binary.BigEndian.AppendUint64(b, uint64(c.head))
	b = binary.BigEndian.AppendUint64(b, uint64(c.commitLSN))
	return binary.BigEndian.AppendUint64(b, uint64(c.endLSN))
}

func decodeCommit(p []byte) (commitRec, bool) {
	if len(p) != commitLen || p[0] != recCommit {
		return commitRec{}, false
	}
	return commitRec{
		head:      event.Position(binary.BigEndian.Uint64(p[1:])),
		commitLSN: event.LSN(binary.BigEndian.Uint64(p[9:])),
		endLSN:    event.LSN(binary.BigEndian.Uint64(p[17:])),
	}, true
}

// The meta file: metaMagic, a version byte, the state, then the CRC32C of what precedes.
const (
	metaMagic   = "WFLMETA"
	metaVersion = 1
)

func encodeMeta(st ledger.State) []byte {
	b := append([]byte(metaMagic), metaVersion)
	b = binary.AppendUvarint(b, uint64(st.Head))
	b = binary.AppendUvarint(b, uint64(st.Tail))
	b = binary.AppendUvarint(b, uint64(st.LastCommitLSN))
	b = binary.AppendUvarint(b, uint64(st.LastEndLSN))
	b = binary.AppendUvarint(b, uint64(st.AckedLSN))
	b = appendString(b, st.Origin.SystemID)
	b = binary.AppendVarint(b, int64(st.Origin.Timeline))
	b = appendString(b, st.Origin.Database)
	b = appendString(b, st.Origin.Slot)
	return binary.LittleEndian.AppendUint32(b, crc(b))
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func decodeMeta(b []byte) (ledger.State, error) {
	n := len(metaMagic) + 1
	if len(b) < n+4 || string(b[:len(metaMagic)]) != metaMagic {
		return ledger.State{}, errors.New("not a walflow ledger meta file")
	}
	if v := b[len(metaMagic)]; v != metaVersion {
		return ledger.State{}, fmt.Errorf("meta file version %d, but this walflow reads version %d; upgrade walflow", v, metaVersion)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc(body) != sum {
		return ledger.State{}, errors.New("meta file checksum mismatch")
	}
	d := varint.Decoder{B: body[n:]}
	var st ledger.State
	st.Head = event.Position(d.Uvarint())
	st.Tail = event.Position(d.Uvarint())
	st.LastCommitLSN = event.LSN(d.Uvarint())
	st.LastEndLSN = event.LSN(d.Uvarint())
	st.AckedLSN = event.LSN(d.Uvarint())
	st.Origin.SystemID = d.String()
	tl := d.Varint()
	st.Origin.Timeline = int32(tl)
	st.Origin.Database = d.String()
	st.Origin.Slot = d.String()
	if d.Bad || len(d.B) != 0 || int64(st.Origin.Timeline) != tl || st.Tail > st.Head {
		return ledger.State{}, errors.New("malformed meta file")
	}
	return st, nil
}

// writeFileAtomic writes data to dir/name through a temporary file, fsynced, renamed over
// name, then fsyncs dir, so that name holds either its old or its new content.
func writeFileAtomic(dir, name string, data []byte) error {
	path := filepath.Join(dir, name)
	tmp := path + tmpExt
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// The index file of a sealed segment: idxMagic, then blocks of entries sorted by key (each
// entry: key length, key, count, positions as deltas, all uvarints; a position's first
// delta is from the segment's first position minus one), then the footer, then the
// footer's offset (8 bytes) and its CRC32C (4 bytes), little-endian. The footer holds the
// key directory (the first key of each block, its offset, length and CRC32C), the
// position → offset index, and the segment's event count, data length and last commit.
const (
	idxMagic = "WFLIDX01"
	// idxBlockBytes is the size past which a block of index entries ends.
	idxBlockBytes = 4 << 10
)

// idxBlock is one entry of the key directory.
type idxBlock struct {
	first string // the first key of the block
	off   int64
	n     int
	sum   uint32
}

// segInfo is what an index file says of its segment.
type segInfo struct {
	count   int     // events in the segment
	size    int64   // bytes of the segment file
	offsets []int64 // offset of every sparseEvery-th event
	commit  commitRec
	commits bool // the segment holds a commit record; commit is the last
}

// encodeIndex returns the index file of a segment whose first position is first, and its
// key directory.
func encodeIndex(first event.Position, keys map[string][]uint32, info segInfo) ([]byte, []idxBlock) {
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	slices.Sort(names)
	b := []byte(idxMagic)
	var dir []idxBlock
	for _, k := range names {
		start := len(b)
		if len(dir) == 0 || start-int(dir[len(dir)-1].off) >= idxBlockBytes {
			dir = append(dir, idxBlock{first: k, off: int64(start)})
		}
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		ps := keys[k]
		b = binary.AppendUvarint(b, uint64(len(ps)))
		prev := uint32(0)
		for i, p := range ps {
			if i == 0 {
				b = binary.AppendUvarint(b, uint64(p))
			} else {
				b = binary.AppendUvarint(b, uint64(p-prev))
			}
			prev = p
		}
	}
	for i := range dir {
		end := len(b)
		if i+1 < len(dir) {
			end = int(dir[i+1].off)
		}
		dir[i].n = end - int(dir[i].off)
		dir[i].sum = crc(b[dir[i].off:end])
	}
	footer := len(b)
	b = binary.AppendUvarint(b, uint64(first))
	b = binary.AppendUvarint(b, uint64(len(dir)))
	for _, d := range dir {
		b = appendString(b, d.first)
		b = binary.AppendUvarint(b, uint64(d.off))
		b = binary.AppendUvarint(b, uint64(d.n))
		b = binary.LittleEndian.AppendUint32(b, d.sum)
	}
	b = binary.AppendUvarint(b, uint64(info.count))
	b = binary.AppendUvarint(b, uint64(info.size))
	b = binary.AppendUvarint(b, uint64(len(info.offsets)))
	prev := int64(0)
	for _, o := range info.offsets {
		b = binary.AppendUvarint(b, uint64(o-prev))
		prev = o
	}
	if info.commits {
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(info.commit.head))
		b = binary.AppendUvarint(b, uint64(info.commit.commitLSN))
		b = binary.AppendUvarint(b, uint64(info.commit.endLSN))
	} else {
		b = append(b, 0)
	}
	sum := crc(b[footer:])
	b = binary.LittleEndian.AppendUint64(b, uint64(footer))
	return binary.LittleEndian.AppendUint32(b, sum), dir
}

// decodeIndexFooter decodes the footer of an index file of size bytes, read with readAt.
func decodeIndexFooter(f *os.File, size int64, first event.Position) ([]idxBlock, segInfo, error) {
	if size < int64(len(idxMagic))+12 {
		return nil, segInfo{}, errors.New("index file too short")
	}
	tail := make([]byte, 12)
	if _, err := f.ReadAt(tail, size-12); err != nil {
		return nil, segInfo{}, err
	}
	off := int64(binary.LittleEndian.Uint64(tail))
	sum := binary.LittleEndian.Uint32(tail[8:])
	if off < int64(len(idxMagic)) || off > size-12 {
		return nil, segInfo{}, errors.New("index file footer offset out of range")
	}
	b := make([]byte, size-12-off)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, segInfo{}, err
	}
	if crc(b) != sum {
		return nil, segInfo{}, errors.New("index file footer checksum mismatch")
	}
	d := varint.Decoder{B: b}
	if event.Position(d.Uvarint()) != first {
		return nil, segInfo{}, errors.New("index file belongs to another segment")
	}
	nd := d.Uvarint()
	if nd > uint64(len(b)) {
		return nil, segInfo{}, errors.New("malformed index file footer")
	}
	dir := make([]idxBlock, 0, nd)
	for range nd {
		var blk idxBlock
		blk.first = d.String()
		blk.off = int64(d.Uvarint())
		blk.n = int(d.Uvarint())
		if len(d.B) < 4 {
			d.Bad = true
			break
		}
		blk.sum = binary.LittleEndian.Uint32(d.B)
		d.B = d.B[4:]
		if blk.off < 0 || blk.n < 0 || blk.off+int64(blk.n) > off {
			d.Bad = true
		}
		dir = append(dir, blk)
	}
	var info segInfo
	info.count = int(d.Uvarint())
	info.size = int64(d.Uvarint())
	no := d.Uvarint()
	if no > uint64(len(b)) {
		return nil, segInfo{}, errors.New("malformed index file footer")
	}
	info.offsets = make([]int64, 0, no)
	prev := int64(0)
	for range no {
		prev += int64(d.Uvarint())
		info.offsets = append(info.offsets, prev)
	}
	if len(d.B) < 1 {
		d.Bad = true
	} else {
		info.commits = d.B[0] == 1
		d.B = d.B[1:]
		if info.commits {
			info.commit.head = event.Position(d.Uvarint())
			info.commit.commitLSN = event.LSN(d.Uvarint())
			info.commit.endLSN = event.LSN(d.Uvarint())
		}
	}
	if d.Bad || len(d.B) != 0 || len(info.offsets) != (info.count+sparseEvery-1)/sparseEvery {
		return nil, segInfo{}, errors.New("malformed index file footer")
	}
	return dir, info, nil
}

// findInBlock returns the positions (relative to the segment's first position) of key in
// an index block, or nil.
func findInBlock(b []byte, key string) ([]uint32, error) {
	d := varint.Decoder{B: b}
	for len(d.B) > 0 {
		k := d.String()
		n := d.Uvarint()
		if d.Bad || n > uint64(len(d.B)) {
			return nil, errors.New("malformed index block")
		}
		if k > key {
			return nil, nil
		}
		if k != key {
			for range n {
				d.Uvarint()
			}
			continue
		}
		ps := make([]uint32, 0, n)
		var p uint32
		for i := range n {
			v := uint32(d.Uvarint())
			if i == 0 {
				p = v
			} else {
				p += v
			}
			ps = append(ps, p)
		}
		if d.Bad {
			return nil, errors.New("malformed index block")
		}
		return ps, nil
	}
	return nil, nil
}
