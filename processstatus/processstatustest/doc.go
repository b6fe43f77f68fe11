// Package processstatustest is the conformance suite of [processstatus.Store] backends, and the test
// doubles it uses: [Watermarks], a [processstatus.Watermark] a test moves by hand, and
// [Event], an event with a timestamp column.
package processstatustest
