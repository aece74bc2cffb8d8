package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
)

// arrivingConn is a client whose bytes, data, arrive in pieces: each
// piece's size is one of sizes, squared, plus one (then 1 byte at a time).
// What has arrived is read as a socket would give it.
type arrivingConn struct {
	net.Conn
	data     []byte
	sizes    []byte
	arrived  int // bytes of data that have arrived
	consumed int // bytes of data read
}

// arrive lets the next piece arrive.
func (c *arrivingConn) arrive() {
	n := 1
	if len(c.sizes) > 0 {
		n = int(c.sizes[0])*int(c.sizes[0]) + 1
		c.sizes = c.sizes[1:]
	}
	c.arrived = min(len(c.data), c.arrived+n)
}

// readArrived reads what has arrived: engine.ErrWouldBlock when nothing has,
// EOF once everything was read.
func (c *arrivingConn) readArrived(b []byte) (int, error) {
	if c.consumed == len(c.data) {
		return 0, io.EOF
	}
	if c.consumed == c.arrived {
		return 0, engine.ErrWouldBlock
	}
	n := copy(b, c.data[c.consumed:c.arrived])
	c.consumed += n
	return n, nil
}

// bareArrivingConn is read as a bare socket is (queuedReader): without
// waiting, the next piece arriving once the reader waits for it.
type bareArrivingConn struct{ arrivingConn }

func (c *bareArrivingConn) ReadNow(b []byte) (int, error)     { return c.readArrived(b) }
func (c *bareArrivingConn) WhenReadable(engine.Resumer) error { c.arrive(); return nil }

// blockingArrivingConn is read as a connection that blocks is (TLS, a
// WebSocket): a Read waits for the next piece when all has been read.
type blockingArrivingConn struct{ arrivingConn }

func (c *blockingArrivingConn) Read(b []byte) (int, error) {
	if c.consumed == c.arrived {
		c.arrive()
	}
	return c.readArrived(b)
}

// countingOwner is told of every growth of the reader's buffer.
type countingOwner struct{ held int }

func (o *countingOwner) hold(n int) bool { o.held += n; return true }
func (o *countingOwner) Resume()         {}

// FuzzConnectReader checks the proxy's CONNECT reader against
// packets.ReadConnect, for any bytes arriving in any pieces, from a bare
// socket (waiting between pieces, as in the epoll set) and from a
// connection that blocks: the same packet or the same refusal; from a
// bare socket, what was read past an accepted packet is returned, and a
// connection that blocks is never read past it; and every byte of the
// buffer's capacity was announced to the owner (the budget of pending
// bytes counts what is allocated).
func FuzzConnectReader(f *testing.F) {
	for _, tc := range []struct {
		data  []byte
		sizes []byte
	}{
		{[]byte("\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"), nil},
		{[]byte("\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00after"), []byte{3, 0, 9}},
		{[]byte("\x10\x0c\x00\x04MQTT\x00\x02\x00\x3c\x00\x00"), []byte{1}},
		{[]byte("\x10\xff\xff\xff\x7f\x00\x04MQTT\x05"), []byte{2, 2}},
		{[]byte("\x30\x02\x00\x00"), nil},
		{[]byte("\x10\x0c\x00\x04MQ"), []byte{5}},
	} {
		for _, limit := range []uint16{0, 16, 1024} {
			f.Add(tc.data, tc.sizes, limit, true)
			f.Add(tc.data, tc.sizes, limit, false)
		}
	}
	f.Fuzz(func(t *testing.T, data, sizes []byte, limit uint16, bare bool) {
		want, wantErr := packets.ReadConnect(bytes.NewReader(data), int(limit))
		owner := &countingOwner{}
		r := &connectReader{maxSize: int(limit), owner: owner}
		var c *arrivingConn
		if bare {
			bc := &bareArrivingConn{arrivingConn{data: data, sizes: sizes}}
			c, r.conn = &bc.arrivingConn, bc
		} else {
			bc := &blockingArrivingConn{arrivingConn{data: data, sizes: sizes}}
			c, r.conn = &bc.arrivingConn, bc
		}
		var got *packets.Connect
		var past []byte
		var err error
		for waits := 0; ; waits++ {
			if got, past, err = r.read(); !errors.Is(err, errWaiting) {
				break
			}
			if waits > len(data) {
				t.Fatalf("still waiting after %d pieces of %d bytes", waits, len(data))
			}
		}
		// The buffer, and once decoded the CONNECT beside it.
		announced := cap(r.held)
		if got != nil {
			announced += got.DecodedSize()
		}
		if owner.held != announced {
			t.Fatalf("growths of %d bytes announced for a buffer of %d and a decoded CONNECT of %d", owner.held, cap(r.held), announced-cap(r.held))
		}
		ended := func(err error) bool { return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) }
		var gotPacketErr, wantPacketErr *packets.Error
		switch {
		case (err == nil) != (wantErr == nil):
			t.Fatalf("connectReader: %v; ReadConnect: %v", err, wantErr)
		case ended(wantErr):
			// The input ended before ReadConnect could decide: an
			// oversize packet whose version it could not probe is
			// refused wrapping the end, which the reader does not wait
			// for (packets.ConnectNeeds).
			if !ended(err) {
				t.Fatalf("connectReader decided %v where ReadConnect ran out of input: %v", err, wantErr)
			}
		case errors.As(wantErr, &wantPacketErr):
			if !errors.As(err, &gotPacketErr) || gotPacketErr.Error() != wantPacketErr.Error() {
				t.Fatalf("connectReader refuses with %v, ReadConnect with %v", err, wantErr)
			}
		case wantErr != nil:
			t.Fatalf("ReadConnect of a bytes.Reader failed otherwise: %v", wantErr)
		case !bytes.Equal(got.Raw, want.Raw) || !equalConnectFields(got, want):
			t.Fatalf("connectReader read another packet than ReadConnect")
		case !bytes.Equal(past, data[len(want.Raw):c.consumed]):
			t.Fatalf("%d bytes returned as past the CONNECT, %d read past it", len(past), c.consumed-len(want.Raw))
		case !bare && c.consumed != len(want.Raw):
			t.Fatalf("a connection that blocks was read %d bytes past the CONNECT", c.consumed-len(want.Raw))
		}
	})
}

// equalConnectFields compares what the proxy takes from a CONNECT.
func equalConnectFields(a, b *packets.Connect) bool {
	return a.ProtocolVersion == b.ProtocolVersion && a.Bridge == b.Bridge && a.ClientID == b.ClientID &&
		a.UsernameFlag == b.UsernameFlag && a.Username == b.Username &&
		a.PasswordFlag == b.PasswordFlag && bytes.Equal(a.Password, b.Password)
}
