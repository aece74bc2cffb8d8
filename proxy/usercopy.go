package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
)

// copyBufferSize is the size of the buffers that carry TLS and WebSocket
// traffic through user space: the largest plaintext of one TLS record, so
// that one read takes a whole record.
const copyBufferSize = 16 << 10

// copyBuffers lends the buffers of copyPooled. A connection takes one for
// each burst of traffic and gives it back before it waits again, so an
// idle connection holds none.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, copyBufferSize)
	return &b
}}

// copyPooled copies src to dst as io.Copy would: with splice(2) between
// two TCP sockets (when the epoll relay is unavailable), and elsewhere
// (TLS, WebSocket) without a buffer held for the connection's life: it
// waits until src has bytes with nothing in hand (see readiness), then
// moves them with a buffer from copyBuffers. A WebSocket client is
// copied message by message, each with a buffer of its own. Where src
// cannot say it is readable, the buffer is held while Read blocks.
func copyPooled(dst io.Writer, src net.Conn) (int64, error) {
	switch s := src.(type) {
	case *wsConn:
		return s.WriteTo(dst)
	case *net.TCPConn:
		if _, ok := dst.(*net.TCPConn); ok {
			return io.Copy(dst, src) // splice(2)
		}
	}
	wait := readiness(src)
	var written int64
	for {
		if wait != nil {
			if err := wait(); err != nil {
				return written, err
			}
		}
		n, err := copyBuffered(dst, src, true)
		written += n
		if errors.Is(err, io.EOF) {
			return written, nil
		}
		if err != nil {
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
// bytes to read, reached EOF or failed; or nil when c cannot tell. A TCP
// socket can tell, and so can TLS over one when it reads through a
// recordConn; on systems without socketReadable nothing can.
func readiness(c net.Conn) func() error {
	switch c := c.(type) {
	case interface{ waitReadable() error }: // an fdConn
		return c.waitReadable
	case *net.TCPConn:
		return socketReadable(c)
	case *tls.Conn:
		records, ok := c.NetConn().(*recordConn)
		if !ok {
			return nil
		}
		socket, _ := peekBare(records.Conn)
		tcp, ok := socket.(*net.TCPConn)
		if !ok {
			return nil
		}
		wait := socketReadable(tcp)
		if wait == nil {
			return nil
		}
		return func() error {
			if records.pending() {
				return nil
			}
			return wait()
		}
	}
	return nil
}

// TLS record framing (RFC 8446, section 5.1): type, version, length.
const (
	recordHeaderLen    = 5
	recordLengthOffset = 3
)

// recordConn hands crypto/tls one TLS record at a time: a Read never
// returns bytes past the end of the record being read. crypto/tls would
// otherwise read ahead and keep undecrypted records in a buffer of its
// own, where a copier waiting on the socket would not see them. Through a
// recordConn, once tls.Conn.Read has returned a record's plaintext,
// nothing is left above the socket (pending is false), and readiness can
// wait on the socket itself. It costs one extra read(2) per record.
type recordConn struct {
	net.Conn
	header    [recordHeaderLen]byte
	headerLen int // bytes of the current record's header read so far
	bodyLeft  int // bytes of the current record's body not yet read
}

// NetConn is the connection the records come over (see wrapper).
func (c *recordConn) NetConn() net.Conn { return c.Conn }

// Read reads at most up to the end of the current record's header or body.
func (c *recordConn) Read(b []byte) (int, error) {
	if c.bodyLeft == 0 {
		n, err := c.Conn.Read(b[:min(len(b), recordHeaderLen-c.headerLen)])
		c.headerLen += copy(c.header[c.headerLen:], b[:n])
		if c.headerLen == recordHeaderLen {
			c.bodyLeft = int(binary.BigEndian.Uint16(c.header[recordLengthOffset:]))
			c.headerLen = 0
		}
		return n, err
	}
	n, err := c.Conn.Read(b[:min(len(b), c.bodyLeft)])
	c.bodyLeft -= n
	return n, err
}

// pending reports whether bytes were read from the socket, or are due
// from it, that crypto/tls has not yet been given.
func (c *recordConn) pending() bool {
	_, ahead := peekBare(c.Conn)
	return c.headerLen > 0 || c.bodyLeft > 0 || ahead > 0
}
