package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/configfile"
)

// indexClient reads index values from a running walflow's admin API, for ledger read
// --index while walflow run holds the index store.
type indexClient struct {
	base  string // http://host:port
	token string
	http  *http.Client
}

// newIndexClient prepares reads from the walflow run that holds the index store (iu), at
// the configuration's http.addr with its admin token; without one, the error says how to
// get in.
func newIndexClient(cmd string, c *configfile.Config, getenv func(string) string, iu *inUseError) (*indexClient, error) {
	if c.AdminToken == nil || c.Engine.HTTPAddr == "" {
		return nil, fmt.Errorf("%s; or, to read an index beside it, set http.admin_token_env or http.admin_token_file (and http.addr) for walflow run and this command: ledger read --index then asks the running walflow", iu)
	}
	token, err := c.AdminToken.Resolve(getenv)
	if err != nil {
		return nil, &usageError{err}
	}
	host, port, err := net.SplitHostPort(c.Engine.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("%s: http.addr %q: %w", cmd, c.Engine.HTTPAddr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return &indexClient{base: "http://" + net.JoinHostPort(host, port), token: token, http: &http.Client{Timeout: time.Minute}}, nil
}

// read returns up to n events of value in index, after position after.
func (c *indexClient) read(ctx context.Context, index, value string, after event.Position, n int) ([]event.Event, error) {
	n = min(n, walflow.IndexEventsLimit)
	u := c.base + walflow.ConsolePath + strings.Replace(walflow.IndexEventsPath, "{name}", url.PathEscape(index), 1) +
		"?" + url.Values{"value": {value}, "after": {strconv.FormatUint(uint64(after), 10)}, "limit": {strconv.Itoa(n)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("the index store is in use by walflow run, and asking it at %s failed: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e walflow.ConsoleError
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return nil, fmt.Errorf("the index store is in use by walflow run, which answered %s at %s: %s", resp.Status, c.base, e.Error)
	}
	if ct := resp.Header.Get("Content-Type"); ct != walflow.IndexEventsType {
		return nil, fmt.Errorf("the server at %s answered %s, not walflow's index events; is http.addr the running walflow's?", c.base, ct)
	}
	return walflow.DecodeIndexEvents(resp.Body)
}
