package disk

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// tornOpts makes segments of a few transactions, some of which span two segments.
var tornOpts = &Options{Indexer: ledgertest.Indexer, SegmentBytes: 8 << 10, ChunkBytes: 1 << 10}

// commitAt is a commit record on disk.
type commitAt struct {
	seg  int   // index of its segment
	end  int64 // offset where the record ends
	head event.Position
	lsn  event.LSN
}

// writeTornLedger writes transactions of 1 to 5 events, each synced, and closes the
// ledger. It returns the events and the commit records on disk.
func writeTornLedger(t *testing.T, dir string, rng *rand.Rand, txs int) ([]event.Event, []commitAt) {
	t.Helper()
	ctx := context.Background()
	l := mustOpen(t, dir, tornOpts)
	for i := range txs {
		lsn := event.LSN(10 + 2*i)
		var es []*event.Event
		for j := range 1 + rng.IntN(5) {
			es = append(es, ledgertest.Event(lsn, uint32(j), []string{"a", "b", "c"}[rng.IntN(3)], rng.IntN(6)))
		}
		ledgertest.WriteTx(t, l, lsn, es...)
		if err := l.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	all := ledgertest.ReadAll(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var commits []commitAt
	for i, name := range rawScan(t, dir).segments {
		first, _ := parseSegName(name)
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		rr := newRecReader(f, segHeaderLen)
		for {
			p, err := rr.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if c, ok := decodeCommit(p); ok {
				commits = append(commits, commitAt{seg: i, end: rr.off, head: c.head, lsn: c.commitLSN})
			}
		}
		f.Close()
		_ = first
	}
	return all, commits
}

// copyDir copies the files of dir into a new directory.
func copyDir(t *testing.T, dir string) string {
	t.Helper()
	to := t.TempDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// TestTornWrite damages the newest segment at 50 random points (cut there, one byte
// flipped there, or zeros from there on), as a crash in the middle of a write may leave it,
// and checks that Open recovers to the last whole transaction before the damage, with an
// index that agrees, and that the ledger goes on from there.
func TestTornWrite(t *testing.T) {
	ctx := context.Background()
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	orig := t.TempDir()
	all, commits := writeTornLedger(t, orig, rng, 70)
	segs := rawScan(t, orig).segments
	if len(segs) < 4 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	newest := len(segs) - 1
	b, err := os.ReadFile(filepath.Join(orig, segs[newest]))
	if err != nil {
		t.Fatal(err)
	}
	kinds := []string{"cut", "flip", "zeros"}
	for i := range 50 {
		kind := kinds[i%len(kinds)]
		at := rng.Int64N(int64(len(b)))
		if i < 3 {
			at = int64(i * 7) // in the header
		}
		var damaged []byte
		switch kind {
		case "cut":
			damaged = slices.Clone(b[:at])
		case "flip":
			damaged = slices.Clone(b)
			damaged[at] ^= byte(1 << rng.IntN(8))
		case "zeros":
			damaged = append(slices.Clone(b[:at]), make([]byte, int64(len(b))-at+rng.Int64N(4096))...)
		}
		// The last whole transaction before the damage.
		var want commitAt
		for _, c := range commits {
			if c.seg < newest || c.end <= at {
				want = c
			}
		}
		dir := copyDir(t, orig)
		if err := os.WriteFile(filepath.Join(dir, segs[newest]), damaged, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := Open(ctx, dir, tornOpts)
		if err != nil {
			t.Fatalf("%s at offset %d of %d: Open: %v", kind, at, len(b), err)
		}
		st := l.State()
		if st.Head != want.head || st.LastCommitLSN != want.lsn {
			t.Fatalf("%s at offset %d of %d: recovered head %d (commit LSN %s), want %d (%s)", kind, at, len(b), st.Head, st.LastCommitLSN, want.head, want.lsn)
		}
		got := ledgertest.ReadAll(t, l)
		if !reflect.DeepEqual(got, all[:want.head]) && (len(got) != 0 || want.head != 0) {
			t.Fatalf("%s at offset %d: the events read differ from those written", kind, at)
		}
		for _, k := range []string{"a", "b/3", "c/0"} {
			es, err := l.ReadKeys(ctx, []string{k}, 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			var wantPs []event.Position
			for _, e := range all[:want.head] {
				if slices.Contains(ledgertest.Indexer(&e, nil), k) {
					wantPs = append(wantPs, e.Position)
				}
			}
			var ps []event.Position
			for _, e := range es {
				ps = append(ps, e.Position)
			}
			if !slices.Equal(ps, wantPs) {
				t.Fatalf("%s at offset %d: ReadKeys(%s) = %v, want %v", kind, at, k, ps, wantPs)
			}
		}
		// The ledger goes on after the recovered head, and keeps it.
		ledgertest.WriteTx(t, l, 1000, ledgertest.Event(1000, 0, "d", 1))
		if err := l.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l = mustOpen(t, dir, tornOpts)
		if h := l.State().Head; h != want.head+1 {
			t.Fatalf("%s at offset %d: head %d after appending and reopening, want %d", kind, at, h, want.head+1)
		}
		es, err := l.ReadKeys(ctx, []string{"d"}, 0, 10)
		if err != nil || len(es) != 1 || es[0].Position != want.head+1 {
			t.Fatalf("%s at offset %d: ReadKeys(d) = %d events, %v", kind, at, len(es), err)
		}
		l.Close()
		rawScan(t, dir) // no damaged record is left behind
	}
}

// TestDamagedSyncedSegment damages a sealed segment, and the newest before what the meta
// file records as synced: Open fails with an error that names the segment and the way
// out, instead of skipping events.
func TestDamagedSyncedSegment(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 7))
	orig := t.TempDir()
	writeTornLedger(t, orig, rng, 70)
	segs := rawScan(t, orig).segments
	// Record the head in the meta file, as SetAcked does.
	l := mustOpen(t, orig, tornOpts)
	if err := l.SetAcked(ctx, 10_000); err != nil {
		t.Fatal(err)
	}
	l.Close()
	for i, seg := range []string{segs[1], segs[len(segs)-1]} {
		dir := copyDir(t, orig)
		path := filepath.Join(dir, seg)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b[segHeaderLen+20] ^= 0x01
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		wantErr := func(what string, err error) {
			t.Helper()
			if err == nil || !strings.Contains(err.Error(), "segment "+path) || !strings.Contains(err.Error(), "restore") ||
				!strings.Contains(err.Error(), "checksum mismatch") {
				t.Fatalf("%s with %s damaged = %v, want an error naming the segment, the damage and the way out", what, seg, err)
			}
		}
		if i == 0 {
			// A sealed segment is read when its events are: the read fails.
			l, err := Open(ctx, dir, tornOpts)
			if err != nil {
				t.Fatal(err)
			}
			_, err = l.Read(ctx, 0, 1<<20)
			wantErr("Read", err)
			first, _ := parseSegName(seg)
			_, err = l.Read(ctx, first-1, 1)
			wantErr("Read", err)
			l.Close()
			continue
		}
		_, err = Open(ctx, dir, tornOpts)
		wantErr("Open", err)
		_, err = OpenReadOnly(ctx, dir, tornOpts)
		wantErr("OpenReadOnly", err)
	}
}

// TestDamagedIndexFile damages and removes sealed segments' index files: Open rebuilds
// them from the segments.
func TestDamagedIndexFile(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 3))
	dir := t.TempDir()
	all, _ := writeTornLedger(t, dir, rng, 50)
	segs := rawScan(t, dir).segments
	l := mustOpen(t, dir, tornOpts)
	want, err := l.ReadKeys(ctx, []string{"a", "b/2"}, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	first0, _ := parseSegName(segs[0])
	first1, _ := parseSegName(segs[1])
	if err := os.Remove(filepath.Join(dir, idxName(first0))); err != nil {
		t.Fatal(err)
	}
	ipath := filepath.Join(dir, idxName(first1))
	b, err := os.ReadFile(ipath)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-20] ^= 0x40 // in the footer
	if err := os.WriteFile(ipath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, tornOpts)
	defer l.Close()
	got, err := l.ReadKeys(ctx, []string{"a", "b/2"}, 0, 1000)
	if err != nil || !reflect.DeepEqual(got, want) || len(got) == 0 {
		t.Fatalf("ReadKeys after rebuilding index files: %d events, %v; want %d", len(got), err, len(want))
	}
	if es := ledgertest.ReadAll(t, l); !reflect.DeepEqual(es, all) {
		t.Fatal("events differ after rebuilding index files")
	}
	for _, first := range []event.Position{first0, first1} {
		if _, err := os.Stat(filepath.Join(dir, idxName(first))); err != nil {
			t.Fatalf("index file not rewritten: %v", err)
		}
	}
	var _ ledger.Ledger = l
}

// TestDiskFull makes the active segment's writes fail as on a full disk, in Append (a full
// chunk) and in Sync: the error names the directory and the cause, nothing unsynced is
// published, the writer refuses to go on, and a reopened ledger holds what was synced.
func TestDiskFull(t *testing.T) {
	for _, tc := range []struct {
		name  string
		chunk int
		step  string
	}{{"append", 256, "append"}, {"sync", 1 << 20, "sync"}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			opts := &Options{Indexer: ledgertest.Indexer, ChunkBytes: tc.chunk}
			l := mustOpen(t, dir, opts)
			ledgertest.WriteTx(t, l, 10, ledgertest.Event(10, 0, "a", 1))
			if err := l.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			st := l.State()
			full, err := os.OpenFile("/dev/full", os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			seg := l.active.f
			l.active.f = full
			if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
				t.Fatal(err)
			}
			var werr error
			for i := 0; i < 20 && werr == nil; i++ {
				werr = l.Append(ctx, ledgertest.Event(20, uint32(i), "a", i))
			}
			if werr == nil {
				if werr = l.CommitTx(ctx, 21); werr == nil {
					werr = l.Sync(ctx)
				}
			}
			want := "ledger: " + tc.step + " " + dir + ": write /dev/full: no space left on device"
			if werr == nil || werr.Error() != want {
				t.Fatalf("writing to a full disk: %v, want %q", werr, want)
			}
			if got := l.State(); got != st {
				t.Fatalf("State after the failure = %+v, want %+v", got, st)
			}
			if err := l.Sync(ctx); err == nil || err.Error() != want {
				t.Fatalf("Sync after the failure = %v, want the failure again", err)
			}
			l.active.f = seg
			full.Close()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = mustOpen(t, dir, opts)
			defer l.Close()
			if got := l.State(); got != st {
				t.Fatalf("State after reopening = %+v, want %+v", got, st)
			}
		})
	}
}
