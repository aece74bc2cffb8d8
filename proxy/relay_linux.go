package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A relay joins an authenticated client to its upstream connection, the
// way an event-driven proxy such as HAProxy does. Both sockets wait in an
// epoll set shared with other connections (a watcher), so an idle
// connection costs its two sockets and a few hundred bytes of bookkeeping:
// no goroutine, no buffer and no pipe, where two goroutines parked in
// io.Copy cost two stacks (about 10 KB measured) and two pipes (four
// descriptors).
//
// When a socket becomes readable, the watcher's goroutine moves the bytes
// itself: one read(2) into the watcher's buffer and one write(2) to the
// other socket, which for an MQTT packet is two system calls where
// splice(2) takes four (splice in, splice out and the checks around them)
// plus a goroutine. What cannot go that way leaves the watcher for a
// short-lived goroutine: a burst that fills the buffer (bulk traffic,
// which then goes by splice, as io.Copy would send it) and bytes the
// destination cannot take yet (a slow reader: the goroutine waits for it,
// holding a pooled buffer until it has drained).
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
}

// flow is one direction of a relay. Its fields are sized to keep a relay
// in a 128-byte allocation: one of these lives as long as its connection.
type flow struct {
	src *net.TCPConn
	// Raw descriptors, used by the watcher while it holds relay.mu: a
	// socket closes only under relay.mu (abort) or after both flows have
	// ended (done), so they stay valid while the watcher reads or writes.
	srcFD, dstFD int32
	n            int64
	state        flowState
	// pending is set when the source became readable while a goroutine
	// was moving bytes: that goroutine goes on rather than going back to
	// waiting, so that the edge-triggered event is not lost.
	pending bool
}

type flowState uint8

const (
	flowWaiting flowState = iota // the watcher moves its bytes
	flowMoving                   // a goroutine is moving its bytes
	flowEnded
)

// dst is where flow i's bytes go: the other flow's source.
func (r *relay) dst(i int) *net.TCPConn { return r.flows[1-i].src }

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

	mu      sync.Mutex
	nextSeq uint64
	relays  map[uint64]*relay
	stopped chan struct{}
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

// startRelay joins client and upstream on one of the watchers; see
// watcher.startRelay.
func (ws *watchers) startRelay(client, upstream net.Conn, halfClose time.Duration, done func(fromClient, toClient int64)) (*relay, bool) {
	w := ws.all[int(ws.next.Add(1))%len(ws.all)]
	return w.startRelay(client, upstream, halfClose, done)
}

// stop ends every watcher's loop. Relays still open must have been
// aborted first.
func (ws *watchers) stop() {
	for _, w := range ws.all {
		w.stop()
	}
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
		epfd:    epfd,
		file:    file,
		buf:     make([]byte, copyBufferSize),
		relays:  map[uint64]*relay{},
		stopped: make(chan struct{}),
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
				r := w.relays[key>>1]
				w.mu.Unlock()
				if r != nil {
					// The peer's FIN (or a reset) may have come with the
					// last bytes, in the same edge.
					closing := ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
					r.readable(int(key&1), closing, w.buf)
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

// event is the epoll registration of flow i of the relay numbered seq:
// edge-triggered, so that a flow's socket needs no system call to re-arm
// after each burst, and none to leave the set: closing it does that.
func event(seq uint64, i int) *unix.EpollEvent {
	key := seq<<1 | uint64(i)
	return &unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET,
		Fd:     int32(uint32(key)),
		Pad:    int32(uint32(key >> 32)),
	}
}

// startRelay joins client and upstream and returns at once; done is called
// exactly once, when both directions have ended, with the bytes each way.
// handled is false when either is not a plain TCP socket.
func (w *watcher) startRelay(client, upstream net.Conn, halfClose time.Duration, done func(fromClient, toClient int64)) (r *relay, handled bool) {
	c, ok1 := client.(*net.TCPConn)
	u, ok2 := upstream.(*net.TCPConn)
	if !ok1 || !ok2 {
		return nil, false
	}
	cfd, err1 := socketFD(c)
	ufd, err2 := socketFD(u)
	if err1 != nil || err2 != nil {
		return nil, false
	}
	r = &relay{w: w, halfClose: halfClose, done: done}
	r.flows[0] = flow{src: c, srcFD: cfd, dstFD: ufd}
	r.flows[1] = flow{src: u, srcFD: ufd, dstFD: cfd}
	w.mu.Lock()
	w.nextSeq++
	r.seq = w.nextSeq
	w.relays[r.seq] = r
	w.mu.Unlock()

	// The watcher may fire as soon as the first socket is in: it waits
	// for r.mu until both are.
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.flows {
		// Bytes already queued make the registration fire at once.
		if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(r.flows[i].srcFD), event(r.seq, i)); err != nil {
			// Undone, so that the caller can copy some other way.
			for j := range i {
				unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(r.flows[j].srcFD), nil)
			}
			r.flows[0].state, r.flows[1].state = flowEnded, flowEnded
			w.mu.Lock()
			delete(w.relays, r.seq)
			w.mu.Unlock()
			return nil, false
		}
	}
	return r, true
}

// socketFD returns c's descriptor.
func socketFD(c *net.TCPConn) (int32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fd int32 = -1
	if err := raw.Control(func(s uintptr) { fd = int32(s) }); err != nil {
		return 0, err
	}
	return fd, nil
}

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
	for {
		n, err := rawRead(int(f.srcFD), buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			r.endLocked(i)
			r.abortLocked()
			return
		case n == 0:
			r.finishLocked(i, true)
			return
		}
		written, err := writeNonblocking(int(f.dstFD), buf[:n])
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
			r.endLocked(i)
			r.abortLocked()
			return
		case n == len(buf):
			// Probably more queued: bulk traffic leaves the watcher.
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

// move runs on its own goroutine for flow i: it writes the carried bytes
// (*bp)[:n], if any, waiting for the destination as long as it takes, then
// moves what the source has queued with splice(2) (io.CopyN between two
// *net.TCPConn) for as long as more arrives, and hands the flow back to
// the watcher when the source runs dry.
func (r *relay) move(i int, bp *[]byte, n int) {
	f := &r.flows[i]
	if bp != nil {
		written, err := r.dst(i).Write((*bp)[:n])
		copyBuffers.Put(bp)
		r.count(f, written)
		if err != nil {
			r.finish(i, false)
			return
		}
	}
	raw, err := f.src.SyscallConn()
	if err != nil {
		r.finish(i, false)
		return
	}
	for {
		queued, eof, err := queuedBytes(raw)
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
		written, err := io.CopyN(r.dst(i), f.src, int64(queued))
		r.count(f, int(written))
		if err != nil {
			r.finish(i, errors.Is(err, io.EOF))
			return
		}
	}
}

func (r *relay) count(f *flow, n int) {
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
// otherwise both connections close.
func (r *relay) finishLocked(i int, cleanEOF bool) {
	f := &r.flows[i]
	if f.state == flowEnded {
		return
	}
	if cleanEOF && !r.aborted {
		if err := rawShutdownWrite(int(f.dstFD)); err == nil {
			r.endLocked(i)
			if r.ended < 2 {
				r.timer = time.AfterFunc(r.halfClose, r.abort)
			}
			return
		}
	}
	r.endLocked(i)
	r.abortLocked()
}

// abort closes both connections and ends every flow that is waiting; a flow
// that is moving bytes ends when its copy fails on the closed sockets.
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
	// Closing takes the sockets out of the epoll set.
	r.flows[0].src.Close()
	r.flows[1].src.Close()
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
		r.w.mu.Lock()
		delete(r.w.relays, r.seq)
		r.w.mu.Unlock()
	}
}

// unlock releases r.mu and, once both flows have ended, calls done, once,
// on a goroutine of its own: it logs and closes, which must not hold up
// the watcher.
func (r *relay) unlock() {
	due := r.ended == 2 && !r.reported
	r.reported = r.reported || due
	from, to := r.flows[0].n, r.flows[1].n
	r.mu.Unlock()
	if due {
		go r.done(from, to)
	}
}

// queuedBytes says, without blocking, how many bytes src has queued and,
// when none, whether it has reached EOF.
func queuedBytes(raw syscall.RawConn) (queued int, eof bool, err error) {
	var opErr error
	err = raw.Control(func(fd uintptr) {
		queued, opErr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if opErr != nil || queued > 0 {
			return
		}
		var b [1]byte
		m, _, perr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case perr == unix.EAGAIN || perr == unix.EINTR:
		case perr != nil:
			opErr = perr
		case m == 0:
			eof = true
		default:
			queued = m
		}
	})
	if err == nil {
		err = opErr
	}
	return queued, eof, err
}
