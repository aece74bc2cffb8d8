//go:build !unix

package engine

import "net"

// socketReadable needs recv(2) with MSG_PEEK (readiness_unix.go): without
// it, the copy holds its buffer while Read waits.
func socketReadable(*net.TCPConn) func() error { return nil }

// socketClosed needs recv(2) with MSG_PEEK too: without it, a framed
// link's held client direction does not see its client close.
func socketClosed(*net.TCPConn) func() (bool, error) { return nil }
