package transport

import (
	"encoding/binary"
	"net"
)

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
// nothing is left above the socket (Pending is false), and the copy can
// wait on the socket itself. It costs one extra read(2) per record.
type recordConn struct {
	net.Conn
	header    [recordHeaderLen]byte
	headerLen int // bytes of the current record's header read so far
	bodyLeft  int // bytes of the current record's body not yet read
}

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

// NetConn is the connection the records are read from.
func (c *recordConn) NetConn() net.Conn { return c.Conn }

// Pending reports whether a record is partly read: the rest is due from
// the connection beneath, and crypto/tls has not had it. What that
// connection holds itself, it says (its own Pending).
func (c *recordConn) Pending() bool { return c.headerLen > 0 || c.bodyLeft > 0 }
