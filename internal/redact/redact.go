// Package redact hides secrets in strings walflow shows: logs, messages and the console.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// Mask replaces a secret.
const Mask = "xxxxx"

// DSN returns the PostgreSQL connection string s with its password replaced by [Mask], in
// the URL form (postgres://app:xxxxx@db/app, ?password=xxxxx) and in the key=value form
// (password=xxxxx). The rest of s is kept, so the host and database stay readable.
func DSN(s string) string {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		if u, err := url.Parse(s); err == nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), Mask)
			}
			if q := u.Query(); q.Has("password") {
				q.Set("password", Mask)
				u.RawQuery = q.Encode()
			}
			return u.String()
		}
		// Unparsable: blank everything between the scheme and the host, and any password=.
		s = brokenUserinfo.ReplaceAllString(s, "${1}"+Mask+"@")
	}
	return kvPassword.ReplaceAllString(s, "${1}"+Mask)
}

// URL returns the URL s with its userinfo's password and its query hidden: a JWKS or
// webhook URL may carry a key in either.
func URL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return Mask
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), Mask)
	}
	if u.RawQuery != "" {
		u.RawQuery = Mask
	}
	return u.String()
}

var (
	// kvPassword matches password=secret and password = 'se cret' (with \' escapes).
	kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]*)`)
	// brokenUserinfo matches the userinfo of a URL net/url cannot parse.
	brokenUserinfo = regexp.MustCompile(`^(postgres(?:ql)?://)[^/?#]*@`)
)
