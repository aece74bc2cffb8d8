//go:build !unix

package engine

import "net"

// socketReadable needs recv(2) with MSG_PEEK (readiness_unix.go): without
// it, the copy holds its buffer while Read waits.
func socketReadable(*net.TCPConn) func() error { return nil }
