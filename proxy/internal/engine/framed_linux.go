package engine

import (
	"errors"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// framing is what a framed epollLink has beyond a spliced one: its
// Filter, and for each socket the whole units written to it in part. A
// unit for a socket is written at once when nothing is queued for it,
// else queued behind what is; whatever is queued for socket j is written
// by flow 1-j, the one whose destination it is, which has a goroutine
// (moveFramed) while it does, so that the client's socket, which gets the
// broker's packets, the Filter's answers and Send's bytes, never gets
// one unit inside another.
type framing struct {
	filter Filter
	out    [2]pending
	// waitBack[j]: flow j's last answers (its back output) are queued in
	// out[j], up to backEnd[j]; flow j is parked until they are written.
	waitBack [2]bool
	backEnd  [2]int
	// held: the client's flow is parked until the broker's flow has
	// returned its first output (see Filter).
	held bool
	// fromClient is Options.FromClient, filtered first when the client's
	// flow starts.
	fromClient []byte
	// ending: End was called, or a Filter call ended the link; no Filter
	// call starts. Flow 1 ends once out[0] (the last words included) is
	// written and the client's sending half shut; flow 0 once out[1] is
	// written, the broker's sending half shut and the client has closed.
	ending bool
	shut   [2]bool // socket i's sending half is shut, while ending

	sendMu   sync.Mutex // guards the fields below; taken after l.mu, or alone
	sends    []byte     // Send's bytes, for flushSends
	endAsked bool       // End was called: flushSends ends the link
	final    []byte     // End's bytes
	flushing bool       // a flushSends goroutine is under way
	closed   bool       // the link has ended: Send and End are dropped
}

// pending is what is queued for one socket: (*bp)[off:], in a buffer lent
// by copyBuffers; bp is nil when nothing is.
type pending struct {
	bp  *[]byte
	off int
}

func newFraming(o Options) *framing {
	return &framing{filter: o.Filter, held: true, fromClient: o.FromClient}
}

// errShut is emitLocked's error when the flow that would write a queued
// unit has ended: the socket's sending half is shut.
var errShut = errors.New("engine: the destination's sending half is shut")

// readableFramed moves the bytes of a framed link's waiting flow i
// through its Filter, on the watcher: one read into buf, one Filter call
// into the watcher's output buffers, and the outputs written, as for a
// spliced flow, as long as they are written at once. A flow whose output
// waits for its destination leaves for a goroutine, one whose answer
// waits for its source socket parks. l.mu is held.
func (l *epollLink) readableFramed(i int, closing bool, buf []byte) {
	x, f := l.ext.fr, &l.flows[i]
	if x.ending { // the client's flow, waiting for its client to close
		l.dropReadsLocked(i, buf)
		return
	}
	for full := 0; ; {
		n := l.readLocked(i, buf)
		switch {
		case n < 0:
			return
		case n == 0:
			l.framedEOFLocked(i)
			return
		}
		fwd, back, err := x.filter.Filter(i, buf[:n], l.w.fwd[:0], l.w.back[:0])
		l.w.keepScratch(fwd, back)
		if !l.outputLocked(i, fwd, back, err) || f.state != flowWaiting {
			return // ended, or its outputs made it move
		}
		switch {
		case x.waitBack[i]:
			// Its answers wait for the other flow to write them: no
			// more reads until it has.
			f.state = flowParked
			return
		case n == len(buf) && full < watcherFullReads:
			full++
		case n == len(buf):
			f.state = flowMoving
			go l.moveFramed(i)
			return
		case !closing:
			return
		}
	}
}

// dropReadsLocked reads what flow i's source has and drops it, until
// EOF, which ends the flow: the client's flow of an ending link.
func (l *epollLink) dropReadsLocked(i int, buf []byte) {
	for {
		n, err := rawRead(l.fd(i), buf)
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			return
		case err != nil || n == 0:
			l.endFlowLocked(i)
			return
		}
	}
}

// framedEOFLocked ends flow i at its source's clean EOF, what it owes its
// destination written. A broker that closes before its first output ends
// the session.
func (l *epollLink) framedEOFLocked(i int) {
	l.stopFlowLocked(i, !l.ext.fr.held)
}

// outputLocked writes or queues the outputs of a Filter call of flow i
// (fwd to its destination, back to its source) and acts on its error. It
// reports false when the flow has ended or the link is ending.
func (l *epollLink) outputLocked(i int, fwd, back []byte, err error) bool {
	x := l.ext.fr
	if emitErr := l.emitLocked(1-i, fwd); emitErr != nil {
		l.stopFlowLocked(i, false)
		return false
	}
	if i == 1 && x.held && len(fwd) > 0 {
		// The broker's first words are the client's: its flow starts.
		x.held = false
		if l.flows[0].state == flowParked {
			l.flows[0].state = flowMoving
			go l.moveFramed(0)
		}
	}
	if emitErr := l.emitLocked(i, back); emitErr != nil {
		l.stopFlowLocked(i, false)
		return false
	}
	if o := &x.out[i]; len(back) > 0 && o.bp != nil {
		x.waitBack[i], x.backEnd[i] = true, len(*o.bp)
	}
	if err != nil {
		l.endLocked(finalOf(err))
		return false
	}
	return true
}

// emitLocked writes b, whole units, to socket j: at once when nothing is
// queued for it, else, and whatever a full socket does not take, queued
// for flow 1-j to write, which it then does on a goroutine of its own.
func (l *epollLink) emitLocked(j int, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	x, o := l.ext.fr, &l.ext.fr.out[j]
	if l.flows[1-j].state == flowEnded || x.shut[j] {
		return errShut
	}
	if o.bp != nil {
		*o.bp = append(*o.bp, b...)
		return nil
	}
	n, err := writeNonblocking(l.fd(j), b, 0)
	l.flows[1-j].n += int64(n)
	switch {
	case err == nil:
		return nil
	case err != unix.EAGAIN:
		return err
	}
	o.bp, o.off = getOutBuf(), 0
	*o.bp = append(*o.bp, b[n:]...)
	if k := 1 - j; l.flows[k].state == flowWaiting || l.flows[k].state == flowParked {
		l.flows[k].state = flowMoving
		go l.moveFramed(k)
	}
	return nil
}

// drainLocked writes what is queued for flow i's destination, waiting for
// it as long as it takes (l.mu released meanwhile); then the other flow,
// when parked for it, goes on.
func (l *epollLink) drainLocked(i int) error {
	x, j := l.ext.fr, 1-i
	o := &x.out[j]
	for o.bp != nil {
		n, err := writeNonblocking(l.fd(j), (*o.bp)[o.off:], 0)
		o.off += n
		l.flows[i].n += int64(n)
		if x.waitBack[j] && o.off >= x.backEnd[j] {
			x.waitBack[j] = false
		}
		switch {
		case err == unix.EAGAIN:
			if err := l.waitWritableLocked(i); err != nil {
				return err
			}
		case err != nil:
			return err
		default:
			// All that was queued, appends made while it waited included.
			putOutBuf(o.bp)
			o.bp = nil
		}
	}
	if l.flows[j].state == flowParked && !x.waitBack[j] && !(j == 0 && x.held) && !x.ending {
		l.flows[j].state = flowMoving
		go l.moveFramed(j)
	}
	return nil
}

// moveFramed runs on its own goroutine for flow i of a framed link: it
// writes what is queued for its destination, waiting for it as long as it
// takes, then reads its source through the Filter, with buffers of
// copyBuffers, until the source runs dry; then the flow waits in the
// epoll set again. It parks the flow while an answer of its own is queued
// for its source socket, and ends it when the link ends.
func (l *epollLink) moveFramed(i int) {
	x := l.ext.fr
	var rbp, fwd, back *[]byte
	defer func() {
		for _, bp := range []*[]byte{rbp, fwd, back} {
			if bp != nil {
				putOutBuf(bp)
			}
		}
	}()
	eof := false
	l.mu.Lock()
	defer l.unlock()
	for {
		// l.mu is held at the top of the loop.
		if err := l.drainLocked(i); err != nil {
			l.stopFlowLocked(i, false)
			return
		}
		switch {
		case l.aborted:
			l.endFlowLocked(i)
			return
		case x.ending:
			if !l.endingLocked(i) {
				return
			}
		case x.waitBack[i]:
			l.flows[i].state = flowParked // the other flow writes its answers, then restarts it
			return
		case eof:
			l.framedEOFLocked(i)
			return
		}
		var in []byte
		if i == 0 && x.fromClient != nil && !x.ending {
			in, x.fromClient = x.fromClient, nil
		} else {
			l.flows[i].pending = false
			l.mu.Unlock()
			if rbp == nil {
				rbp = copyBuffers.Get().(*[]byte)
			}
			n, err := rawRead(l.fd(i), *rbp)
			l.mu.Lock()
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				if l.flows[i].pending && !l.aborted || x.out[1-i].bp != nil {
					continue // more has come, or was queued for its destination meanwhile
				}
				// An ending link's client flow drops what comes next on
				// the watcher.
				l.flows[i].state = flowWaiting
				return
			case err != nil:
				l.stopFlowLocked(i, false)
				return
			case n == 0 && x.ending:
				l.endFlowLocked(i)
				return
			case n == 0:
				eof = true
				continue
			case x.ending:
				continue // the client's bytes after the end: dropped
			}
			in = (*rbp)[:n]
		}
		l.mu.Unlock()
		if fwd == nil {
			fwd, back = getOutBuf(), getOutBuf()
		}
		fwdOut, backOut, err := x.filter.Filter(i, in, (*fwd)[:0], (*back)[:0])
		*fwd, *back = fwdOut, backOut
		l.mu.Lock()
		if l.aborted || x.ending {
			continue // outputs after the end are dropped
		}
		if !l.outputLocked(i, fwdOut, backOut, err) && l.flows[i].state == flowEnded {
			return
		}
	}
}

// endingLocked is flow i's part of an ending link, what is queued for its
// destination written: it shuts the destination's sending half; the
// broker's flow then ends, the client's reads on until the client closes.
// It reports whether the flow goes on.
func (l *epollLink) endingLocked(i int) bool {
	x := l.ext.fr
	if !x.shut[1-i] {
		x.shut[1-i] = true
		rawShutdownWrite(l.fd(1 - i))
	}
	if i == 1 {
		l.endFlowLocked(i)
		return false
	}
	return true
}

// endLocked ends a framed link: no Filter call starts from now on; what
// is queued for each socket is written, final after what the client was
// to get, then each socket's sending half is shut; the broker's
// connection closes then, the client's once the client closes its own.
// Within halfClose, or both are closed anyway.
func (l *epollLink) endLocked(final []byte) {
	x := l.ext.fr
	if x.ending || l.aborted || l.ended == 2 {
		return
	}
	if x.held {
		// Nothing goes before the broker's first words (an MQTT server
		// sends no DISCONNECT before its CONNACK): the client gets the
		// close alone.
		final = nil
	}
	if err := l.emitLocked(0, final); err != nil {
		l.abortLocked()
		return
	}
	x.ending = true
	if l.timer != nil {
		l.timer.Stop()
	}
	l.timer = time.AfterFunc(l.halfClose, l.Abort)
	for k := range l.flows {
		if s := l.flows[k].state; s == flowWaiting || s == flowParked {
			l.flows[k].state = flowMoving
			go l.moveFramed(k)
		}
	}
}

// Send queues toClient for the client, for a goroutine to write between
// whole outputs (see flushSends).
func (l *epollLink) Send(toClient []byte) {
	if !l.framed || len(toClient) == 0 {
		return
	}
	x := l.ext.fr
	x.sendMu.Lock()
	if x.closed || x.endAsked {
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

// End ends a framed link with toClient as its last words (see endLocked);
// a spliced one is aborted.
func (l *epollLink) End(toClient []byte) {
	if !l.framed {
		l.Abort()
		return
	}
	x := l.ext.fr
	x.sendMu.Lock()
	if x.closed || x.endAsked {
		x.sendMu.Unlock()
		return
	}
	x.endAsked, x.final = true, toClient
	start := !x.flushing
	x.flushing = true
	x.sendMu.Unlock()
	if start {
		go l.flushSends()
	}
}

// flushSends writes or queues what Send and End left for the client,
// under l.mu, which Send and End do not take: they never wait for a
// Filter call on the watcher.
func (l *epollLink) flushSends() {
	x := l.ext.fr
	l.mu.Lock()
	defer l.unlock()
	x.sendMu.Lock()
	sends, final, end := x.sends, x.final, x.endAsked
	x.sends, x.final, x.flushing = nil, nil, false
	x.sendMu.Unlock()
	if l.aborted || l.ended == 2 || x.ending {
		return
	}
	if x.held {
		sends = nil // the client has had nothing of the broker's yet: no place for them
	}
	if err := l.emitLocked(0, sends); err != nil && err != errShut {
		l.abortLocked()
		return
	}
	if end {
		l.endLocked(final)
	}
}

// releaseLocked lets go of what is queued once the link has ended; Send
// and End are dropped from now on.
func (x *framing) releaseLocked() {
	for j := range x.out {
		if x.out[j].bp != nil {
			putOutBuf(x.out[j].bp)
			x.out[j].bp = nil
		}
	}
	x.fromClient = nil
	x.sendMu.Lock()
	x.closed, x.sends, x.final = true, nil, nil
	x.sendMu.Unlock()
}
