package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexdisk "github.com/walflow/walflow/index/disk"
	"github.com/walflow/walflow/internal/configfile"
	"github.com/walflow/walflow/internal/lockholder"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/disk"
	"github.com/walflow/walflow/ledger/pebble"
	"github.com/walflow/walflow/operator"
)

// localFiles are the ledger of a configuration, and its index store, opened by a command
// (ledger read, index rebuild, index status) in its own process. A disk ledger is opened
// read-only, which works beside a running walflow; a pebble ledger and the index store
// are locked by the process that holds them, so those work only while no walflow runs.
// With a cluster: section, they are the cluster's ledger stream and its index store in
// the database instead (see openCluster), which work beside running nodes.
type localFiles struct {
	cmd    string // "ledger read", for errors
	cfg    *configfile.Config
	path   string // the configuration file
	router *channel.Router
	led    ledger.Ledger
	store  index.Store      // nil unless opened withIndexes
	disk   *indexdisk.Store // store, when it is the disk store
	clu    *clusterFiles    // set with a cluster: section
}

// openLocal opens the ledger of configuration c (read from path) for command cmd, and its
// index store when withIndexes is set. The caller closes them.
// routerError is openDiskLedger's error when the configured tables make no router.
type routerError struct{ err error }

func (e *routerError) Error() string { return "tables: " + e.err.Error() }

// openDiskLedger opens the configured ledger files with the configured tables' router, as
// walflow run does: the ledger indexes channels with it. A disk ledger is opened read-only
// (as it was when opened, beside a running walflow); a pebble ledger for writing, which
// needs its lock. Its logs are discarded.
func openDiskLedger(ctx context.Context, c *configfile.Config) (*channel.Router, ledger.Ledger, error) {
	router, err := channel.NewRouter(c.Engine.Tables)
	if err != nil {
		return nil, nil, &routerError{err}
	}
	quiet := slog.New(slog.DiscardHandler)
	if c.Engine.LedgerBackend == "pebble" {
		led, err := pebble.Open(ctx, c.Engine.LedgerDir, &pebble.Options{Indexer: router.Channels, Logger: quiet})
		if err != nil {
			return nil, nil, err
		}
		return router, led, nil
	}
	led, err := disk.OpenReadOnly(ctx, c.Engine.LedgerDir, &disk.Options{Indexer: router.Channels, Logger: quiet})
	if err != nil {
		return nil, nil, err
	}
	return router, led, nil
}

func openLocal(ctx context.Context, cmd string, c *configfile.Config, path string, withIndexes, withChannels bool) (*localFiles, error) {
	if c.Engine.Cluster != nil {
		return openCluster(ctx, cmd, c, path, withIndexes, withChannels)
	}
	if c.Engine.MemoryLedger {
		return nil, usagef("%s: ledger.backend is memory in %s: that ledger lives only inside walflow run, so there are no files to read", cmd, path)
	}
	dir := c.Engine.LedgerDir
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: the ledger %s does not exist yet; walflow run --config %s creates it", cmd, dir, path)
	}
	router, led, err := openDiskLedger(ctx, c)
	var re *routerError
	switch {
	case errors.As(err, &re):
		return nil, fmt.Errorf("%s: tables: %w", cmd, re.err)
	case err != nil:
		return nil, lockedError(cmd, "ledger", dir, err)
	}
	quiet := slog.New(slog.DiscardHandler)
	f := &localFiles{cmd: cmd, cfg: c, path: path, router: router, led: led}
	if withIndexes {
		idir := indexDir(c)
		store, err := indexdisk.Open(ctx, idir, &indexdisk.Options{Logger: quiet})
		if err != nil {
			led.Close()
			return nil, lockedError(cmd, "index", idir, err)
		}
		f.store, f.disk = store, store
	}
	return f, nil
}

// indexDir is the directory of the configuration's index store, as walflow run uses it.
func indexDir(c *configfile.Config) string {
	return cmp.Or(c.Engine.IndexDir, c.Engine.LedgerDir+".index")
}

// lockedError explains a failure to open the ledger or index files at dir: when another
// process (or this one) holds them, that is a running walflow, and the error names it.
func lockedError(cmd, what, dir string, err error) error {
	if holder, ok := lockHolder(dir, err); ok {
		return &inUseError{cmd: cmd, what: what, dir: dir, holder: holder}
	}
	return fmt.Errorf("%s: %w", cmd, err)
}

// inUseError is the failure to open files a running walflow holds.
type inUseError struct {
	cmd, what, dir, holder string
}

func (e *inUseError) Error() string {
	return fmt.Sprintf("%s: the %s %s is in use by %s; stop walflow run first: %s opens the files itself", e.cmd, e.what, e.dir, e.holder, e.cmd)
}

// lockHolder reports whether err, from opening the ledger or the index store at dir, is a
// failure to lock the directory, and describes the process holding it: `process 4242
// (walflow run --config walflow.yaml)`.
func lockHolder(dir string, err error) (string, bool) {
	if iu := (*ledger.InUseError)(nil); errors.As(err, &iu) {
		return iu.Holder(), true
	}
	h, ok := lockholder.Pebble(dir, err)
	return h.String(), ok
}

// Close closes the index store and the ledger, and in a cluster the connections.
func (f *localFiles) Close() error {
	var errs []error
	if f.disk != nil {
		errs = append(errs, f.disk.Close())
	}
	if f.led != nil {
		errs = append(errs, f.led.Close())
	}
	if f.clu != nil {
		f.clu.close()
	}
	return errors.Join(errs...)
}

// indexNames lists the configured indexes.
func indexNames(c *configfile.Config) []string {
	names := make([]string, len(c.Engine.Indexers))
	for i, ix := range c.Engine.Indexers {
		names[i] = ix.Name
	}
	return names
}

// findIndex returns the configured index called name, or a usage error listing the names.
func findIndex(cmd string, c *configfile.Config, path, name string) (index.Indexer, error) {
	for _, ix := range c.Engine.Indexers {
		if ix.Name == name {
			return ix, nil
		}
	}
	names := indexNames(c)
	if len(names) == 0 {
		return index.Indexer{}, usagef("%s: %s configures no indexes; add an indexes: block, like indexes: {by_user: {field: user_id}} (walflow.example.yaml shows one)", cmd, path)
	}
	return index.Indexer{}, unknownName(cmd, "index", "indexes", name, "in "+path, names)
}

// runner returns a runner of indexers over the opened ledger and index store.
func (f *localFiles) runner(indexers []index.Indexer) (*index.Runner, error) {
	r, err := index.New(index.Config{Ledger: f.led, Store: f.store, Indexers: indexers})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.cmd, err)
	}
	return r, nil
}

// progressEvery is how often catchUp reports progress.
const progressEvery = 100 * time.Millisecond

// catchUp runs r until each of its indexers has indexed the ledger's head as it was when
// catchUp was called (indexing what walflow run had not, or rebuilding what was reset),
// then stops it. progress, when set, is called with each indexer's progress at the start,
// every progressEvery and once finished, unless every indexer had indexed the head already.
func (f *localFiles) catchUp(ctx context.Context, r *index.Runner, progress operator.ProgressFunc) error {
	head := f.led.State().Head
	start, err := r.Status(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", f.cmd, err)
	}
	// from is where each indexer starts: its stored checkpoint, or the tail when it has
	// none (a rebuild).
	from := map[string]event.Position{}
	behind := false
	for _, s := range start {
		from[s.Indexer] = f.led.State().Tail
		if s.Stored && s.Checkpoint <= head {
			from[s.Indexer] = s.Checkpoint
		}
		behind = behind || !s.Stored || s.Checkpoint != head
	}
	if !behind {
		progress = nil // nothing to index, nothing to show
	}
	started := time.Now()
	report := func(sts []index.Status, finished bool) {
		if progress == nil {
			return
		}
		now := time.Now()
		for _, s := range sts {
			if s.Phase != index.Stopped && s.Checkpoint < from[s.Indexer] {
				from[s.Indexer] = s.Since // rebuilt after all (its version changed)
			}
			base := min(head, from[s.Indexer])
			cp := min(head, max(s.Checkpoint, base))
			progress(operator.BackfillProgress{
				Operator: s.Indexer, Entity: "events", Done: int64(cp - base), Total: int64(head - base),
				Started: started, At: now, Finished: finished,
			})
		}
	}
	report(start, false)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- r.Run(runCtx) }()
	caught := make(chan error, 1)
	go func() {
		for _, s := range start {
			if err := r.Wait(runCtx, s.Indexer, head); err != nil {
				caught <- err
				return
			}
		}
		caught <- nil
	}()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		select {
		case err := <-caught:
			cancel()
			runErr := <-ran
			if err != nil || runErr != nil {
				return fmt.Errorf("%s: index the ledger: %w", f.cmd, cmp.Or(runErr, err))
			}
			// Stopped: Status reads the stored checkpoints.
			sts, err := r.Status(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", f.cmd, err)
			}
			report(sts, true)
			return nil
		case err := <-ran:
			cancel()
			<-caught
			if err == nil {
				err = ctx.Err()
			}
			return fmt.Errorf("%s: index the ledger: %w", f.cmd, err)
		case <-tick.C:
			if sts, err := r.Status(ctx); err == nil {
				report(sts, false)
			}
		}
	}
}
