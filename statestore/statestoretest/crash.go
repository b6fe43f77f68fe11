package statestoretest

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/walflow/walflow/statestore"
)

// ErrCrashed is returned by the writes of a [Crashable] after Crash.
var ErrCrashed = errors.New("statestoretest: the process crashed; this write never happened")

// Crashable is a Storage whose writes stop at Crash, as a killed process's would: tests of
// code that saves on a clean stop use it to stop "by crashing" instead, keeping what was
// stored up to then and nothing after. Reads still work, so that the test can inspect the
// storage.
type Crashable struct {
	statestore.Storage
	crashed atomic.Bool
}

// NewCrashable wraps s.
func NewCrashable(s statestore.Storage) *Crashable { return &Crashable{Storage: s} }

// Crash makes every later write fail with [ErrCrashed].
func (c *Crashable) Crash() { c.crashed.Store(true) }

func (c *Crashable) write() error {
	if c.crashed.Load() {
		return ErrCrashed
	}
	return nil
}

// InitRun is the wrapped storage's, until Crash.
func (c *Crashable) InitRun(ctx context.Context, runID string) error {
	if err := c.write(); err != nil {
		return err
	}
	return c.Storage.InitRun(ctx, runID)
}

// SaveSavepoint is the wrapped storage's, until Crash.
func (c *Crashable) SaveSavepoint(ctx context.Context, runID string, sp statestore.Savepoint) error {
	if err := c.write(); err != nil {
		return err
	}
	return c.Storage.SaveSavepoint(ctx, runID, sp)
}

// DeleteOldSavepoints is the wrapped storage's, until Crash.
func (c *Crashable) DeleteOldSavepoints(ctx context.Context, runID string, keep int) error {
	if err := c.write(); err != nil {
		return err
	}
	return c.Storage.DeleteOldSavepoints(ctx, runID, keep)
}

// DeleteRun is the wrapped storage's, until Crash.
func (c *Crashable) DeleteRun(ctx context.Context, runID string) error {
	if err := c.write(); err != nil {
		return err
	}
	return c.Storage.DeleteRun(ctx, runID)
}
