//go:build !linux

package proxy

import "net"

// socketReadable is Linux-only (see copy_linux.go): elsewhere a user-space
// copy holds its buffer while it waits.
func socketReadable(*net.TCPConn) func() error { return nil }
