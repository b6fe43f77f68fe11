package disk

import (
	"context"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/pebble"
)

// TestMigrate copies a truncated Pebble ledger, whose last transactions hold no event,
// and checks that the copy has the same events, channels and state.
func TestMigrate(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	src, err := pebble.Open(ctx, filepath.Join(root, "pebble"), &pebble.Options{Indexer: ledgertest.Indexer})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for i := range 300 {
		lsn := event.LSN(100 + 3*i)
		var es []*event.Event
		for j := range i % 7 { // some transactions are empty
			es = append(es, ledgertest.Event(lsn, uint32(j), []string{"a", "b"}[j%2], (i+j)%9))
		}
		ledgertest.WriteTx(t, src, lsn, es...)
	}
	ledgertest.WriteTx(t, src, 10_000) // the last transaction holds no event
	if err := src.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Truncate(ctx, 40); err != nil {
		t.Fatal(err)
	}
	o := ledger.Origin{SystemID: "73", Timeline: 1, Database: "app", Slot: "walflow"}
	if err := src.SetOrigin(ctx, o); err != nil {
		t.Fatal(err)
	}
	if err := src.SetAcked(ctx, 5000); err != nil {
		t.Fatal(err)
	}
	want := src.State()
	dir := filepath.Join(root, "disk")
	opts := &Options{Indexer: ledgertest.Indexer, SegmentBytes: 16 << 10}
	var last event.Position
	st, err := Migrate(ctx, src, dir, opts, func(p event.Position) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	if st != want || last != want.Head {
		t.Fatalf("Migrate = %+v (progress to %d), want %+v", st, last, want)
	}
	l := mustOpen(t, dir, opts)
	defer l.Close()
	if got := l.State(); got != want {
		t.Fatalf("State of the copy = %+v, want %+v", got, want)
	}
	srcAll, err := src.Read(ctx, 40, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	got, err := l.Read(ctx, 40, 1<<20)
	if err != nil || !reflect.DeepEqual(got, srcAll) || len(got) == 0 {
		t.Fatalf("the copy's events differ: %d events, %v; want %d", len(got), err, len(srcAll))
	}
	for _, k := range []string{"a", "b/4"} {
		s, err1 := src.ReadKeys(ctx, []string{k}, 40, 1000)
		d, err2 := l.ReadKeys(ctx, []string{k}, 40, 1000)
		if err1 != nil || err2 != nil || !reflect.DeepEqual(s, d) || len(d) == 0 {
			t.Fatalf("ReadKeys(%s) differs: %d and %d events, %v, %v", k, len(s), len(d), err1, err2)
		}
	}
	if _, err := Migrate(ctx, src, dir, opts, nil); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("Migrate into an existing directory = %v", err)
	}
}
