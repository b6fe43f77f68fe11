// Package configfile loads walflow.yaml, the configuration file of walflow run, status and
// the operator, projector, index and ledger commands, into a [walflow.Config] and the
// settings only the command line has (log level and format, where the database URL came
// from, the realtime section's key sources).
//
// Unknown keys are errors, and every error names the file, the line and the key path
// (tables.comments.scopes[0]) with the fix. database_url may be left out of the file when
// WALFLOW_DATABASE_URL or DATABASE_URL is set: the environment fills it only when the file
// does not set it. A relative ledger.dir is relative to the configuration file's
// directory, so every command finds the same ledger from anywhere. The operators block is
// checked as a whole at load time, with operator.Validate's checks (New's, without a
// database) reported at the operator's key path, so walflow run never starts with an
// operator it would refuse. The realtime section's keys are read only by
// [RealtimeSettings.Resolve], which only run calls.
//
// walflow.example.yaml at the repository root (which walflow init writes) shows every key.
package configfile
