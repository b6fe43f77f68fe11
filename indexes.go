package walflow

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexdisk "github.com/walflow/walflow/index/disk"
	indexmemory "github.com/walflow/walflow/index/memory"
)

// openIndexes opens the index store and the runner of Config.Indexers: in IndexDir beside a
// disk ledger, in memory beside a memory ledger.
func (e *Engine) openIndexes(ctx context.Context) error {
	if len(e.cfg.Indexers) == 0 {
		return nil
	}
	var store index.Store
	if e.cfg.MemoryLedger {
		store = indexmemory.New()
	} else {
		d, err := indexdisk.Open(ctx, e.cfg.IndexDir, &indexdisk.Options{Logger: e.cfg.Logger})
		if err != nil {
			return fmt.Errorf("walflow: indexes: %w", err)
		}
		e.idxStore = d
		store = d
	}
	// An index's failure stops Run, whose error says it: only a reporter of the user's
	// hears of it too, not the default one that would log it a second time.
	r, err := index.New(index.Config{Ledger: e.led, Store: store, Indexers: e.cfg.Indexers, Logger: e.cfg.Logger, Reporter: e.cfg.ErrorReporter})
	if err != nil {
		return fmt.Errorf("walflow: indexes: %w", err)
	}
	e.idx = r
	return nil
}

// Indexes returns the runner of Config.Indexers (Read, Subscribe, Wait, Status), or nil when
// none is configured.
func (e *Engine) Indexes() *index.Runner { return e.idx }

// indexesCheckpoint is the lowest checkpoint of the indexes, which retention does not pass:
// an index behind the tail would lose the history it had not indexed yet.
func (e *Engine) indexesCheckpoint(ctx context.Context) (event.Position, bool) {
	if e.idx == nil {
		return 0, false
	}
	sts, err := e.idx.Status(ctx)
	if err != nil || len(sts) == 0 {
		return 0, false
	}
	low := sts[0].Checkpoint
	for _, s := range sts[1:] {
		low = min(low, s.Checkpoint)
	}
	return low, true
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
