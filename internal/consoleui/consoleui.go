// Package consoleui holds the console's page: HTML, CSS and JavaScript modules, served as
// they are (no build step) from the walflow binary.
package consoleui

import "embed"

// Files holds the page under web/: index.html, console.css and the modules console.js
// (the page) and chart.js (SVG line charts).
//
//go:embed web
var Files embed.FS
