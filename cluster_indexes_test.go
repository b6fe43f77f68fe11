package walflow_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/pgtest"
)

// writeLog is the shared index store's successful writes, checked as they happen: no write
// stores an entry at or before the stored checkpoint, or moves the checkpoint back, as a
// deposed holder writing behind the new one would.
type writeLog struct {
	mu         sync.Mutex
	checkpoint map[string]event.Position // indexer → stored checkpoint
	writers    map[string]map[string]int // indexer → node → successful writes with entries
	violations []string
}

// recordingStore is one node's view of the shared store, writing through the log.
type recordingStore struct {
	index.SharedStore
	node string
	log  *writeLog
}

func (s recordingStore) Write(ctx context.Context, batches ...index.Batch) error {
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	if err := s.SharedStore.Write(ctx, batches...); err != nil {
		return err
	}
	for _, b := range batches {
		cp := s.log.checkpoint[b.Indexer]
		for _, e := range b.Entries {
			if e.Position <= cp {
				s.log.violations = append(s.log.violations, fmt.Sprintf("%s stored %s entry %q at %d, at or before the stored checkpoint %d", s.node, b.Indexer, e.Value, e.Position, cp))
			}
		}
		if b.State.Checkpoint < cp {
			s.log.violations = append(s.log.violations, fmt.Sprintf("%s moved %s's checkpoint back from %d to %d", s.node, b.Indexer, cp, b.State.Checkpoint))
		}
		s.log.checkpoint[b.Indexer] = b.State.Checkpoint
		if len(b.Entries) > 0 {
			if s.log.writers[b.Indexer] == nil {
				s.log.writers[b.Indexer] = map[string]int{}
			}
			s.log.writers[b.Indexer][s.node]++
		}
	}
	return nil
}

// words is a custom indexer with several values per event: the words of a comment's body.
var words = index.Indexer{Name: "words", Version: "1", Func: func(e *event.Event, dst []string) []string {
	if e.Name != "comments" || e.NewRecord == nil {
		return dst
	}
	v, ok := e.NewRecord.Get("body")
	if !ok {
		return dst
	}
	s, _ := v.Text()
	return append(dst, strings.Fields(s)...)
}}

// TestClusterIndexes runs three engines with custom indexes on one database and one NATS
// server while a writer commits throughout. One node computes the indexes (the cluster
// status says which) and the others follow the shared store; the holder is stopped, another
// takes over from the stored checkpoint, and at the end every node's indexes equal their
// recomputation from the stream, no node stored behind another, and each follower's
// subscriber got every position once, in order, across the takeover.
func TestClusterIndexes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	lc := startNATS(t, 1)
	pcfg, _ := pgx.ParseConfig(dsn)
	wlog := &writeLog{checkpoint: map[string]event.Position{}, writers: map[string]map[string]int{}}
	indexers := []index.Indexer{index.Field("by_post", "post_id"), words}
	ledgerDir := filepath.Join(t.TempDir(), "ledger") // its .channels/<node> sibling holds each node's channel index
	start := func(name string) *clusterNode {
		eng, err := walflow.Open(ctx, walflow.Config{
			DatabaseURL: dsn, Slot: pcfg.Database, LedgerDir: ledgerDir,
			Tables:         []channel.Table{{Name: "posts"}, {Name: "comments"}},
			Indexers:       indexers,
			StatusInterval: 200 * time.Millisecond,
			Logger:         testLogger(t).With(slog.String("node", name)),
			Cluster: &cluster.Config{URLs: lc.URLs(), NodeName: name, Replicas: 1,
				Heartbeat: 500 * time.Millisecond, NodeTTL: 3 * time.Second},
		})
		if err == nil {
			err = walflow.WrapIndexStore(eng, func(s index.SharedStore) index.SharedStore {
				return recordingStore{SharedStore: s, node: name, log: wlog}
			})
		}
		return runClusterNode(t, name, eng, err)
	}
	nodes := []*clusterNode{start("node-1"), start("node-2"), start("node-3")}

	// Changes committed before the slot exists are not streamed: wait for a leader.
	poll(t, "a node to stream the slot", func() bool {
		return slices.ContainsFunc(nodes, func(n *clusterNode) bool { return n.eng.Status(ctx).Streaming })
	})
	// A writer commits a comment at a time until stopped.
	var stopWriting atomic.Bool
	written := make(chan int, 1)
	go func() {
		n := 0
		defer func() { written <- n }()
		for !stopWriting.Load() {
			body := fmt.Sprintf("w%d v%d", n%3, n%5)
			if n%4 == 3 {
				body = ""
			}
			if _, err := conn.Exec(ctx, `INSERT INTO comments VALUES ($1, $2, $3)`, n, n%7, body); err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			n++
			time.Sleep(5 * time.Millisecond)
		}
	}()

	// One node computes both indexes; the others follow.
	holder := func(ns []*clusterNode) *clusterNode {
		for _, n := range ns {
			if c := n.eng.Status(ctx).Cluster; c != nil && len(c.Indexes) == 2 && c.Indexes[0].Node == c.Indexes[1].Node {
				for _, m := range ns {
					if m.name == c.Indexes[0].Node {
						return m
					}
				}
			}
		}
		return nil
	}
	var first *clusterNode
	poll(t, "one node to compute the indexes", func() bool { first = holder(nodes); return first != nil })
	rest := slices.DeleteFunc(slices.Clone(nodes), func(n *clusterNode) bool { return n == first })
	subs := map[*clusterNode]*index.Subscription{}
	for _, n := range rest {
		poll(t, n.name+" to follow the indexes", func() bool {
			sts, err := n.eng.Indexes().Status(ctx)
			return err == nil && sts[0].Following && sts[1].Following && sts[0].Stored
		})
		sub, err := n.eng.Indexes().Subscribe(ctx, []string{"words"}, &index.SubscribeOpts{Buffer: 100000, Empty: true})
		if err != nil {
			t.Fatal(err)
		}
		subs[n] = sub
	}
	poll(t, "the indexes to pass 50 events", func() bool {
		cp, _ := first.eng.Indexes().Checkpoint("words")
		return cp >= 50
	})
	if err := first.stop(); err != nil {
		t.Fatalf("stop the indexes' holder %s: %v", first.name, err)
	}
	var second *clusterNode
	poll(t, "another node to compute the indexes", func() bool { second = holder(rest); return second != nil })
	poll(t, second.name+" to index 50 more events", func() bool {
		cp, _ := second.eng.Indexes().Checkpoint("words")
		return cp >= 120
	})
	stopWriting.Store(true)
	n := <-written
	for _, node := range rest {
		poll(t, node.name+" to read every comment", func() bool { return node.eng.Ledger().State().Head >= event.Position(n) })
	}
	head := rest[0].eng.Ledger().State().Head
	evs, err := rest[0].eng.Ledger().Read(ctx, 0, int(head)+10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != n || evs[len(evs)-1].Position != head {
		t.Fatalf("the stream holds %d events through %d; the writer committed %d", len(evs), head, n)
	}
	// The recomputation: each indexer's positions by value, and each event's words.
	want := map[string]map[string][]event.Position{}
	wordsAt := map[event.Position][]string{}
	for _, ix := range indexers {
		want[ix.Name] = map[string][]event.Position{}
		for i := range evs {
			vs := ix.Func(&evs[i], nil)
			for _, v := range vs {
				want[ix.Name][v] = append(want[ix.Name][v], evs[i].Position)
			}
			if ix.Name == "words" {
				wordsAt[evs[i].Position] = slices.Sorted(slices.Values(vs))
			}
		}
	}
	for _, node := range rest {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		for _, ix := range indexers {
			if err := node.eng.Indexes().Wait(wctx, ix.Name, head); err != nil {
				t.Fatalf("%s: Wait(%s, %d): %v", node.name, ix.Name, head, err)
			}
			for _, v := range slices.Sorted(maps.Keys(want[ix.Name])) {
				ps, err := node.eng.Indexes().Positions(ctx, ix.Name, v, 0, 1_000_000)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(ps, want[ix.Name][v]) {
					t.Fatalf("%s: %s %q = %v; want %v", node.name, ix.Name, v, ps, want[ix.Name][v])
				}
			}
		}
		cancel()
		// The subscriber saw each position once, in order, from its first, with its words.
		sub := subs[node]
		var next event.Position
		for next != head {
			select {
			case note := <-sub.Notifications():
				if next != 0 && note.Position != next+1 {
					t.Fatalf("%s: notification at %d after %d", node.name, note.Position, next)
				}
				if got := slices.Sorted(slices.Values(note.Values)); !slices.Equal(got, wordsAt[note.Position]) {
					t.Fatalf("%s: notification %+v; want the words %v", node.name, note, wordsAt[note.Position])
				}
				next = note.Position
			case <-time.After(time.Minute):
				t.Fatalf("%s: notified through %d of %d", node.name, next, head)
			}
		}
	}
	wlog.mu.Lock()
	defer wlog.mu.Unlock()
	if len(wlog.violations) > 0 {
		t.Fatalf("writes behind the stored checkpoint:\n%s", strings.Join(wlog.violations, "\n"))
	}
	for _, ix := range indexers {
		if w := wlog.writers[ix.Name]; w[first.name] == 0 || w[second.name] == 0 {
			t.Fatalf("%s was written by %v; want by %s, then %s", ix.Name, w, first.name, second.name)
		}
	}
	// Only the live holder computes; the other live node follows.
	for _, node := range rest {
		sts, err := node.eng.Indexes().Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if sts[0].Following != (node != second) {
			t.Fatalf("%s: Following = %v; %s computes", node.name, sts[0].Following, second.name)
		}
	}
}

// failOnceStore fails its first Write that has entries, as the shared store does when
// PostgreSQL is unreachable for a moment.
type failOnceStore struct {
	index.SharedStore
	failed *atomic.Bool
}

func (s failOnceStore) Write(ctx context.Context, batches ...index.Batch) error {
	for _, b := range batches {
		if len(b.Entries) > 0 && s.failed.CompareAndSwap(false, true) {
			return errors.New("index/pg: write: read tcp 127.0.0.1: connection reset by peer")
		}
	}
	return s.SharedStore.Write(ctx, batches...)
}

// TestClusterIndexesWriteFails: a passing failure of the shared index store does not stop
// the node computing the indexes: it releases their lock, takes it again after a backoff,
// and indexes every event; Run then ends without error.
func TestClusterIndexesWriteFails(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	var failed atomic.Bool
	cfg := oneNodeConfig(t, dsn, startNATS(t, 1))
	cfg.Indexers = []index.Indexer{words}
	eng, err := walflow.Open(ctx, cfg)
	if err == nil {
		err = walflow.WrapIndexStore(eng, func(s index.SharedStore) index.SharedStore {
			return failOnceStore{SharedStore: s, failed: &failed}
		})
	}
	node := runClusterNode(t, "node-1", eng, err)
	poll(t, "the node to stream the slot", func() bool { return eng.Status(ctx).Streaming })
	for i := range 5 {
		if _, err := conn.Exec(ctx, `INSERT INTO comments VALUES ($1, 1, $2)`, i, fmt.Sprintf("w%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, "the ledger to hold the 5 comments", func() bool { return eng.Ledger().State().Head >= 5 })
	head := eng.Ledger().State().Head
	poll(t, "the index to pass the failed write and index every comment", func() bool {
		cp, _ := eng.Indexes().Checkpoint("words")
		return failed.Load() && cp >= head
	})
	for i := range 5 {
		ps, err := eng.Indexes().Positions(ctx, "words", fmt.Sprintf("w%d", i), 0, 10)
		if err != nil || len(ps) != 1 {
			t.Fatalf("words w%d: %v, %v; want one position", i, ps, err)
		}
	}
	if err := node.stop(); err != nil {
		t.Fatalf("the node stopped with %v after a passing index store failure; want nil", err)
	}
}
