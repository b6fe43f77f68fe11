package walflow

import (
	"net"
	"os"
	"strconv"
	"testing"
)

func TestAdvertisedAddr(t *testing.T) {
	t.Parallel()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 9187}, "127.0.0.1:9187"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 9187}, net.JoinHostPort(host, strconv.Itoa(9187))},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 80}, net.JoinHostPort(host, "80")},
		{&net.TCPAddr{IP: net.ParseIP("10.0.0.2"), Port: 1}, "10.0.0.2:1"},
	} {
		if got := advertisedAddr(tt.addr); got != tt.want {
			t.Errorf("advertisedAddr(%s) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}
