package jetstream_test

import (
	"errors"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow/ledger/jetstream"
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
