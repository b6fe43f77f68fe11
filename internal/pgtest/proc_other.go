//go:build !unix

package pgtest

import (
	"errors"
	"os"
	"os/exec"
)

// sysUser is the system account the server programs run as; unused here.
type sysUser struct{ name string }

func serverUser() (*sysUser, error)     { return nil, nil }
func runAs(*exec.Cmd, *sysUser)         {}
func chownTo(string, *sysUser) error    { return nil }
func traversable(string, *sysUser) bool { return true }
func isPostmasterOf(int, string) bool   { return false }
func quitProcess(pid int) error         { return killProcess(pid) }

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.FindProcess(pid)
	return err == nil
}

func killProcess(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	if err := p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}
