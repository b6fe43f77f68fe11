package memory_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/walflow/walflow/statestore"
	"github.com/walflow/walflow/statestore/memory"
	"github.com/walflow/walflow/statestore/statestoretest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMemoryConformance(t *testing.T) {
	t.Parallel()
	statestoretest.Run(t, func(t *testing.T) statestore.Storage { return memory.New() })
}
