// Package engine moves the bytes of authenticated connections between a
// client and its broker. It knows sockets, not MQTT or tokens: the proxy
// decides, then hands both connections to an Engine, which owns them
// from then on.
//
//	e, err := engine.New(engine.DefaultKind)
//	if err != nil { ... }
//	defer e.Close() // once every link has ended
//	ln = e.Listener(ln) // where the engine has sockets of its own
//	up, err := e.Dial(addrs, connect, deadline)
//	if err != nil { ... }
//	link := e.Join(client, up, engine.Options{HalfClose: 10 * time.Second, Done: closed})
//	...
//	link.Abort() // token expiry, shutdown: Done follows
//
// There are two engines. Portable (every platform) runs two goroutines
// per link that wait until their source is readable, holding no buffer,
// and copy through pooled buffers. Epoll (Linux) keeps both sockets of an
// idle link in an epoll set and moves their bytes from a few goroutines,
// the watchers, one per processor: no goroutine, buffer or pipe per idle
// link. Connections that are not plain TCP sockets (TLS, WebSocket) are
// copied as the portable engine does, whichever engine runs.
//
// # Rules of the epoll engine
//
// Descriptors. Every socket the engine uses is its own, owned by one
// sysFD: a client accepted from a rawListener, or a broker's socket from
// Dial, is an fdConn; Join moves the number from the fdConn into the
// epollLink (fdConn.take), or duplicates a *net.TCPConn's and closes the
// original (dupSocket). A number is never passed to a system call without
// a reference to its sysFD (a call's, or a flow's for the flow's life), and
// only the last reference closes it: the kernel reuses a closed number for
// the next socket, so a descriptor closed under a user would send that
// user's bytes to another client. Closing a socket is also what takes it
// out of an epoll set; nothing else may close one that is in a set. Pipes
// for splice(2) are owned by the pipe type and pooled; each watcher's epoll
// descriptor by its os.File.
//
// Locks, in the order they are taken: the proxy's own lock (Join is
// called under it; Done is never called with an engine lock held), then
// an epollLink's mu or an fdConn's, then a watcher's mu, which is held
// only to add, forget or look up a handler, never while a handler runs.
// A goroutine holds at most one link's or fdConn's mu.
//
// Flow states. Each link has two flows, client to broker (0) and back
// (1). A flow is waiting (the watcher moves its bytes when its source is
// readable), moving (a goroutine of its own, move, has the flow: the
// destination is full, or a burst filled the watcher's buffer and goes by
// splice), or ended (its references to both sockets are released). An
// event for a moving flow sets pending, so the goroutine reads again
// before handing the flow back. When both flows have ended, the sockets
// close and Done is called, once. A clean EOF passes the end on with
// shutdown(SHUT_WR) and gives the other flow HalfClose to end; anything
// else, and Abort, ends both: waiting flows at once, moving ones when
// their next system call fails on the sockets, which Abort shuts down.
//
// What may block. The watcher's goroutine never blocks: it reads and
// writes non-blocking sockets and hands anything that would wait to a
// move goroutine; Done runs on it and must not block either. Only move
// goroutines and fdConn calls wait, on channels the watcher signals; a
// Resumer parked with fdConn.WhenReadable is started on a goroutine of
// its own, so that nothing waits at all for a client whose CONNECT is
// yet to come. The
// raw system calls (syscall_linux.go) are made without telling the
// scheduler, which is right only for calls that cannot block: reads,
// writes and sends on non-blocking sockets, connect(2) on a non-blocking
// socket, accept4(2) when the listener is readable, epoll_pwait(2) with
// a zero timeout, close(2) and setsockopt(2). Anything that may block
// goes through the runtime.
//
// Epoll registrations. A registration's 64-bit key is the handler's
// sequence number in its watcher shifted left by one, and a bit: the
// socket's index in an epollLink (0 the client's, 1 the broker's), or 0
// for an fdConn. Sequence numbers are never reused, so an event for a
// handler already forgotten finds none. Registrations are edge-triggered
// (EPOLLET): a handler must drain its socket until EAGAIN, or hand the
// flow to a goroutine that will, before it may miss an edge; a socket
// reports writability (EPOLLOUT) only from the first time a write to it
// had to wait.
package engine

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Engine relays authenticated connections. Its methods are safe to call
// from any goroutine.
type Engine interface {
	// Listener returns the listener to accept clients from instead of
	// ln: for a *net.TCPListener on Linux, one whose sockets stay out of
	// the net package and the runtime's poller. Others are returned as
	// they are.
	Listener(ln net.Listener) net.Listener
	// Dial connects to the first of addrs, in order, that accepts the
	// connection and takes first (what the broker gets before anything
	// is read from it), all before deadline; it returns the first error
	// when none does. The connection is the caller's until Join.
	Dial(addrs []netip.AddrPort, first []byte, deadline time.Time) (net.Conn, error)
	// Join carries bytes between client and upstream, both connected,
	// until both directions have ended. It owns both from the call on:
	// it closes them, then calls o.Done. It returns at once, and never
	// calls o.Done before it has returned.
	Join(client, upstream net.Conn, o Options) Link
	// Close stops the engine's goroutines. Every link must have ended.
	Close()
}

// Options are what a link needs to know beyond its two connections.
type Options struct {
	// HalfClose is how long one direction may go on after the other has
	// ended cleanly (its sender closed its sending half).
	HalfClose time.Duration
	// Done is called once, when both directions have ended and both
	// connections are closed, with the bytes written each way. It may
	// run on a goroutine that serves other links: it must not block.
	Done func(fromClient, toClient int64)
}

// Link is one client joined to its broker.
type Link interface {
	// Abort ends both directions now; Done follows.
	Abort()
}

// Kind names an engine.
type Kind string

// Engines.
const (
	// Epoll keeps idle links in epoll sets: Linux only.
	Epoll Kind = "epoll"
	// Portable copies with two goroutines per link, on every platform.
	Portable Kind = "portable"
)

// New starts the engine of kind k.
func New(k Kind) (Engine, error) {
	switch k {
	case Epoll:
		return newEpoll()
	case Portable:
		return portable{}, nil
	}
	return nil, fmt.Errorf("engine: unknown kind %q (epoll or portable)", k)
}

// ErrWouldBlock is what ReadNow returns when nothing has arrived.
var ErrWouldBlock = errors.New("engine: read would block")

// Resumer is resumed, on a goroutine of its own, once a socket it waits
// for may be readable: see WhenReadable, which the epoll engine's sockets
// have, so that a client whose CONNECT has not all arrived costs no
// goroutine while it waits.
type Resumer interface{ Resume() }
