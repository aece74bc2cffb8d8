package engine

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// watcher is one epoll instance, the goroutine that waits on it, and the
// buffer that goroutine moves bytes through. The goroutine does not block
// in epoll_wait(2): the epoll descriptor is itself pollable, so the
// runtime's poller parks the goroutine until the set has events, as for
// any socket. A goroutine blocked in a system call would instead cost a
// thread hand-off at every wake and keep the runtime's monitor thread
// waking every 20 µs.
type watcher struct {
	epfd int      // file's, for epoll_ctl(2) and epoll_pwait(2)
	file *os.File // owns epfd, in the runtime's poller
	buf  []byte
	// fwd and back take the outputs of the Filter calls of framed links
	// the goroutine serves, one call at a time; they grow as a call
	// needs, and are let go of past maxScratch.
	fwd, back []byte

	mu       sync.Mutex // guards the fields below; taken last, and held for nothing else
	nextSeq  uint64
	handlers map[uint64]epollHandler // by sequence number: links, and fdConns waiting in a call
	stopped  chan struct{}
}

// epollHandler is what a watcher's registration belongs to. Its key is
// the handler's sequence number shifted left by one, and a bit that
// handle gets as i: a link has two sockets in the set, an fdConn one.
// Sequence numbers are never reused, so an event that comes for a handler
// already forgotten finds none.
type epollHandler interface {
	// handle runs on the watcher's goroutine with the events of
	// registration i; buf is the watcher's.
	handle(i int, events uint32, buf []byte)
}

// epollKey is the key of registration i of the handler numbered seq, as
// epoll_event's 64-bit data (split over Fd and Pad in unix.EpollEvent).
func epollKey(seq uint64, i int, events uint32) *unix.EpollEvent {
	key := seq<<1 | uint64(i)
	return &unix.EpollEvent{Events: events, Fd: int32(uint32(key)), Pad: int32(uint32(key >> 32))}
}

// add gives h a sequence number in w, for its registrations' keys.
func (w *watcher) add(h epollHandler) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nextSeq++
	w.handlers[w.nextSeq] = h
	return w.nextSeq
}

func (w *watcher) forget(seq uint64) {
	w.mu.Lock()
	delete(w.handlers, seq)
	w.mu.Unlock()
}

// watchers spreads links and fdConns over one watcher per processor, so
// that moving bytes uses as many cores as the runtime does.
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

// stop ends every watcher's loop. Links still open must have ended first.
func (ws *watchers) stop() {
	for _, w := range ws.all {
		w.stop()
	}
}

// pick returns the watchers in turn. The counter wraps around as an
// unsigned number, so that no index is ever negative.
func (ws *watchers) pick() *watcher {
	return ws.all[ws.next.Add(1)%uint32(len(ws.all))]
}

func newWatcher() (*watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("engine: epoll: %w", err)
	}
	// Non-blocking, so that os.NewFile puts it in the runtime's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("engine: epoll: %w", err)
	}
	file := os.NewFile(uintptr(epfd), "epoll")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("engine: epoll: %w", err)
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

// notify wakes whoever waits on ch, or the next to wait; nil is no one.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// maxScratch is the largest output buffer a watcher keeps from one Filter
// call to the next: a few reads' worth. One that grew past it (a large
// packet gathered across reads) is left to the collector.
const maxScratch = 4 * copyBufferSize

// keepScratch keeps fwd and back, which a Filter call returned over w's
// output buffers, for the next call.
func (w *watcher) keepScratch(fwd, back []byte) {
	w.fwd, w.back = fwd[:0], back[:0]
	if cap(fwd) > maxScratch {
		w.fwd = nil
	}
	if cap(back) > maxScratch {
		w.back = nil
	}
}
