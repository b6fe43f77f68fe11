package processstatus_test

import (
	"testing"

	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/processstatus/storetest"
)

func TestMemoryStore(t *testing.T) {
	t.Parallel()
	storetest.Run(t, storetest.Features{Durable: true}, func(t *testing.T) func() processstatus.Store {
		s := processstatus.NewMemoryStore()
		return func() processstatus.Store { return s }
	})
}

func TestNoStore(t *testing.T) {
	t.Parallel()
	storetest.Run(t, storetest.Features{Durable: false}, func(t *testing.T) func() processstatus.Store {
		return func() processstatus.Store { return processstatus.NoStore{} }
	})
}
