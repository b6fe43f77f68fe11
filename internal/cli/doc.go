// Package cli is the walflow command: run, demo, init, status, operator (status, restart, skip,
// backfill), projector (status, reset, restart), version and help. cmd/walflow only calls
// [Main], so every command can be tested in-process.
//
// # Configuration
//
// walflow run, walflow status and the walflow operator commands read a YAML file (walflow.yaml by default; see
// walflow.example.yaml at the repository root, which walflow init writes). Unknown keys are errors, and every error
// names the file, the line and the key path (tables.comments.scopes[0]) with the fix.
// database_url may be left out of the file when WALFLOW_DATABASE_URL or DATABASE_URL is set:
// the environment fills it only when the file does not set it. A relative ledger.dir is
// relative to the configuration file's directory, so run and status find the same ledger
// from anywhere. The operators block is checked as a whole at load time, with
// operator.Validate's checks (New's, without a database) reported at the operator's key path, so walflow run never
// starts with an operator it would refuse.
//
// # Exit codes
//
// 0 when the command succeeded (run and demo: after Ctrl-C or SIGTERM), 1 for a run-time
// failure, 2 for a usage or configuration error. Errors are printed once, as
// "walflow: ...", on stderr.
package cli
