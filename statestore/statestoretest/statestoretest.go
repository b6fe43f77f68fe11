package statestoretest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/statestore"
)

// ReopenFunc prepares a fresh, empty storage for one test and returns a function opening a
// store on it. Each call of that function opens a new store on the same storage, as a
// restarted process would; the store returned before is no longer used, and the backend
// closes it if it must (a Pebble directory is opened by one store at a time). The backend
// releases everything when the test ends.
type ReopenFunc func(t *testing.T) (reopen func() statestore.Storage)

// LargeStateBytes is the size of the large entity states the suite saves: 4 MiB.
const LargeStateBytes = 4 << 20

// Run runs the conformance suite: every operation, the errors, atomicity, concurrency,
// the keep-N boundaries, deleting and re-initializing runs, empty and large savepoints.
// open returns a fresh, empty storage for one test; the backend releases it when the test
// ends (with t.Cleanup).
func Run(t *testing.T, open func(t *testing.T) statestore.Storage) {
	tests := []struct {
		name string
		fn   func(*testing.T, statestore.Storage)
	}{
		{"InitRun", testInitRun},
		{"NotInitialized", testNotInitialized},
		{"NoSavepoint", testNoSavepoint},
		{"SaveLatest", testSaveLatest},
		{"EntityOrder", testEntityOrder},
		{"EmptyEntities", testEmptyEntities},
		{"EmptyStates", testEmptyStates},
		{"LargeState", testLargeState},
		{"ManyEntities", testManyEntities},
		{"BufferOwnership", testBufferOwnership},
		{"Timestamps", testTimestamps},
		{"KeepNegative", testKeepNegative},
		{"KeepZero", testKeepZero},
		{"KeepOne", testKeepOne},
		{"KeepExactlyCount", testKeepExactlyCount},
		{"KeepMoreThanCount", testKeepMoreThanCount},
		{"KeepEqualTimestamps", testKeepEqualTimestamps},
		{"KeepRepeated", testKeepRepeated},
		{"DeleteRunReinit", testDeleteRunReinit},
		{"DeleteRunUnknown", testDeleteRunUnknown},
		{"RunIsolation", testRunIsolation},
		{"InvalidRunID", testInvalidRunID},
		{"InvalidSavepoint", testInvalidSavepoint},
		{"CancelledContext", testCancelledContext},
		{"Atomicity", testAtomicity},
		{"ConcurrentRuns", testConcurrentRuns},
		{"ConcurrentSameRun", testConcurrentSameRun},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, open(t))
		})
	}
}

// RunReopen checks that a reopened store finds what an earlier one saved: runs, their
// savepoints (empty, large, several entities), deletions, and the order of savepoints, so
// that a savepoint saved after the reopen is the latest.
func RunReopen(t *testing.T, open ReopenFunc) {
	t.Run("Reopen", func(t *testing.T) {
		t.Parallel()
		reopen := open(t)
		s := reopen()
		initRun(t, s, "kept")
		initRun(t, s, "empty")
		initRun(t, s, "deleted")
		initRun(t, s, "pruned")
		large := LargeState(1)
		sp1 := Savepoint(100, 1, "a", "b")
		sp2 := statestore.Savepoint{Timestamp: 200, Position: 2, Entities: []statestore.Entity{{ID: "big", State: large}, {ID: "small", State: []byte("s")}, {ID: "nil"}}}
		save(t, s, "kept", sp1)
		save(t, s, "kept", sp2)
		save(t, s, "deleted", sp1)
		for i := range 5 {
			save(t, s, "pruned", Savepoint(int64(10+i), event.Position(i), "p"+strconv.Itoa(i)))
		}
		deleteOld(t, s, "pruned", 2)
		if err := s.DeleteRun(t.Context(), "deleted"); err != nil {
			t.Fatalf("DeleteRun(deleted): %v", err)
		}

		for round := range 2 {
			s = reopen()
			what := fmt.Sprintf("reopen %d", round+1)
			wantInitialized(t, s, "kept", true)
			wantInitialized(t, s, "empty", true)
			wantInitialized(t, s, "deleted", false)
			wantInitialized(t, s, "never", false)
			wantLatest(t, what, s, "kept", sp2)
			wantTimestamp(t, what, s, "kept", 200)
			wantErr(t, what+": latest of empty", latestErr(t, s, "empty"), statestore.ErrNoSavepoint)
			wantErr(t, what+": latest of deleted", latestErr(t, s, "deleted"), statestore.ErrNotInitialized)
			wantKept(t, what, s, "pruned", []statestore.Savepoint{Savepoint(13, 3, "p3"), Savepoint(14, 4, "p4")})
			wantKept(t, what, s, "kept", []statestore.Savepoint{sp1, sp2})
			deleteOld(t, s, "pruned", 1)
			wantLatest(t, what+", after keeping 1", s, "pruned", Savepoint(14, 4, "p4"))
			deleteOld(t, s, "pruned", 0)
			wantErr(t, what+": pruned after keeping 0", latestErr(t, s, "pruned"), statestore.ErrNoSavepoint)
			save(t, s, "pruned", Savepoint(13, 3, "p3"))
			save(t, s, "pruned", Savepoint(14, 4, "p4"))
		}

		// The order survives: a savepoint saved after a reopen is the latest, and keep-N
		// counts the ones saved before it.
		s = reopen()
		err := s.SaveSavepoint(t.Context(), "kept", Savepoint(199, 9))
		wantErr(t, "save before the latest timestamp after a reopen", err, statestore.ErrOutOfOrder)
		sp3 := Savepoint(200, 3, "c")
		save(t, s, "kept", sp3)
		s = reopen()
		wantLatest(t, "saved after a reopen", s, "kept", sp3)
		deleteOld(t, s, "kept", 2)
		s = reopen()
		wantKept(t, "kept 2 after a reopen", s, "kept", []statestore.Savepoint{sp2, sp3})
		deleteOld(t, s, "kept", 1)
		wantLatest(t, "kept 1", s, "kept", sp3)
		deleteOld(t, s, "kept", 0)
		wantErr(t, "kept 0", latestErr(t, s, "kept"), statestore.ErrNoSavepoint)

		// A run deleted and initialized again starts empty, also after a reopen.
		initRun(t, s, "deleted")
		s = reopen()
		wantInitialized(t, s, "deleted", true)
		wantErr(t, "re-initialized run after a reopen", latestErr(t, s, "deleted"), statestore.ErrNoSavepoint)
	})
}

// Savepoint returns a savepoint at ts and pos whose entities have the given ids, each with
// the state "<id>@<ts>/<pos>".
func Savepoint(ts int64, pos event.Position, ids ...string) statestore.Savepoint {
	sp := statestore.Savepoint{Timestamp: ts, Position: pos}
	for _, id := range ids {
		sp.Entities = append(sp.Entities, statestore.Entity{ID: id, State: fmt.Appendf(nil, "%s@%d/%d", id, ts, pos)})
	}
	return sp
}

// LargeState returns LargeStateBytes bytes that depend on seed and on their offset, so that
// a misplaced or truncated chunk does not compare equal.
func LargeState(seed uint64) []byte {
	b := make([]byte, LargeStateBytes)
	x := seed*0x9E3779B97F4A7C15 + 1
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	return b
}

// Equal reports whether two savepoints have the same timestamp, position and entities, in
// the same order; a nil and an empty state are equal, as are nil and empty entity lists.
func Equal(a, b statestore.Savepoint) bool {
	if a.Timestamp != b.Timestamp || a.Position != b.Position || len(a.Entities) != len(b.Entities) {
		return false
	}
	for i := range a.Entities {
		if a.Entities[i].ID != b.Entities[i].ID || !bytes.Equal(a.Entities[i].State, b.Entities[i].State) {
			return false
		}
	}
	return true
}

// describe prints a savepoint briefly: long states are shown by their length.
func describe(sp statestore.Savepoint) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{ts %d, pos %d, [", sp.Timestamp, sp.Position)
	for i, e := range sp.Entities {
		if i > 0 {
			b.WriteString(", ")
		}
		if len(e.State) > 64 {
			fmt.Fprintf(&b, "%q: <%d bytes>", e.ID, len(e.State))
		} else {
			fmt.Fprintf(&b, "%q: %q", e.ID, e.State)
		}
	}
	b.WriteString("]}")
	return b.String()
}

func initRun(t *testing.T, s statestore.Storage, run string) {
	t.Helper()
	if err := s.InitRun(t.Context(), run); err != nil {
		t.Fatalf("InitRun(%q): %v", run, err)
	}
}

func save(t *testing.T, s statestore.Storage, run string, sp statestore.Savepoint) {
	t.Helper()
	if err := s.SaveSavepoint(t.Context(), run, sp); err != nil {
		t.Fatalf("SaveSavepoint(%q, %s): %v", run, describe(sp), err)
	}
}

func deleteOld(t *testing.T, s statestore.Storage, run string, keep int) {
	t.Helper()
	if err := s.DeleteOldSavepoints(t.Context(), run, keep); err != nil {
		t.Fatalf("DeleteOldSavepoints(%q, %d): %v", run, keep, err)
	}
}

func latestErr(t *testing.T, s statestore.Storage, run string) error {
	t.Helper()
	sp, err := s.LatestSavepoint(t.Context(), run)
	if err == nil {
		t.Errorf("LatestSavepoint(%q) = %s, want an error", run, describe(sp))
	}
	return err
}

func wantInitialized(t *testing.T, s statestore.Storage, run string, want bool) {
	t.Helper()
	got, err := s.IsInitialized(t.Context(), run)
	if err != nil {
		t.Fatalf("IsInitialized(%q): %v", run, err)
	}
	if got != want {
		t.Errorf("IsInitialized(%q) = %v, want %v", run, got, want)
	}
}

func wantLatest(t *testing.T, what string, s statestore.Storage, run string, want statestore.Savepoint) {
	t.Helper()
	got, err := s.LatestSavepoint(t.Context(), run)
	if err != nil {
		t.Fatalf("%s: LatestSavepoint(%q): %v", what, run, err)
	}
	if !Equal(got, want) {
		t.Errorf("%s: LatestSavepoint(%q)\n got %s\nwant %s", what, run, describe(got), describe(want))
	}
}

func wantTimestamp(t *testing.T, what string, s statestore.Storage, run string, want int64) {
	t.Helper()
	got, err := s.LatestTimestamp(t.Context(), run)
	if err != nil {
		t.Fatalf("%s: LatestTimestamp(%q): %v", what, run, err)
	}
	if got != want {
		t.Errorf("%s: LatestTimestamp(%q) = %d, want %d", what, run, got, want)
	}
}

// wantErr checks that err wraps target, and no other error of the package it could be
// confused with.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want one wrapping %q", what, err, target)
		return
	}
	for _, other := range []error{statestore.ErrNotInitialized, statestore.ErrNoSavepoint, statestore.ErrOutOfOrder, statestore.ErrInvalidRunID, statestore.ErrInvalidSavepoint} {
		if other != target && errors.Is(err, other) {
			t.Errorf("%s: error %v wraps %q too", what, err, other)
		}
	}
}

func testInitRun(t *testing.T, s statestore.Storage) {
	wantInitialized(t, s, "r", false)
	initRun(t, s, "r")
	wantInitialized(t, s, "r", true)
	wantInitialized(t, s, "other", false)
	save(t, s, "r", Savepoint(10, 1, "a"))
	// InitRun again keeps the savepoints.
	initRun(t, s, "r")
	wantInitialized(t, s, "r", true)
	wantLatest(t, "after a second InitRun", s, "r", Savepoint(10, 1, "a"))
}

func testNotInitialized(t *testing.T, s statestore.Storage) {
	ctx := t.Context()
	wantErr(t, "SaveSavepoint", s.SaveSavepoint(ctx, "r", Savepoint(1, 1, "a")), statestore.ErrNotInitialized)
	wantErr(t, "LatestSavepoint", latestErr(t, s, "r"), statestore.ErrNotInitialized)
	ts, err := s.LatestTimestamp(ctx, "r")
	wantErr(t, fmt.Sprintf("LatestTimestamp (= %d)", ts), err, statestore.ErrNotInitialized)
	wantErr(t, "DeleteOldSavepoints", s.DeleteOldSavepoints(ctx, "r", 1), statestore.ErrNotInitialized)
	if err := s.SaveSavepoint(ctx, "r", Savepoint(1, 1, "a")); err == nil || !strings.Contains(err.Error(), `"r"`) || !strings.Contains(err.Error(), "InitRun") {
		t.Errorf("SaveSavepoint on a run not initialized: error %v, want one naming the run and InitRun", err)
	}
	if l, ok := s.(statestore.Lister); ok {
		infos, err := l.ListSavepoints(ctx, "r")
		wantErr(t, fmt.Sprintf("ListSavepoints (= %v)", infos), err, statestore.ErrNotInitialized)
	}
	// The failed save left nothing behind.
	wantInitialized(t, s, "r", false)
	initRun(t, s, "r")
	wantErr(t, "LatestSavepoint after InitRun", latestErr(t, s, "r"), statestore.ErrNoSavepoint)
}

func testNoSavepoint(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	wantErr(t, "LatestSavepoint", latestErr(t, s, "r"), statestore.ErrNoSavepoint)
	ts, err := s.LatestTimestamp(t.Context(), "r")
	wantErr(t, fmt.Sprintf("LatestTimestamp (= %d)", ts), err, statestore.ErrNoSavepoint)
	// Deleting old savepoints of a run with none is fine.
	deleteOld(t, s, "r", 0)
	deleteOld(t, s, "r", 3)
	wantErr(t, "LatestSavepoint after DeleteOldSavepoints", latestErr(t, s, "r"), statestore.ErrNoSavepoint)
}

func testSaveLatest(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	sp1 := Savepoint(1_700_000_000_000, 10, "posts:1", "posts:2")
	save(t, s, "r", sp1)
	wantLatest(t, "one savepoint", s, "r", sp1)
	wantTimestamp(t, "one savepoint", s, "r", sp1.Timestamp)
	// The latest replaces the state wholly: an entity missing from it is gone.
	sp2 := Savepoint(1_700_000_001_000, 25, "posts:2", "posts:3")
	save(t, s, "r", sp2)
	wantLatest(t, "two savepoints", s, "r", sp2)
	wantTimestamp(t, "two savepoints", s, "r", sp2.Timestamp)
	// Extreme values round-trip.
	sp3 := statestore.Savepoint{Timestamp: math.MaxInt64, Position: math.MaxInt64, Entities: []statestore.Entity{
		{ID: "", State: []byte{0, 1, 2, 0xff}},
		{ID: "ünïcødé ✓", State: []byte("\x00")},
	}}
	save(t, s, "r", sp3)
	wantLatest(t, "extreme values", s, "r", sp3)
	wantTimestamp(t, "extreme values", s, "r", math.MaxInt64)
	if got := sp3.Time().UnixMilli(); got != math.MaxInt64 {
		t.Errorf("Savepoint.Time().UnixMilli() = %d, want %d", got, int64(math.MaxInt64))
	}

	// Negative timestamps (before 1970) are timestamps too.
	initRun(t, s, "old")
	save(t, s, "old", Savepoint(-5, 0, "a"))
	wantTimestamp(t, "negative timestamp", s, "old", -5)
}

func testEntityOrder(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	// Not sorted: the order given is the order read back.
	ids := []string{"m", "b", "z", "a", "10", "9", "b2", "B"}
	sp := Savepoint(5, 5, ids...)
	save(t, s, "r", sp)
	wantLatest(t, "unsorted ids", s, "r", sp)
}

func testEmptyEntities(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	save(t, s, "r", Savepoint(1, 1, "a", "b"))
	empty := statestore.Savepoint{Timestamp: 2, Position: 7}
	save(t, s, "r", empty)
	wantLatest(t, "no entities (nil)", s, "r", empty)
	wantTimestamp(t, "no entities", s, "r", 2)
	empty = statestore.Savepoint{Timestamp: 3, Position: 8, Entities: []statestore.Entity{}}
	save(t, s, "r", empty)
	wantLatest(t, "no entities (empty)", s, "r", empty)
	deleteOld(t, s, "r", 1)
	wantLatest(t, "no entities, kept", s, "r", empty)
}

func testEmptyStates(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	sp := statestore.Savepoint{Timestamp: 1, Entities: []statestore.Entity{{ID: "nil"}, {ID: "empty", State: []byte{}}, {ID: "x", State: []byte("x")}}}
	save(t, s, "r", sp)
	got, err := s.LatestSavepoint(t.Context(), "r")
	if err != nil {
		t.Fatalf("LatestSavepoint: %v", err)
	}
	if !Equal(got, sp) {
		t.Fatalf("LatestSavepoint\n got %s\nwant %s", describe(got), describe(sp))
	}
	for _, e := range got.Entities[:2] {
		if len(e.State) != 0 {
			t.Errorf("entity %q: state %q, want empty", e.ID, e.State)
		}
	}
}

func testLargeState(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	a, b := LargeState(1), LargeState(2)
	sp := statestore.Savepoint{Timestamp: 1, Position: 1, Entities: []statestore.Entity{
		{ID: "a", State: a}, {ID: "small", State: []byte("s")}, {ID: "b", State: b},
	}}
	save(t, s, "r", sp)
	wantLatest(t, "two 4 MiB states", s, "r", sp)
	sp2 := statestore.Savepoint{Timestamp: 2, Position: 2, Entities: []statestore.Entity{{ID: "c", State: LargeState(3)}}}
	save(t, s, "r", sp2)
	wantLatest(t, "a newer large state", s, "r", sp2)
	deleteOld(t, s, "r", 1)
	wantLatest(t, "after deleting the older large states", s, "r", sp2)
}

func testManyEntities(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	ids := make([]string, 10_000)
	for i := range ids {
		ids[i] = "entity:" + strconv.Itoa(len(ids)-i)
	}
	sp := Savepoint(1, 1, ids...)
	save(t, s, "r", sp)
	wantLatest(t, "10,000 entities", s, "r", sp)
}

func testBufferOwnership(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	sp := Savepoint(1, 1, "a", "b")
	want := Savepoint(1, 1, "a", "b")
	save(t, s, "r", sp)
	// The caller may reuse its buffers once SaveSavepoint returned.
	sp.Entities[0].State[0] = 'X'
	sp.Entities[1].ID = "changed"
	wantLatest(t, "after changing the saved buffers", s, "r", want)
	// The caller owns what LatestSavepoint returns.
	got, err := s.LatestSavepoint(t.Context(), "r")
	if err != nil {
		t.Fatal(err)
	}
	got.Entities[0].State[0] = 'Y'
	got.Entities = append(got.Entities[:1], statestore.Entity{ID: "extra"})
	wantLatest(t, "after changing the returned buffers", s, "r", want)
}

func testTimestamps(t *testing.T, s statestore.Storage) {
	ctx := t.Context()
	initRun(t, s, "r")
	save(t, s, "r", Savepoint(100, 1, "a"))
	// An equal timestamp is fine, and the savepoint saved later is the latest.
	save(t, s, "r", Savepoint(100, 2, "b"))
	wantLatest(t, "equal timestamps", s, "r", Savepoint(100, 2, "b"))
	// An earlier one is refused and changes nothing.
	err := s.SaveSavepoint(ctx, "r", Savepoint(99, 3, "c"))
	wantErr(t, "save before the latest", err, statestore.ErrOutOfOrder)
	if err != nil && (!strings.Contains(err.Error(), "99") || !strings.Contains(err.Error(), "100")) {
		t.Errorf("save before the latest: error %q, want it to give both timestamps", err)
	}
	wantLatest(t, "after a refused save", s, "r", Savepoint(100, 2, "b"))
	// Once every savepoint is deleted, there is no latest to be before.
	deleteOld(t, s, "r", 0)
	save(t, s, "r", Savepoint(50, 4, "d"))
	wantLatest(t, "after deleting all", s, "r", Savepoint(50, 4, "d"))
	// The position may go anywhere: the store does not interpret it.
	save(t, s, "r", Savepoint(60, 1, "e"))
	wantLatest(t, "lower position", s, "r", Savepoint(60, 1, "e"))
}

// fill initializes run and saves n savepoints at timestamps 10, 20, ..., positions 1..n.
func fill(t *testing.T, s statestore.Storage, run string, n int) []statestore.Savepoint {
	t.Helper()
	initRun(t, s, run)
	sps := make([]statestore.Savepoint, n)
	for i := range sps {
		sps[i] = Savepoint(int64(10*(i+1)), event.Position(i+1), "e"+strconv.Itoa(i))
		save(t, s, run, sps[i])
	}
	return sps
}

// wantKept checks that the run's savepoints are exactly want, oldest first: the latest is
// the last of want (or ErrNoSavepoint when want is empty), and when the backend implements
// [statestore.Lister], its list matches want.
func wantKept(t *testing.T, what string, s statestore.Storage, run string, want []statestore.Savepoint) {
	t.Helper()
	if len(want) == 0 {
		wantErr(t, what+": latest", latestErr(t, s, run), statestore.ErrNoSavepoint)
	} else {
		wantLatest(t, what, s, run, want[len(want)-1])
	}
	l, ok := s.(statestore.Lister)
	if !ok {
		return
	}
	got, err := l.ListSavepoints(t.Context(), run)
	if err != nil {
		t.Fatalf("%s: ListSavepoints(%q): %v", what, run, err)
	}
	wantInfos := make([]statestore.SavepointInfo, len(want))
	for i, sp := range want {
		wantInfos[i] = statestore.SavepointInfo{Timestamp: sp.Timestamp, Position: sp.Position, Entities: len(sp.Entities)}
	}
	if !slices.Equal(got, wantInfos) {
		t.Errorf("%s: ListSavepoints(%q)\n got %v\nwant %v", what, run, got, wantInfos)
	}
}

func testKeepNegative(t *testing.T, s statestore.Storage) {
	sps := fill(t, s, "r", 3)
	err := s.DeleteOldSavepoints(t.Context(), "r", -1)
	if err == nil {
		t.Fatalf("DeleteOldSavepoints(-1): no error, want one")
	}
	if !strings.Contains(err.Error(), "-1") {
		t.Errorf("DeleteOldSavepoints(-1): error %q, want it to give the bad keep", err)
	}
	wantKept(t, "after keep -1", s, "r", sps)
}

func testKeepZero(t *testing.T, s statestore.Storage) {
	fill(t, s, "r", 3)
	deleteOld(t, s, "r", 0)
	wantKept(t, "keep 0", s, "r", nil)
	ts, err := s.LatestTimestamp(t.Context(), "r")
	wantErr(t, fmt.Sprintf("keep 0: LatestTimestamp (= %d)", ts), err, statestore.ErrNoSavepoint)
	wantInitialized(t, s, "r", true)
	save(t, s, "r", Savepoint(1, 1, "again"))
	wantLatest(t, "saved after keep 0", s, "r", Savepoint(1, 1, "again"))
}

func testKeepOne(t *testing.T, s statestore.Storage) {
	sps := fill(t, s, "r", 4)
	deleteOld(t, s, "r", 1)
	wantKept(t, "keep 1", s, "r", sps[3:])
}

// testKeepExactlyCount: keeping as many as there are deletes nothing; one fewer deletes
// exactly the oldest.
func testKeepExactlyCount(t *testing.T, s statestore.Storage) {
	sps := fill(t, s, "r", 4)
	deleteOld(t, s, "r", 4)
	wantKept(t, "keep exactly 4 of 4", s, "r", sps)
	deleteOld(t, s, "r", 3)
	wantKept(t, "keep 3 of 4", s, "r", sps[1:])
}

func testKeepMoreThanCount(t *testing.T, s statestore.Storage) {
	sps := fill(t, s, "r", 3)
	deleteOld(t, s, "r", 10)
	deleteOld(t, s, "r", math.MaxInt)
	wantKept(t, "keep more than count", s, "r", sps)
}

// testKeepEqualTimestamps: of savepoints with equal timestamps, the ones saved first are
// deleted first.
func testKeepEqualTimestamps(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	var sps []statestore.Savepoint
	for i := range 5 {
		sp := Savepoint(100, event.Position(i+1), "e"+strconv.Itoa(i))
		save(t, s, "r", sp)
		sps = append(sps, sp)
	}
	wantKept(t, "equal timestamps", s, "r", sps)
	deleteOld(t, s, "r", 2)
	wantKept(t, "equal timestamps, keep 2", s, "r", sps[3:])
	deleteOld(t, s, "r", 1)
	wantKept(t, "equal timestamps, keep 1", s, "r", sps[4:])
}

// testKeepRepeated: repeated pruning with saves in between always leaves the newest.
func testKeepRepeated(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	var sps []statestore.Savepoint
	for i := range 20 {
		sp := Savepoint(int64(i/3), event.Position(i), "e"+strconv.Itoa(i))
		save(t, s, "r", sp)
		sps = append(sps, sp)
		deleteOld(t, s, "r", 2)
		wantKept(t, fmt.Sprintf("save %d and keep 2", i), s, "r", sps[max(0, len(sps)-2):])
	}
}

func testDeleteRunReinit(t *testing.T, s statestore.Storage) {
	ctx := t.Context()
	fill(t, s, "r", 3)
	fill(t, s, "other", 2)
	if err := s.DeleteRun(ctx, "r"); err != nil {
		t.Fatalf("DeleteRun: %v", err)
	}
	wantInitialized(t, s, "r", false)
	wantErr(t, "latest after DeleteRun", latestErr(t, s, "r"), statestore.ErrNotInitialized)
	wantErr(t, "save after DeleteRun", s.SaveSavepoint(ctx, "r", Savepoint(100, 1)), statestore.ErrNotInitialized)
	wantErr(t, "keep after DeleteRun", s.DeleteOldSavepoints(ctx, "r", 1), statestore.ErrNotInitialized)
	// Deleting again is fine.
	if err := s.DeleteRun(ctx, "r"); err != nil {
		t.Errorf("second DeleteRun: %v", err)
	}
	// Another run is untouched.
	wantLatest(t, "other run after DeleteRun", s, "other", Savepoint(20, 2, "e1"))

	initRun(t, s, "r")
	wantInitialized(t, s, "r", true)
	wantErr(t, "latest after re-init", latestErr(t, s, "r"), statestore.ErrNoSavepoint)
	// The old timestamps are gone with the run: an earlier one is fine now.
	save(t, s, "r", Savepoint(1, 1, "new"))
	wantLatest(t, "saved after re-init", s, "r", Savepoint(1, 1, "new"))
	wantKept(t, "after re-init", s, "r", []statestore.Savepoint{Savepoint(1, 1, "new")})
}

func testDeleteRunUnknown(t *testing.T, s statestore.Storage) {
	if err := s.DeleteRun(t.Context(), "never"); err != nil {
		t.Errorf("DeleteRun of a run never initialized: %v", err)
	}
	wantInitialized(t, s, "never", false)
}

// testRunIsolation uses run ids that are prefixes of each other, or differ by a separator,
// so that a backend that keys runs by concatenation is caught mixing them.
func testRunIsolation(t *testing.T, s statestore.Storage) {
	ctx := t.Context()
	runs := []string{"a", "ab", "a:b", "a/b", "a b", "A", "ä", "a.", strings.Repeat("x", statestore.MaxRunIDBytes)}
	for i, run := range runs {
		initRun(t, s, run)
		for j := range 3 {
			save(t, s, run, Savepoint(int64(j), event.Position(i*10+j), run))
		}
	}
	check := func(what string, from int) {
		t.Helper()
		for i, run := range runs[from:] {
			wantLatest(t, what, s, run, Savepoint(2, event.Position((from+i)*10+2), run))
		}
	}
	check("several runs", 0)
	deleteOld(t, s, "a", 0)
	if err := s.DeleteRun(ctx, "ab"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "run a after keep 0", latestErr(t, s, "a"), statestore.ErrNoSavepoint)
	wantInitialized(t, s, "ab", false)
	check("after pruning a and deleting ab", 2)
}

func testInvalidRunID(t *testing.T, s statestore.Storage) {
	ctx := t.Context()
	for _, id := range []string{"", "a\x00b", "tab\there", "new\nline", "\xff\xfe", strings.Repeat("x", statestore.MaxRunIDBytes+1)} {
		errs := map[string]error{
			"InitRun":             s.InitRun(ctx, id),
			"SaveSavepoint":       s.SaveSavepoint(ctx, id, Savepoint(1, 1)),
			"DeleteOldSavepoints": s.DeleteOldSavepoints(ctx, id, 1),
			"DeleteRun":           s.DeleteRun(ctx, id),
		}
		_, errs["IsInitialized"] = s.IsInitialized(ctx, id)
		_, errs["LatestSavepoint"] = s.LatestSavepoint(ctx, id)
		_, errs["LatestTimestamp"] = s.LatestTimestamp(ctx, id)
		if l, ok := s.(statestore.Lister); ok {
			_, errs["ListSavepoints"] = l.ListSavepoints(ctx, id)
		}
		for op, err := range errs {
			wantErr(t, fmt.Sprintf("%s(%.20q)", op, id), err, statestore.ErrInvalidRunID)
		}
		if err := statestore.ValidateRunID(id); err == nil {
			t.Errorf("ValidateRunID(%.20q) = nil", id)
		}
	}
}

func testInvalidSavepoint(t *testing.T, s statestore.Storage) {
	ctx := t.Context()
	initRun(t, s, "r")
	good := Savepoint(10, 1, "a")
	save(t, s, "r", good)
	bad := map[string]statestore.Savepoint{
		"duplicate ids":   Savepoint(11, 2, "a", "b", "a"),
		"NUL in an id":    Savepoint(11, 2, "a\x00"),
		"invalid UTF-8":   Savepoint(11, 2, "\xc3"),
		"position > max":  {Timestamp: 11, Position: math.MaxInt64 + 1},
		"duplicate empty": Savepoint(11, 2, "", ""),
	}
	for what, sp := range bad {
		wantErr(t, what, s.SaveSavepoint(ctx, "r", sp), statestore.ErrInvalidSavepoint)
		if err := sp.Validate(); !errors.Is(err, statestore.ErrInvalidSavepoint) {
			t.Errorf("%s: Validate = %v, want ErrInvalidSavepoint", what, err)
		}
	}
	wantLatest(t, "after invalid saves", s, "r", good)
}

func testCancelledContext(t *testing.T, s statestore.Storage) {
	initRun(t, s, "r")
	save(t, s, "r", Savepoint(1, 1, "a"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	errs := map[string]error{
		"InitRun":             s.InitRun(ctx, "q"),
		"SaveSavepoint":       s.SaveSavepoint(ctx, "r", Savepoint(2, 2, "b")),
		"DeleteOldSavepoints": s.DeleteOldSavepoints(ctx, "r", 0),
		"DeleteRun":           s.DeleteRun(ctx, "r"),
	}
	_, errs["IsInitialized"] = s.IsInitialized(ctx, "r")
	_, errs["LatestSavepoint"] = s.LatestSavepoint(ctx, "r")
	_, errs["LatestTimestamp"] = s.LatestTimestamp(ctx, "r")
	if l, ok := s.(statestore.Lister); ok {
		_, errs["ListSavepoints"] = l.ListSavepoints(ctx, "r")
	}
	for op, err := range errs {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: error %v, want one wrapping context.Canceled", op, err)
		}
	}
	wantInitialized(t, s, "q", false)
	wantLatest(t, "after cancelled calls", s, "r", Savepoint(1, 1, "a"))
}

// numbered returns a savepoint whose every entity's state holds n, so that a reader can
// tell whether all its entities come from the same save.
func numbered(n int, entities int, run string) statestore.Savepoint {
	sp := statestore.Savepoint{Timestamp: int64(n), Position: event.Position(n)}
	for i := range entities {
		sp.Entities = append(sp.Entities, statestore.Entity{
			ID:    "e" + strconv.Itoa(i),
			State: fmt.Appendf(nil, "%s/%d/%d", run, n, i),
		})
	}
	return sp
}

// checkNumbered reports what is wrong with sp if it is not a whole numbered savepoint of
// run.
func checkNumbered(sp statestore.Savepoint, entities int, run string) error {
	n := int(sp.Timestamp)
	if want := numbered(n, entities, run); !Equal(sp, want) {
		return fmt.Errorf("got %s, want the whole savepoint %d of run %q: %s", describe(sp), n, run, describe(want))
	}
	return nil
}

// testAtomicity reads the latest savepoint while another goroutine saves new ones and a
// third prunes old ones: every read is one whole savepoint, never a mix or a part.
func testAtomicity(t *testing.T, s statestore.Storage) {
	const (
		saves    = 40
		entities = 50
	)
	ctx := t.Context()
	initRun(t, s, "r")
	save(t, s, "r", numbered(0, entities, "r"))
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for n := 1; n <= saves; n++ {
			if err := s.SaveSavepoint(ctx, "r", numbered(n, entities, "r")); err != nil {
				t.Errorf("SaveSavepoint %d: %v", n, err)
				return
			}
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := s.DeleteOldSavepoints(ctx, "r", 1); err != nil {
				t.Errorf("DeleteOldSavepoints: %v", err)
				return
			}
		}
	})
	for range 2 {
		wg.Go(func() {
			last := 0
			for {
				select {
				case <-done:
					return
				default:
				}
				sp, err := s.LatestSavepoint(ctx, "r")
				if err != nil {
					t.Errorf("LatestSavepoint: %v", err)
					return
				}
				if err := checkNumbered(sp, entities, "r"); err != nil {
					t.Errorf("LatestSavepoint during saves: %v", err)
					return
				}
				if int(sp.Timestamp) < last {
					t.Errorf("LatestSavepoint went back from %d to %d", last, sp.Timestamp)
					return
				}
				last = int(sp.Timestamp)
			}
		})
	}
	wg.Wait()
	wantLatest(t, "after concurrent saves", s, "r", numbered(saves, entities, "r"))
}

// testConcurrentRuns saves to several runs in parallel goroutines; each sees only its own
// data.
func testConcurrentRuns(t *testing.T, s statestore.Storage) {
	const (
		runs     = 8
		saves    = 15
		entities = 10
	)
	ctx := t.Context()
	var wg sync.WaitGroup
	for r := range runs {
		run := "run-" + strconv.Itoa(r)
		wg.Go(func() {
			if err := s.InitRun(ctx, run); err != nil {
				t.Errorf("InitRun(%q): %v", run, err)
				return
			}
			for n := 1; n <= saves; n++ {
				if err := s.SaveSavepoint(ctx, run, numbered(n, entities, run)); err != nil {
					t.Errorf("SaveSavepoint(%q, %d): %v", run, n, err)
					return
				}
				sp, err := s.LatestSavepoint(ctx, run)
				if err != nil {
					t.Errorf("LatestSavepoint(%q): %v", run, err)
					return
				}
				if int(sp.Timestamp) != n {
					t.Errorf("LatestSavepoint(%q) after save %d has timestamp %d", run, n, sp.Timestamp)
					return
				}
				if err := checkNumbered(sp, entities, run); err != nil {
					t.Errorf("LatestSavepoint(%q): %v", run, err)
					return
				}
				if n%4 == 0 {
					if err := s.DeleteOldSavepoints(ctx, run, 2); err != nil {
						t.Errorf("DeleteOldSavepoints(%q): %v", run, err)
						return
					}
				}
			}
			// Delete and re-create every other run while the others go on.
			if r%2 == 1 {
				if err := s.DeleteRun(ctx, run); err != nil {
					t.Errorf("DeleteRun(%q): %v", run, err)
					return
				}
				if err := s.InitRun(ctx, run); err != nil {
					t.Errorf("InitRun(%q) again: %v", run, err)
					return
				}
				if err := s.SaveSavepoint(ctx, run, numbered(1, entities, run)); err != nil {
					t.Errorf("SaveSavepoint(%q) after re-init: %v", run, err)
				}
			}
		})
	}
	wg.Wait()
	for r := range runs {
		run := "run-" + strconv.Itoa(r)
		want := saves
		if r%2 == 1 {
			want = 1
		}
		wantLatest(t, "after concurrent runs", s, run, numbered(want, entities, run))
		wantTimestamp(t, "after concurrent runs", s, run, int64(want))
	}
}

// testConcurrentSameRun saves to one run from several goroutines at one timestamp: every
// save succeeds, and the latest is one of them, whole.
func testConcurrentSameRun(t *testing.T, s statestore.Storage) {
	const (
		writers  = 6
		saves    = 10
		entities = 5
	)
	ctx := t.Context()
	initRun(t, s, "r")
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range saves {
				sp := numbered(7, entities, "r")
				sp.Position = event.Position(w*saves + i)
				if err := s.SaveSavepoint(ctx, "r", sp); err != nil {
					t.Errorf("SaveSavepoint: %v", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if _, err := s.LatestTimestamp(ctx, "r"); err != nil && !errors.Is(err, statestore.ErrNoSavepoint) {
				t.Errorf("LatestTimestamp: %v", err)
				return
			}
		}
	})
	wg.Wait()
	sp, err := s.LatestSavepoint(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	sp.Position = 7
	if err := checkNumbered(sp, entities, "r"); err != nil {
		t.Errorf("latest after concurrent saves: %v", err)
	}
	// Every save is there, each writer's in its order.
	if l, ok := s.(statestore.Lister); ok {
		infos, err := l.ListSavepoints(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		if len(infos) != writers*saves {
			t.Fatalf("ListSavepoints after concurrent saves: %d savepoints, want %d", len(infos), writers*saves)
		}
		next := make([]int, writers)
		for _, in := range infos {
			w, i := int(in.Position)/saves, int(in.Position)%saves
			if in.Timestamp != 7 || in.Entities != entities || next[w] != i {
				t.Errorf("ListSavepoints after concurrent saves: %+v out of order (writer %d's next is %d)", in, w, next[w])
			}
			next[w] = i + 1
		}
	}
	deleteOld(t, s, "r", 1)
	if _, err := s.LatestSavepoint(ctx, "r"); err != nil {
		t.Errorf("latest after keeping 1: %v", err)
	}
}
