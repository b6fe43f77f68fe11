package cli

import "github.com/walflow/walflow/internal/configfile"

// loadConfig loads the configuration file at path (see [configfile.Load]); every error is
// a *usageError, so a mistake in the file exits with code 2.
func loadConfig(path string, getenv func(string) string) (*configfile.Config, error) {
	c, err := configfile.Load(path, getenv)
	if err != nil {
		return nil, &usageError{err}
	}
	return c, nil
}
