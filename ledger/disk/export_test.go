package disk

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/walflow/walflow/event"
)

// crash closes the ledger as a crash would leave it: the bytes gathered in memory are
// dropped unwritten, and what was written stays as it is.
func (l *Ledger) crash() {
	l.pub.Close()
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	for _, s := range l.segs {
		s.closeFiles()
	}
	if l.lock != nil {
		l.lock.Close()
	}
}

// raw is what a closed ledger's directory holds.
type raw struct {
	meta     []byte
	segments []string         // segment file names
	events   []event.Position // positions of the stored event records, in file order
	commits  []event.Position // heads of the stored commit records
}

// eventsPast returns how many stored events are past head.
func (r raw) eventsPast(head event.Position) int {
	n := 0
	for _, p := range r.events {
		if p > head {
			n++
		}
	}
	return n
}

// rawScan reads every record of the closed ledger in dir, failing on any damage.
func rawScan(t testing.TB, dir string) raw { return rawScanTolerant(t, dir, false) }

// rawScanTolerant is rawScan, but when tolerant, damage ends a segment's scan instead of
// failing: what a crash may leave.
func rawScanTolerant(t testing.TB, dir string, tolerant bool) raw {
	t.Helper()
	var r raw
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		first, ok := parseSegName(e.Name())
		if !ok {
			continue
		}
		r.segments = append(r.segments, e.Name())
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := readHeader(f, first); err != nil {
			if tolerant {
				f.Close()
				continue
			}
			t.Fatalf("%s: %v", e.Name(), err)
		}
		rr := newRecReader(f, segHeaderLen)
		for {
			p, err := rr.next()
			if err != nil {
				if err.Error() == "EOF" || tolerant {
					break
				}
				t.Fatalf("%s: %v", e.Name(), err)
			}
			if p[0] == recCommit {
				c, _ := decodeCommit(p)
				r.commits = append(r.commits, c.head)
				continue
			}
			ev, err := event.DecodeBinary(p[1:])
			if err != nil {
				t.Fatalf("%s: %v", e.Name(), err)
			}
			r.events = append(r.events, ev.Position)
		}
		f.Close()
	}
	slices.Sort(r.segments)
	r.meta, _ = os.ReadFile(filepath.Join(dir, metaName))
	return r
}
