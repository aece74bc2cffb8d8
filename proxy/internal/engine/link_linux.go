package engine

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// epollLink joins a client's socket to its broker's, the way an
// event-driven proxy such as HAProxy does. Both sockets wait in an epoll
// set shared with other links (a watcher), so an idle link costs its two
// sockets and this struct: no goroutine, no buffer and no pipe, where two
// goroutines parked in io.Copy cost two stacks and two pipes (four
// descriptors).
//
// When a socket becomes readable, the watcher's goroutine moves the bytes
// itself: one read(2) into the watcher's buffer and one write(2) to the
// other socket, which for an MQTT packet is two system calls where
// splice(2) takes four (splice in, splice out and the checks around them)
// plus a goroutine. What cannot go that way leaves the watcher for a
// short-lived goroutine (move): a burst that fills the buffer (bulk
// traffic, which then goes by splice(2) through a pooled pipe) and bytes
// the destination cannot take yet (a slow reader: the goroutine waits for
// it, holding a pooled buffer until it has drained). A goroutine that
// waits for a socket to take bytes is woken by the watcher, which then
// also watches that socket for writability.
type epollLink struct {
	w         *watcher
	seq       uint64 // the watcher's key for this link
	halfClose time.Duration
	done      func(fromClient, toClient int64)

	mu    sync.Mutex // guards everything below
	socks [2]sysFD   // 0: the client's, 1: the broker's; each flow holds a reference to both
	flows [2]flow    // flow i reads socks[i] and writes socks[1-i]: 0 carries the client's bytes
	// ext is what a link that is more than idle needs: made the first
	// time a flow waits for its destination, or at the start of a framed
	// link. It is apart so that an idle link stays in 128 bytes.
	ext   *linkExt
	timer *time.Timer
	ended int8 // flows that have ended
	// framed is set, for a link's life, when it has a Filter (ext.fr).
	framed bool
	// reported is set once done is due: both flows have ended and the
	// sockets are closed.
	reported bool
	aborted  bool
}

// flow is one direction of a link. Its fields are kept small: one link
// lives as long as its connection.
type flow struct {
	n     int64 // bytes written to the destination
	state flowState
	// pending is set when the source became readable while a goroutine
	// was moving bytes: that goroutine goes on rather than going back to
	// waiting, so that the edge-triggered event is not lost.
	pending bool
	// watchOut is set once the source socket's epoll registration also
	// reports writability: from the first time the other flow had to
	// wait for this socket to take bytes.
	watchOut bool
}

type flowState uint8

const (
	flowWaiting flowState = iota // the watcher moves its bytes
	flowMoving                   // a goroutine (move) is moving its bytes
	flowEnded                    // its references to the sockets are released
	// flowParked: a framed flow whose source is not read until an output
	// of its own, queued for its source socket, has been written by the
	// other flow (see framing); no goroutine has it.
	flowParked
)

// linkExt is the part of a link that an idle unframed one does without.
type linkExt struct {
	// writable[i] wakes flow i's goroutine when it waits for its
	// destination to take more bytes.
	writable [2]chan struct{}
	// fr frames the link; nil for a spliced one.
	fr *framing
}

// extLocked returns l.ext, making it first.
func (l *epollLink) extLocked() *linkExt {
	if l.ext == nil {
		l.ext = &linkExt{}
	}
	return l.ext
}

// writable is flow i's wake-up channel, or nil before it first waited.
func (l *epollLink) writable(i int) chan struct{} {
	if l.ext == nil {
		return nil
	}
	return l.ext.writable[i]
}

// newEpollLink owns the sockets client and upstream from now on; start
// puts them in w's set. Until then both flows count as moving, so that
// the watcher leaves them alone.
func newEpollLink(w *watcher, client, upstream int, o Options) *epollLink {
	l := &epollLink{w: w, halfClose: o.HalfClose, done: o.Done}
	l.socks = [2]sysFD{newSysFD(client), newSysFD(upstream)}
	l.socks[0].refs, l.socks[1].refs = 2, 2
	l.flows[0].state, l.flows[1].state = flowMoving, flowMoving
	if o.Filter != nil {
		l.ext, l.framed = &linkExt{fr: newFraming(o)}, true
	}
	l.seq = w.add(l)
	return l
}

// start puts both sockets in the epoll set; the watcher may fire as soon
// as the first is in, and waits for l.mu until both are. Bytes already
// queued make the registration fire at once. On a failure the link ends:
// both sockets are closed (which takes them out of the set), and done is
// called on a goroutine of its own, since start's caller may hold a lock
// that done takes.
func (l *epollLink) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	var err error
	for i := range l.flows {
		if err = unix.EpollCtl(l.w.epfd, unix.EPOLL_CTL_ADD, l.fd(i), l.event(i)); err != nil {
			break
		}
	}
	l.flows[0].state, l.flows[1].state = flowWaiting, flowWaiting
	if l.framed {
		// The client's flow waits for the broker's first output.
		l.flows[0].state = flowParked
	}
	if err != nil {
		l.abortLocked()
		l.reported = true
		go l.finish(0, 0)
	}
}

// fd is socket i's number, for a system call of a flow that holds its
// reference, or under l.mu before the flows have ended.
func (l *epollLink) fd(i int) int { return int(l.socks[i].num) }

// handle takes the events of socket i, flow i's source.
func (l *epollLink) handle(i int, events uint32, buf []byte) {
	failed := events&(unix.EPOLLHUP|unix.EPOLLERR) != 0
	if events&unix.EPOLLOUT != 0 || failed {
		// Flow i's source is the other flow's destination.
		l.wake(1 - i)
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 || failed {
		// The peer's FIN (or a reset) may have come with the last
		// bytes, in the same edge.
		l.readable(i, events&unix.EPOLLRDHUP != 0 || failed, buf)
	}
}

// event is the epoll registration of socket i: edge-triggered, so that a
// socket needs no system call to re-arm after each burst, and none to
// leave the set: closing it does that.
func (l *epollLink) event(i int) *unix.EpollEvent {
	events := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET)
	if l.flows[i].watchOut {
		events |= unix.EPOLLOUT
	}
	return epollKey(l.seq, i, events)
}

// wake tells flow i's goroutine, if it waits, that its destination may
// take bytes again (or has failed).
func (l *epollLink) wake(i int) {
	l.mu.Lock()
	ch := l.writable(i)
	l.mu.Unlock()
	notify(ch)
}

// waitWritable waits until flow i's destination may take more bytes, or
// the link is aborted (errAborted). It may return early: the caller
// writes again and, on EAGAIN, waits again.
func (l *epollLink) waitWritable(i int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waitWritableLocked(i)
}

// waitWritableLocked is waitWritable for a caller that holds l.mu, which
// it releases while it waits.
func (l *epollLink) waitWritableLocked(i int) error {
	if l.aborted {
		return errAborted
	}
	x, d := l.extLocked(), &l.flows[1-i]
	if x.writable[i] == nil {
		x.writable[i] = make(chan struct{}, 1)
	}
	if !d.watchOut {
		// From now on the destination's registration also reports
		// writability; an EAGAIN already seen makes it fire then.
		d.watchOut = true
		if err := unix.EpollCtl(l.w.epfd, unix.EPOLL_CTL_MOD, l.fd(1-i), l.event(1-i)); err != nil {
			d.watchOut = false
			return fmt.Errorf("engine: epoll: %w", err)
		}
	}
	ch := x.writable[i]
	l.mu.Unlock()
	<-ch
	l.mu.Lock()
	if l.aborted {
		return errAborted
	}
	return nil
}

var errAborted = errors.New("engine: link aborted")

// readable runs on the watcher's goroutine: flow i's source has bytes, or
// has reached EOF (closing tells that it may have), or has failed. buf is
// the watcher's.
func (l *epollLink) readable(i int, closing bool, buf []byte) {
	l.mu.Lock()
	defer l.unlock()
	f := &l.flows[i]
	switch {
	case f.state == flowParked && i == 0 && closing && l.ext.fr.held && len(l.ext.fr.fromClient) == 0 && peerClosed(l.fd(0)):
		// The client closed or reset its connection before the broker's
		// first words, with nothing left unread or read ahead: the link
		// ends, as a spliced one would, rather than wait for a broker
		// that may never answer.
		l.abortLocked()
		return
	case f.state == flowMoving || f.state == flowParked:
		f.pending = true
		return
	case f.state == flowEnded || l.aborted:
		return
	case l.framed:
		l.readableFramed(i, closing, buf)
		return
	}
	for full := 0; ; {
		n := l.readLocked(i, buf)
		switch {
		case n < 0:
			return
		case n == 0:
			l.stopFlowLocked(i, true)
			return
		}
		written, err := writeNonblocking(l.fd(1-i), buf[:n], 0)
		f.n += int64(written)
		switch {
		case err == unix.EAGAIN:
			// The destination is full: a goroutine waits for it with the
			// rest, in a buffer of its own.
			bp := copyBuffers.Get().(*[]byte)
			rest := copy(*bp, buf[written:n])
			f.state = flowMoving
			go l.move(i, bp, rest)
			return
		case err != nil:
			l.stopFlowLocked(i, false)
			return
		case n == len(buf) && full < watcherFullReads:
			full++
		case n == len(buf):
			// Probably more queued still: bulk traffic leaves the watcher, so that
			// one flow cannot hold up the others it serves.
			f.state = flowMoving
			go l.move(i, nil, 0)
			return
		case !closing:
			// A short read emptied the socket; the next bytes are a new
			// edge.
			return
		}
	}
}

// readLocked reads flow i's source into buf on the watcher, again after
// EINTR. It returns the count read, 0 at the source's EOF, for the caller
// to end the flow its way, or -1 when the socket is empty for now or the
// read failed, which stopped the flow. l.mu is held.
func (l *epollLink) readLocked(i int, buf []byte) int {
	for {
		n, err := rawRead(l.fd(i), buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return -1
		case err != nil:
			l.stopFlowLocked(i, false)
			return -1
		}
		return n
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
func (l *epollLink) move(i int, bp *[]byte, n int) {
	if bp != nil {
		written, err := l.writeAll(i, (*bp)[:n])
		copyBuffers.Put(bp)
		l.count(i, written)
		if err != nil {
			l.stopFlow(i, false)
			return
		}
	}
	var p *pipe
	defer func() { p.release() }()
	f := &l.flows[i]
	for {
		queued, eof, err := queuedBytes(l.fd(i))
		if err != nil || eof {
			l.stopFlow(i, err == nil)
			return
		}
		if queued == 0 {
			l.mu.Lock()
			if f.pending && !l.aborted {
				f.pending = false
				l.mu.Unlock()
				continue
			}
			if l.aborted {
				l.endFlowLocked(i)
			} else {
				f.state = flowWaiting
			}
			l.unlock()
			return
		}
		if p == nil {
			if p, err = getPipe(); err != nil {
				l.stopFlow(i, false)
				return
			}
		}
		if err := l.splice(i, p, queued); err != nil {
			l.stopFlow(i, false)
			return
		}
	}
}

// writeAll writes b to flow i's destination, waiting for it as long as it
// takes, and returns how much it wrote.
func (l *epollLink) writeAll(i int, b []byte) (int, error) {
	written := 0
	for written < len(b) {
		n, err := writeNonblocking(l.fd(1-i), b[written:], 0)
		written += n
		switch {
		case err == unix.EAGAIN:
			if err := l.waitWritable(i); err != nil {
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
func (l *epollLink) splice(i int, p *pipe, n int) error {
	for n > 0 {
		in, err := unix.Splice(l.fd(i), nil, p.w, nil, min(n, maxSpliceSize), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			// Fewer queued than said, or nothing splice can take: one
			// read and write instead, so that the caller cannot spin.
			return l.copyOnce(i)
		case err != nil:
			return err
		case in == 0:
			return nil // EOF: the caller finds it
		}
		n -= int(in)
		p.data += int(in)
		for p.data > 0 {
			out, err := unix.Splice(p.r, nil, l.fd(1-i), nil, p.data, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case err == unix.EINTR:
			case err == unix.EAGAIN:
				if err := l.waitWritable(i); err != nil {
					return err
				}
			case err != nil:
				return err
			default:
				p.data -= int(out)
				l.count(i, int(out))
			}
		}
	}
	return nil
}

// copyOnce moves what one read(2) of flow i's source returns.
func (l *epollLink) copyOnce(i int) error {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	n, err := rawRead(l.fd(i), *bp)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR || n == 0:
		return nil // nothing, or EOF: the caller finds out
	case err != nil:
		return err
	}
	written, err := l.writeAll(i, (*bp)[:n])
	l.count(i, written)
	return err
}

// maxSpliceSize is what one splice(2) moves at most: a pipe's default
// capacity, so that the first splice never waits for the pipe.
const maxSpliceSize = 64 << 10

// pipe is a pipe for splice(2), lent by a pool: bulk traffic takes one
// while it flows and gives it back, so that an idle connection holds none.
// It owns its two descriptors; a cleanup closes them once the pool has
// dropped it.
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
		return nil, fmt.Errorf("engine: pipe: %w", err)
	}
	p := &pipe{r: fds[0], w: fds[1]}
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

func (l *epollLink) count(i, n int) {
	if n == 0 {
		return
	}
	l.mu.Lock()
	l.flows[i].n += int64(n)
	l.mu.Unlock()
}

// stopFlow ends flow i; see stopFlowLocked.
func (l *epollLink) stopFlow(i int, cleanEOF bool) {
	l.mu.Lock()
	defer l.unlock()
	l.stopFlowLocked(i, cleanEOF)
}

// stopFlowLocked ends flow i. At a clean EOF the end is passed on
// (half-close) and the other direction gets halfClose to end by itself;
// otherwise both directions end.
func (l *epollLink) stopFlowLocked(i int, cleanEOF bool) {
	if l.flows[i].state == flowEnded {
		return
	}
	if cleanEOF && !l.aborted {
		if l.flows[1-i].state == flowEnded {
			// The other way ended cleanly too: closing the sockets,
			// which comes next, sends the FIN.
			l.endFlowLocked(i)
			return
		}
		if err := rawShutdownWrite(l.fd(1 - i)); err == nil {
			l.endFlowLocked(i)
			l.timer = time.AfterFunc(l.halfClose, l.Abort)
			return
		}
	}
	l.endFlowLocked(i)
	l.abortLocked()
}

// Abort ends both directions at once: every flow that is waiting ends
// now, and a flow that is moving bytes ends when its next system call
// fails on the sockets, shut down both ways here. The sockets close once
// both flows have ended.
func (l *epollLink) Abort() {
	l.mu.Lock()
	defer l.unlock()
	l.abortLocked()
}

func (l *epollLink) abortLocked() {
	if l.aborted {
		return
	}
	l.aborted = true
	for i := range l.flows {
		if s := l.flows[i].state; s == flowWaiting || s == flowParked {
			l.endFlowLocked(i)
		}
	}
	if l.ended < 2 {
		for i := range l.flows {
			unix.Shutdown(l.fd(i), unix.SHUT_RDWR)
			notify(l.writable(i))
		}
	}
}

// endFlowLocked marks flow i ended, which releases its references to both
// sockets. Once both flows have ended, the sockets close.
func (l *epollLink) endFlowLocked(i int) {
	f := &l.flows[i]
	if f.state == flowEnded {
		return
	}
	f.state = flowEnded
	l.socks[0].releaseLocked()
	l.socks[1].releaseLocked()
	l.ended++
	if l.ended == 2 {
		if l.timer != nil {
			l.timer.Stop()
		}
		// Closing takes the sockets out of the epoll set; an event
		// already queued for them finds no handler.
		l.w.forget(l.seq)
		l.socks[0].closeLocked()
		l.socks[1].closeLocked()
		if l.framed {
			l.ext.fr.releaseLocked()
		}
	}
}

// unlock releases l.mu and, once both flows have ended, calls done, once.
// done must not block: it may run on the watcher.
func (l *epollLink) unlock() {
	due := l.ended == 2 && !l.reported
	l.reported = l.reported || due
	from, to := l.flows[0].n, l.flows[1].n
	l.mu.Unlock()
	if due {
		l.finish(from, to)
	}
}

// finish releases a framed link's filter, no Filter call being under way
// once both flows have ended, and calls done.
func (l *epollLink) finish(from, to int64) {
	if l.framed {
		l.ext.fr.filter.Release()
	}
	l.done(from, to)
}

// Bytes returns what has been written to the broker and to the client.
func (l *epollLink) Bytes() (fromClient, toClient int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.flows[0].n, l.flows[1].n
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
