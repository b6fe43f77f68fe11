package cli

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/operator"
)

// progressReports are a backfill of two entities: comments in steps, then posts, empty.
func progressReports() []operator.BackfillProgress {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	base := operator.BackfillProgress{Operator: "post_with_comments_counts", Entity: "comments", Total: 100000, Started: t0}
	step := func(done int64, d time.Duration, finished bool) operator.BackfillProgress {
		p := base
		p.Done, p.At, p.Finished = done, at(d), finished
		return p
	}
	return []operator.BackfillProgress{
		step(0, 0, false),
		step(12345, 2900*time.Millisecond, false),
		step(13000, 3*time.Second, false),
		step(50000, 4*time.Second, false),
		step(100000, 20*time.Second, true),
		{Operator: "post_with_comments_counts", Entity: "posts", Done: 0, Total: 0, Started: at(20 * time.Second), At: at(20 * time.Second), Finished: true},
	}
}

func TestProgressPrinterPlain(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	print := newProgressPrinter(&b, false, "ids")
	for _, p := range progressReports() {
		print(p)
	}
	want := "" +
		"post_with_comments_counts  comments  0/100,000  0.0%  0/s  ETA ?\n" +
		"post_with_comments_counts  comments  12,345/100,000  12.3%  4,257/s  ETA 21s\n" +
		"post_with_comments_counts  comments  100,000/100,000  100.0%  5,000/s  done in 20s\n" +
		"post_with_comments_counts  posts  0/0  100.0%  0/s  done in 0s\n"
	if b.String() != want {
		t.Fatalf("got:\n%q\nwant:\n%q", b.String(), want)
	}
}

// The terminal form redraws one line per entity in place (the progressbar library draws
// it, so its exact look is the library's) and ends each with a newline once finished.
func TestProgressPrinterTerminal(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	print := newProgressPrinter(&b, true, "ids")
	for _, p := range progressReports() {
		print(p)
	}
	out := b.String()
	lines := strings.Split(out, "\n")
	if len(lines) != 3 || lines[2] != "" {
		t.Fatalf("want two finished lines, got %q", out)
	}
	comments, posts := lines[0], lines[1]
	redraws := strings.Split(comments, "\r")
	for _, want := range []string{"0/100000", "12345/100000", "13000/100000", "50000/100000"} {
		if !strings.Contains(comments, "post_with_comments_counts  comments") || !strings.Contains(comments, want) {
			t.Errorf("comments line does not show %s: %q", want, comments)
		}
	}
	last := redraws[len(redraws)-1]
	if !strings.Contains(last, "100%") || !strings.Contains(last, "100000/100000") || strings.Contains(last, "posts") {
		t.Errorf("the comments line does not end full: %q", last)
	}
	if !regexp.MustCompile(`^\r?.*post_with_comments_counts  posts.*100%`).MatchString(posts) || strings.Contains(posts, "comments ") {
		t.Errorf("posts line: %q", posts)
	}
}

// A resumed entity counts this run's share and says where it resumed; an estimate that
// Done passes grows the bar instead of overflowing it, and one that Done ends below still
// ends full.
func TestProgressPrinterResumedAndEstimates(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	for _, tt := range []struct {
		name    string
		reports []operator.BackfillProgress
		want    []string
	}{
		{"resumed", []operator.BackfillProgress{
			{Operator: "op", Entity: "posts", Done: 400, Resumed: 400, Total: 1000, Started: t0, At: t0},
			{Operator: "op", Entity: "posts", Done: 1000, Resumed: 400, Total: 1000, Started: t0, At: t0, Finished: true},
		}, []string{"op  posts (resumed at 400)", "600/600", "100%"}},
		{"past the estimate", []operator.BackfillProgress{
			{Operator: "op", Entity: "posts", Done: 0, Total: 10, Started: t0, At: t0},
			{Operator: "op", Entity: "posts", Done: 15, Total: 10, Started: t0, At: t0},
			{Operator: "op", Entity: "posts", Done: 16, Total: 10, Started: t0, At: t0, Finished: true},
		}, []string{"15/16", "16/16", "100%"}},
		{"at the estimate before finished", []operator.BackfillProgress{
			{Operator: "op", Entity: "posts", Done: 0, Total: 10, Started: t0, At: t0},
			{Operator: "op", Entity: "posts", Done: 10, Total: 10, Started: t0, At: t0},
			{Operator: "op", Entity: "posts", Done: 10, Total: 10, Started: t0, At: t0, Finished: true},
		}, []string{"10/11", "10/10", "100%"}},
		{"below the estimate", []operator.BackfillProgress{
			{Operator: "op", Entity: "posts", Done: 0, Total: 10, Started: t0, At: t0},
			{Operator: "op", Entity: "posts", Done: 7, Total: 10, Started: t0, At: t0, Finished: true},
		}, []string{"7/7", "100%"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b bytes.Buffer
			print := newProgressPrinter(&b, true, "ids")
			for _, p := range tt.reports {
				print(p)
			}
			out := b.String()
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not show %q: %q", w, out)
				}
			}
			if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
				t.Errorf("want one line ended once: %q", out)
			}
		})
	}
}
