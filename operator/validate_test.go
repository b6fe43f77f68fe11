package operator_test

import (
	"errors"
	"strings"
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
		at   string // the ConfigError's Operator.Field
	}{
		{"none", nil, false, ""},
		{"one", []operator.Operator{ok}, false, ""},
		{"chain", []operator.Operator{ok, operator.SQL{Target: "stats", Entities: []string{"counts"}, Query: "SELECT $1"}}, false, ""},
		{"no target", []operator.Operator{operator.SQL{Entities: []string{"a"}, Query: "SELECT $1"}}, true, ".Target"},
		{"bad target", []operator.Operator{operator.SQL{Target: "a b", Entities: []string{"a"}, Query: "SELECT $1"}}, true, "a b.Target"},
		{"no entities", []operator.Operator{operator.SQL{Target: "t", Query: "SELECT $1"}}, true, "t.Entities"},
		{"no query", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}}}, true, "t.Query"},
		{"no $1", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT 1"}}, true, "t.Query"},
		{"id of no entity", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT $1", ID: map[string]string{"b": "x"}}}, true, "t.ID"},
		{"delete_with no entity", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT $1", DeleteWith: []string{"b"}}}, true, "t.DeleteWith"},
		{"bad id column", []operator.Operator{operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT $1", TargetIDColumn: "a.b"}}, true, "t.TargetIDColumn"},
		{"func without name", []operator.Operator{operator.Func{Entities: []string{"a"}}}, true, ".Name"},
		{"func without handle", []operator.Operator{operator.Func{Name: "f", Entities: []string{"a"}}}, true, "f.Handle"},
		{"duplicate", []operator.Operator{ok, ok}, true, ".Name"},
		{"self feed", []operator.Operator{operator.SQL{Target: "counts", Entities: []string{"counts"}, Query: "SELECT $1"}}, true, "counts.Entities"},
		{"cycle", []operator.Operator{
			operator.SQL{Name: "a", Target: "x", Entities: []string{"y"}, Query: "SELECT $1"},
			operator.SQL{Name: "b", Target: "y", Entities: []string{"x"}, Query: "SELECT $1"},
		}, true, "a.Entities"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := operator.Validate(tt.ops)
			if (err != nil) != tt.bad {
				t.Fatalf("Validate = %v, want an error: %v", err, tt.bad)
			}
			var ce *operator.ConfigError
			if tt.bad && (!errors.As(err, &ce) || ce.Operator+"."+ce.Field != tt.at || strings.HasPrefix(ce.Err.Error(), "operator")) {
				t.Errorf("Validate = %v (%#v), want a ConfigError at %s whose Err does not repeat the operator", err, ce, tt.at)
			}
			// New is given a pool only because it requires one; it does not connect.
			_, newErr := operator.New(operator.Config{DB: new(pgxpool.Pool), Operators: tt.ops})
			if (newErr == nil) != (err == nil) || (err != nil && newErr.Error() != err.Error()) {
				t.Errorf("Validate = %v, but New = %v", err, newErr)
			}
		})
	}
}
