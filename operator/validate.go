package operator

import "fmt"

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
			return nil, fmt.Errorf("operator: two operators are named %q; names key checkpoints and must be unique", s.name)
		}
		seen[s.name] = true
		specs = append(specs, s)
	}
	if err := checkGraph(specs); err != nil {
		return nil, err
	}
	return specs, nil
}
