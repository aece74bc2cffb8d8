package engine

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
)

// portable is the engine of every platform: the net package's sockets,
// and two goroutines per link that wait until their source is readable
// and copy through pooled buffers (copyPooled). An idle link holds its two
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
	go l.run(o.Done)
	return l
}

func (portable) Close() {}

// copyLink is a link of the portable engine: a goroutine per direction.
type copyLink struct {
	client, upstream net.Conn
	halfClose        time.Duration
}

// run copies both ways until both directions have ended, closes both
// connections and calls done with the bytes each way.
func (l *copyLink) run(done func(fromClient, toClient int64)) {
	fromClient := make(chan int64, 1)
	go func() { fromClient <- l.copyHalf(l.upstream, l.client) }()
	toClient := l.copyHalf(l.client, l.upstream)
	from := <-fromClient
	l.client.Close()
	l.upstream.Close()
	done(from, toClient)
}

// copyHalf copies src to dst. When src ends cleanly, the end is passed on
// (CloseWrite) and the other direction gets halfClose to end by itself;
// when a copy fails, both connections close. It is a named function so
// each direction shows by name in goroutine dumps.
func (l *copyLink) copyHalf(dst, src net.Conn) int64 {
	n, err := copyPooled(dst, src)
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			// The other direction may still carry the last packets (a
			// broker's answer to DISCONNECT); it gets a bounded time.
			dst.SetReadDeadline(time.Now().Add(l.halfClose))
			return n
		}
	}
	CloseNow(dst)
	CloseNow(src)
	return n
}

// Abort closes both connections, sockets first: both copies fail and end.
func (l *copyLink) Abort() {
	CloseNow(l.client)
	CloseNow(l.upstream)
}
