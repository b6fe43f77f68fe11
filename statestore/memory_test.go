package statestore_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/walflow/walflow/statestore"
	"github.com/walflow/walflow/statestore/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMemoryConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) statestore.Storage { return statestore.NewMemory() })
}
