//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd || solaris

package lockholder

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// lockPID returns the id of the process holding an fcntl lock on the file at path; 0 when
// none does or the file cannot be read.
func lockPID(path string) int {
	// Read-only: Pebble creates the file by truncating it, and so must not this.
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil || lk.Type == unix.F_UNLCK {
		return 0
	}
	return int(lk.Pid)
}
