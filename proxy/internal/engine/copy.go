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

// copyPooled copies src to dst until src ends, as io.Copy would, without a
// buffer held while src is idle: it waits until src has bytes with nothing
// in hand (see readiness), then moves them with a buffer from
// copyBuffers. A messageReader is copied message by message, each with a
// buffer of its own. Where src cannot say it is readable, the buffer is
// held while Read blocks. A clean end (io.EOF) returns a nil error.
func copyPooled(dst io.Writer, src net.Conn) (int64, error) {
	if m, ok := src.(messageReader); ok {
		return copyMessages(dst, m)
	}
	wait := readiness(src)
	var written int64
	for {
		if wait != nil {
			if err := wait(); err != nil {
				return written, err
			}
		}
		n, err := copyBuffered(dst, src, wait != nil)
		written += n
		if errors.Is(err, io.EOF) {
			return written, nil
		}
		if err != nil {
			return written, err
		}
	}
}

// copyMessages copies m's messages to dst until m ends.
func copyMessages(dst io.Writer, m messageReader) (int64, error) {
	var written int64
	for {
		r, err := m.NextMessage()
		if errors.Is(err, io.EOF) {
			return written, nil
		}
		if err != nil {
			return written, err
		}
		n, err := copyBuffered(dst, r, false)
		written += n
		if !errors.Is(err, io.EOF) {
			return written, err
		}
	}
}

// copyBuffered copies src to dst through one buffer from copyBuffers:
// until src returns an error (io.EOF included, returned as is), or after
// a single read when once is set. The buffer hides dst's ReadFrom, which
// would otherwise allocate one of its own.
func copyBuffered(dst io.Writer, src io.Reader, once bool) (written int64, err error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	for {
		n, readErr := src.Read(*bp)
		if n > 0 {
			w, writeErr := dst.Write((*bp)[:n])
			written += int64(w)
			if writeErr != nil {
				return written, writeErr
			}
		}
		if readErr != nil || once {
			return written, readErr
		}
	}
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
	bottom := c
	for {
		u, ok := bottom.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		next := u.NetConn()
		if next == nil {
			break
		}
		bottom = next
	}
	if bottom != c {
		bottom.Close()
	}
	c.Close()
}
