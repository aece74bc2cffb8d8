package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fdConn is a client socket accepted from a plain TCP listener by a
// rawListener (see Proxy.Listener): a net.Conn over a raw non-blocking
// descriptor. Its system
// calls are raw (see rawsyscall_linux.go), and a call that would block
// waits in one of the relay's epoll watchers rather than in the runtime's
// poller. The socket a relay then takes over was never registered
// anywhere else: accepting a client, reading its CONNECT and handing it
// on cost no poller registration, no getsockname(2), and no system call
// that wakes the runtime's monitor thread. A CONNECT has nearly always
// arrived by the time it is read, so the watcher is rarely involved.
type fdConn struct {
	fd     int32
	w      *watcher
	remote *net.TCPAddr

	mu      sync.Mutex // guards the fields below
	ops     int        // system calls under way on fd
	closing bool       // Close was called; fd closes once ops is 0
	closed  bool       // fd is closed
	seq     uint64     // the handler's number in w while registered, else 0
	local   *net.TCPAddr
	// deadline and ready are per direction, 0 for reading and 1 for
	// writing. A send on ready (capacity 1, made when fd is first
	// registered) wakes a call waiting in that direction: the socket's
	// readiness, a new deadline or Close.
	deadline [2]time.Time
	ready    [2]chan struct{}
	// parked, while set, is resumed in place of a read waiting on
	// ready[0] (see whenReadable), by what would wake that read, or by
	// parkTimer at the read deadline.
	parked    resumer
	parkTimer *time.Timer
}

// rawListener accepts fdConns from a plain TCP listener, waiting in ws.
// It accepts on a duplicate of the listener's descriptor, which the
// runtime's poller watches for it: the net package offers no way to wait
// on a listener's own descriptor. Each socket gets TCP_NODELAY, as from
// the net package, inherited from the listening socket where it was set
// there (which saves a system call per client); keep-alive probes are not
// set (MQTT's own keep-alive watches a session).
type rawListener struct {
	*net.TCPListener
	file    *os.File
	raw     syscall.RawConn
	ws      *watchers
	noDelay bool // the listening socket has TCP_NODELAY, which accepted sockets inherit

	// One Accept at a time, as in the net package; these are the
	// result of accept, made once so that a call allocates nothing.
	mu     sync.Mutex
	accept func(lfd uintptr) bool
	fd     int
	remote *net.TCPAddr
	err    error
}

// newRawListener returns nil when ln's descriptor cannot be had.
func (ws *watchers) newRawListener(ln *net.TCPListener) net.Listener {
	file, err := ln.File()
	if err != nil {
		return nil
	}
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil
	}
	l := &rawListener{TCPListener: ln, file: file, raw: raw, ws: ws}
	raw.Control(func(fd uintptr) {
		l.noDelay = rawSetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) == nil
	})
	l.accept = func(lfd uintptr) bool {
		l.fd, l.remote, l.err = rawAccept(int(lfd))
		return l.err != unix.EAGAIN
	}
	return l
}

// listenerCheck is how often Accept looks whether the listener it was
// made from was closed directly: the duplicate does not close with it.
const listenerCheck = time.Second

func (l *rawListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		l.file.SetReadDeadline(time.Now().Add(listenerCheck))
		if err := l.raw.Read(l.accept); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if raw, err := l.TCPListener.SyscallConn(); err == nil && raw.Control(func(uintptr) {}) == nil {
					continue
				}
				err = net.ErrClosed
			}
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: err}
		}
		switch l.err {
		case nil:
		case unix.EINTR, unix.ECONNABORTED: // a client that gave up: the next one
			continue
		default:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", l.err)}
		}
		if !l.noDelay {
			if err := rawSetsockoptInt(l.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
				rawClose(l.fd)
				continue // the client is gone already
			}
		}
		return &fdConn{fd: int32(l.fd), w: l.ws.pick(), remote: l.remote}, nil
	}
}

func (l *rawListener) Close() error {
	l.file.Close()
	return l.TCPListener.Close()
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

func (c *fdConn) Read(b []byte) (int, error) {
	for {
		n, err := c.readNow(b)
		if err != unix.EAGAIN {
			return n, err
		}
		if err := c.wait(0); err != nil {
			return 0, c.opError("read", err)
		}
	}
}

// readNow is Read without waiting: it returns unix.EAGAIN, bare, when
// nothing has arrived.
func (c *fdConn) readNow(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		fd, err := c.begin(0)
		if err != nil {
			return 0, c.opError("read", err)
		}
		n, err := rawRead(fd, b)
		c.end()
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			return 0, err
		case err != nil:
			return 0, c.opError("read", os.NewSyscallError("read", err))
		case n == 0:
			return 0, io.EOF
		default:
			return n, nil
		}
	}
}

// readQueued is Read without waiting: errNothingQueued when nothing has
// arrived.
func (c *fdConn) readQueued(b []byte) (int, error) {
	n, err := c.readNow(b)
	if err == unix.EAGAIN {
		return 0, errNothingQueued
	}
	return n, err
}

// whenReadable arranges for r to be resumed once, on a goroutine of its
// own, when a read may find bytes, EOF or an error: the socket became
// readable, or its read deadline passed, or it was closed (at once when
// one of them is already the case). Until then nothing runs for it: the
// socket waits in the watcher's epoll set, with a timer for its deadline.
// An error means that it cannot wait there; r is not resumed.
func (c *fdConn) whenReadable(r resumer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closing && c.seq == 0 {
		if err := c.registerLocked(); err != nil {
			return c.opError("read", err)
		}
	}
	c.parked = r
	select {
	case <-c.ready[0]: // readiness reported since the last read
		c.unparkLocked()
		return nil
	default:
	}
	switch d := c.deadline[0]; {
	case c.closing || !d.IsZero() && !time.Now().Before(d):
		c.unparkLocked()
	case !d.IsZero():
		c.parkTimer = time.AfterFunc(time.Until(d), c.unpark)
	}
	return nil
}

// wakeReaderLocked wakes what waits to read: the parked resumer, else a
// call waiting on ready[0].
func (c *fdConn) wakeReaderLocked() {
	if c.parked != nil {
		c.unparkLocked()
		return
	}
	notify(c.ready[0])
}

// unpark resumes the parked resumer, if it is still parked.
func (c *fdConn) unpark() {
	c.mu.Lock()
	c.unparkLocked()
	c.mu.Unlock()
}

func (c *fdConn) unparkLocked() {
	r := c.parked
	if r == nil {
		return
	}
	c.parked = nil
	if c.parkTimer != nil {
		c.parkTimer.Stop()
		c.parkTimer = nil
	}
	go r.resume()
}

func (c *fdConn) Write(b []byte) (int, error) { return c.write(b, 0) }

// lastWrite returns a writer whose bytes the kernel holds (MSG_MORE)
// until CloseWrite or Close, which sends them with the FIN: a refusal's
// CONNACK and FIN leave in one segment, which the client acknowledges
// once, rather than in two.
func (c *fdConn) lastWrite() io.Writer { return heldWriter{c} }

type heldWriter struct{ c *fdConn }

func (w heldWriter) Write(b []byte) (int, error) { return w.c.write(b, unix.MSG_MORE) }

func (c *fdConn) write(b []byte, flags int) (int, error) {
	written := 0
	for written < len(b) {
		fd, err := c.begin(1)
		if err != nil {
			return written, c.opError("write", err)
		}
		n, err := writeNonblocking(fd, b[written:], flags)
		c.end()
		written += n
		switch {
		case err == unix.EAGAIN:
			if err := c.wait(1); err != nil {
				return written, c.opError("write", err)
			}
		case err != nil:
			return written, c.opError("write", os.NewSyscallError("write", err))
		}
	}
	return written, nil
}

// waitReadable blocks until the socket has bytes queued, has reached EOF
// or has failed, without reading (see readiness).
func (c *fdConn) waitReadable() error {
	for {
		fd, err := c.begin(0)
		if err != nil {
			return c.opError("read", err)
		}
		ready := readReady(fd)
		c.end()
		if ready {
			return nil
		}
		if err := c.wait(0); err != nil {
			return c.opError("read", err)
		}
	}
}

// CloseWrite shuts the sending half down: the client reads EOF.
func (c *fdConn) CloseWrite() error {
	fd, err := c.begin(1)
	if err != nil {
		return c.opError("shutdown", err)
	}
	defer c.end()
	if err := rawShutdownWrite(fd); err != nil {
		return c.opError("shutdown", os.NewSyscallError("shutdown", err))
	}
	return nil
}

// Close closes the socket, at once or, when a call is under way on it
// on another goroutine, as that call returns; a call that waits returns
// net.ErrClosed.
func (c *fdConn) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return c.opError("close", net.ErrClosed)
	}
	c.closing = true
	if c.ops == 0 {
		c.closeLocked()
	}
	c.wakeReaderLocked()
	notify(c.ready[1])
	c.mu.Unlock()
	return nil
}

func (c *fdConn) closeLocked() {
	if c.closed {
		return
	}
	c.closed = true
	if c.seq != 0 {
		c.w.forget(c.seq) // closing takes the socket out of the epoll set
		c.seq = 0
	}
	rawClose(int(c.fd))
}

func (c *fdConn) RemoteAddr() net.Addr { return c.remote }

// LocalAddr asks the kernel the first time: only a PROXY header for the
// broker needs it.
func (c *fdConn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.local == nil && !c.closed {
		var rsa unix.RawSockaddrAny
		size := uint32(unsafe.Sizeof(rsa))
		_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(c.fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&size)))
		if e == 0 {
			c.local = tcpAddr(&rsa)
		}
	}
	if c.local == nil {
		return &net.TCPAddr{}
	}
	return c.local
}

func (c *fdConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *fdConn) SetReadDeadline(t time.Time) error  { return c.setDeadline(0, t) }
func (c *fdConn) SetWriteDeadline(t time.Time) error { return c.setDeadline(1, t) }

func (c *fdConn) setDeadline(dir int, t time.Time) error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return c.opError("set deadline", net.ErrClosed)
	}
	c.deadline[dir] = t
	// What waits looks at the new deadline.
	if dir == 0 {
		c.wakeReaderLocked()
	} else {
		notify(c.ready[dir])
	}
	c.mu.Unlock()
	return nil
}

// begin returns the descriptor for a system call in direction dir, which
// must be followed by end; or why none may be made.
func (c *fdConn) begin(dir int) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch d := c.deadline[dir]; {
	case c.closing:
		return -1, net.ErrClosed
	case !d.IsZero() && !time.Now().Before(d):
		return -1, os.ErrDeadlineExceeded
	}
	c.ops++
	return int(c.fd), nil
}

func (c *fdConn) end() {
	c.mu.Lock()
	c.ops--
	if c.closing && c.ops == 0 {
		c.closeLocked()
	}
	c.mu.Unlock()
}

// wait blocks until the socket may be ready in direction dir, its
// deadline passes or it is closed. It may return early: the caller tries
// again, and waits again on EAGAIN.
func (c *fdConn) wait(dir int) error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return net.ErrClosed
	}
	if c.seq == 0 {
		if err := c.registerLocked(); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	ready, deadline := c.ready[dir], c.deadline[dir]
	c.mu.Unlock()
	if deadline.IsZero() {
		<-ready
		return nil
	}
	d := time.Until(deadline)
	if d <= 0 {
		return os.ErrDeadlineExceeded
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-t.C:
		return os.ErrDeadlineExceeded
	}
}

// registerLocked puts the socket in its watcher's epoll set, edge
// triggered both ways. Registering reports the readiness the socket has
// already, so an edge between EAGAIN and here is not lost.
func (c *fdConn) registerLocked() error {
	if c.ready[0] == nil {
		c.ready = [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}
	}
	seq := c.w.add(c)
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
		Fd:     int32(uint32(seq << 1)),
		Pad:    int32(uint32(seq << 1 >> 32)),
	}
	if err := unix.EpollCtl(c.w.epfd, unix.EPOLL_CTL_ADD, int(c.fd), &ev); err != nil {
		c.w.forget(seq)
		return os.NewSyscallError("epoll_ctl", err)
	}
	c.seq = seq
	return nil
}

// handle wakes the calls waiting for the socket, or the parked resumer.
// It runs on the watcher's goroutine, so a resumer runs on its own.
func (c *fdConn) handle(_ int, events uint32, _ []byte) {
	failed := events&(unix.EPOLLHUP|unix.EPOLLERR) != 0
	c.mu.Lock()
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 || failed {
		c.wakeReaderLocked()
	}
	if events&unix.EPOLLOUT != 0 || failed {
		notify(c.ready[1])
	}
	c.mu.Unlock()
}

// handOff gives the socket to a relay: it leaves the watcher's set, if
// it was there, and the relay registers it under its own key. The fdConn
// still closes it, once the relay is done. ok is false once Close was
// called: the descriptor may be closed already.
func (c *fdConn) handOff() (fd int32, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return -1, false
	}
	if c.seq != 0 {
		unix.EpollCtl(c.w.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
		c.w.forget(c.seq)
		c.seq = 0
	}
	return c.fd, true
}

func (c *fdConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Addr: c.remote, Err: err}
}

// notify wakes whoever waits on ch, or the next to wait; nil is no one.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
