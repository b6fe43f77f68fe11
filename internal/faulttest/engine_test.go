package faulttest

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
)

// engineRun is an in-process engine running in its own goroutine.
type engineRun struct {
	t      *testing.T
	eng    *walflow.Engine
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's result, set before done is closed
}

// startEngine opens an engine on dsn with a disk ledger in ledgerDir and runs it until
// stop is called or the test ends.
func startEngine(t *testing.T, dsn, slot, ledgerDir string, tables ...string) *engineRun {
	t.Helper()
	tabs := make([]channel.Table, len(tables))
	for i, name := range tables {
		tabs[i] = channel.Table{Name: name}
	}
	eng, err := walflow.Open(t.Context(), walflow.Config{
		DatabaseURL: dsn, Slot: slot, Tables: tabs, LedgerDir: ledgerDir,
		StatusInterval: 200 * time.Millisecond, Logger: testLogger(t, slog.LevelInfo),
	})
	if err != nil {
		t.Fatalf("open the engine: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &engineRun{t: t, eng: eng, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = eng.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
		_ = eng.Close()
	})
	return r
}

// waitStreaming waits until the engine streams from its slot.
func (r *engineRun) waitStreaming(timeout time.Duration) {
	r.t.Helper()
	poll(r.t, timeout, "the engine to stream", func() (bool, string, error) {
		select {
		case <-r.done:
			return false, "", errors.Join(errors.New("Run returned"), r.err)
		default:
		}
		ctx, cancel := context.WithTimeout(r.t.Context(), 10*time.Second)
		defer cancel()
		return r.eng.Status(ctx).Streaming, "not streaming", nil
	})
}

// stop ends Run, expecting a clean stop, and closes the engine.
func (r *engineRun) stop() {
	r.t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		r.t.Fatal("Run did not return within 60s of its context ending")
	}
	if r.err != nil {
		r.t.Fatalf("Run: %v", r.err)
	}
	if err := r.eng.Close(); err != nil {
		r.t.Fatalf("close the engine: %v", err)
	}
}
