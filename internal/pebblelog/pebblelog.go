// Package pebblelog sends Pebble's log messages to slog, for walflow's stores on Pebble
// (the Pebble ledger, the indexes, the state store), and turns Pebble's fatal errors into
// errors of the store.
//
// Pebble calls its logger's Fatalf when it cannot continue: a write to its write-ahead
// log or MANIFEST failed (a full disk, an I/O error), so its commit pipeline or version
// state is broken. Pebble does not expect Fatalf to return: a commit whose log write failed
// would report success if it did. So Fatalf never returns here either:
//
//   - on a goroutine inside [Fatal.Do] (a store's write), it panics with a private value
//     that Do recovers and returns as the store's error (Do does the same with Pebble's
//     own panics with an error value, raised when a commit's log write fails);
//   - on any other goroutine (Pebble's own flushes and compactions), which no caller can
//     be told about, it writes "walflow: <error>" to stderr and exits the process with
//     status 1 (or calls [Fatal.Exit] if set).
//
// Either way the error names the store and its directory, is recorded, and every later
// [Fatal.Do] returns it without calling Pebble: the store is failed for good and must be
// reopened (by a new process) after the cause is fixed. Nothing that was not committed
// before the failure is reported as committed.
package pebblelog

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
)

// Logger is a pebble.Logger: information at debug level, errors at error level, fatal
// errors handed to Fatal (see the package doc).
type Logger struct {
	Log *slog.Logger
	// Fatal records Pebble's fatal error; nil makes Fatalf behave as on a goroutine outside
	// Fatal.Do (log, then exit the process with status 1).
	Fatal *Fatal
}

// Infof logs at debug level.
func (p Logger) Infof(format string, args ...any) {
	p.Log.Debug("pebble: " + fmt.Sprintf(format, args...))
}

// Errorf logs at error level.
func (p Logger) Errorf(format string, args ...any) {
	p.Log.Error("pebble: " + fmt.Sprintf(format, args...))
}

// Fatalf logs at error level, records the error in p.Fatal and does not return (see the
// package doc).
func (p Logger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	f := p.Fatal
	if f == nil {
		f = &Fatal{Store: "pebble store"}
	}
	err := f.record(msg)
	p.Log.Error("pebble cannot continue", "store", f.Store, "dir", f.Dir, "err", msg)
	if inDo() {
		panic(fatalPanic{err})
	}
	if f.Exit != nil {
		f.Exit(err)
		select {} // Exit must not return; if it does, this goroutine stays stopped.
	}
	fmt.Fprintf(os.Stderr, "walflow: %v\n", err)
	os.Exit(1)
}

// Fatal holds the fatal error of one Pebble store. The zero value with Store and Dir set
// is ready; it is safe for concurrent use.
type Fatal struct {
	// Store names the store at the start of its errors ("index: store", "ledger: store").
	Store string
	// Dir is the store's directory, named in errors.
	Dir string
	// Exit, when set, is called instead of writing to stderr and exiting the process when
	// Pebble fails on a goroutine outside Do. It must not return (tests block in it).
	Exit func(error)

	mu  sync.Mutex
	err error
}

// Error is a store's fatal error: Pebble could not continue after a failed write.
type Error struct {
	Store, Dir string
	Msg        string // Pebble's message, which names the failed file and the cause
}

// IsFatal reports whether err is or wraps an *Error.
func IsFatal(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %s (Pebble cannot continue; free space or fix the disk, then start walflow again)", e.Store, e.Dir, e.Msg)
}

type fatalPanic struct{ err error }

func (f *Fatal) record(msg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = &Error{Store: f.Store, Dir: f.Dir, Msg: msg}
	}
	return f.err
}

// Err returns the recorded fatal error, or nil.
func (f *Fatal) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Do runs fn, a call into Pebble that may fail fatally, unless a fatal error was recorded
// before, which it returns without running fn. A fatal error while fn runs (Fatalf, or a
// panic with an error value, which Pebble raises when its log write fails) ends fn and is
// recorded and returned. Other panics pass through.
//
//go:noinline
func (f *Fatal) Do(fn func() error) (err error) {
	if err := f.Err(); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			switch v := r.(type) {
			case fatalPanic:
				err = v.err
			case error:
				// Pebble also panics with the error itself when its log write fails in a
				// commit (DB.commitWrite): it cannot continue either.
				err = f.record(v.Error())
			default:
				panic(r)
			}
		}
	}()
	return fn()
}

// doFrame is the name of Do's frame in a stack trace.
const doFrame = "internal/pebblelog.(*Fatal).Do"

// inDo reports whether the calling goroutine is inside Fatal.Do.
func inDo() bool {
	pcs := make([]uintptr, 1024)
	n := runtime.Callers(2, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	for {
		fr, more := frames.Next()
		if strings.HasSuffix(fr.Function, doFrame) {
			return true
		}
		if !more {
			return false
		}
	}
}
