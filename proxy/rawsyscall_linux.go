package proxy

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The system calls on a connection's path never block: the sockets are
// non-blocking and epoll is polled without waiting. So they are made raw,
// without telling the scheduler, which otherwise hands the processor to
// another thread whenever a call outlasts its monitor's 20 µs tick (system
// calls take that long on some virtual machines) and wakes a thread per
// call. Worse, a call that tells the scheduler while every processor is
// idle wakes the monitor thread from its deep sleep, and it then polls
// every 20 µs until they are idle again. What that cost, measured, is in
// docs/performance.md.

func rawRead(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return rawResult(n, e)
}

func rawWrite(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return rawResult(n, e)
}

// rawSend is rawWrite with send(2)'s flags.
func rawSend(fd int, b []byte, flags int) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), uintptr(flags), 0, 0)
	return rawResult(n, e)
}

func rawShutdownWrite(fd int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
	_, err := rawResult(0, e)
	return err
}

func rawClose(fd int) error {
	_, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	_, err := rawResult(0, e)
	return err
}

func rawSetsockoptInt(fd, level, opt, value int) error {
	v := int32(value)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), unsafe.Sizeof(v), 0)
	_, err := rawResult(0, e)
	return err
}

// rawEpollWait returns the events ready now, waiting for none.
func rawEpollWait(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	return rawResult(n, e)
}

func rawResult(n uintptr, e unix.Errno) (int, error) {
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// writeNonblocking writes b to the non-blocking socket fd, with send(2)'s
// flags, until it is all written or the socket is full (unix.EAGAIN) or
// fails.
func writeNonblocking(fd int, b []byte, flags int) (int, error) {
	written := 0
	for written < len(b) {
		var n int
		var err error
		if flags == 0 {
			n, err = rawWrite(fd, b[written:])
		} else {
			n, err = rawSend(fd, b[written:], flags)
		}
		written += n
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return written, err
		}
	}
	return written, nil
}
