package cli

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// parkEvent records in walflow.operator_parked that name parked the event at pos for row
// id, as a Runner does.
func parkEvent(t *testing.T, pool *pgxpool.Pool, name, id string, pos int64, msg *string) {
	t.Helper()
	_, err := pool.Exec(t.Context(), `INSERT INTO walflow.operator_parked (instance, operator, derived_id, position, entity, lsn, error)
		VALUES ('walflow', $1, $2, $3, 'comments', $4, $5)`, name, id, pos, pos*100, msg)
	if err != nil {
		t.Fatal(err)
	}
}

func TestOperatorParkedRetryDiscard(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, pool := operatorDB(t)
	path := operatorConfigFile(t, dsn, "    on_failure: park\n")
	const name = "post_with_comments_counts"
	failure := "query for post_with_comments_counts id 3: ERROR: tally row 3 is poisoned (SQLSTATE P0001)"
	r := runCLI(ctx, noEnv, "operator", "parked", name, "--config", path)
	if r.code != ExitOK || r.stdout != name+" has no parked events.\n" {
		t.Fatalf("operator parked with none: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	parkEvent(t, pool, name, "3", 12, &failure)
	parkEvent(t, pool, name, "3", 15, nil)
	parkEvent(t, pool, name, "3", 19, nil)
	other := "query for post_with_comments_counts id 7: ERROR: boom"
	parkEvent(t, pool, name, "7", 20, &other)

	// operator status counts them per operator.
	r = runCLI(ctx, noEnv, "operator", "status", "--config", path)
	for _, re := range []string{`(?m)^OPERATOR +POSITION +LAG +HALTED +PARKED +FAILED AT +ERROR$`, `(?m)^post_with_comments_counts +- +- +- +4 \(2 rows\) +- +$`,
		`(?m)^comment_totals +- +- +- +- +- +$`, `walflow operator parked NAME, then retry`} {
		if r.code != ExitOK || !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("operator status with parked events: exit %d, does not match %s:\n%s%s", r.code, re, r.stdout, r.stderr)
		}
	}
	st, _ := operatorStatusJSON(t, path)
	if o := st.operator(name); o.ParkedEvents != 4 || o.ParkedIDs != 2 || st.operator("comment_totals").ParkedEvents != 0 {
		t.Errorf("operator status --json with parked events: %+v", st.Operators)
	}

	r = runCLI(ctx, noEnv, "operator", "parked", name, "--config", path)
	if r.code != ExitOK {
		t.Fatalf("operator parked: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, re := range []string{`(?m)^ID +COUNT +POSITIONS +FIRST ERROR$`, `(?m)^3 +3 +12,15,19 +` + regexp.QuoteMeta(failure) + `$`, `(?m)^7 +1 +20 +` + regexp.QuoteMeta(other) + `$`} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("operator parked output does not match %s:\n%s", re, r.stdout)
		}
	}
	r = runCLI(ctx, noEnv, "operator", "parked", name, "--json", "--config", path)
	var doc struct {
		Instance string `json:"instance"`
		Parked   []struct {
			ID         string  `json:"id"`
			Positions  []int64 `json:"positions"`
			FirstError string  `json:"first_error"`
			Count      int     `json:"count"`
		} `json:"parked"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || r.code != ExitOK {
		t.Fatalf("operator parked --json: exit %d, %v\n%s", r.code, err, r.stdout)
	}
	if doc.Instance != defaultInstance || len(doc.Parked) != 2 || doc.Parked[0].ID != "3" || doc.Parked[0].Count != 3 ||
		len(doc.Parked[0].Positions) != 3 || doc.Parked[0].FirstError != failure || !strings.Contains(r.stdout, `"first_error"`) {
		t.Fatalf("operator parked --json: %s", r.stdout)
	}

	// discard needs --id.
	r = runCLI(ctx, noEnv, "operator", "discard", name, "--config", path)
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--id is required") {
		t.Fatalf("discard without --id: exit %d\n%s", r.code, r.stderr)
	}
	r = runCLI(ctx, noEnv, "operator", "discard", name, "--id", "3", "--config", path)
	if r.code != ExitOK || !strings.Contains(r.stdout, "Discarded 3 parked events of post_with_comments_counts row 3 (positions 12,15,19).") ||
		!strings.Contains(r.stderr, "walflow: warning: the discarded events were NOT applied") {
		t.Fatalf("discard: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(ctx, noEnv, "operator", "discard", name, "--id", "3", "--config", path)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "has no parked events for id 3") {
		t.Fatalf("second discard: exit %d\n%s", r.code, r.stderr)
	}

	// retry without a running walflow: the request stays, for walflow run.
	r = runCLI(ctx, noEnv, "operator", "retry", name, "--wait", "300ms", "--config", path)
	if r.code != ExitOK || !strings.Contains(r.stdout, "Requested a retry of 1 parked events of post_with_comments_counts; 1 rows are not applied yet: is walflow running?") {
		t.Fatalf("retry without walflow: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var requested bool
	if err := pool.QueryRow(ctx, `SELECT retry_requested_at IS NOT NULL FROM walflow.operator_parked WHERE derived_id = '7'`).Scan(&requested); err != nil || !requested {
		t.Fatalf("retry request not stored: %v %v", requested, err)
	}
	r = runCLI(ctx, noEnv, "operator", "retry", name, "--id", "3", "--config", path)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "has no parked events for id 3") {
		t.Fatalf("retry of an id without parked events: exit %d\n%s", r.code, r.stderr)
	}
}
