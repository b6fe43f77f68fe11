package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/operator"
)

// operatorSets are the operator sets the -operators flag selects. The schema they write is
// the test's (internal/faulttest), which creates it before the first run.
var operatorSets = map[string]func() []operator.Operator{
	"blog":    blogOperators,
	"parking": parkingOperators,
}

func operatorSetNames() string {
	names := make([]string, 0, len(operatorSets))
	for n := range operatorSets {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// blogOperators keeps derived tables of a blog up to date, on this schema:
//
//	posts(id, title, body, inserted_at, updated_at)
//	comments(id, post_id, body)
//	ratings(id, post_id, stars)
//	post_with_comments_counts(id, title, body, inserted_at, updated_at, comments_count)
//	post_ratings(id, ratings_count, stars_sum, stars_avg)
//	post_stats(id, comments_count, ratings_count, stars_avg, is_popular)
//	applied(position, lsn, ordinal, entity, type, row_id, times)
//
// post_with_comments_counts recomputes a post's row with an unguarded MERGE (every event
// rewrites the row);
// post_ratings aggregates ratings per post (a row exists while the post has ratings);
// post_stats is derived from the two derived tables, whose events come back through the
// WAL; applied counts each comments and ratings event's applications, one row per ledger
// position, so a duplicate shows as times > 1.
func blogOperators() []operator.Operator {
	counts := operator.SQL{
		Target:   "post_with_comments_counts",
		Entities: []string{"comments", "posts"},
		Query: `
      MERGE INTO post_with_comments_counts dest
      USING (
          SELECT
              p.id AS id,
              p.title AS title,
              p.body AS body,
              p.inserted_at AS inserted_at,
              p.updated_at AS updated_at,
              (SELECT COUNT(c.id) FROM comments c WHERE c.post_id = p.id) AS comments_count
          FROM posts p
          WHERE p.id = $1
      ) src ON src.id = dest.id
      WHEN NOT MATCHED THEN
        INSERT (id, title, body, inserted_at, updated_at, comments_count)
        VALUES (src.id, src.title, src.body, src.inserted_at, src.updated_at, src.comments_count)
      WHEN MATCHED THEN
        UPDATE SET
            title = src.title,
            body = src.body,
            inserted_at = src.inserted_at,
            updated_at = src.updated_at,
            comments_count = src.comments_count;`,
		ID:         map[string]string{"comments": "post_id", "posts": "id"},
		DeleteWith: []string{"posts"},
	}
	ratings := operator.SQL{
		Target:   "post_ratings",
		Entities: []string{"ratings"},
		ID:       map[string]string{"ratings": "post_id"},
		Query: `
      WITH agg AS (
          SELECT count(*) AS ratings_count, sum(stars) AS stars_sum, avg(stars) AS stars_avg
          FROM ratings WHERE post_id = $1::bigint
      ), gone AS (
          DELETE FROM post_ratings WHERE id = $1::bigint AND (SELECT ratings_count FROM agg) = 0
      )
      INSERT INTO post_ratings (id, ratings_count, stars_sum, stars_avg)
      SELECT $1::bigint, ratings_count, stars_sum, stars_avg FROM agg WHERE ratings_count > 0
      ON CONFLICT (id) DO UPDATE SET
          ratings_count = EXCLUDED.ratings_count,
          stars_sum = EXCLUDED.stars_sum,
          stars_avg = EXCLUDED.stars_avg`,
	}
	stats := operator.SQL{
		Target:   "post_stats",
		Entities: []string{"post_with_comments_counts", "post_ratings"},
		Query: `
      INSERT INTO post_stats (id, comments_count, ratings_count, stars_avg, is_popular)
      SELECT c.id, c.comments_count, coalesce(r.ratings_count, 0), r.stars_avg,
             c.comments_count >= 3 OR coalesce(r.stars_avg, 0) >= 4
      FROM post_with_comments_counts c LEFT JOIN post_ratings r ON r.id = c.id
      WHERE c.id = $1::bigint
      ON CONFLICT (id) DO UPDATE SET
          comments_count = EXCLUDED.comments_count,
          ratings_count = EXCLUDED.ratings_count,
          stars_avg = EXCLUDED.stars_avg,
          is_popular = EXCLUDED.is_popular`,
		DeleteWith: []string{"post_with_comments_counts"},
	}
	applied := operator.Func{
		Name:     "applied",
		Targets:  []string{"applied"},
		Entities: []string{"comments", "ratings"},
		Handle: func(ctx context.Context, tx pgx.Tx, e *event.Event) error {
			v, ok := e.ID("id")
			if !ok {
				return fmt.Errorf("event %d of %s has no id", e.Position, e.Name)
			}
			id, _ := v.Text()
			_, err := tx.Exec(ctx, `
          INSERT INTO applied (position, lsn, ordinal, entity, type, row_id)
          VALUES ($1, $2::pg_lsn, $3, $4, $5, $6::bigint)
          ON CONFLICT (position) DO UPDATE SET times = applied.times + 1`,
				int64(e.Position), e.LSN.String(), int64(e.Ordinal), e.Name, e.Type.String(), id)
			return err
		},
	}
	return []operator.Operator{counts, ratings, stats, applied}
}

// parkingOperators park the events they fail on (on_failure: park), on this schema:
//
//	comments(id, post_id, body)
//	post_counts(id, n): the comments of each post, recomputed
//	tally(id, n): the comment inserts of each post, counted one by one (not idempotent)
func parkingOperators() []operator.Operator {
	counts := operator.SQL{
		Name:     "post_counts",
		Target:   "post_counts",
		Entities: []string{"comments"},
		ID:       map[string]string{"comments": "post_id"},
		Query: `INSERT INTO post_counts (id, n) SELECT $1::bigint, count(*) FROM comments WHERE post_id = $1::bigint
      ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n`,
		OnFailure: operator.Park,
	}
	tally := operator.SQL{
		Name:      "tally",
		Target:    "tally",
		Entities:  []string{"comments"},
		Events:    []event.Type{event.Insert},
		ID:        map[string]string{"comments": "post_id"},
		Query:     `INSERT INTO tally (id, n) VALUES ($1::bigint, 1) ON CONFLICT (id) DO UPDATE SET n = tally.n + 1`,
		OnFailure: operator.Park,
	}
	return []operator.Operator{counts, tally}
}
