// Package ssetest reads Server-Sent Events streams in tests.
package ssetest

import (
	"bufio"
	"io"
	"strings"
	"testing"
	"time"
)

// Stream is a stream's lines, read in the background.
type Stream struct {
	t     testing.TB
	lines chan string
}

// Lines starts reading body line by line. The caller closes body.
func Lines(t testing.TB, body io.Reader) *Stream {
	s := &Stream{t: t, lines: make(chan string, 100)}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	return s
}

// Until returns the lines (joined with newlines) up to and including the first that
// contains want, and fails the test when the stream ends first or 60 seconds pass.
func (s *Stream) Until(want string) string {
	s.t.Helper()
	var got []string
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("stream ended before %q:\n%s", want, strings.Join(got, "\n"))
			}
			got = append(got, l)
			if strings.Contains(l, want) {
				return strings.Join(got, "\n")
			}
		case <-timeout:
			s.t.Fatalf("no %q in the stream within 60s:\n%s", want, strings.Join(got, "\n"))
		}
	}
}

// Drain discards the rest of the stream and returns when it has ended.
func (s *Stream) Drain() {
	for range s.lines {
	}
}
