package proxy

import (
	"errors"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// copyBursts copies src to dst the way io.Copy would, without holding a
// pipe while the connection is idle.
//
// io.Copy between two *net.TCPConn uses splice(2) through a pipe that it
// takes from a pool and keeps until EOF: two extra descriptors per
// direction for a connection's whole life, which caps an idle fleet at a
// third of the open-file limit. Here the goroutine waits for readability
// through the poller with nothing in hand, learns how many bytes are
// queued (SIOCINQ), and moves exactly those with io.CopyN, which the net
// package still turns into splice(2) (it unwraps *io.LimitedReader); the
// pipe goes back to the pool after each burst. handled is false when src
// or dst is not a plain TCP socket; the caller then copies as usual.
func copyBursts(dst, src net.Conn) (n int64, handled bool, err error) {
	tcpSrc, srcOK := src.(*net.TCPConn)
	_, dstOK := dst.(*net.TCPConn)
	if !srcOK || !dstOK {
		return 0, false, nil
	}
	raw, err := tcpSrc.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	for {
		queued, eof, err := waitReadable(raw)
		if err != nil || eof {
			return n, true, err
		}
		w, err := io.CopyN(dst, tcpSrc, int64(queued))
		n += w
		if err != nil {
			if errors.Is(err, io.EOF) { // the peer closed within the burst
				err = nil
			}
			return n, true, err
		}
	}
}

// waitReadable blocks until src has bytes queued or has reached EOF. The
// first call of the func happens at once; when it returns false, the
// runtime parks the goroutine on the poller until the socket is readable,
// honouring read deadlines and Close.
func waitReadable(raw syscall.RawConn) (queued int, eof bool, err error) {
	var opErr error
	err = raw.Read(func(fd uintptr) bool {
		queued, opErr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if opErr != nil || queued > 0 {
			return true
		}
		// Nothing queued: either nothing yet, or the peer's FIN.
		var b [1]byte
		m, _, perr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case perr == unix.EAGAIN || perr == unix.EINTR:
			return false
		case perr != nil:
			opErr = perr
		case m == 0:
			eof = true
		default:
			queued = m // bytes arrived between the two calls
		}
		return true
	})
	if err == nil {
		err = opErr
	}
	return queued, eof, err
}
