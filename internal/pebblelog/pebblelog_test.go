package pebblelog

import (
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"testing"
)

func TestFatalfInDoBecomesError(t *testing.T) {
	f := &Fatal{Store: "index: store", Dir: "/data/x.index"}
	l := Logger{Log: slog.New(slog.DiscardHandler), Fatal: f}
	err := f.Do(func() error {
		l.Fatalf("pebble: fatal commit error: %v", errors.New("write /data/x.index/000002.log: no space left on device"))
		t.Error("Fatalf returned")
		return nil
	})
	if err == nil {
		t.Fatal("Do returned nil after Fatalf")
	}
	want := "index: store /data/x.index: pebble: fatal commit error: write /data/x.index/000002.log: no space left on device"
	if !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %q, want it to start with %q", err, want)
	}
	if !IsFatal(err) || !errors.Is(f.Err(), err) {
		t.Fatalf("IsFatal(%v) = false or Err() = %v", err, f.Err())
	}
	called := false
	err2 := f.Do(func() error { called = true; return nil })
	if called || err2 != err {
		t.Fatalf("Do after the fatal error ran fn (%v) or returned %v, want the recorded error", called, err2)
	}
}

// Pebble panics with the error itself when a commit's log write fails.
func TestDoRecoversErrorPanic(t *testing.T) {
	f := &Fatal{Store: "index: store", Dir: "/d"}
	err := f.Do(func() error { panic(errors.New("write /d/000007.log: no space left on device")) })
	if !IsFatal(err) || !strings.HasPrefix(err.Error(), "index: store /d: write /d/000007.log: no space left on device") {
		t.Fatalf("Do returned %v, want the recorded fatal error", err)
	}
	if f.Do(func() error { return nil }) != err {
		t.Fatal("Do after the panic did not return the recorded error")
	}
}

func TestDoPassesOtherPanicsAndErrors(t *testing.T) {
	f := &Fatal{Store: "s", Dir: "d"}
	plain := errors.New("plain")
	if err := f.Do(func() error { return plain }); err != plain {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	if f.Err() != nil {
		t.Fatalf("a plain error was recorded as fatal: %v", f.Err())
	}
	defer func() {
		if r := recover(); r != "other" {
			t.Fatalf("recovered %v, want the panic of fn", r)
		}
	}()
	_ = f.Do(func() error { panic("other") })
}

func TestFatalfOutsideDoCallsExit(t *testing.T) {
	got := make(chan error, 1)
	f := &Fatal{Store: "ledger: store", Dir: "/data/l", Exit: func(err error) {
		got <- err
		runtime.Goexit()
	}}
	l := Logger{Log: slog.New(slog.DiscardHandler), Fatal: f}
	// A goroutine of its own stands for Pebble's background flushes and compactions.
	go l.Fatalf("MANIFEST sync failed: %s", "no space left on device")
	err := <-got
	if !strings.HasPrefix(err.Error(), "ledger: store /data/l: MANIFEST sync failed: no space left on device") {
		t.Fatalf("Exit got %q", err)
	}
	if f.Do(func() error { return nil }) != err {
		t.Fatal("Do after a background fatal error did not return it")
	}
}
