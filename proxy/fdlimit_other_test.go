//go:build !unix

package proxy

import "testing"

// raiseFDLimit skips the test: the floods count descriptors the Unix way.
func raiseFDLimit(t *testing.T, n int) {
	t.Skipf("the floods need %d descriptors and a Unix open-file limit", n)
}
