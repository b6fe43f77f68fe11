package walflow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexdisk "github.com/walflow/walflow/index/disk"
	indexmemory "github.com/walflow/walflow/index/memory"
	indexpg "github.com/walflow/walflow/index/pg"
	"github.com/walflow/walflow/internal/clustershare"
	"github.com/walflow/walflow/retry"
)

// openIndexes opens the index store and the runner of Config.Indexers: in IndexDir beside a
// disk ledger, in memory beside a memory ledger, and in the database (index/pg, shared by
// the nodes) in a cluster.
func (e *Engine) openIndexes(ctx context.Context) error {
	if len(e.cfg.Indexers) == 0 {
		return nil
	}
	var store index.Store
	switch {
	case e.clu != nil:
		// The tables are made at the first use, once Run has found the database up.
		pool := e.pool
		e.clu.idxStore = &instanceStore{prefix: clustershare.IndexPrefix(e.cfg.Slot), open: func(ctx context.Context) (index.SharedStore, error) {
			return indexpg.Open(ctx, pool, nil)
		}}
		store = e.clu.idxStore
	case e.cfg.MemoryLedger:
		store = indexmemory.New()
	default:
		d, err := indexdisk.Open(ctx, e.cfg.IndexDir, &indexdisk.Options{Logger: e.cfg.Logger})
		if err != nil {
			return fmt.Errorf("walflow: indexes: %w", err)
		}
		e.idxStore = d
		store = d
	}
	return e.newIndexRunner(store)
}

// newIndexRunner makes the runner of Config.Indexers on store.
func (e *Engine) newIndexRunner(store index.Store) error {
	// An index's failure stops Run, whose error says it: only a reporter of the user's
	// hears of it too, not the default one that would log it a second time.
	rep := e.cfg.ErrorReporter
	if rep != nil && e.clu != nil {
		rep = unfencedReporter{rep}
	}
	r, err := index.New(index.Config{Ledger: e.led, Store: store, Indexers: e.cfg.Indexers, Logger: e.cfg.Logger, Reporter: rep})
	if err != nil {
		return fmt.Errorf("walflow: indexes: %w", err)
	}
	e.idx = r
	return nil
}

// Indexes returns the runner of Config.Indexers (Read, Subscribe, Wait, Status), or nil when
// none is configured. In a cluster it answers on every node: one node computes the indexes
// into the store the nodes share, and the others follow it (index.Runner.Follow; Status
// reports Following).
func (e *Engine) Indexes() *index.Runner { return e.idx }

// indexesCheckpoint is the lowest checkpoint of the indexes, which retention does not pass:
// an index behind the tail would lose the history it had not indexed yet. ok is false when
// there are no indexes. An error (the shared store of a cluster is unreachable) means the
// checkpoints are unknown: retention must then not truncate.
func (e *Engine) indexesCheckpoint(ctx context.Context) (event.Position, bool, error) {
	if e.idx == nil {
		return 0, false, nil
	}
	sts, err := e.idx.Status(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("read the indexes' checkpoints: %w", err)
	}
	if len(sts) == 0 {
		return 0, false, nil
	}
	low := sts[0].Checkpoint
	for _, s := range sts[1:] {
		low = min(low, s.Checkpoint)
	}
	return low, true, nil
}

var (
	indexCheckpointDesc = prometheus.NewDesc("walflow_index_checkpoint_position", "Ledger position through which the index has indexed every event.", []string{"index"}, nil)
	indexLagDesc        = prometheus.NewDesc("walflow_index_lag_events", "Ledger positions between the head and the index's checkpoint.", []string{"index"}, nil)
)

// indexCollector exports each index's checkpoint and lag.
type indexCollector struct{ e *Engine }

func (c indexCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- indexCheckpointDesc
	ch <- indexLagDesc
}

func (c indexCollector) Collect(ch chan<- prometheus.Metric) {
	sts, err := c.e.idx.Status(context.Background())
	if err != nil {
		c.e.log.Warn("index status for /metrics", slog.Any("error", err))
		return
	}
	for _, s := range sts {
		ch <- prometheus.MustNewConstMetric(indexCheckpointDesc, prometheus.GaugeValue, float64(s.Checkpoint), s.Indexer)
		ch <- prometheus.MustNewConstMetric(indexLagDesc, prometheus.GaugeValue, float64(s.Lag), s.Indexer)
	}
}

// instanceStore is the share of a store of several instances that holds one instance's
// indexes: it prefixes their names (clustershare.Prefixed). It opens the store at its first
// use, and again at the next one when that failed.
type instanceStore struct {
	prefix string
	open   func(context.Context) (index.SharedStore, error)

	mu sync.Mutex
	s  index.FenceChecker
}

// store returns the instance's share of the store, opening the store when it is not open
// yet.
func (s *instanceStore) store(ctx context.Context) (index.FenceChecker, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s == nil {
		st, err := s.open(ctx)
		if err != nil {
			return nil, fmt.Errorf("open the index store in the database: %w", err)
		}
		s.s = clustershare.Prefixed{Store: st, Prefix: s.prefix}
	}
	return s.s, nil
}

func (s *instanceStore) State(ctx context.Context, indexer string) (index.State, bool, error) {
	st, err := s.store(ctx)
	if err != nil {
		return index.State{}, false, err
	}
	return st.State(ctx, indexer)
}

func (s *instanceStore) Write(ctx context.Context, batches ...index.Batch) error {
	st, err := s.store(ctx)
	if err != nil {
		return err
	}
	return st.Write(ctx, batches...)
}

func (s *instanceStore) Positions(ctx context.Context, indexer, value string, after event.Position, limit int) ([]event.Position, error) {
	st, err := s.store(ctx)
	if err != nil {
		return nil, err
	}
	return st.Positions(ctx, indexer, value, after, limit)
}

func (s *instanceStore) Entries(ctx context.Context, indexer string, fn func(index.Entry) error) error {
	st, err := s.store(ctx)
	if err != nil {
		return err
	}
	return st.Entries(ctx, indexer, fn)
}

func (s *instanceStore) EntriesSince(ctx context.Context, indexer string, after, through event.Position, fn func(index.Entry) error) error {
	st, err := s.store(ctx)
	if err != nil {
		return err
	}
	return st.EntriesSince(ctx, indexer, after, through, fn)
}

func (s *instanceStore) CheckFence(ctx context.Context, indexer string) error {
	st, err := s.store(ctx)
	if err != nil {
		return err
	}
	return st.CheckFence(ctx, indexer)
}

func (s *instanceStore) Reset(ctx context.Context, indexer string) error {
	st, err := s.store(ctx)
	if err != nil {
		return err
	}
	return st.Reset(ctx, indexer)
}

// unfencedReporter reports the halts of a cluster node's indexes that halt the engine: the
// permanent ones (an indexer's Func failed). A node that the shared store fenced off
// (another node took over) follows it, and one that failed otherwise (PostgreSQL or
// JetStream unreachable) contends for the indexes again after a backoff (runClusterIndexes).
type unfencedReporter struct{ retry.Reporter }

func (r unfencedReporter) Halted(ctx context.Context, c retry.Consumer, e *event.Event, err error) {
	if errors.Is(err, indexpg.ErrFenced) || !retry.IsPermanent(err) {
		return
	}
	r.Reporter.Halted(ctx, c, e, err)
}
