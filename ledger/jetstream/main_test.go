package jetstream_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/walflow/walflow/ledger/jetstream"
)

func TestMain(m *testing.M) {
	// Write the channel indexes in directories every few messages, so that the tests'
	// reads combine entries on disk with entries in memory.
	jetstream.SetFlushEvents(7)
	goleak.VerifyTestMain(m)
}
