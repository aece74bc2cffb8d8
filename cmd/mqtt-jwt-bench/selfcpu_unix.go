//go:build unix

package main

import (
	"syscall"
	"time"
)

// selfCPU is the CPU time this process has used, user plus system; zero
// when the system does not say.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
