// Package lockholder tells who holds the lock of a Pebble directory, so that a failure to
// open one can name the process in the way instead of printing errno's words.
//
// Pebble locks a directory twice: in a table of the process's own open directories, and
// with an fcntl write lock on the file LOCK in it, which the kernel releases when the
// holding process exits. A failure of the first is the current process; for the second,
// F_GETLK reports the holding process's id.
package lockholder

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Holder is the process holding a directory's lock.
type Holder struct {
	// PID is the process's id; 0 when it could not be learnt (the holder exited between
	// the failure and the question, or the platform cannot tell).
	PID int
	// Command is the process's command line, its arguments separated by spaces; "" when it
	// could not be read (another platform than Linux, or the process is gone).
	Command string
}

// String describes the holder for an error message: `process 4242 (walflow run --config
// walflow.yaml)`, `process 4242`, or `another process` when the id is unknown.
func (h Holder) String() string {
	switch {
	case h.PID == 0:
		return "another process"
	case h.Command == "":
		return "process " + strconv.Itoa(h.PID)
	}
	return "process " + strconv.Itoa(h.PID) + " (" + h.Command + ")"
}

// lockFile is the name of Pebble's lock file in its directory.
const lockFile = "LOCK"

// heldByUs is the text of Pebble's error when this process holds the lock already.
const heldByUs = "lock held by current process"

// Pebble reports whether err, returned by pebble.Open of dir, says that the directory's
// lock is held, and by whom. A failure to create the lock file (a missing or read-only
// directory) is not a held lock.
func Pebble(dir string, err error) (Holder, bool) {
	if err == nil {
		return Holder{}, false
	}
	if strings.Contains(err.Error(), heldByUs) {
		pid := os.Getpid()
		return Holder{PID: pid, Command: command(pid)}, true
	}
	var pe *fs.PathError
	if errors.As(err, &pe) || !(errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES)) {
		// fcntl's refusal is a bare errno; os.Create's failures come in a PathError.
		return Holder{}, false
	}
	pid := lockPID(filepath.Join(dir, lockFile))
	if pid == 0 {
		return Holder{}, true
	}
	return Holder{PID: pid, Command: command(pid)}, true
}

// command reads the command line of process pid from /proc; "" when it cannot.
func command(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

// FromPIDFile returns the process whose id a lock file holds, as a writer that locks with
// flock(2) records it after taking the lock (flock's holder cannot be asked of the kernel
// as fcntl's can). The zero Holder when the file holds no id.
func FromPIDFile(path string) Holder {
	b, err := os.ReadFile(path)
	if err != nil {
		return Holder{}
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return Holder{}
	}
	return Holder{PID: pid, Command: command(pid)}
}
