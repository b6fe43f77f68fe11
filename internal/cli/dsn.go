package cli

import (
	"log/slog"
	"net/url"
	"regexp"
	"strings"
)

// redactedDSN is a PostgreSQL connection string that keeps its password out of logs and
// messages: it implements slog.LogValuer and fmt.Stringer with the password replaced by
// xxxxx, in the URL form (postgres://app:xxxxx@db/app, ?password=xxxxx) and in the
// key=value form (password=xxxxx).
type redactedDSN string

// LogValue logs the connection string without its password.
func (d redactedDSN) LogValue() slog.Value { return slog.StringValue(d.String()) }

// String returns the connection string without its password.
func (d redactedDSN) String() string {
	s := string(d)
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		if u, err := url.Parse(s); err == nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			}
			if q := u.Query(); q.Has("password") {
				q.Set("password", "xxxxx")
				u.RawQuery = q.Encode()
			}
			return u.String()
		}
		// Unparsable: blank everything between the scheme and the host, and any password=.
		s = brokenUserinfo.ReplaceAllString(s, "${1}xxxxx@")
	}
	return kvPassword.ReplaceAllString(s, "${1}xxxxx")
}

var (
	// kvPassword matches password=secret and password = 'se cret' (with \' escapes).
	kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]*)`)
	// brokenUserinfo matches the userinfo of a URL net/url cannot parse.
	brokenUserinfo = regexp.MustCompile(`^(postgres(?:ql)?://)[^/?#]*@`)
)
