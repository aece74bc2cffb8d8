package engine

import (
	"errors"
	"io"
	"net"
	"sync"
)

// copyBufferSize is the size of the buffers that carry bytes through user
// space (the watchers' own, and those lent by copyBuffers): the largest
// plaintext of one TLS record, so that one read takes a whole record and
// a TLS connection read through one holds nothing decrypted afterwards.
const copyBufferSize = 16 << 10

// copyBuffers lends buffers of copyBufferSize. A connection takes one for
// each burst of traffic and gives it back before it waits again, so an
// idle connection holds none.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, copyBufferSize)
	return &b
}}

// Capabilities of a connection that the portable copy uses, where the
// connection has them (see readiness).
type (
	// readWaiter can wait until a Read would return at once, holding no
	// buffer meanwhile: an fdConn.
	readWaiter interface{ WaitReadable() error }
	// layer is a wrapper over NetConn that knows what it holds: Pending
	// reports whether a Read would return without reading NetConn
	// (bytes held above it, or a record of which a part was read).
	layer interface {
		NetConn() net.Conn
		Pending() bool
	}
	// messageReader carries its stream in messages, and holds nothing
	// between them: a WebSocket connection.
	messageReader interface {
		NextMessage() (io.Reader, error)
	}
)

// pump reads src until it ends and hands each read's bytes to sink, which
// must be done with them when it returns, without a buffer held while src
// is idle: it waits until src has bytes with nothing in hand (see
// readiness), then reads them into a buffer from copyBuffers. A
// messageReader is read message by message, each with a buffer of its
// own. Where src cannot say it is readable, the buffer is held while Read
// blocks. A clean end (io.EOF) returns a nil error; sink's error ends the
// pump and is returned.
func pump(src net.Conn, sink func([]byte) error) error {
	if m, ok := src.(messageReader); ok {
		return pumpMessages(m, sink)
	}
	wait := readiness(src)
	for {
		if wait != nil {
			if err := wait(); err != nil {
				return err
			}
		}
		err := pumpBuffered(src, sink, wait != nil)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// pumpMessages hands m's messages to sink until m ends.
func pumpMessages(m messageReader, sink func([]byte) error) error {
	for {
		r, err := m.NextMessage()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := pumpBuffered(r, sink, false); !errors.Is(err, io.EOF) {
			return err
		}
	}
}

// pumpBuffered reads src into one buffer from copyBuffers and hands what
// each read returns to sink: until src returns an error (io.EOF included,
// returned as is), or after a single read when once is set.
func pumpBuffered(src io.Reader, sink func([]byte) error, once bool) error {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	for {
		n, readErr := src.Read(*bp)
		if n > 0 {
			if err := sink((*bp)[:n]); err != nil {
				return err
			}
		}
		if readErr != nil || once {
			return readErr
		}
	}
}

// getOutBuf lends an empty buffer from copyBuffers to append a Filter's
// output to.
func getOutBuf() *[]byte {
	bp := copyBuffers.Get().(*[]byte)
	*bp = (*bp)[:0]
	return bp
}

// putOutBuf gives back a buffer of getOutBuf's; one that appends made
// grow is left to the collector, so that the pool lends one size.
func putOutBuf(bp *[]byte) {
	if cap(*bp) != copyBufferSize {
		return
	}
	*bp = (*bp)[:copyBufferSize]
	copyBuffers.Put(bp)
}

// finalOf is what the error of a Filter call that ended a link has for
// the client.
func finalOf(err error) []byte {
	if f, ok := err.(Final); ok {
		return f.FinalBytes()
	}
	return nil
}

// readiness returns a func that blocks, holding no buffer, until c has
// bytes to read, reached EOF or failed; or nil when c cannot tell. A
// socket can tell (an fdConn; a *net.TCPConn where socketReadable can),
// and so can a layer over one that can: the func returns at once while
// the layer has bytes pending.
func readiness(c net.Conn) func() error {
	switch c := c.(type) {
	case readWaiter:
		return c.WaitReadable
	case *net.TCPConn:
		return socketReadable(c)
	case layer:
		inner := readiness(c.NetConn())
		if inner == nil {
			return nil
		}
		return func() error {
			if c.Pending() {
				return nil
			}
			return inner()
		}
	}
	return nil
}

// CloseNow closes c from outside the goroutines that use it: the socket
// at the bottom of its layers first (found through NetConn), so that a
// layer's Close that would write or wait (a TLS close_notify behind a
// write that a client keeps stuck, a WebSocket close frame) fails at once
// rather than blocking.
func CloseNow(c net.Conn) {
	if b := bottom(c); b != c {
		b.Close()
	}
	c.Close()
}

// bottom is the connection at the bottom of c's layers, found through
// NetConn: c itself when it has none.
func bottom(c net.Conn) net.Conn {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return c
		}
		next := u.NetConn()
		if next == nil {
			return c
		}
		c = next
	}
}
