package demo

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
)

// demoweb holds the demo's pages: plain HTML, CSS and JavaScript modules, no build step.
//
//go:embed demoweb
var demoweb embed.FS

// Demo web app settings.
const (
	demoTitleMax     = 200  // characters of a post's title
	demoTextMax      = 5000 // characters of a post's or a comment's body
	demoQueryTimeout = 5 * time.Second
	demoWebShutdown  = 5 * time.Second // grace for the realtime streams, then the server
)

// demoWeb is the demo's web app on one HTTP server: the blog's pages and their JSON API,
// and the engine's handler (the realtime gateway at /realtime/, /metrics, /healthz,
// /status). The engine must serve the realtime gateway (the realtime section of the
// demo's walflow.yaml).
type demoWeb struct {
	eng  *walflow.Engine
	pool *pgxpool.Pool
	// connStateFunc, when set, is the server's ConnState hook (tests use it to cut
	// WebSocket connections from the server side).
	connStateFunc func(net.Conn, http.ConnState)
}

// newDemoWeb returns the web app of eng on the blog at dsn. It does not connect yet.
func newDemoWeb(eng *walflow.Engine, dsn string) (*demoWeb, error) {
	if eng.RealtimeGateway() == nil {
		return nil, errors.New("demo: the engine has no realtime gateway; open it with the realtime section of the demo's walflow.yaml")
	}
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		return nil, fmt.Errorf("demo: web app database pool: %w", err)
	}
	return &demoWeb{eng: eng, pool: pool}, nil
}

// run serves on ln until ctx ends, then ends the realtime streams (each browser is told
// "shutdown" and will reconnect to the next demo), shuts the server down and closes the
// pool, each within demoWebShutdown.
func (w *demoWeb) run(ctx context.Context, ln net.Listener) error {
	defer w.pool.Close()
	// No WriteTimeout: it would cut the realtime streams, which bound their writes themselves.
	srv := &http.Server{Handler: w.handler(), ReadHeaderTimeout: 10 * time.Second, ConnState: w.connStateFunc}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("demo: serve the web app: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), demoWebShutdown)
	defer cancel()
	var errs []error
	// Streams never go idle, so Shutdown would wait for them: end them first.
	if err := w.eng.RealtimeGateway().Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("demo: end the realtime streams: %w", err), srv.Close())
	} else if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("demo: shut the web server down: %w", err), srv.Close())
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("demo: serve the web app: %w", err))
	}
	return errors.Join(errs...)
}

// handler routes the pages, the API and, for everything else, the engine.
func (w *demoWeb) handler() http.Handler {
	static, err := fs.Sub(demoweb, "demoweb")
	if err != nil {
		panic(err) // the embedded directory exists: a build error otherwise
	}
	page := func(name string) http.HandlerFunc {
		return func(rw http.ResponseWriter, r *http.Request) {
			b, err := fs.ReadFile(static, name)
			if err != nil {
				http.Error(rw, err.Error(), http.StatusInternalServerError)
				return
			}
			rw.Header().Set("Content-Type", "text/html; charset=utf-8")
			rw.Header().Set("Cache-Control", "no-cache")
			_, _ = rw.Write(b)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/", w.eng.Handler()) // /realtime/, /metrics, /healthz, /status
	mux.HandleFunc("GET /{$}", page("index.html"))
	mux.HandleFunc("GET /posts/{id}", page("post.html"))
	mux.Handle("GET /static/", http.StripPrefix("/static/", noCache(http.FileServerFS(static))))
	mux.HandleFunc("GET /api/posts", w.listPosts)
	mux.HandleFunc("POST /api/posts", w.createPost)
	mux.HandleFunc("GET /api/posts/{id}", w.getPost)
	mux.HandleFunc("DELETE /api/posts/{id}", w.deletePost)
	mux.HandleFunc("GET /api/posts/{id}/comments", w.listComments)
	mux.HandleFunc("POST /api/posts/{id}/comments", w.createComment)
	return mux
}

// noCache makes the browser revalidate the demo's files, so a new demo binary's pages and
// scripts are never mixed with an old one's.
func noCache(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(rw, r)
	})
}

// The API answers JSON. Rows are rendered by PostgreSQL (row_to_json), so they have the
// columns of the events' new_record.

// listPosts answers the derived table, newest first.
func (w *demoWeb) listPosts(rw http.ResponseWriter, r *http.Request) {
	w.queryJSON(rw, r, `SELECT coalesce(json_agg(p ORDER BY p.id DESC), '[]') FROM post_with_comments_counts p`)
}

// getPost answers {"post": row} from the derived table, or 404 with {"error", "exists"}:
// exists tells a post the operator has not derived yet from one that does not exist.
func (w *demoWeb) getPost(rw http.ResponseWriter, r *http.Request) {
	id, ok := pathID(rw, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), demoQueryTimeout)
	defer cancel()
	var post []byte
	var exists bool
	err := w.pool.QueryRow(ctx, `SELECT (SELECT row_to_json(p) FROM post_with_comments_counts p WHERE p.id = $1),
		EXISTS (SELECT FROM posts WHERE id = $1)`, id).Scan(&post, &exists)
	switch {
	case err != nil:
		writeError(rw, http.StatusServiceUnavailable, "read post %d: %v", id, err)
	case post != nil:
		writeJSON(rw, http.StatusOK, map[string]json.RawMessage{"post": post})
	case exists:
		writeJSON(rw, http.StatusNotFound, map[string]any{"error": fmt.Sprintf("post %d is not in post_with_comments_counts yet: the operator has not derived it", id), "exists": true})
	default:
		writeJSON(rw, http.StatusNotFound, map[string]any{"error": fmt.Sprintf("there is no post %d (it may have been deleted)", id), "exists": false})
	}
}

// createPost inserts {"title", "body"} into posts and answers 201 {"id"}. The derived row
// follows asynchronously: the page waits for its insert event.
func (w *demoWeb) createPost(rw http.ResponseWriter, r *http.Request) {
	var in struct {
		Title string `json:"title"`
		Body  string `json:"body"`
	}
	if !readJSON(rw, r, &in) {
		return
	}
	in.Title = strings.TrimSpace(in.Title)
	switch {
	case in.Title == "":
		writeError(rw, http.StatusBadRequest, "the title is empty; give the post a title")
		return
	case utf8.RuneCountInString(in.Title) > demoTitleMax:
		writeError(rw, http.StatusBadRequest, "the title has more than %d characters; shorten it", demoTitleMax)
		return
	case utf8.RuneCountInString(in.Body) > demoTextMax:
		writeError(rw, http.StatusBadRequest, "the body has more than %d characters; shorten it", demoTextMax)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), demoQueryTimeout)
	defer cancel()
	var id int64
	if err := w.pool.QueryRow(ctx, `INSERT INTO posts (title, body) VALUES ($1, $2) RETURNING id`, in.Title, in.Body).Scan(&id); err != nil {
		writeError(rw, http.StatusServiceUnavailable, "insert the post: %v", err)
		return
	}
	writeJSON(rw, http.StatusCreated, map[string]int64{"id": id})
}

// deletePost deletes a post (its comments go with it) and answers 204, or 404.
func (w *demoWeb) deletePost(rw http.ResponseWriter, r *http.Request) {
	id, ok := pathID(rw, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), demoQueryTimeout)
	defer cancel()
	tag, err := w.pool.Exec(ctx, `DELETE FROM posts WHERE id = $1`, id)
	switch {
	case err != nil:
		writeError(rw, http.StatusServiceUnavailable, "delete post %d: %v", id, err)
	case tag.RowsAffected() == 0:
		writeError(rw, http.StatusNotFound, "there is no post %d (it may have been deleted already)", id)
	default:
		rw.WriteHeader(http.StatusNoContent)
	}
}

// listComments answers a post's comments, oldest first.
func (w *demoWeb) listComments(rw http.ResponseWriter, r *http.Request) {
	id, ok := pathID(rw, r)
	if !ok {
		return
	}
	w.queryJSON(rw, r, `SELECT coalesce(json_agg(c ORDER BY c.id), '[]') FROM comments c WHERE c.post_id = $1`, id)
}

// createComment inserts {"body"} as a comment of the post and answers 201 {"id"}, or 404
// when the post does not exist.
func (w *demoWeb) createComment(rw http.ResponseWriter, r *http.Request) {
	id, ok := pathID(rw, r)
	if !ok {
		return
	}
	var in struct {
		Body string `json:"body"`
	}
	if !readJSON(rw, r, &in) {
		return
	}
	in.Body = strings.TrimSpace(in.Body)
	switch {
	case in.Body == "":
		writeError(rw, http.StatusBadRequest, "the comment is empty; write something")
		return
	case utf8.RuneCountInString(in.Body) > demoTextMax:
		writeError(rw, http.StatusBadRequest, "the comment has more than %d characters; shorten it", demoTextMax)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), demoQueryTimeout)
	defer cancel()
	var cid int64
	err := w.pool.QueryRow(ctx, `INSERT INTO comments (post_id, body) VALUES ($1, $2) RETURNING id`, id, in.Body).Scan(&cid)
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "23503" { // foreign_key_violation
		writeError(rw, http.StatusNotFound, "there is no post %d (it may have been deleted)", id)
		return
	}
	if err != nil {
		writeError(rw, http.StatusServiceUnavailable, "insert the comment: %v", err)
		return
	}
	writeJSON(rw, http.StatusCreated, map[string]int64{"id": cid})
}

// queryJSON answers the one json value sql returns.
func (w *demoWeb) queryJSON(rw http.ResponseWriter, r *http.Request, sql string, args ...any) {
	ctx, cancel := context.WithTimeout(r.Context(), demoQueryTimeout)
	defer cancel()
	var b []byte
	if err := w.pool.QueryRow(ctx, sql, args...).Scan(&b); err != nil {
		writeError(rw, http.StatusServiceUnavailable, "query the blog: %v", err)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	_, _ = rw.Write(b)
}

// pathID reads the {id} of the path; it answers 404 when it is not a post id.
func pathID(rw http.ResponseWriter, r *http.Request) (int64, bool) {
	s := r.PathValue("id")
	id, err := strconv.ParseInt(s, 10, 32)
	if err != nil || id < 1 {
		writeError(rw, http.StatusNotFound, "%q is not a post id; post ids are whole numbers from 1", s)
		return 0, false
	}
	return id, true
}

// readJSON decodes a JSON request body into v. It requires the JSON content type, which a
// cross-site form cannot send without the browser asking first (CORS), so other sites
// cannot write to the demo through its visitor's browser.
func readJSON(rw http.ResponseWriter, r *http.Request, v any) bool {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		writeError(rw, http.StatusUnsupportedMediaType, "send the body as JSON, with Content-Type: application/json")
		return false
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	if err := dec.Decode(v); err != nil {
		writeError(rw, http.StatusBadRequest, "the body is not the JSON object expected: %v", err)
		return false
	}
	return true
}

func writeJSON(rw http.ResponseWriter, status int, v any) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(status)
	_ = json.NewEncoder(rw).Encode(v)
}

func writeError(rw http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(rw, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}
