// Package cli is the walflow command: run, demo, init, status, operator (status, restart, skip,
// backfill), projector (status, reset, restart), version and help. cmd/walflow only calls
// [Main], so every command can be tested in-process.
//
// # Configuration
//
// walflow run, walflow status and the walflow operator, projector, index and ledger
// commands read a YAML file (walflow.yaml by default; see walflow.example.yaml at the
// repository root, which walflow init writes), loaded and checked by internal/configfile.
//
// # Exit codes
//
// 0 when the command succeeded (run and demo: after Ctrl-C or SIGTERM), 1 for a run-time
// failure, 2 for a usage or configuration error. Errors are printed once, as
// "walflow: ...", on stderr.
package cli
