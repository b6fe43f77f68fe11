// Package docpages reads the repository's documentation pages (README.md and docs/*.md)
// for the tests that check them against the code.
package docpages

import (
	"fmt"
	"os"
	"path/filepath"
)

// Page is one Markdown page.
type Page struct {
	// Path is relative to the repository root, with slashes, like docs/operators.md.
	Path string
	// Text is the page's content.
	Text string
}

// Read returns README.md and every docs/*.md page of the repository whose root is root
// (a path relative to the calling test's package directory, like "../..").
func Read(root string) ([]Page, error) {
	paths, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, fmt.Errorf("docpages: list %s/docs: %w", root, err)
	}
	paths = append([]string{filepath.Join(root, "README.md")}, paths...)
	pages := make([]Page, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("docpages: %w", err)
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return nil, fmt.Errorf("docpages: %w", err)
		}
		pages = append(pages, Page{Path: filepath.ToSlash(rel), Text: string(b)})
	}
	return pages, nil
}
