package proxy

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A relay joins an authenticated client to its upstream connection, the
// way an event-driven proxy such as HAProxy does. Both sockets wait in an
// epoll set shared with other connections (a watcher), so an idle
// connection costs its two sockets and a few hundred bytes of bookkeeping:
// no goroutine, no buffer and no pipe, where two goroutines parked in
// io.Copy cost two stacks and two pipes (four descriptors).
//
// When a socket becomes readable, the watcher's goroutine moves the bytes
// itself: one read(2) into the watcher's buffer and one write(2) to the
// other socket, which for an MQTT packet is two system calls where
// splice(2) takes four (splice in, splice out and the checks around them)
// plus a goroutine. What cannot go that way leaves the watcher for a
// short-lived goroutine: a burst that fills the buffer (bulk traffic,
// which then goes by splice(2) through a pooled pipe) and bytes the
// destination cannot take yet (a slow reader: the goroutine waits for it,
// holding a pooled buffer until it has drained). A goroutine that waits
// for a socket to take bytes is woken by the watcher, which then also
// watches that socket for writability.
//
// The relay can dial the broker itself (dialRelay): its socket then never
// enters the runtime's poller or the net package, which saves a third of
// a connection's memory and a quarter of its system calls.
type relay struct {
	w         *watcher
	seq       uint64 // the watcher's key for this relay
	halfClose time.Duration
	done      func(fromClient, toClient int64)

	mu       sync.Mutex // guards everything below
	flows    [2]flow    // 0: client to upstream, 1: upstream to client
	timer    *time.Timer
	ended    int8 // flows that have ended
	reported bool // done has been called
	aborted  bool
	// ownsUpstream is set when the relay dialed the upstream socket
	// itself (dialRelay): it closes it before calling done.
	ownsUpstream bool
	started      bool // both sockets are in the epoll set
}

// flow is one direction of a relay. Its fields are sized to keep a relay
// in a 128-byte allocation: one of these lives as long as its connection.
type flow struct {
	// Raw descriptors. A socket closes only once both flows have ended
	// (abort shuts sockets down rather than closing them), so they stay
	// valid while the watcher or a flow's goroutine uses them.
	srcFD, dstFD int32
	n            int64
	state        flowState
	// pending is set when the source became readable while a goroutine
	// was moving bytes: that goroutine goes on rather than going back to
	// waiting, so that the edge-triggered event is not lost.
	pending bool
	// watchOut is set once the source socket's epoll registration also
	// reports writability: from the first time the other flow had to
	// wait for this socket to take bytes.
	watchOut bool
	// writable wakes this flow's goroutine when it waits for its
	// destination to take more bytes; made the first time it waits.
	writable chan struct{}
}

type flowState uint8

const (
	flowWaiting flowState = iota // the watcher moves its bytes
	flowMoving                   // a goroutine is moving its bytes
	flowEnded
)

// watcher is one epoll instance, the goroutine that waits on it, and the
// buffer that goroutine moves bytes through. The goroutine does not block
// in epoll_wait(2): the epoll descriptor is itself pollable, so the
// runtime's poller parks the goroutine until the set has events, as for
// any socket. A goroutine blocked in a system call would instead cost a
// thread hand-off at every wake and keep the runtime's monitor thread
// waking every 20 µs.
type watcher struct {
	epfd int
	file *os.File // epfd, in the runtime's poller
	buf  []byte

	mu       sync.Mutex
	nextSeq  uint64
	handlers map[uint64]epollHandler // by sequence number: relays, and clients waiting for their CONNECT
	stopped  chan struct{}
}

// epollHandler is what a watcher's registration belongs to. Its key is
// the handler's sequence number shifted left by one, and a bit that
// handle gets as i: a relay has two sockets in the set, a client one.
type epollHandler interface {
	// handle runs on the watcher's goroutine with the events of
	// registration i; buf is the watcher's.
	handle(i int, events uint32, buf []byte)
}

// add gives h a sequence number in w, for its registrations' keys.
func (w *watcher) add(h epollHandler) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nextSeq++
	w.handlers[w.nextSeq] = h
	return w.nextSeq
}

// watchers spreads relays over one watcher per processor, so that moving
// bytes uses as many cores as the runtime does.
type watchers struct {
	all  []*watcher
	next atomic.Uint32
}

func newWatchers() (*watchers, error) {
	ws := &watchers{}
	for range runtime.GOMAXPROCS(0) {
		w, err := newWatcher()
		if err != nil {
			ws.stop()
			return nil, err
		}
		ws.all = append(ws.all, w)
	}
	return ws, nil
}

// stop ends every watcher's loop. Relays still open must have been
// aborted first.
func (ws *watchers) stop() {
	for _, w := range ws.all {
		w.stop()
	}
}

// pick returns the next watcher, round robin. The index is taken in
// unsigned arithmetic: as an int, the counter is negative past 2^31 on
// 32-bit platforms.
func (ws *watchers) pick() *watcher { return ws.all[ws.next.Add(1)%uint32(len(ws.all))] }

// startRelay joins client and upstream, both already connected, on one of
// the watchers and returns at once; done is called exactly once, when both
// directions have ended, with the bytes each way, possibly on the
// watcher's goroutine: it must not block. handled is false when
// either is not a plain TCP socket, or when the sockets cannot join the
// epoll set: the caller copies some other way. The caller closes both
// sockets, after done.
func (ws *watchers) startRelay(client, upstream net.Conn, halfClose time.Duration, done func(fromClient, toClient int64)) (r *relay, handled bool) {
	cfd, ok1 := socketOf(client)
	ufd, ok2 := socketOf(upstream)
	if !ok1 || !ok2 {
		return nil, false
	}
	r = ws.pick().newRelay(cfd, halfClose, done)
	r.setUpstream(ufd)
	if err := r.start(); err != nil {
		return nil, false
	}
	return r, true
}

// dialRelay connects to the broker at one of addrs (in turn, until one
// takes the connection), sends it first, and returns a relay that is yet
// to start: join then makes it carry bytes between client and the broker,
// or cancel closes the broker's socket. The socket is the relay's own,
// outside the runtime's poller and the net package: when the connection
// or the write must wait (a broker that is not on this host, or a CONNECT
// larger than the socket's buffer), the watcher wakes the relay. Nothing
// is read from the broker before join.
func (ws *watchers) dialRelay(addrs []netip.AddrPort, first []byte, deadline time.Time, halfClose time.Duration, done func(fromClient, toClient int64)) (*relay, error) {
	r := ws.pick().newRelay(-1, halfClose, done)
	var firstErr error
	for _, addr := range addrs {
		err := r.dial(addr, first, deadline)
		if err == nil {
			return r, nil
		}
		firstErr = cmp.Or(firstErr, err)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
	}
	r.cancel()
	return nil, firstErr
}

// newRelay makes a relay for the client socket cfd (-1: set by setClient
// before start), known to the watcher but in no epoll set yet: until
// start, both flows count as moving, so that the watcher leaves them
// alone.
func (w *watcher) newRelay(cfd int32, halfClose time.Duration, done func(fromClient, toClient int64)) *relay {
	r := &relay{w: w, halfClose: halfClose, done: done}
	r.flows[0] = flow{srcFD: cfd, dstFD: -1, state: flowMoving}
	r.flows[1] = flow{srcFD: -1, dstFD: cfd, state: flowMoving}
	r.seq = w.add(r)
	return r
}

// setClient gives a dialed relay its client socket, which it does not use
// before start: the caller takes the socket only once it knows the
// session is still open, so that the relay never holds a descriptor
// that was closed (and whose number may have gone to another socket).
func (r *relay) setClient(fd int32) {
	r.mu.Lock()
	r.flows[0].srcFD = fd
	r.flows[1].dstFD = fd
	r.mu.Unlock()
}

func (r *relay) setUpstream(fd int32) {
	r.mu.Lock()
	r.flows[0].dstFD = fd
	r.flows[1].srcFD = fd
	r.mu.Unlock()
}

// dial connects r's own upstream socket to addr and writes first to it.
// On a failure the socket is closed again.
func (r *relay) dial(addr netip.AddrPort, first []byte, deadline time.Time) (err error) {
	family := unix.AF_INET
	if addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("dial tcp %s: socket: %w", addr, err)
	}
	r.setUpstream(int32(fd))
	r.ownsUpstream = true
	defer func() {
		if err != nil {
			r.mu.Lock()
			r.flows[1].watchOut = false
			r.mu.Unlock()
			rawClose(fd) // also leaves the epoll set
			r.setUpstream(-1)
			r.ownsUpstream = false
			err = fmt.Errorf("dial tcp %s: %w", addr, err)
		}
	}()
	// MQTT packets are small and latency counts: no Nagle delay, as the
	// net package sets for every TCP connection.
	if err := rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return err
	}
	// A non-blocking connect returns at once; on loopback the handshake
	// is over by then. The first write tells: it goes through on a
	// connected socket, returns EAGAIN while the handshake is under way,
	// and returns the connection's error (ECONNREFUSED) once it failed.
	if err := rawConnect(fd, addr); err != nil && err != unix.EINPROGRESS && err != unix.EINTR {
		return err
	}
	// Not counted as relayed: the caller accounts for what it sends first.
	_, err = r.writeAll(0, first, deadline)
	return err
}

// rawConnect starts connecting fd to addr without telling the scheduler:
// see rawsyscall_linux.go.
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

// start puts both sockets in the epoll set; the watcher may fire as soon
// as the first is in, and waits for r.mu until both are. Bytes already
// queued make the registration fire at once. On a failure nothing is left
// registered, and a socket the relay dialed is closed.
func (r *relay) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started = true
	for i := range r.flows {
		f := &r.flows[i]
		pending := f.pending
		f.state, f.pending = flowWaiting, false
		if f.watchOut {
			// Registered while dialing, and the watcher left its edges
			// to be taken up here.
			if pending {
				f.state = flowMoving
				go r.move(i, nil, 0)
			}
			continue
		}
		if err := unix.EpollCtl(r.w.epfd, unix.EPOLL_CTL_ADD, int(f.srcFD), r.event(i)); err != nil {
			r.undoLocked(i)
			return fmt.Errorf("proxy: epoll: %w", err)
		}
	}
	return nil
}

// cancel forgets a relay that did not start, closing its own socket
// (which takes it out of the epoll set, where dialing may have put it).
// The client's socket was never added: it is left alone, even when its
// number is another socket's by now.
func (r *relay) cancel() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.undoLocked(0)
}

// undoLocked takes the first n flows' sockets, which start added, out of
// the epoll set, closes the relay's own socket (which takes it out too)
// and forgets the relay.
func (r *relay) undoLocked(n int) {
	for i := range n {
		unix.EpollCtl(r.w.epfd, unix.EPOLL_CTL_DEL, int(r.flows[i].srcFD), nil)
	}
	if r.ownsUpstream {
		rawClose(int(r.flows[1].srcFD))
		r.ownsUpstream = false
	}
	r.flows[0].state, r.flows[1].state = flowEnded, flowEnded
	r.ended = 2
	r.reported = true
	r.w.forget(r.seq)
}

func (w *watcher) forget(seq uint64) {
	w.mu.Lock()
	delete(w.handlers, seq)
	w.mu.Unlock()
}

// isSocket reports whether c is a plain TCP socket, which a relay can take
// over (see socketOf).
func isSocket(c net.Conn) bool {
	switch c.(type) {
	case *fdConn, *net.TCPConn:
		return true
	}
	return false
}

// socketOf returns the descriptor of c, a plain TCP socket, for a relay
// to take over; ok is false for any other connection, and for one that
// was closed.
func socketOf(c net.Conn) (fd int32, ok bool) {
	switch c := c.(type) {
	case *fdConn:
		return c.handOff()
	case *net.TCPConn:
		raw, err := c.SyscallConn()
		if err != nil {
			return -1, false
		}
		fd = -1
		err = raw.Control(func(s uintptr) { fd = int32(s) })
		return fd, err == nil
	}
	return -1, false
}

func newWatcher() (*watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("proxy: epoll: %w", err)
	}
	// Non-blocking, so that os.NewFile puts it in the runtime's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("proxy: epoll: %w", err)
	}
	file := os.NewFile(uintptr(epfd), "epoll")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("proxy: epoll: %w", err)
	}
	w := &watcher{
		epfd:     epfd,
		file:     file,
		buf:      make([]byte, copyBufferSize),
		handlers: map[uint64]epollHandler{},
		stopped:  make(chan struct{}),
	}
	go w.loop(raw)
	return w, nil
}

// stop ends the loop and releases the epoll set.
func (w *watcher) stop() {
	w.file.Close() // ends the loop's wait
	<-w.stopped
}

func (w *watcher) loop(raw syscall.RawConn) {
	defer close(w.stopped)
	events := make([]unix.EpollEvent, 128)
	// Read returns when the file closes; until then the func runs each
	// time the set has events, and returning false waits for more.
	raw.Read(func(uintptr) bool {
		for {
			n, err := rawEpollWait(w.epfd, events)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return true
			}
			for _, ev := range events[:n] {
				key := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
				w.mu.Lock()
				h := w.handlers[key>>1]
				w.mu.Unlock()
				if h != nil {
					h.handle(int(key&1), ev.Events, w.buf)
				}
			}
			if n < len(events) {
				// The set is empty: an event added from now on wakes
				// the runtime's poller again.
				return false
			}
		}
	})
}

// handle takes the events of flow i's source.
func (r *relay) handle(i int, events uint32, buf []byte) {
	failed := events&(unix.EPOLLHUP|unix.EPOLLERR) != 0
	if events&unix.EPOLLOUT != 0 || failed {
		// Flow i's source is the other flow's destination.
		r.wake(1 - i)
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 || failed {
		// The peer's FIN (or a reset) may have come with the last
		// bytes, in the same edge.
		r.readable(i, events&unix.EPOLLRDHUP != 0 || failed, buf)
	}
}

// event is the epoll registration of flow i's source: edge-triggered, so
// that a socket needs no system call to re-arm after each burst, and none
// to leave the set: closing it does that.
func (r *relay) event(i int) *unix.EpollEvent {
	key := r.seq<<1 | uint64(i)
	events := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET)
	if r.flows[i].watchOut {
		events |= unix.EPOLLOUT
	}
	return &unix.EpollEvent{Events: events, Fd: int32(uint32(key)), Pad: int32(uint32(key >> 32))}
}

// wake tells flow i's goroutine, if it waits, that its destination may
// take bytes again (or has failed).
func (r *relay) wake(i int) {
	r.mu.Lock()
	ch := r.flows[i].writable
	r.mu.Unlock()
	notify(ch)
}

// waitWritable waits until flow i's destination may take more bytes, the
// relay is aborted (errRelayAborted) or deadline passes (zero: no
// deadline). It may return early: the caller writes again and, on EAGAIN,
// waits again.
func (r *relay) waitWritable(i int, deadline time.Time) error {
	r.mu.Lock()
	if r.aborted {
		r.mu.Unlock()
		return errRelayAborted
	}
	f, d := &r.flows[i], &r.flows[1-i]
	if f.writable == nil {
		f.writable = make(chan struct{}, 1)
	}
	if !d.watchOut {
		// From now on the destination's registration also reports
		// writability; an EAGAIN already seen makes it fire then.
		d.watchOut = true
		op := unix.EPOLL_CTL_MOD
		if !r.started {
			op = unix.EPOLL_CTL_ADD // the upstream, while dialing
		}
		if err := unix.EpollCtl(r.w.epfd, op, int(d.srcFD), r.event(1-i)); err != nil {
			d.watchOut = false
			r.mu.Unlock()
			return fmt.Errorf("proxy: epoll: %w", err)
		}
	}
	ch := f.writable
	r.mu.Unlock()
	if deadline.IsZero() {
		<-ch
	} else {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case <-ch:
		case <-t.C:
			return os.ErrDeadlineExceeded
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aborted {
		return errRelayAborted
	}
	return nil
}

var errRelayAborted = errors.New("proxy: connection aborted")

// readable runs on the watcher's goroutine: flow i's source has bytes, or
// has reached EOF (closing tells that it may have), or has failed. buf is
// the watcher's.
func (r *relay) readable(i int, closing bool, buf []byte) {
	r.mu.Lock()
	defer r.unlock()
	f := &r.flows[i]
	switch {
	case f.state == flowMoving:
		f.pending = true
		return
	case f.state == flowEnded || r.aborted:
		return
	}
	for full := 0; ; {
		n, err := rawRead(int(f.srcFD), buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			r.finishLocked(i, false)
			return
		case n == 0:
			r.finishLocked(i, true)
			return
		}
		written, err := writeNonblocking(int(f.dstFD), buf[:n], 0)
		f.n += int64(written)
		switch {
		case err == unix.EAGAIN:
			// The destination is full: a goroutine waits for it with the
			// rest, in a buffer of its own.
			bp := copyBuffers.Get().(*[]byte)
			rest := copy(*bp, buf[written:n])
			f.state = flowMoving
			go r.move(i, bp, rest)
			return
		case err != nil:
			r.finishLocked(i, false)
			return
		case n == len(buf) && full < watcherFullReads:
			full++
		case n == len(buf):
			// Probably more queued still: bulk traffic leaves the watcher, so that
			// one flow cannot hold up the others it serves.
			f.state = flowMoving
			go r.move(i, nil, 0)
			return
		case !closing:
			// A short read emptied the socket; the next bytes are a new
			// edge.
			return
		}
	}
}

// watcherFullReads is how many full buffers (256 KiB) a flow moves on the
// watcher in one wake-up before it leaves for a goroutine and splice(2). A
// burst of a few messages costs less copied than a goroutine's hand-over
// (measured against other bounds in docs/performance.md), and the bound
// keeps one flow from holding up the others on its watcher.
const watcherFullReads = 16

// move runs on its own goroutine for flow i: it writes the carried bytes
// (*bp)[:n], if any, waiting for the destination as long as it takes, then
// moves what the source has queued with splice(2) for as long as more
// arrives, and hands the flow back to the watcher when the source runs
// dry.
func (r *relay) move(i int, bp *[]byte, n int) {
	f := &r.flows[i]
	if bp != nil {
		written, err := r.writeAll(i, (*bp)[:n], time.Time{})
		copyBuffers.Put(bp)
		r.count(f, written)
		if err != nil {
			r.finish(i, false)
			return
		}
	}
	var p *pipe
	defer func() { p.release() }()
	for {
		queued, eof, err := queuedBytes(int(f.srcFD))
		if err != nil || eof {
			r.finish(i, err == nil)
			return
		}
		if queued == 0 {
			r.mu.Lock()
			if f.pending && !r.aborted {
				f.pending = false
				r.mu.Unlock()
				continue
			}
			if r.aborted {
				r.endLocked(i)
			} else {
				f.state = flowWaiting
			}
			r.unlock()
			return
		}
		if p == nil {
			if p, err = getPipe(); err != nil {
				r.finish(i, false)
				return
			}
		}
		err = r.splice(i, p, queued)
		if err != nil {
			r.finish(i, false)
			return
		}
	}
}

// writeAll writes b to flow i's destination, waiting for it until
// deadline (zero: as long as it takes), and returns how much it wrote.
func (r *relay) writeAll(i int, b []byte, deadline time.Time) (int, error) {
	written := 0
	for written < len(b) {
		n, err := writeNonblocking(int(r.flows[i].dstFD), b[written:], 0)
		written += n
		switch {
		case err == unix.EAGAIN:
			if err := r.waitWritable(i, deadline); err != nil {
				return written, err
			}
		case err != nil:
			return written, err
		}
	}
	return written, nil
}

// splice moves up to n bytes that flow i's source has queued through p to
// the destination, waiting for the destination as long as it takes.
func (r *relay) splice(i int, p *pipe, n int) error {
	f := &r.flows[i]
	for n > 0 {
		in, err := unix.Splice(int(f.srcFD), nil, p.w, nil, min(n, maxSpliceSize), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			// Fewer queued than said, or nothing splice can take: one
			// read and write instead, so that the caller cannot spin.
			return r.copyOnce(i)
		case err != nil:
			return err
		case in == 0:
			return nil // EOF: the caller finds it
		}
		n -= int(in)
		p.data += int(in)
		for p.data > 0 {
			out, err := unix.Splice(p.r, nil, int(f.dstFD), nil, p.data, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case err == unix.EINTR:
			case err == unix.EAGAIN:
				if err := r.waitWritable(i, time.Time{}); err != nil {
					return err
				}
			case err != nil:
				return err
			default:
				p.data -= int(out)
				r.count(f, int(out))
			}
		}
	}
	return nil
}

// copyOnce moves what one read(2) of flow i's source returns.
func (r *relay) copyOnce(i int) error {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	n, err := rawRead(int(r.flows[i].srcFD), *bp)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR || n == 0:
		return nil // nothing, or EOF: the caller finds out
	case err != nil:
		return err
	}
	written, err := r.writeAll(i, (*bp)[:n], time.Time{})
	r.count(&r.flows[i], written)
	return err
}

// maxSpliceSize is what one splice(2) moves at most: a pipe's default
// capacity, so that the first splice never waits for the pipe.
const maxSpliceSize = 64 << 10

// pipe is a pipe for splice(2), lent by a pool: bulk traffic takes one
// while it flows and gives it back, so that an idle connection holds none.
type pipe struct {
	r, w int
	data int // bytes in the pipe
}

var pipes sync.Pool

func getPipe() (*pipe, error) {
	if p, ok := pipes.Get().(*pipe); ok {
		return p, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("proxy: pipe: %w", err)
	}
	p := &pipe{r: fds[0], w: fds[1]}
	// The pool drops pipes it does not need any more.
	runtime.AddCleanup(p, func(fds [2]int) { unix.Close(fds[0]); unix.Close(fds[1]) }, fds)
	return p, nil
}

// release gives p back, unless bytes are stuck in it (a failed write):
// then the cleanup closes it.
func (p *pipe) release() {
	if p != nil && p.data == 0 {
		pipes.Put(p)
	}
}

func (r *relay) count(f *flow, n int) {
	if n == 0 {
		return
	}
	r.mu.Lock()
	f.n += int64(n)
	r.mu.Unlock()
}

// finish ends flow i; see finishLocked.
func (r *relay) finish(i int, cleanEOF bool) {
	r.mu.Lock()
	defer r.unlock()
	r.finishLocked(i, cleanEOF)
}

// finishLocked ends flow i. At a clean EOF the end is passed on
// (half-close) and the other direction gets halfClose to end by itself;
// otherwise both connections end.
func (r *relay) finishLocked(i int, cleanEOF bool) {
	f := &r.flows[i]
	if f.state == flowEnded {
		return
	}
	if cleanEOF && !r.aborted {
		if r.flows[1-i].state == flowEnded {
			// The other way ended cleanly too: closing the sockets,
			// which comes next, sends the FIN.
			r.endLocked(i)
			return
		}
		if err := rawShutdownWrite(int(f.dstFD)); err == nil {
			r.endLocked(i)
			r.timer = time.AfterFunc(r.halfClose, r.abort)
			return
		}
	}
	r.endLocked(i)
	r.abortLocked()
}

// abort ends both directions at once: every flow that is waiting ends
// now, and a flow that is moving bytes ends when its next system call
// fails on the sockets, shut down both ways here. The sockets close once
// both flows have ended.
func (r *relay) abort() {
	r.mu.Lock()
	defer r.unlock()
	r.abortLocked()
}

func (r *relay) abortLocked() {
	if r.aborted {
		return
	}
	r.aborted = true
	for i := range r.flows {
		if r.flows[i].state == flowWaiting {
			r.endLocked(i)
		}
	}
	if r.ended < 2 {
		for i := range r.flows {
			unix.Shutdown(int(r.flows[i].srcFD), unix.SHUT_RDWR)
			notify(r.flows[i].writable)
		}
	}
}

// endLocked marks flow i ended.
func (r *relay) endLocked(i int) {
	f := &r.flows[i]
	if f.state == flowEnded {
		return
	}
	f.state = flowEnded
	r.ended++
	if r.ended == 2 {
		if r.timer != nil {
			r.timer.Stop()
		}
		r.w.forget(r.seq)
	}
}

// unlock releases r.mu and, once both flows have ended, ends the relay,
// once. done must not block: it may run on the watcher.
func (r *relay) unlock() {
	due := r.ended == 2 && !r.reported
	r.reported = r.reported || due
	from, to := r.flows[0].n, r.flows[1].n
	r.mu.Unlock()
	if due {
		r.end(from, to)
	}
}

// end closes the socket the relay dialed, which also takes it out of the
// epoll set, and calls done.
func (r *relay) end(from, to int64) {
	if r.ownsUpstream {
		rawClose(int(r.flows[1].srcFD))
	}
	r.done(from, to)
}

// queuedBytes says, without blocking, how many bytes the socket fd has
// queued and, when none, whether it has reached EOF.
func queuedBytes(fd int) (queued int, eof bool, err error) {
	queued, err = unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil || queued > 0 {
		return queued, false, err
	}
	var b [1]byte
	m, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return 0, false, nil
	case err != nil:
		return 0, false, err
	}
	return m, m == 0, nil
}
