package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// rawPair returns a client's connection and the fdConn a rawListener
// accepted for it.
func rawPair(t *testing.T, network, addr string) (client net.Conn, accepted *fdConn) {
	t.Helper()
	ws := testWatchers(t)
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("no %s listener on %s: %v", network, addr, err)
	}
	rl := ws.newRawListener(ln.(*net.TCPListener))
	if rl == nil {
		t.Fatal("no raw listener")
	}
	t.Cleanup(func() { rl.Close() })
	client, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	c, err := rl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return client, c.(*fdConn)
}

// An accepted socket's calls wait in the watcher when the socket is not
// ready, and end at their deadline, at a new deadline set while they wait,
// or at Close.
func TestFdConnWaits(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	client, c := rawPair(t, "tcp", "127.0.0.1:0")
	if c.RemoteAddr().String() != client.LocalAddr().String() || c.LocalAddr().String() != client.RemoteAddr().String() {
		t.Fatalf("addresses %v <- %v, the client has %v -> %v", c.LocalAddr(), c.RemoteAddr(), client.LocalAddr(), client.RemoteAddr())
	}

	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var ne net.Error
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read with nothing sent: %v, want a timeout", err)
	}

	// A read waiting without a deadline returns what arrives.
	c.SetReadDeadline(time.Time{})
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 8)
		n, err := c.Read(b)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b[:n])
	}()
	client.Write([]byte("hello"))
	if s := <-got; s != "hello" {
		t.Fatalf("read %q, want hello", s)
	}

	// A deadline set while a read waits (or before it starts) ends it.
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		errc <- err
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after a new deadline: %v, want a timeout", err)
	}

	// So does Close, and the socket closes: the client reads EOF.
	c.SetReadDeadline(time.Time{})
	go func() {
		_, err := c.Read(make([]byte, 8))
		errc <- err
	}()
	c.Close() // whether the read waits already or starts after

	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v, want net.ErrClosed", err)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read after Close: %v, want EOF", err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
}

// A write the client does not read waits for it, up to the write
// deadline, and goes on once it reads. CloseWrite gives the client EOF,
// and EOF from the client reads as io.EOF.
func TestFdConnWrites(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	client, c := rawPair(t, "tcp", "127.0.0.1:0")
	big := make([]byte, 32<<20) // more than both socket buffers
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	n, err := c.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 || n == len(big) {
		t.Fatalf("write to a client that does not read: %d bytes, %v; want some, then a timeout", n, err)
	}

	c.SetWriteDeadline(time.Time{})
	read := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, client)
		read <- n
	}()
	m, err := c.Write(big[n:])
	if err != nil || m != len(big)-n {
		t.Fatalf("write once the client reads: %d bytes, %v", m, err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := <-read; got != int64(len(big)) {
		t.Fatalf("client read %d bytes before EOF, want %d", got, len(big))
	}

	client.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after the client closed: %v, want EOF", err)
	}
}

// The accepted address of an IPv6 client is the client's.
func TestFdConnIPv6(t *testing.T) {
	client, c := rawPair(t, "tcp6", "[::1]:0")
	if c.RemoteAddr().String() != client.LocalAddr().String() {
		t.Fatalf("remote %v, the client is %v", c.RemoteAddr(), client.LocalAddr())
	}
}

// Closing the listener a rawListener was made from ends Accept, as it
// does for the net package's Accept, though the duplicate stays open
// until then.
func TestRawListenerClosedDirectly(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	ws := testWatchers(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := ws.newRawListener(ln.(*net.TCPListener))
	defer rl.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := rl.Accept()
		errc <- err
	}()
	ln.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after the listener closed: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * listenerCheck):
		t.Fatal("Accept still waits after the listener closed")
	}
}

// Accepted sockets have TCP_NODELAY, whether the listening socket passed
// it on or Accept set it.
func TestRawListenerNoDelay(t *testing.T) {
	ws := testWatchers(t)
	for _, inherit := range []bool{true, false} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rl := ws.newRawListener(ln.(*net.TCPListener)).(*rawListener)
		if !rl.noDelay {
			t.Fatal("TCP_NODELAY could not be set on the listening socket")
		}
		if !inherit {
			rl.raw.Control(func(fd uintptr) { rawSetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 0) })
			rl.noDelay = false
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		ac, err := rl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if v, err := unix.GetsockoptInt(int(ac.(*fdConn).fd), unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
			t.Errorf("inherited %v: TCP_NODELAY on the accepted socket is %d (%v), want set", inherit, v, err)
		}
		ac.Close()
		c.Close()
		rl.Close()
	}
}

// Serve accepts a plain TCP listener's clients as fdConns: from accept to
// relay, a connection stays out of the net package.
func TestServeAcceptsOutsideTheNetPackage(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}}
	c := dial(t, startProxy(t, p))
	connect := connectPacket(t, packets.ProtocolV311, "good")
	c.Write(connect)
	rec.WaitReceived(t, 0, len(connect))
	p.mu.Lock()
	var clients []net.Conn
	for s := range p.sessions {
		clients = append(clients, s.client)
	}
	p.mu.Unlock()
	if len(clients) != 1 {
		t.Fatalf("%d sessions, want 1", len(clients))
	}
	if _, ok := clients[0].(*fdConn); !ok {
		t.Errorf("the client is a %T, want an *fdConn", clients[0])
	}
}

// unlimitedOwner lets a connectReader hold all it reads, and says when
// it is resumed.
type unlimitedOwner chan struct{}

func (unlimitedOwner) hold(int) bool { return true }
func (o unlimitedOwner) resume()     { o <- struct{}{} }

// readBareConnect reads a CONNECT from c, a bare socket, with a
// connectReader, waiting for each resume when it has to.
func readBareConnect(t *testing.T, c net.Conn) (*packets.Connect, []byte, error) {
	t.Helper()
	resumed := make(unlimitedOwner, 1)
	r := &connectReader{conn: c, owner: resumed}
	for {
		pk, past, err := r.read()
		if !errors.Is(err, errWaiting) {
			return pk, past, err
		}
		select {
		case <-resumed:
		case <-time.After(proxytest.DefaultTimeout):
			t.Fatal("the reader was not resumed")
		}
	}
}

// A connectReader takes a CONNECT from a bare socket in one read when it
// has arrived, and returns what came after it in that read; a CONNECT
// larger than the read-ahead is read to its end and no further, and one
// that arrives in pieces is waited for without a goroutine.
func TestReadConnectAhead(t *testing.T) {
	long := make([]byte, 3*connectReadAhead)
	for i := range long {
		long[i] = 'x'
	}
	small := connectPacket(t, packets.ProtocolV311, "good")
	large := connectPacket(t, packets.ProtocolV311, string(long))
	publish := publishPacket("after")
	cases := []struct {
		name       string
		writes     [][]byte
		connect    []byte
		wantPast   []byte
		wantUnread []byte // still in the socket after readConnect
	}{
		{name: "CONNECT alone", writes: [][]byte{small}, connect: small},
		{name: "PUBLISH in the same read", writes: [][]byte{append(append([]byte(nil), small...), publish...)}, connect: small, wantPast: publish},
		{name: "larger than the read-ahead", writes: [][]byte{append(append([]byte(nil), large...), publish...)}, connect: large, wantUnread: publish},
		{name: "in pieces", writes: [][]byte{small[:3], small[3:20], small[20:]}, connect: small},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, c := rawPair(t, "tcp", "127.0.0.1:0")
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			go func() {
				for _, w := range tc.writes {
					client.Write(w)
				}
			}()
			pk, past, err := readBareConnect(t, c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pk.Raw, tc.connect) {
				t.Errorf("CONNECT of %d bytes, want %d", len(pk.Raw), len(tc.connect))
			}
			if !bytes.Equal(past, tc.wantPast) {
				t.Errorf("read past the CONNECT %x, want %x", past, tc.wantPast)
			}
			if len(tc.wantUnread) > 0 {
				unread := make([]byte, len(tc.wantUnread))
				if _, err := io.ReadFull(c, unread); err != nil || !bytes.Equal(unread, tc.wantUnread) {
					t.Errorf("socket then held %x (%v), want %x", unread, err, tc.wantUnread)
				}
			}
		})
	}
	b := readAheads.Get().(*[connectReadAhead]byte)
	defer readAheads.Put(b)
	if bytes.Contains(b[:], []byte("good")) {
		t.Error("a pooled buffer kept the token")
	}
}

// A refusal's CONNACK, written with lastWrite, leaves with the FIN in one
// segment; written plainly, it takes a segment of its own. Either way the
// client reads the whole CONNACK, then EOF.
func TestFdConnLastWriteSendsWithFIN(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	var connack bytes.Buffer
	if err := packets.WriteConnack(&connack, 4, packets.NotAuthorized); err != nil {
		t.Fatal(err)
	}
	segmentsOut := func(held bool) uint32 {
		client, c := rawPair(t, "tcp", "127.0.0.1:0")
		w := io.Writer(c)
		if held {
			w = c.lastWrite()
		}
		if _, err := w.Write(connack.Bytes()); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		info, err := unix.GetsockoptTCPInfo(int(c.fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(client)
		if err != nil || !bytes.Equal(got, connack.Bytes()) {
			t.Fatalf("held %v: the client read % x, %v; want % x then EOF", held, got, err, connack.Bytes())
		}
		return info.Segs_out
	}
	plain, held := segmentsOut(false), segmentsOut(true)
	if held != plain-1 {
		t.Fatalf("segments sent: %d with lastWrite, %d with Write; want one fewer", held, plain)
	}
}
