package memory_test

import (
	"testing"

	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/processstatus/memory"
	"github.com/walflow/walflow/processstatus/processstatustest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	processstatustest.Run(t, processstatustest.Features{Durable: true}, func(t *testing.T) func() processstatus.Store {
		s := memory.New()
		return func() processstatus.Store { return s }
	})
}
