//go:build unix

package pgtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// sysUser is the system account the server programs run as when the current
// process is root.
type sysUser struct {
	name     string
	uid, gid uint32
	groups   []uint32 // primary and supplementary groups
}

// serverUser returns the account to run PostgreSQL as: nil (the current
// user) unless we are root, in which case the "postgres" system user.
func serverUser() (*sysUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	const name = "postgres"
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, and PostgreSQL refuses to run as root, but there is no %q system user to run it as (%v); create one with `useradd --system --user-group postgres` or run as a non-root user", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgtest: bad uid/gid for user %q: %w", name, err)
	}
	su := &sysUser{name: name, uid: uint32(uid), gid: uint32(gid), groups: []uint32{uint32(gid)}}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil && uint32(g) != su.gid {
				su.groups = append(su.groups, uint32(g))
			}
		}
	}
	return su, nil
}

// runAs makes cmd run as u (no-op for nil u).
func runAs(cmd *exec.Cmd, u *sysUser) {
	if u == nil {
		return
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.groups[1:]},
	}
}

// chownTo gives path to u (no-op for nil u).
func chownTo(path string, u *sysUser) error {
	if u == nil {
		return nil
	}
	return os.Chown(path, int(u.uid), int(u.gid))
}

// traversable reports whether u can search every directory from / down to
// dir, so that it can reach entries inside dir.
func traversable(dir string, u *sysUser) bool {
	if u == nil {
		return true
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return false
		}
		perm := fi.Mode().Perm()
		var allowed bool
		switch {
		case st.Uid == u.uid:
			allowed = perm&0o100 != 0
		case u.inGroup(st.Gid):
			allowed = perm&0o010 != 0
		default:
			allowed = perm&0o001 != 0
		}
		if !allowed {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

func (u *sysUser) inGroup(gid uint32) bool {
	for _, g := range u.groups {
		if g == gid {
			return true
		}
	}
	return false
}

// processAlive reports whether pid names a live (non-zombie) process.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A zombie still accepts signal 0; on Linux, look at its state.
	if stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			return false
		}
	}
	return true
}

// quitProcess asks a postmaster for an immediate shutdown.
func quitProcess(pid int) error { return syscall.Kill(pid, syscall.SIGQUIT) }

// killProcess kills a process outright.
func killProcess(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// isPostmasterOf reports whether pid is a postgres process serving dataDir.
// Without /proc it answers false, so that nothing unrelated is ever killed.
func isPostmasterOf(pid int, dataDir string) bool {
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	return bytes.Contains(cmdline, []byte("postgres")) && bytes.Contains(cmdline, []byte(dataDir))
}
