package walflow

import (
	"time"

	"github.com/walflow/walflow/index"
)

// SetRetentionInterval makes Run apply Config.Retention every d (and first after d, when
// shorter than the usual first delay). Call it before Run.
func SetRetentionInterval(e *Engine, d time.Duration) { e.retentionEvery = d }

// RetentionRounds returns how many rounds of retention Run has done.
func RetentionRounds(e *Engine) uint64 { return e.retentionRounds.Load() }

// Streaming reports whether e streams the slot now, as Status().Streaming does, without
// the slot query Status makes (which waits on PostgreSQL).
func Streaming(e *Engine) bool { return e.src.Stats().Connected.Load() }

// WrapIndexStore remakes a cluster engine's index runner on wrap of its shared index store.
// Call it before Run.
func WrapIndexStore(e *Engine, wrap func(index.SharedStore) index.SharedStore) error {
	return e.newIndexRunner(wrap(e.clu.idxStore))
}
