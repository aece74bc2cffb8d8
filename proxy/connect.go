package proxy

import (
	"fmt"
	"net"
	"sync"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
)

// connectReadAhead is how much readConnect takes from a bare socket in
// its first read. A CONNECT with a token nearly always fits, so that the
// packet costs one read(2) rather than packets.ReadConnect's two.
const connectReadAhead = 1024

// socketReader is a socket of the epoll engine's: it reads without
// waiting (engine.ErrWouldBlock when nothing has arrived), and waits
// without a buffer.
type socketReader interface {
	net.Conn
	ReadNow(b []byte) (int, error)
	WaitReadable() error
}

// readConnect reads the client's CONNECT as packets.ReadConnect does and
// returns with it what it read past the packet, which is for the broker
// once the client is authenticated, and for nobody otherwise. From a
// socketReader it reads ahead; from any other connection, nothing past the
// CONNECT (a wrapper keeps what it read ahead itself: see
// transport.Detach).
func readConnect(c net.Conn, maxSize int) (*packets.Connect, []byte, error) {
	sc, ok := c.(socketReader)
	if !ok {
		pk, err := packets.ReadConnect(c, maxSize)
		return pk, nil, err
	}
	r := &connectReader{c: sc}
	for {
		r.store = readAheads.Get().(*[connectReadAhead]byte)
		n, err := sc.ReadNow(r.store[:])
		if err != engine.ErrWouldBlock {
			r.buf, r.err = r.store[:n], err
			break
		}
		// A client that is yet to send holds no buffer while it waits.
		readAheads.Put(r.store)
		if err := sc.WaitReadable(); err != nil {
			return nil, nil, fmt.Errorf("packets: read first packet: %w", err)
		}
	}
	pk, err := packets.ReadConnect(r, maxSize)
	var past []byte
	if err == nil && len(r.buf) > 0 {
		past = append([]byte(nil), r.buf...)
	}
	r.release()
	return pk, past, err
}

// readAheads are readConnect's buffers, each held from the first bytes of
// a CONNECT until ReadConnect has had them.
var readAheads = sync.Pool{New: func() any { return new([connectReadAhead]byte) }}

// connectReader serves packets.ReadConnect what readConnect's first read
// took, then reads the socket itself, in the exact sizes ReadConnect asks
// for, so that nothing past a larger CONNECT is read. A client trickling
// a large CONNECT holds no buffer of its own meanwhile.
type connectReader struct {
	c     net.Conn
	store *[connectReadAhead]byte // nil once released
	buf   []byte                  // what ReadConnect has not had of the first read
	err   error                   // the first read's
}

func (r *connectReader) Read(p []byte) (int, error) {
	switch {
	case len(r.buf) > 0:
		n := copy(p, r.buf)
		r.buf = r.buf[n:]
		if len(r.buf) == 0 {
			r.release()
		}
		return n, nil
	case r.err != nil:
		return 0, r.err
	}
	return r.c.Read(p)
}

// release returns the buffer to the pool, without the token it held.
func (r *connectReader) release() {
	if r.store != nil {
		clear(r.store[:])
		readAheads.Put(r.store)
		r.store, r.buf = nil, nil
	}
}
