//go:build !unix

package revocation

import (
	"testing"
	"time"
)

// processCPU: the process's CPU time is read with getrusage, which this
// platform lacks; the benchmarks that report a CPU share skip.
func processCPU(b *testing.B) time.Duration {
	b.Skip("no getrusage on this platform")
	return 0
}
