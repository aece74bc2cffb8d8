package engine

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// rawListener accepts fdConns from a plain TCP listener, waiting in ws.
// It accepts on a duplicate of the listener's descriptor, which the
// runtime's poller watches for it: the net package offers no way to wait
// on a listener's own descriptor. Each socket gets TCP_NODELAY, as from
// the net package, inherited from the listening socket where it was set
// there (which saves a system call per client); keep-alive probes are not
// set (MQTT's own keep-alive watches a session).
type rawListener struct {
	*net.TCPListener
	file    *os.File // owns the duplicate
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
func newRawListener(ws *watchers, ln *net.TCPListener) *rawListener {
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
		return newFDConn(l.ws.pick(), l.fd, l.remote), nil
	}
}

func (l *rawListener) Close() error {
	l.file.Close()
	return l.TCPListener.Close()
}
