package configfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminTokenConfig: http.admin_token_env and http.admin_token_file give the console's
// admin token, read only when resolved (by run); the token itself in the file is refused
// without being echoed.
func TestAdminTokenConfig(t *testing.T) {
	t.Parallel()
	const token = "adm1n-t0ken-adm1n-t0ken"
	env := envOf("DATABASE_URL", "postgres://d@h/db", "WALFLOW_ADMIN_TOKEN", token)
	c, err := parseConfig("walflow.yaml", []byte("http: {admin_token_env: WALFLOW_ADMIN_TOKEN}\n"), env)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.AdminToken.Resolve(env); err != nil || got != token {
		t.Errorf("admin_token_env: %q, %v; want the variable's token", got, err)
	}
	if _, err := c.AdminToken.Resolve(envOf()); err == nil || !strings.Contains(err.Error(), "http.admin_token_env: the environment variable WALFLOW_ADMIN_TOKEN is not set or empty") {
		t.Errorf("admin_token_env unset: %v", err)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "admin"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = parseConfig(filepath.Join(dir, "walflow.yaml"), []byte("http: {admin_token_file: admin}\n"), env)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.AdminToken.Resolve(env); err != nil || got != token {
		t.Errorf("admin_token_file: %q, %v; want the file's token without its newline", got, err)
	}

	c, err = parseConfig("walflow.yaml", []byte("# none\n"), env)
	if err != nil || c.AdminToken != nil {
		t.Errorf("no admin token: %+v, %v; want none", c.AdminToken, err)
	}
	for yaml, want := range map[string]string{
		"http: {admin_token: " + token + "}\n":                       "http.admin_token: a secret is never written in the configuration file",
		"http: {admin_token_env: A, admin_token_file: f}\n":          "http.admin_token_env: set together with http.admin_token_file",
		"http: {admin_token_env: 'A B'}\n":                           `http.admin_token_env: "A B" is not an environment variable name`,
		"http: {addr: \"\", admin_token_env: WALFLOW_ADMIN_TOKEN}\n": `http.admin_token_env: set, but http.addr is ""`,
	} {
		_, err := parseConfig("walflow.yaml", []byte(yaml), env)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", yaml, err, want)
		} else if strings.Contains(err.Error(), token) {
			t.Errorf("%s: the error shows the token: %v", yaml, err)
		}
	}
}
