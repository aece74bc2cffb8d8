package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A relay joins an authenticated client to its upstream connection. While
// neither side sends anything, it costs no goroutine, no buffer and no pipe:
// both sockets wait in one epoll set shared by the whole proxy (the
// watcher). When a socket becomes readable, a short-lived goroutine moves
// what is queued with splice(2) (io.CopyN between two *net.TCPConn), goes on
// while more arrives, and hands the socket back to the watcher when it runs
// dry. An idle connection therefore costs its two sockets and a few hundred
// bytes of bookkeeping, where two goroutines parked in io.Copy cost two
// stacks (about 10 KB measured) and two pipes (four descriptors).
type relay struct {
	w         *watcher
	halfClose time.Duration
	done      func(fromClient, toClient int64)

	mu      sync.Mutex // guards the flows' states and ended
	flows   [2]flow    // 0: client to upstream, 1: upstream to client
	ended   int        // flows that have ended
	timer   *time.Timer
	aborted bool
}

// flow is one direction of a relay.
type flow struct {
	src, dst *net.TCPConn
	raw      syscall.RawConn
	fd       int
	id       uint64
	state    flowState
	n        int64
	// registered is true while fd is in the epoll set. It is removed
	// before either socket closes: once closed, the descriptor's number
	// may belong to another connection.
	registered bool
}

type flowState int

const (
	flowWaiting flowState = iota // armed in the watcher's epoll set
	flowMoving                   // a goroutine is moving its bytes
	flowEnded
)

// watcher is one epoll instance and the goroutine that waits on it.
type watcher struct {
	epfd   int
	wakeFD int // an eventfd that wakes the loop to stop

	mu       sync.Mutex
	nextID   uint64
	flows    map[uint64]*relayFlowRef
	stopped  chan struct{}
	stopOnce sync.Once
}

type relayFlowRef struct {
	r *relay
	i int
}

func newWatcher() (*watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("proxy: epoll: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("proxy: eventfd: %w", err)
	}
	// The eventfd's data is 0; flows have odd ids.
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("proxy: epoll: %w", err)
	}
	w := &watcher{epfd: epfd, wakeFD: wake, flows: map[uint64]*relayFlowRef{}, stopped: make(chan struct{})}
	go w.loop()
	return w, nil
}

// stop ends the loop and releases the epoll set. Relays still open must
// have been aborted first.
func (w *watcher) stop() {
	w.stopOnce.Do(func() {
		var one = [8]byte{1}
		unix.Write(w.wakeFD, one[:])
		<-w.stopped
		unix.Close(w.epfd)
		unix.Close(w.wakeFD)
	})
}

func (w *watcher) loop() {
	defer close(w.stopped)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == 0 { // the wake eventfd
				return
			}
			w.mu.Lock()
			ref := w.flows[id]
			w.mu.Unlock()
			if ref != nil {
				ref.r.wake(ref.i)
			}
		}
	}
}

// register gives f an id and adds its socket to the epoll set, armed for
// one readiness event.
func (w *watcher) register(r *relay, i int) error {
	f := &r.flows[i]
	w.mu.Lock()
	w.nextID++
	f.id = w.nextID<<1 | 1 // odd, never the wake eventfd's zero data
	w.flows[f.id] = &relayFlowRef{r: r, i: i}
	w.mu.Unlock()
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, f.fd, f.event()); err != nil {
		return err
	}
	f.registered = true
	return nil
}

func (w *watcher) unregister(f *flow) {
	if f.registered {
		unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, f.fd, nil)
		f.registered = false
	}
	w.mu.Lock()
	delete(w.flows, f.id)
	w.mu.Unlock()
}

func (f *flow) event() *unix.EpollEvent {
	// Level-triggered and one-shot: armed while bytes are already queued,
	// it fires at once; after firing it stays quiet until re-armed.
	return &unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
		Fd:     int32(uint32(f.id)),
		Pad:    int32(uint32(f.id >> 32)),
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
	r = &relay{w: w, halfClose: halfClose, done: done}
	r.flows[0] = flow{src: c, dst: u}
	r.flows[1] = flow{src: u, dst: c}
	for i := range r.flows {
		f := &r.flows[i]
		raw, err := f.src.SyscallConn()
		if err != nil {
			return nil, false
		}
		f.raw = raw
		if raw.Control(func(fd uintptr) { f.fd = int(fd) }) != nil {
			return nil, false // closed already
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.flows {
		if err := w.register(r, i); err != nil {
			r.endLocked(i)
		}
	}
	return r, true
}

// wake runs on the watcher's loop: flow i is readable.
func (r *relay) wake(i int) {
	r.mu.Lock()
	if r.flows[i].state != flowWaiting {
		r.mu.Unlock()
		return
	}
	r.flows[i].state = flowMoving
	r.mu.Unlock()
	go r.move(i)
}

// move copies what flow i's source has queued, for as long as it keeps
// arriving, then re-arms the flow, or ends it at EOF or on an error.
func (r *relay) move(i int) {
	f := &r.flows[i]
	// Woken by readiness: nothing queued means EOF (or a spurious wake).
	// After a burst, only the queue is checked: an EOF that arrives then
	// wakes the re-armed flow again.
	for afterBurst := false; ; afterBurst = true {
		queued, eof, err := queuedBytes(f.raw, !afterBurst)
		if err != nil || eof {
			r.finish(i, err == nil)
			return
		}
		if queued == 0 {
			break
		}
		n, err := io.CopyN(f.dst, f.src, int64(queued))
		r.mu.Lock()
		f.n += n
		r.mu.Unlock()
		if err != nil {
			r.finish(i, errors.Is(err, io.EOF))
			return
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aborted { // the sockets are closing: do not touch the epoll set
		r.endLocked(i)
		return
	}
	f.state = flowWaiting
	if err := unix.EpollCtl(r.w.epfd, unix.EPOLL_CTL_MOD, f.fd, f.event()); err != nil {
		r.endLocked(i)
		r.abortLocked()
	}
}

// finish ends flow i. At a clean EOF the end is passed on (half-close) and
// the other direction gets halfClose to end by itself; otherwise both
// connections close.
func (r *relay) finish(i int, cleanEOF bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := &r.flows[i]
	if f.state == flowEnded {
		return
	}
	if cleanEOF && !r.aborted {
		if err := f.dst.CloseWrite(); err == nil {
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
	defer r.mu.Unlock()
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
		} else {
			r.w.unregister(&r.flows[i])
		}
	}
	r.flows[0].src.Close()
	r.flows[1].src.Close()
}

// endLocked marks flow i ended and, when it is the second, reports.
func (r *relay) endLocked(i int) {
	f := &r.flows[i]
	if f.state == flowEnded {
		return
	}
	r.w.unregister(f)
	f.state = flowEnded
	r.ended++
	if r.ended == 2 {
		if r.timer != nil {
			r.timer.Stop()
		}
		from, to := r.flows[0].n, r.flows[1].n
		go r.done(from, to)
	}
}

// queuedBytes says, without blocking, how many bytes src has queued and,
// when asked to tell EOF apart from an empty queue, whether it has reached
// EOF (one more system call).
func queuedBytes(raw syscall.RawConn, checkEOF bool) (queued int, eof bool, err error) {
	var opErr error
	err = raw.Control(func(fd uintptr) {
		queued, opErr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if opErr != nil || queued > 0 || !checkEOF {
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
