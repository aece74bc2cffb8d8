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

// socketClosed returns a func that blocks until c's peer has sent bytes
// (false) or has closed or reset the connection with nothing left unread
// (true), through the runtime's poller (so c's read deadline and Close end
// the wait, with their error), without reading anything.
func socketClosed(c *net.TCPConn) func() (bool, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	return func() (closed bool, err error) {
		err = raw.Read(func(fd uintptr) bool {
			var ready bool
			ready, closed = peek(int(fd))
			return ready
		})
		return closed, err
	}
}

// readReady says, without blocking or reading, whether a read of the
// socket fd would return at once: it has bytes, has reached EOF or has
// failed.
func readReady(fd int) bool {
	ready, _ := peek(fd)
	return ready
}

// peerClosed says, without blocking or reading, whether the peer of the
// socket fd has closed or reset it with nothing left unread: a read would
// return EOF or fail.
func peerClosed(fd int) bool {
	_, closed := peek(fd)
	return closed
}

// peek is readReady and peerClosed in one recv(2).
func peek(fd int) (ready, closed bool) {
	for {
		var b [1]byte
		n, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false, false
		case err != nil:
			return true, true
		}
		return true, n == 0
	}
}
