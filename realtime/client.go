package realtime

import (
	_ "embed"
	"net/http"
	"strconv"
)

// clientJS is walflow.js, the browser client: a dependency-free ES module.
//
//go:embed walflow.js
var clientJS []byte

// ClientJS returns the browser client walflow.js, for servers that want to serve it
// elsewhere than under the gateway's mount.
func ClientJS() []byte { return clientJS }

// serveClient serves walflow.js. It is revalidated rather than cached for long because
// the module must match the gateway's protocol after an upgrade.
func serveClient(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/javascript; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(clientJS)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(clientJS)
}
