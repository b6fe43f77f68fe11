package jetstream_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// TestReadOnlyOption: a ledger opened with Options.ReadOnly never creates or updates the stream
// or the state bucket, whatever its options say, fails to open on a missing stream, and
// refuses Lead and Truncate.
func TestReadOnlyOption(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	nc := connect(t, startServer(t, "", 0))
	name := newStream()

	_, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: name, ReadOnly: true})
	if !errors.Is(err, natsjs.ErrStreamNotFound) {
		t.Fatalf("read-only Open of a missing stream = %v; want ErrStreamNotFound", err)
	}
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Stream(ctx, name); !errors.Is(err, natsjs.ErrStreamNotFound) {
		t.Fatalf("after a read-only Open, looking up the stream = %v; want ErrStreamNotFound", err)
	}

	w, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: name})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	config := func() natsjs.StreamConfig {
		t.Helper()
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config
	}
	before := config()
	r, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: name, ReadOnly: true, Replicas: 3, DuplicateWindow: time.Hour})
	if err != nil {
		t.Fatalf("read-only Open of an existing stream with other replicas: %v", err)
	}
	defer r.Close()
	if after := config(); after.Replicas != before.Replicas || after.Duplicates != before.Duplicates {
		t.Errorf("a read-only Open changed the stream: replicas %d → %d, duplicate window %v → %v", before.Replicas, after.Replicas, before.Duplicates, after.Duplicates)
	}
	if err := r.Lead(ctx); !errors.Is(err, jetstream.ErrReadOnly) {
		t.Errorf("Lead of a read-only ledger = %v; want ErrReadOnly", err)
	}
	if err := r.Truncate(ctx, 0); !errors.Is(err, jetstream.ErrReadOnly) {
		t.Errorf("Truncate of a read-only ledger = %v; want ErrReadOnly", err)
	}
}

// TestFollowerAckedLSNCoveredByHead: a node that does not lead takes the acknowledged LSN
// from the state bucket, whose watch can outrun the stream's consumer; while the bucket's
// head is past this node's, that LSN must not cover transactions this node has not read
// (process status would call them processed). Once the node has read as far as the
// bucket's head, the bucket's acknowledged LSN holds (past the last transaction, as the
// source acknowledges an idle slot).
func TestFollowerAckedLSNCoveredByHead(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	nc := connect(t, startServer(t, "", 0))
	stream := newStream()
	w := lead(t, nc, stream)
	writeTxs(t, w, 100, 1, func(event.LSN) int { return 3 })
	f := open(t, nc, stream, ledgertest.Indexer)
	eventually(t, "the follower to read the transaction", func() bool { return f.State().Head == 3 })
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, stream+"_STATE")
	if err != nil {
		t.Fatal(err)
	}
	put := func(head uint64, acked event.LSN) {
		t.Helper()
		rec := fmt.Sprintf(`{"head":%d,"last_commit_lsn":200,"last_end_lsn":201,"acked_lsn":%d}`, head, acked)
		if _, err := kv.Put(ctx, "state", []byte(rec)); err != nil {
			t.Fatal(err)
		}
	}
	if a := f.State().AckedLSN; a != 0 {
		t.Fatalf("follower acknowledged LSN %d before any was set; want 0", a)
	}
	// As if the leader had synced a transaction at LSN 200 that the follower's consumer
	// has not delivered yet.
	put(6, 202)
	eventually(t, "the follower to see the bucket", func() bool { return f.State().AckedLSN != 0 })
	st := f.State()
	if st.AckedLSN > st.LastEndLSN {
		t.Fatalf("follower state %+v: acknowledged LSN past the last transaction it read", st)
	}
	// The bucket at the follower's head: its acknowledged LSN stands.
	put(3, 300)
	eventually(t, "the follower to take the acknowledged LSN", func() bool { return f.State().AckedLSN == 300 })
	// Ahead again: what the follower said stays said (no LSN goes back), and nothing more.
	put(6, 400)
	put(3, 301) // the marker that the record before it was seen
	eventually(t, "the follower to see the bucket again", func() bool { return f.State().AckedLSN == 301 })
	put(6, 500)
	time.Sleep(200 * time.Millisecond)
	if st := f.State(); st.AckedLSN != 301 || st.LastCommitLSN != 200 || st.LastEndLSN != 201 {
		t.Fatalf("follower state %+v after the bucket went ahead again; want its LSNs kept at 301, 200 and 201", st)
	}
}

// TestOpenFailureLeavesNoSubscription: an Open that fails at any point of its catch-up
// (its context ends) leaves no subscription behind on the connection, which a caller
// retrying Open every few seconds shares.
func TestOpenFailureLeavesNoSubscription(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "", 0)
	stream := newStream()
	w := lead(t, connect(t, srv), stream)
	writeTxs(t, w, 100, 200, func(event.LSN) int { return 100 })
	rc := connect(t, srv)
	// A first Open sets up what the connection keeps for good (its requests' reply
	// subscription).
	openOpts(t, jetstream.Options{Conn: rc, Stream: stream, Indexer: ledgertest.Indexer}).Close()
	base := rc.NumSubscriptions()
	failed := 0
	for d := time.Millisecond; d < 2*time.Second; d *= 2 {
		ctx, cancel := context.WithTimeout(t.Context(), d)
		l, err := jetstream.Open(ctx, jetstream.Options{Conn: rc, Stream: stream, Indexer: ledgertest.Indexer, SpoolDir: t.TempDir()})
		cancel()
		if err == nil {
			l.Close()
		} else {
			failed++
		}
		eventually(t, fmt.Sprintf("the subscriptions of an Open with %v to end", d), func() bool { return rc.NumSubscriptions() == base })
	}
	if failed == 0 {
		t.Fatal("no Open failed: the test tested nothing")
	}
}
