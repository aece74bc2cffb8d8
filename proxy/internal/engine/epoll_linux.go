package engine

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultKind is the engine a platform runs unless told otherwise.
const DefaultKind = Epoll

// epoll is the Linux engine: raw sockets in epoll sets (watchers), moved
// by epollLinks, and the portable engine's copy for connections that are
// not plain sockets (TLS, WebSocket).
type epoll struct {
	ws *watchers
	portable
}

func newEpoll() (Engine, error) {
	ws, err := newWatchers()
	if err != nil {
		return nil, err
	}
	return &epoll{ws: ws}, nil
}

// Listener returns, for a *net.TCPListener, a listener whose sockets stay
// out of the net package and the runtime's poller (fdConns).
func (e *epoll) Listener(ln net.Listener) net.Listener {
	if tl, ok := ln.(*net.TCPListener); ok {
		if rl := newRawListener(e.ws, tl); rl != nil {
			return rl
		}
	}
	return ln
}

// Dial opens a socket of the engine's own (an fdConn): when the
// connection or the write of first must wait (a broker that is not on
// this host, or first larger than the socket's buffer), a watcher wakes
// it. With nothing to write first (TLS comes next, copied through user
// space anyway) the net package dials: the first write is what tells a
// raw connect's outcome.
func (e *epoll) Dial(addrs []netip.AddrPort, first []byte, deadline time.Time) (net.Conn, error) {
	if len(first) == 0 {
		return e.portable.Dial(addrs, first, deadline)
	}
	return dialEach(addrs, deadline, func(addr netip.AddrPort) (net.Conn, error) {
		c, err := e.dial(addr, first, deadline)
		if err != nil {
			return nil, fmt.Errorf("dial tcp %s: %w", addr, err)
		}
		return c, nil
	})
}

func (e *epoll) dial(addr netip.AddrPort, first []byte, deadline time.Time) (net.Conn, error) {
	family := unix.AF_INET
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	c := newFDConn(e.ws.pick(), fd, nil)
	// MQTT packets are small and latency counts: no Nagle delay, as the
	// net package sets for every TCP connection.
	if err := rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		c.Close()
		return nil, err
	}
	// A non-blocking connect returns at once; on loopback the handshake
	// is over by then. The first write tells: it goes through on a
	// connected socket, returns EAGAIN while the handshake is under way
	// (the fdConn then waits for writability), and returns the
	// connection's error (ECONNREFUSED) once it failed.
	if err := rawConnect(fd, addr); err != nil && err != unix.EINPROGRESS && err != unix.EINTR {
		c.Close()
		return nil, err
	}
	if err := writeFirst(c, first, deadline); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Join takes both connections over when both are plain TCP sockets; the
// portable engine copies the others.
func (e *epoll) Join(client, upstream net.Conn, o Options) Link {
	if !isSocket(client) || !isSocket(upstream) {
		return e.portable.Join(client, upstream, o)
	}
	cfd, clientOK := takeSocket(client)
	ufd, upstreamOK := takeSocket(upstream)
	if !clientOK || !upstreamOK {
		// Closed before the link could have it: what was taken is
		// closed, and the link ends at once.
		for _, fd := range []int{cfd, ufd} {
			if fd >= 0 {
				rawClose(fd)
			}
		}
		client.Close()
		upstream.Close()
		go func() {
			if o.Filter != nil {
				o.Filter.Release()
			}
			o.Done(0, 0)
		}()
		return endedLink{}
	}
	l := newEpollLink(e.watcherFor(upstream), cfd, ufd, o)
	l.start()
	return l
}

// watcherFor is the watcher a link of upstream joins: the one its socket
// was dialed on, if the engine dialed it (which spreads links over the
// watchers as dials come, one pick per link), else the next.
func (e *epoll) watcherFor(upstream net.Conn) *watcher {
	if c, ok := upstream.(*fdConn); ok {
		return c.w
	}
	return e.ws.pick()
}

// Close stops the watchers; every link must have ended.
func (e *epoll) Close() { e.ws.stop() }

// isSocket reports whether c is a plain TCP socket, which an epollLink
// can take over.
func isSocket(c net.Conn) bool {
	switch c.(type) {
	case *fdConn, *net.TCPConn:
		return true
	}
	return false
}

// takeSocket moves c's socket to the caller (see fdConn.take, dupSocket).
func takeSocket(c net.Conn) (int, bool) {
	switch c := c.(type) {
	case *fdConn:
		return c.take()
	case *net.TCPConn:
		return dupSocket(c)
	}
	return -1, false
}

// endedLink is a link that ended before it began.
type endedLink struct{}

func (endedLink) Abort()                              {}
func (endedLink) Send([]byte)                         {}
func (endedLink) End([]byte)                          {}
func (endedLink) Bytes() (fromClient, toClient int64) { return 0, 0 }
