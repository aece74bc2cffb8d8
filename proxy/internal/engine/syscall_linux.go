package engine

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
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

// rawConnect starts connecting fd to addr.
func rawConnect(fd int, addr netip.AddrPort) error {
	var sa unsafe.Pointer
	var size uintptr
	if a := addr.Addr(); a.Is4() || a.Is4In6() {
		var sa4 unix.RawSockaddrInet4
		sa4.Family = unix.AF_INET
		sa4.Addr = a.Unmap().As4()
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], addr.Port())
		sa, size = unsafe.Pointer(&sa4), unsafe.Sizeof(sa4)
	} else {
		var sa6 unix.RawSockaddrInet6
		sa6.Family = unix.AF_INET6
		sa6.Addr = a.As16()
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa6.Port))[:], addr.Port())
		if zone := a.Zone(); zone != "" { // a link-local address's interface
			if index, err := strconv.ParseUint(zone, 10, 32); err == nil {
				sa6.Scope_id = uint32(index)
			} else if ifi, err := net.InterfaceByName(zone); err == nil {
				sa6.Scope_id = uint32(ifi.Index)
			}
		}
		sa, size = unsafe.Pointer(&sa6), unsafe.Sizeof(sa6)
	}
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(sa), size)
	_, err := rawResult(0, e)
	return err
}

// rawAccept takes a connection from the listening socket lfd, without
// waiting (unix.EAGAIN when none is queued).
func rawAccept(lfd int) (int, *net.TCPAddr, error) {
	var rsa unix.RawSockaddrAny
	size := uint32(unsafe.Sizeof(rsa))
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&size)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, nil, e
	}
	return int(fd), tcpAddr(&rsa), nil
}

// rawSocketAddr is getsockname(2) (call unix.SYS_GETSOCKNAME) or
// getpeername(2) (unix.SYS_GETPEERNAME) of the socket fd, or nil.
func rawSocketAddr(call uintptr, fd int) *net.TCPAddr {
	var rsa unix.RawSockaddrAny
	size := uint32(unsafe.Sizeof(rsa))
	_, _, e := unix.RawSyscall(call, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&size)))
	if e != 0 {
		return nil
	}
	return tcpAddr(&rsa)
}

// tcpAddr converts a socket address the kernel wrote.
func tcpAddr(rsa *unix.RawSockaddrAny) *net.TCPAddr {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		addr := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			addr = addr.WithZone(zoneName(sa.Scope_id))
		}
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, port))
	}
	return &net.TCPAddr{}
}

// zoneName names interface index as the net package does: by name when
// the interface is known, else by number.
func zoneName(index uint32) string {
	if ifi, err := net.InterfaceByIndex(int(index)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(index), 10)
}
