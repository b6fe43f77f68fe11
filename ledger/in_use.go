package ledger

import (
	"fmt"

	"github.com/walflow/walflow/internal/lockholder"
)

// InUseError is the error of opening a ledger whose directory another open ledger holds:
// one in another process (a running walflow), or one of this process not closed yet. One
// directory serves one ledger at a time, so that two writers never interleave.
type InUseError struct {
	// Dir is the directory in use.
	Dir string
	// PID is the id of the process holding it; 0 when it could not be learnt.
	PID int
	// Command is that process's command line; "" when it could not be read.
	Command string
	// Err is the backend's failure to lock the directory.
	Err error
}

// Holder describes the process holding the directory: `process 4242 (walflow run --config
// walflow.yaml)`, `process 4242`, or `another process` when its id is unknown.
func (e *InUseError) Holder() string {
	return lockholder.Holder{PID: e.PID, Command: e.Command}.String()
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("ledger: the directory %s is in use by %s; a ledger directory serves one walflow at a time: stop that process first, or give this one another directory", e.Dir, e.Holder())
}

// Unwrap returns the backend's failure to lock the directory.
func (e *InUseError) Unwrap() error { return e.Err }
