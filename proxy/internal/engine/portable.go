package engine

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// portable is the engine of every platform: the net package's sockets,
// and two goroutines per link that wait until their source is readable
// and copy through pooled buffers (pump). An idle link holds its two
// sockets and two goroutines; no buffer where the platform can wait for
// readability (readiness), and no pipe.
type portable struct{}

func (portable) Listener(ln net.Listener) net.Listener { return ln }

func (portable) Dial(addrs []netip.AddrPort, first []byte, deadline time.Time) (net.Conn, error) {
	return dialEach(addrs, deadline, func(addr netip.AddrPort) (net.Conn, error) {
		d := net.Dialer{Deadline: deadline, KeepAlive: -1} // the broker's MQTT keep-alive watches the session
		c, err := d.Dial("tcp", addr.String())
		if err != nil {
			return nil, err
		}
		if err := writeFirst(c, first, deadline); err != nil {
			c.Close()
			return nil, fmt.Errorf("dial tcp %s: %w", addr, err)
		}
		return c, nil
	})
}

// dialEach calls dial with each of addrs in turn until one succeeds or the
// deadline passes, and returns the first error otherwise.
func dialEach(addrs []netip.AddrPort, deadline time.Time, dial func(netip.AddrPort) (net.Conn, error)) (net.Conn, error) {
	var firstErr error
	for _, addr := range addrs {
		c, err := dial(addr)
		if err == nil {
			return c, nil
		}
		firstErr = cmp.Or(firstErr, err)
		if errors.Is(err, os.ErrDeadlineExceeded) || !time.Now().Before(deadline) {
			break
		}
	}
	if firstErr == nil {
		firstErr = errors.New("engine: no address to dial")
	}
	return nil, firstErr
}

// writeFirst writes first to c, just connected, before deadline.
func writeFirst(c net.Conn, first []byte, deadline time.Time) error {
	if len(first) == 0 {
		return nil
	}
	c.SetWriteDeadline(deadline)
	_, err := c.Write(first)
	c.SetWriteDeadline(time.Time{})
	return err
}

func (portable) Join(client, upstream net.Conn, o Options) Link {
	l := &copyLink{client: client, upstream: upstream, halfClose: o.HalfClose}
	if o.Filter != nil {
		l.fr = &copyFraming{filter: o.Filter, fromClient: o.FromClient, started: make(chan struct{}), stop: make(chan struct{})}
	}
	go l.run(o.Done)
	return l
}

func (portable) Close() {}

// copyLink is a link of the portable engine: a goroutine per direction.
type copyLink struct {
	client, upstream net.Conn
	halfClose        time.Duration
	n                [2]atomic.Int64 // bytes written to the upstream (0) and to the client (1)
	fr               *copyFraming    // nil for a link without a Filter
}

// copyFraming is what a framed copyLink has beyond a plain one. Each
// output is written whole under its connection's wmu, so that the
// client's connection, which gets the upstream's units, the Filter's
// answers and Send's bytes from three goroutines, never gets one unit
// inside another; and a direction reads on only once its outputs are
// written.
type copyFraming struct {
	filter     Filter
	fromClient []byte        // Options.FromClient, for the client's direction
	wmu        [2]sync.Mutex // held while a unit is written to the client (0) or the upstream (1)
	// started is closed once the upstream's first output has been
	// written: the client's direction reads from then on.
	started   chan struct{}
	startOnce sync.Once
	// stop is closed when the link is aborted or ending, for a client
	// direction that waits for started.
	stop     chan struct{}
	stopOnce sync.Once
	ending   atomic.Bool // End: no more outputs are written; set once, by whoever ends the link

	sendMu   sync.Mutex // guards the fields below
	sends    []byte     // Send's bytes, for flushSends
	flushing bool       // a flushSends goroutine is under way
	closed   bool       // both directions have ended
	timer    *time.Timer
}

// conn is the connection direction i reads: the client's (0) or the
// upstream's (1).
func (l *copyLink) conn(i int) net.Conn {
	if i == 0 {
		return l.client
	}
	return l.upstream
}

// run copies both ways until both directions have ended, closes both
// connections and calls done with the bytes each way.
func (l *copyLink) run(done func(fromClient, toClient int64)) {
	fromClient := make(chan struct{})
	go func() { l.copyHalf(0); close(fromClient) }()
	l.copyHalf(1)
	<-fromClient
	l.client.Close()
	l.upstream.Close()
	if x := l.fr; x != nil {
		x.sendMu.Lock()
		x.closed, x.sends = true, nil
		if x.timer != nil {
			x.timer.Stop()
		}
		x.sendMu.Unlock()
		x.filter.Release()
	}
	done(l.n[0].Load(), l.n[1].Load())
}

// copyHalf copies direction i, the connection it reads to the other, or
// through the Filter. When its source ends cleanly, the end is passed on
// (CloseWrite) and the other direction gets halfClose to end by itself;
// when a copy fails, both connections close. It is a named function so
// each direction shows by name in goroutine dumps.
func (l *copyLink) copyHalf(i int) {
	src, dst := l.conn(i), l.conn(1-i)
	var err error
	if x := l.fr; x != nil {
		if err = l.filterHalf(i); x.ending.Load() {
			return // End closes what it must, and Abort the rest
		}
	} else {
		err = pump(src, func(b []byte) error {
			n, err := dst.Write(b)
			l.n[i].Add(int64(n))
			return err
		})
	}
	if err == nil && l.closeWrite(i) {
		// The other direction may still carry the last packets (a
		// broker's answer to DISCONNECT); it gets a bounded time.
		dst.SetReadDeadline(time.Now().Add(l.halfClose))
		return
	}
	l.Abort()
}

// errHeld ends a framed link whose upstream closed before its first
// output.
var errHeld = errors.New("engine: the upstream ended before its first output")

// filterHalf reads direction i through the Filter; the client's direction
// waits for the upstream's first output first.
func (l *copyLink) filterHalf(i int) error {
	x := l.fr
	if i == 0 {
		if err := l.awaitStarted(); err != nil {
			return err
		}
		if in := x.fromClient; len(in) > 0 {
			x.fromClient = nil
			if err := l.filtered(0, in); err != nil {
				return err
			}
		}
	}
	err := pump(l.conn(i), func(b []byte) error { return l.filtered(i, b) })
	if err == nil && i == 1 && !l.started() {
		return errHeld
	}
	return err
}

// awaitStarted waits, for the client's direction, until the upstream's
// first output has gone to the client, or the link stops
// (net.ErrClosed). A client whose peer closes or resets its socket
// meanwhile, with nothing left unread, ends the link, as it would end a
// spliced one: the upstream, which may be slow to answer or never answer,
// is not kept for it. Bytes sent before the close are the Filter's once
// the upstream has answered.
func (l *copyLink) awaitStarted() error {
	x := l.fr
	wait := func() error {
		select {
		case <-x.started:
			return nil
		case <-x.stop:
			return net.ErrClosed
		}
	}
	socket, ok := bottom(l.client).(*net.TCPConn)
	if !ok || len(x.fromClient) > 0 {
		// No socket to ask, or bytes read ahead with the CONNECT that
		// the Filter must have first: the client's close is seen after
		// the start.
		return wait()
	}
	watch := socketClosed(socket)
	if watch == nil {
		return wait()
	}
	gone := make(chan bool, 1)
	go func() {
		closed, err := watch()
		gone <- closed || (err != nil && !errors.Is(err, os.ErrDeadlineExceeded))
	}()
	select {
	case closed := <-gone:
		if closed {
			l.Abort()
			return net.ErrClosed
		}
		return wait() // bytes to read after the start
	case <-x.started:
		// The watch ends at a deadline in the past; the direction reads
		// the socket from then on, without one.
		socket.SetReadDeadline(time.Unix(1, 0))
		<-gone
		socket.SetReadDeadline(time.Time{})
		return nil
	case <-x.stop:
		return net.ErrClosed // Abort or the end closes the client, which ends the watch
	}
}

// filtered passes in, read from direction i, through the Filter and
// writes its outputs, whole; after End, in is dropped.
func (l *copyLink) filtered(i int, in []byte) error {
	x := l.fr
	if x.ending.Load() {
		return nil
	}
	fwd, back := getOutBuf(), getOutBuf()
	defer func() { putOutBuf(fwd); putOutBuf(back) }()
	var err error
	*fwd, *back, err = x.filter.Filter(i, in, (*fwd)[:0], (*back)[:0])
	if werr := l.write(1-i, *fwd); werr != nil {
		return werr
	}
	if werr := l.write(i, *back); werr != nil {
		return werr
	}
	if err != nil && x.ending.CompareAndSwap(false, true) {
		l.end(finalOf(err))
	}
	return nil
}

// write writes b, whole units, to the client (j 0) or the upstream (1),
// unless the link is ending.
func (l *copyLink) write(j int, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	x := l.fr
	x.wmu[j].Lock()
	defer x.wmu[j].Unlock()
	if x.ending.Load() {
		return nil
	}
	n, err := l.conn(j).Write(b)
	l.n[1-j].Add(int64(n))
	if j == 0 && err == nil {
		// The upstream's first output (nothing else is written to the
		// client before it) starts the link, under wmu[0], so that Send's
		// and End's writes, which take it, see it started once it is
		// written.
		x.startOnce.Do(func() { close(x.started) })
	}
	return err
}

// started reports whether the upstream's first output has gone to the
// client.
func (l *copyLink) started() bool {
	select {
	case <-l.fr.started:
		return true
	default:
		return false
	}
}

// closeWrite passes direction i's end on to its destination, after the
// unit being written to it, and reports whether it could.
func (l *copyLink) closeWrite(i int) bool {
	dst := l.conn(1 - i)
	cw, ok := dst.(interface{ CloseWrite() error })
	if !ok {
		return false
	}
	if x := l.fr; x != nil {
		x.wmu[1-i].Lock()
		defer x.wmu[1-i].Unlock()
	}
	return cw.CloseWrite() == nil
}

// Abort closes both connections, sockets first: both copies fail and end.
func (l *copyLink) Abort() {
	CloseNow(l.client)
	CloseNow(l.upstream)
	if x := l.fr; x != nil {
		x.stopOnce.Do(func() { close(x.stop) })
	}
}

// Send queues toClient for a goroutine that writes it between whole
// outputs.
func (l *copyLink) Send(toClient []byte) {
	x := l.fr
	if x == nil || len(toClient) == 0 {
		return
	}
	x.sendMu.Lock()
	if x.closed || x.ending.Load() {
		x.sendMu.Unlock()
		return
	}
	x.sends = append(x.sends, toClient...)
	start := !x.flushing
	x.flushing = true
	x.sendMu.Unlock()
	if start {
		go l.flushSends()
	}
}

// flushSends writes what Send queued, between two whole outputs.
func (l *copyLink) flushSends() {
	x := l.fr
	x.wmu[0].Lock()
	defer x.wmu[0].Unlock()
	x.sendMu.Lock()
	b := x.sends
	x.flushing = false
	if !x.ending.Load() { // else end writes them
		x.sends = nil
	}
	x.sendMu.Unlock()
	if len(b) == 0 || x.ending.Load() || !l.started() {
		return
	}
	n, err := l.client.Write(b)
	l.n[1].Add(int64(n))
	if err != nil {
		l.Abort()
	}
}

// End ends a framed link on a goroutine of its own (see end); a plain
// one is aborted.
func (l *copyLink) End(toClient []byte) {
	if l.fr == nil {
		l.Abort()
		return
	}
	if l.fr.ending.CompareAndSwap(false, true) {
		go l.end(toClient)
	}
}

// end, once ending is set, writes what the client was to get, then
// final, closes the client's sending half (or its connection, when it has
// none) and the upstream's connection; the client's direction reads on,
// dropping what comes, until the client closes. Within halfClose, or both
// are closed anyway.
func (l *copyLink) end(final []byte) {
	x := l.fr
	{
		x.sendMu.Lock()
		x.timer = time.AfterFunc(l.halfClose, l.Abort)
		x.sendMu.Unlock()
		x.stopOnce.Do(func() { close(x.stop) })
		x.wmu[0].Lock()
		x.sendMu.Lock()
		b := append(x.sends, final...)
		x.sends = nil
		x.sendMu.Unlock()
		if !l.started() {
			b = nil // nothing before the upstream's first words
		}
		if len(b) > 0 {
			n, _ := l.client.Write(b)
			l.n[1].Add(int64(n))
		}
		if cw, ok := l.client.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
			CloseNow(l.client)
		}
		x.wmu[0].Unlock()
		x.wmu[1].Lock()
		CloseNow(l.upstream)
		x.wmu[1].Unlock()
	}
}

// Bytes returns what has been written to the upstream and to the client.
func (l *copyLink) Bytes() (fromClient, toClient int64) { return l.n[0].Load(), l.n[1].Load() }
