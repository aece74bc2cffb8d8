//go:build unix

package proxy

import (
	"syscall"
	"testing"
)

// raiseFDLimit raises the soft open-file limit to the hard one and skips
// the test if that cannot hold n more descriptors than are open. Go raises
// it at start-up too, but for itself only: set here, it also holds for the
// child processes (mosquitto and its many connections).
func raiseFDLimit(t *testing.T, n int) {
	t.Helper()
	var limit syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit); err != nil {
		t.Skipf("open-file limit unknown: %v", err)
	}
	limit.Cur = limit.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &limit); err != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit)
	}
	// Cur is an int64 on FreeBSD, a uint64 elsewhere.
	if need := uint64(openFDs(t) + n + 500); uint64(limit.Cur) < need {
		t.Skipf("the open-file limit (ulimit -n) is %d; the floods need %d: raise it to run them", limit.Cur, need)
	}
}
