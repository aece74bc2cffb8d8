package engine

import (
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// fdConn is a net.Conn over a socket of the engine's own, outside the net
// package and the runtime's poller: a client accepted by a rawListener,
// or a broker's socket dialed by the epoll engine. Its system calls are
// raw (see syscall_linux.go), and a call that would block waits in one of
// the engine's watchers rather than in the runtime's poller. A socket a
// link then takes over was never registered anywhere else: accepting a
// client, reading its CONNECT and handing it on cost no poller
// registration, no getsockname(2), and no system call that wakes the
// runtime's monitor thread. A CONNECT has nearly always arrived by the
// time it is read, so the watcher is rarely involved.
type fdConn struct {
	w *watcher
	// remote is an accepted client's address, as accept4(2) gave it; nil
	// for a dialed socket, whose RemoteAddr asks the kernel (nothing on
	// the proxy's path needs it).
	remote *net.TCPAddr

	mu   sync.Mutex // guards sock and the fields below
	sock sysFD
	seq  uint64 // the handler's number in w while registered, else 0
	// local is asked of the kernel the first time: only a PROXY header
	// for the broker needs it.
	local *net.TCPAddr
	// deadline and ready are per direction, 0 for reading and 1 for
	// writing. A send on ready (capacity 1, made when the socket is first
	// registered) wakes a call waiting in that direction: the socket's
	// readiness, a new deadline or Close.
	deadline [2]time.Time
	ready    [2]chan struct{}
	// parked, while set, is resumed in place of a read waiting on
	// ready[0] (see WhenReadable), by what would wake that read, or by
	// parkTimer at the read deadline.
	parked    Resumer
	parkTimer *time.Timer
}

func newFDConn(w *watcher, fd int, remote *net.TCPAddr) *fdConn {
	return &fdConn{w: w, remote: remote, sock: newSysFD(fd)}
}

func (c *fdConn) Read(b []byte) (int, error) {
	for {
		n, err := c.ReadNow(b)
		if err != ErrWouldBlock {
			return n, err
		}
		if err := c.wait(0); err != nil {
			return 0, c.opError("read", err)
		}
	}
}

// ReadNow is Read without waiting: it returns ErrWouldBlock when nothing
// has arrived.
func (c *fdConn) ReadNow(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		fd, err := c.acquire(0)
		if err != nil {
			return 0, c.opError("read", err)
		}
		n, err := rawRead(fd, b)
		c.release()
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			return 0, ErrWouldBlock
		case err != nil:
			return 0, c.opError("read", os.NewSyscallError("read", err))
		case n == 0:
			return 0, io.EOF
		default:
			return n, nil
		}
	}
}

// WhenReadable arranges for r to be resumed once, on a goroutine of its
// own, when a read may find bytes, EOF or an error: the socket became
// readable, or its read deadline passed, or it was closed (at once when
// one of them is already the case). Until then nothing runs for it: the
// socket waits in the watcher's epoll set, with a timer for its deadline.
// An error means that it cannot wait there; r is not resumed.
func (c *fdConn) WhenReadable(r Resumer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.sock.closing && c.seq == 0 {
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
	case c.sock.closing || !d.IsZero() && !time.Now().Before(d):
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
	go r.Resume()
}

func (c *fdConn) Write(b []byte) (int, error) { return c.write(b, 0) }

// LastWriter returns a writer whose bytes the kernel holds (MSG_MORE)
// until CloseWrite or Close, which sends them with the FIN: a refusal's
// CONNACK and FIN leave in one segment, which the client acknowledges
// once, rather than in two.
func (c *fdConn) LastWriter() io.Writer { return heldWriter{c} }

type heldWriter struct{ c *fdConn }

func (w heldWriter) Write(b []byte) (int, error) { return w.c.write(b, unix.MSG_MORE) }

func (c *fdConn) write(b []byte, flags int) (int, error) {
	written := 0
	for written < len(b) {
		fd, err := c.acquire(1)
		if err != nil {
			return written, c.opError("write", err)
		}
		n, err := writeNonblocking(fd, b[written:], flags)
		c.release()
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

// WaitReadable blocks until the socket has bytes queued, has reached EOF
// or has failed, without reading (see readiness).
func (c *fdConn) WaitReadable() error {
	for {
		fd, err := c.acquire(0)
		if err != nil {
			return c.opError("read", err)
		}
		ready := readReady(fd)
		c.release()
		if ready {
			return nil
		}
		if err := c.wait(0); err != nil {
			return c.opError("read", err)
		}
	}
}

// CloseWrite shuts the sending half down: the peer reads EOF.
func (c *fdConn) CloseWrite() error {
	fd, err := c.acquire(1)
	if err != nil {
		return c.opError("shutdown", err)
	}
	defer c.release()
	if err := rawShutdownWrite(fd); err != nil {
		return c.opError("shutdown", os.NewSyscallError("shutdown", err))
	}
	return nil
}

// Close closes the socket, at once or, when a call is under way on it
// on another goroutine, as that call returns; a call that waits returns
// net.ErrClosed. After take, it does nothing: the socket is a link's.
func (c *fdConn) Close() error {
	c.mu.Lock()
	if !c.sock.closeLocked() {
		c.mu.Unlock()
		return c.opError("close", net.ErrClosed)
	}
	if c.seq != 0 {
		c.w.forget(c.seq) // closing takes the socket out of the epoll set
		c.seq = 0
	}
	c.wakeReaderLocked()
	notify(c.ready[1])
	c.mu.Unlock()
	return nil
}

func (c *fdConn) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	var peer *net.TCPAddr
	return c.addr(&peer, unix.SYS_GETPEERNAME)
}

func (c *fdConn) LocalAddr() net.Addr { return c.addr(&c.local, unix.SYS_GETSOCKNAME) }

// addr returns *known, asking the kernel with call when it is nil; known
// is guarded by c.mu.
func (c *fdConn) addr(known **net.TCPAddr, call uintptr) net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *known == nil {
		if fd, err := c.sock.acquireLocked(); err == nil {
			*known = rawSocketAddr(call, fd)
			c.sock.releaseLocked()
		}
	}
	if *known == nil {
		return &net.TCPAddr{}
	}
	return *known
}

func (c *fdConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *fdConn) SetReadDeadline(t time.Time) error  { return c.setDeadline(0, t) }
func (c *fdConn) SetWriteDeadline(t time.Time) error { return c.setDeadline(1, t) }

func (c *fdConn) setDeadline(dir int, t time.Time) error {
	c.mu.Lock()
	if c.sock.closing {
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

// acquire returns the descriptor for a system call in direction dir, which
// must be followed by release; or why none may be made.
func (c *fdConn) acquire(dir int) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.deadline[dir]; !c.sock.closing && !d.IsZero() && !time.Now().Before(d) {
		return -1, os.ErrDeadlineExceeded
	}
	return c.sock.acquireLocked()
}

func (c *fdConn) release() {
	c.mu.Lock()
	c.sock.releaseLocked()
	c.mu.Unlock()
}

// wait blocks until the socket may be ready in direction dir, its
// deadline passes or it is closed. It may return early: the caller tries
// again, and waits again on EAGAIN.
func (c *fdConn) wait(dir int) error {
	c.mu.Lock()
	if c.sock.closing {
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
	ev := epollKey(seq, 0, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET)
	if err := unix.EpollCtl(c.w.epfd, unix.EPOLL_CTL_ADD, int(c.sock.num), ev); err != nil {
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

// take moves the socket to a link: it leaves the watcher's set, if a call
// that waited put it there, and c no longer has it (its calls fail with
// net.ErrClosed, and Close does nothing more). ok is false once Close was
// called, or while a call is under way on another goroutine.
func (c *fdConn) take() (fd int, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fd, ok = c.sock.takeLocked()
	if ok && c.seq != 0 {
		unix.EpollCtl(c.w.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		c.w.forget(c.seq)
		c.seq = 0
	}
	return fd, ok
}

func (c *fdConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Addr: c.remote, Err: err}
}
