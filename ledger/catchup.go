package ledger

import (
	"context"
	"time"

	"github.com/walflow/walflow/event"
)

// CatchUpWait is how long a consumer waits for its ledger to reach a stored checkpoint past
// the ledger's head before it calls the checkpoint another ledger's: on a node of a
// cluster, the node's view of the shared stream may trail a checkpoint another node stored.
const CatchUpWait = 10 * time.Second

// LagLogEvery is how often a consumer on a shared ledger logs that it still waits for its
// view of the ledger to reach a checkpoint another process stored.
const LagLogEvery = 10 * time.Second

// HeadWaiter is the part of a ledger [WaitHead] uses.
type HeadWaiter interface {
	State() State
	Wait(ctx context.Context, after event.Position) error
}

// WaitHead waits until l's head reaches pos, for at most [CatchUpWait]. It returns the
// wait's error: ctx's, or context.DeadlineExceeded when the head stayed short.
func WaitHead(ctx context.Context, l HeadWaiter, pos event.Position) error {
	if pos == 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, CatchUpWait)
	defer cancel()
	for l.State().Head < pos {
		if err := l.Wait(wctx, l.State().Head); err != nil {
			return err
		}
	}
	return nil
}
