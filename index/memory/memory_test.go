package memory_test

import (
	"testing"

	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/index/indextest"
	"github.com/walflow/walflow/index/memory"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	indextest.Run(t, func(*testing.T) index.Store { return memory.New() })
}
