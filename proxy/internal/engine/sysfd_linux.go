package engine

import (
	"net"

	"golang.org/x/sys/unix"
)

// sysFD owns one socket descriptor of the engine's, with the discipline
// of the standard library's internal/poll.FD: whoever passes the number to
// a system call holds a reference while it does (an fdConn's call, from
// acquire to release; a link's flow, for its whole life); closing only
// marks the descriptor closing, so that no new reference is taken, and the
// last reference to go closes it. A number is thus never closed, and so
// never reused by the kernel for the next socket, while a user may still
// pass it to a system call. A descriptor has one owner at a time, whose
// mutex guards its sysFD: an fdConn, or a link once takeLocked has moved
// the number there.
type sysFD struct {
	num     int32 // -1 once closed or taken
	refs    int32 // users of num
	closing bool  // closeLocked was called, or num was taken
}

// newSysFD owns the descriptor num from now on.
func newSysFD(num int) sysFD { return sysFD{num: int32(num)} }

// acquireLocked returns the number for one system call, to be followed by
// releaseLocked; net.ErrClosed once Close was called.
func (f *sysFD) acquireLocked() (int, error) {
	if f.closing {
		return -1, net.ErrClosed
	}
	f.refs++
	return int(f.num), nil
}

// releaseLocked ends a reference; the last one after Close closes.
func (f *sysFD) releaseLocked() {
	f.refs--
	if f.closing && f.refs == 0 {
		f.destroyLocked()
	}
}

// closeLocked marks the descriptor closing, and closes it unless a
// reference is held. It reports false when it was closing already.
func (f *sysFD) closeLocked() bool {
	if f.closing {
		return false
	}
	f.closing = true
	if f.refs == 0 {
		f.destroyLocked()
	}
	return true
}

func (f *sysFD) destroyLocked() {
	if f.num >= 0 {
		rawClose(int(f.num))
		f.num = -1
	}
}

// takeLocked moves the descriptor out: the caller owns the number from now
// on, and f is closing without having closed it. False when f is closing
// or in use.
func (f *sysFD) takeLocked() (int, bool) {
	if f.closing || f.refs > 0 {
		return -1, false
	}
	num := int(f.num)
	f.num, f.closing = -1, true
	return num, true
}

// dupSocket returns a descriptor of the engine's own for c, a *net.TCPConn,
// and closes c: the runtime's poller lets go of its descriptor, and the
// socket lives on in the duplicate (non-blocking, as the original was:
// the flag belongs to the socket, not to the number).
func dupSocket(c *net.TCPConn) (int, bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, false
	}
	dup := -1
	if err := raw.Control(func(fd uintptr) {
		dup, _ = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || dup < 0 {
		return -1, false
	}
	c.Close()
	return dup, true
}
