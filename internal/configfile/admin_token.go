package configfile

import "path/filepath"

// AdminTokenSource is where the console's admin token is read from. Only run reads it:
// the other commands never need it.
type AdminTokenSource struct {
	l   *loader
	src keySource
}

// adminToken validates http.admin_token_file and http.admin_token_env into c.adminToken.
func (l *loader) adminToken(h httpConfig, c *Config) error {
	src := keySource{what: "admin token", field: "AdminToken"}
	switch {
	case h.AdminTokenFile != "" && h.AdminTokenEnv != "":
		return l.errKey("http.admin_token_env", "set together with http.admin_token_file; keep one")
	case h.AdminTokenFile != "":
		src.key, src.file = "http.admin_token_file", h.AdminTokenFile
		if !filepath.IsAbs(src.file) {
			src.file = filepath.Join(filepath.Dir(l.file), src.file)
		}
	case h.AdminTokenEnv != "":
		if !envName.MatchString(h.AdminTokenEnv) {
			return l.errPath("http.admin_token_env", "%q is not an environment variable name; write one like WALFLOW_ADMIN_TOKEN", h.AdminTokenEnv)
		}
		src.key, src.env = "http.admin_token_env", h.AdminTokenEnv
	default:
		return nil
	}
	if c.Engine.HTTPAddr == "" {
		return l.errKey(src.key, `set, but http.addr is "", so there is no console to use it; set http.addr or remove the admin token`)
	}
	c.AdminToken = &AdminTokenSource{l: l, src: src}
	return nil
}

// Resolve reads the token.
func (a *AdminTokenSource) Resolve(getenv func(string) string) (string, error) {
	b, err := a.src.read(a.l, getenv)
	return string(b), err
}
