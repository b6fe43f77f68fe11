package processstatus_test

import (
	"testing"

	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/processstatus/processstatustest"
)

func TestNoStore(t *testing.T) {
	t.Parallel()
	processstatustest.Run(t, processstatustest.Features{Durable: false}, func(t *testing.T) func() processstatus.Store {
		return func() processstatus.Store { return processstatus.NoStore{} }
	})
}
