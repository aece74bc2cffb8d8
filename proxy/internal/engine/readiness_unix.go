//go:build unix

package engine

import (
	"net"

	"golang.org/x/sys/unix"
)

// socketReadable returns a func that blocks until c has bytes queued, has
// reached EOF or has failed, through the runtime's poller (so c's read
// deadline and Close end the wait), without reading anything.
func socketReadable(c *net.TCPConn) func() error {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	return func() error {
		return raw.Read(func(fd uintptr) bool { return readReady(int(fd)) })
	}
}

// readReady says, without blocking or reading, whether a read of the
// socket fd would return at once: it has bytes, has reached EOF or has
// failed.
func readReady(fd int) bool {
	for {
		var b [1]byte
		_, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != unix.EINTR {
			return err != unix.EAGAIN
		}
	}
}
