package processstatus_test

import (
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/processstatus"
)

// The operator runner is the tracker's Watermark, and its Changed method the ChangedFunc.
var (
	_ processstatus.Watermark = (*operator.Runner)(nil)
	_ func() <-chan struct{}  = (*operator.Runner)(nil).Changed
)
