// Package demo is walflow demo: a throwaway PostgreSQL cluster with a small blog (posts,
// comments and the derived table post_with_comments_counts kept by an operator), followed
// by a walflow engine, served as a web app kept live by walflow.js over the realtime
// gateway, with a writer that changes the blog and every event printed as a line.
//
// The pages (demoweb/) are plain HTML, CSS and JavaScript modules embedded in the binary.
// The PostgreSQL server binaries are installed with apt-get when they are missing and the
// process runs as root; otherwise [Run] stops with the command to run.
package demo
