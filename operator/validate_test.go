package operator_test

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/operator"
)

// TestValidate: Validate refuses, without a database, exactly what New refuses, with the
// same error, and accepts what New accepts.
func TestValidate(t *testing.T) {
	t.Parallel()
	ok := operator.SQL{Name: "counts", Target: "counts", Entities: []string{"comments"}, Query: "SELECT $1"}
	for _, tt := range []struct {
		name string
		ops  []operator.Operator
		bad  bool
	}{
		{"none", nil, false},
		{"one", []operator.Operator{ok}, false},
		{"chain", []operator.Operator{ok, operator.SQL{Target: "stats", Entities: []string{"counts"}, Query: "SELECT $1"}}, false},
		{"no target", []operator.Operator{operator.SQL{Entities: []string{"a"}, Query: "SELECT $1"}}, true},
		{"bad target", []operator.Operator{operator.SQL{Target: "a b", Entities: []string{"a"}, Query: "SELECT $1"}}, true},
		{"no entities", []operator.Operator{operator.SQL{Target: "t", Query: "SELECT $1"}}, true},
		{"no query", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}}}, true},
		{"no $1", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT 1"}}, true},
		{"id of no entity", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT $1", ID: map[string]string{"b": "x"}}}, true},
		{"delete_with no entity", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT $1", DeleteWith: []string{"b"}}}, true},
		{"bad id column", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT $1", TargetIDColumn: "a.b"}}, true},
		{"func without name", []operator.Operator{operator.Func{Entities: []string{"a"}}}, true},
		{"func without handle", []operator.Operator{operator.Func{Name: "f", Entities: []string{"a"}}}, true},
		{"duplicate", []operator.Operator{ok, ok}, true},
		{"self feed", []operator.Operator{operator.SQL{Target: "counts", Entities: []string{"counts"}, Query: "SELECT $1"}}, true},
		{"cycle", []operator.Operator{
			operator.SQL{Name: "a", Target: "x", Entities: []string{"y"}, Query: "SELECT $1"},
			operator.SQL{Name: "b", Target: "y", Entities: []string{"x"}, Query: "SELECT $1"},
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := operator.Validate(tt.ops)
			if (err != nil) != tt.bad {
				t.Fatalf("Validate = %v, want an error: %v", err, tt.bad)
			}
			// New is given a pool only because it requires one; it does not connect.
			_, newErr := operator.New(operator.Config{DB: new(pgxpool.Pool), Operators: tt.ops})
			if (newErr == nil) != (err == nil) || (err != nil && newErr.Error() != err.Error()) {
				t.Errorf("Validate = %v, but New = %v", err, newErr)
			}
		})
	}
}
