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
// A link with a Filter (proxy/filter.Session, for a session with topic
// rules) is framed: every byte read goes through it, and what it returns
// is written as whole units, so that the engine can place units of its
// own between them (Send, End: an MQTT DISCONNECT before the close):
//
//	link := e.Join(client, up, engine.Options{HalfClose: h, Done: closed, Filter: session, FromClient: ahead})
//	link.End(disconnect) // what is queued, then disconnect, then the close
//
// There are two engines. Portable (every platform) runs two goroutines
// per link that wait until their source is readable, holding no buffer,
// and copy through pooled buffers; on a framed link each writes an output
// whole under its connection's write lock, which Send's goroutine takes
// too. Epoll (Linux) keeps both sockets of an
// idle link in an epoll set and moves their bytes from a few goroutines,
// the watchers, one per processor: no goroutine, buffer or pipe per idle
// link. Connections that are not plain TCP sockets (TLS, WebSocket) are
// copied as the portable engine does, whichever engine runs. A framed
// link keeps that cost: the Filter holds no buffer between units, the
// watcher reads into its own buffer and the Filter writes into the
// watcher's output buffers, and only what a socket cannot take at once
// is kept, in a pooled buffer, until it is written.
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
// an epollLink's mu or an fdConn's, then a framed link's sendMu or a
// watcher's mu, which is held only to add, forget or look up a handler,
// never while a handler runs. A goroutine holds at most one link's or
// fdConn's mu. Send and End take only sendMu and leave the rest to a
// goroutine (flushSends) that takes mu: they never wait for a Filter
// call, which the watcher makes under mu.
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
// Framed links. The Filter of flow i is called on the watcher, under mu,
// with the watcher's read buffer as in and its output buffers (watcher.fwd,
// back) as fwd and back, valid until the next call; or on flow i's move
// goroutine (moveFramed), outside mu, with buffers of copyBuffers that
// goroutine holds until it hands the flow back. Every write to a framed
// link's socket is made under mu, non-blocking: socket j gets flow 1-j's
// fwd, flow j's back, and for the client's socket Send's and End's bytes.
// A unit is written at once when nothing is queued for its socket, else
// appended to out[j], a pooled buffer the link owns until it is written
// or the link ends; what is queued for socket j is written by flow 1-j
// only, on its move goroutine, which waits for the socket as a spliced
// flow's does, so that no unit is ever written inside another. A flow
// whose fwd is queued moves (its goroutine writes it before reading on);
// one whose back is queued is parked, a fourth state with no goroutine,
// until flow 1-j has written it, then restarted on a goroutine. The
// client's flow starts parked and starts when the broker's flow returns
// its first output (held); a client that closes or resets its socket
// while held, with nothing left unread, ends the link. Ending (End, or a Filter's error): no Filter
// call starts, the broker's flow writes what is queued for the client,
// then the last words, and shuts the client's sending half; the client's
// flow writes what is queued for the broker, shuts its sending half, and
// reads and drops until the client's EOF; HalfClose bounds it all.
//
// What may block. The watcher's goroutine never blocks: it reads and
// writes non-blocking sockets and hands anything that would wait to a
// move goroutine; Done and a Filter's calls run on it and must not block
// either. Only move
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
	// ended cleanly (its sender closed its sending half), and how long
	// the client has, after End, to take what it is owed and close.
	HalfClose time.Duration
	// Done is called once, when both directions have ended and both
	// connections are closed, with the bytes written to the upstream and
	// to the client. It may run on a goroutine that serves other links:
	// it must not block.
	Done func(fromClient, toClient int64)
	// Filter, when set, frames the link: every byte read from either
	// connection goes through it, and only what it returns is written.
	// Nil relays the bytes as they come (spliced).
	Filter Filter
	// FromClient is what the caller read from the client past what the
	// upstream got with Dial: on a framed link, the first bytes of the
	// client direction, filtered like the rest. On a link without a
	// Filter the caller sends them with Dial's first bytes.
	FromClient []byte
}

// Filter frames a link's two directions: proxy/filter.Session has its
// methods. The engine calls Filter with each read of direction dir (0:
// from the client, 1: from the upstream), in order, one call at a time
// per direction, the two directions possibly at once; in is the engine's
// and valid only during the call. Filter appends to fwd what dir's
// destination gets and to back what dir's source gets, each made of
// whole units (packets) so that the engine can place other units between
// two outputs, and neither sharing memory with in. A non-nil error ends
// the link: the call's outputs are written, then, when the error is a
// Final, its bytes to the client, and both connections close.
//
// The client direction is read only once the upstream direction has
// returned its first fwd output (an MQTT broker's CONNACK) and that has
// been written or queued for the client: the answers a Filter writes
// back to the client come after the upstream's first words.
type Filter interface {
	Filter(dir int, in, fwd, back []byte) (fwdOut, backOut []byte, err error)
	// Release is called once, after the last Filter call, when the link
	// has ended.
	Release()
}

// Final is an error of a Filter that has last words for the client:
// FinalBytes is written after the call's outputs, before the close.
type Final interface {
	error
	FinalBytes() []byte
}

// Link is one client joined to its broker.
type Link interface {
	// Abort ends both directions now; Done follows.
	Abort()
	// Send writes toClient, whole units, to the client between two whole
	// outputs of a framed link, after those already written or queued.
	// It never blocks: the bytes are queued and the engine woken, even
	// when neither connection has anything to read. toClient is the
	// link's from the call on. A link without a Filter, or one that has
	// ended or is ending, drops them: its stream has no known place for
	// them.
	Send(toClient []byte)
	// End ends a framed link: what the client was to get (outputs
	// written or queued, bytes sent), then toClient, then the client's
	// sending half closed and its connection closed once it closes its
	// own (within HalfClose: then both are closed anyway). No Filter call
	// starts after it, and the upstream's connection closes without
	// anything more. It never blocks. On a link without a Filter it is
	// Abort, and toClient is dropped. Done follows.
	End(toClient []byte)
	// Bytes returns the bytes written so far to the upstream and to the
	// client, as Done will report them.
	Bytes() (fromClient, toClient int64)
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
