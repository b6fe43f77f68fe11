package operator

import (
	"fmt"
)

// ConfigError is an operator's setting that [Validate] and [New] refuse. Callers that
// report it against their own configuration (a YAML key) match it with errors.As and use
// Operator, Field and Err instead of the message.
type ConfigError struct {
	// Operator is the operator's name; "" when it has none (or for the whole set).
	Operator string
	// Field is the setting at fault: Target, Entities, Query, ID, DeleteWith,
	// TargetIDColumn, Name or Handle. Entities for an operator that would feed itself.
	Field string
	// Err is the problem and its fix, without the operator's name.
	Err error
}

func (e *ConfigError) Error() string {
	if e.Operator == "" {
		return "operator: " + e.Err.Error()
	}
	return "operator " + e.Operator + ": " + e.Err.Error()
}

func (e *ConfigError) Unwrap() error { return e.Err }

func configErrorf(op, field, format string, args ...any) error {
	return &ConfigError{Operator: op, Field: field, Err: fmt.Errorf(format, args...)}
}

// Validate checks operators as [New] does, without a database: each operator's settings,
// that no two share a name, and that none feeds itself through the others. It builds
// nothing, so a configuration can be checked before any pool exists.
func Validate(ops []Operator) error {
	_, err := specsOf(ops)
	return err
}

// specsOf validates the operators and returns what the runner needs of each.
func specsOf(ops []Operator) ([]spec, error) {
	specs := make([]spec, 0, len(ops))
	seen := map[string]bool{}
	for _, o := range ops {
		s, err := o.spec()
		if err != nil {
			return nil, err
		}
		if seen[s.name] {
			return nil, &ConfigError{Field: "Name", Err: fmt.Errorf("two operators are named %q; names key checkpoints and must be unique", s.name)}
		}
		seen[s.name] = true
		specs = append(specs, s)
	}
	if err := checkGraph(specs); err != nil {
		return nil, err
	}
	return specs, nil
}
