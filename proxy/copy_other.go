//go:build !linux

package proxy

import "net"

// copyBursts is Linux-only; elsewhere the caller's io.Copy applies.
func copyBursts(dst, src net.Conn) (n int64, handled bool, err error) { return 0, false, nil }
