package walflow

import _ "embed" // for the example configuration

//go:embed walflow.example.yaml
var exampleConfig string

// ExampleConfig returns walflow.example.yaml, the commented configuration file of the walflow
// command that shows every key; `walflow init` writes it. It loads as it is.
func ExampleConfig() string { return exampleConfig }
