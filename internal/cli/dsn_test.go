package cli

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestRedactedDSN(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"postgres://app:s3cret@db:5432/app?sslmode=disable", "postgres://app:xxxxx@db:5432/app?sslmode=disable"},
		{"postgresql://app:s3cret@db/app", "postgresql://app:xxxxx@db/app"},
		{"postgres://app@db/app", "postgres://app@db/app"},
		{"postgres://db/app?user=app&password=s3cret", "postgres://db/app?password=xxxxx&user=app"},
		{"postgres://app:s3cret@db:port/app", "postgres://xxxxx@db:port/app"},
		{"host=db user=app password=s3cret dbname=app", "host=db user=app password=xxxxx dbname=app"},
		{"host=db password = 's3 cr\\'et' dbname=app", "host=db password = xxxxx dbname=app"},
		{"host=db PASSWORD=s3cret", "host=db PASSWORD=xxxxx"},
		{"", ""},
	}
	for _, tt := range tests {
		d := redactedDSN(tt.in)
		if got := d.String(); got != tt.want {
			t.Errorf("redactedDSN(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if got := fmt.Sprint(d); strings.Contains(got, "s3") {
			t.Errorf("fmt shows the password: %q", got)
		}
		var buf bytes.Buffer
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", slog.Any("database", d))
		if strings.Contains(buf.String(), "s3") {
			t.Errorf("slog shows the password: %s", buf.String())
		}
	}
}
