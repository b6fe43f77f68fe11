package redact

import "testing"

func TestDSN(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"postgres://app:s3cret@db:5432/app?sslmode=disable", "postgres://app:xxxxx@db:5432/app?sslmode=disable"},
		{"postgres://db/app?user=app&password=s3cret", "postgres://db/app?password=xxxxx&user=app"},
		{"postgres://app:s3cret@db:port/app", "postgres://xxxxx@db:port/app"},
		{"host=db user=app password=s3cret dbname=app", "host=db user=app password=xxxxx dbname=app"},
		{"postgres://app@db/app", "postgres://app@db/app"},
	}
	for _, tt := range tests {
		if got := DSN(tt.in); got != tt.want {
			t.Errorf("DSN(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"https://idp.example.com/.well-known/jwks.json", "https://idp.example.com/.well-known/jwks.json"},
		{"https://idp.example.com/jwks?key=s3cret", "https://idp.example.com/jwks?xxxxx"},
		{"https://u:s3cret@idp.example.com/jwks", "https://u:xxxxx@idp.example.com/jwks"},
		{"://bad", "xxxxx"},
	}
	for _, tt := range tests {
		if got := URL(tt.in); got != tt.want {
			t.Errorf("URL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
