package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// settledPipes counts pipes once the runtime's splice pipe pool has been
// emptied: pooled pipes are closed by finalizers after two GCs. There is
// no signal for finalizers having run, so it polls for a short while.
func settledPipes(t *testing.T) int {
	t.Helper()
	n, same := openPipes(t), 0
	for same < 5 {
		runtime.GC()
		time.Sleep(2 * time.Millisecond)
		m := openPipes(t)
		if m == n {
			same++
		} else {
			same = 0
		}
		n = m
	}
	return n
}

// openPipes counts the pipe descriptors this process holds.
func openPipes(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	pipes := 0
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, "pipe:") {
			pipes++
		}
	}
	return pipes
}

// TestIdleConnectionsHoldNoPipe: with io.Copy, 100 idle spliced
// connections would hold 400 pipe descriptors; the epoll relay holds none
// once the runtime's splice pool has let go of the pipes it caches.
func TestIdleConnectionsHoldNoPipe(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	addr := startProxy(t, &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}})

	connect := connectPacket(t, packets.ProtocolV311, "good")
	publish := publishPacket(strings.Repeat("x", 100))
	open := func(from, to int) {
		for i := from; i < to; i++ {
			c := dial(t, addr)
			c.Write(connect)
			c.Write(publish) // traffic after the CONNECT goes through the burst copy
			rec.WaitReceived(t, i, len(connect)+len(publish))
		}
	}
	before := settledPipes(t) // the test binary's own stdout and stderr are pipes
	open(0, 100)
	if held := settledPipes(t) - before; held != 0 {
		t.Errorf("100 idle proxied connections hold %d pipes, want 0 (io.Copy would hold 400)", held)
	}
	for i, got := range rec.Received() {
		if want := string(connect) + string(publish); string(got) != want {
			t.Fatalf("connection %d: upstream got %d bytes, want exactly the client's %d", i, len(got), len(want))
		}
	}
}

// TestRelayBulkBothWays: megabytes each way at once arrive intact and in
// order, through many bursts and re-arms of the epoll relay, and the
// upstream's half-close reaches the client after the last byte.
func TestRelayBulkBothWays(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	const size = 8 << 20
	toClient := make([]byte, size)
	rand.Read(toClient)
	connect := connectPacket(t, packets.ProtocolV311, "good")
	brokerGot := make(chan []byte, 1)
	up := startBroker(t, func(c net.Conn) {
		sent := make(chan struct{})
		go func() { c.Write(toClient); c.(*net.TCPConn).CloseWrite(); close(sent) }()
		b, _ := io.ReadAll(c)
		<-sent
		brokerGot <- b
	})
	addr := startProxy(t, &Proxy{Upstream: up, Verifier: passwordVerifier{}})

	c := dial(t, addr)
	fromClient := make([]byte, size)
	rand.Read(fromClient)
	go func() {
		c.Write(connect)
		c.Write(fromClient)
		c.(*net.TCPConn).CloseWrite()
	}()
	got := readAll(t, c)
	if !bytes.Equal(got, toClient) {
		t.Errorf("client got %d bytes, want the broker's %d intact", len(got), len(toClient))
	}
	if b := <-brokerGot; !bytes.Equal(b, append(connect, fromClient...)) {
		t.Errorf("broker got %d bytes, want the client's %d intact", len(b), len(connect)+size)
	}
}

// testWatchers starts epoll watchers that stop when the test ends.
func testWatchers(t *testing.T) *watchers {
	t.Helper()
	ws, err := newWatchers()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ws.stop)
	return ws
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d.(*net.TCPConn), a.(*net.TCPConn)
}

// TestRelayCarriesWhatTheDestinationCannotTake: with the broker's side
// full, the watcher has read bytes it cannot write; a goroutine carries
// them until the broker reads again, while the client goes on sending.
// Everything arrives intact and in order, and done reports the counts.
func TestRelayCarriesWhatTheDestinationCannotTake(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	client, proxyClient := tcpPair(t)
	proxyUp, broker := tcpPair(t)
	// Fill the proxy's send buffer and the broker's receive buffer: a
	// write that cannot finish within the deadline has filled them.
	filler := make([]byte, 1<<20)
	var filled int
	proxyUp.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		n, err := proxyUp.Write(filler)
		filled += n
		if err != nil {
			break
		}
	}
	proxyUp.SetWriteDeadline(time.Time{})

	ws := testWatchers(t)
	type counts struct{ from, to int64 }
	done := make(chan counts, 1)
	// The half-close bound is long: after the client's FIN the broker
	// still reads megabytes from its socket buffers before it answers,
	// which under -race on a busy machine has taken more than a second.
	r, ok := ws.startRelay(proxyClient, proxyUp, time.Minute, func(from, to int64) {
		// As the proxy does: the sockets close after done, and the last
		// FIN goes with the close.
		proxyClient.Close()
		proxyUp.Close()
		done <- counts{from, to}
	})
	if !ok {
		t.Fatal("startRelay did not take two TCP connections")
	}

	// Small writes, one at a time, each well under the watcher's buffer,
	// go the watcher's way rather than splice's, until one cannot be
	// written on. No event says when the watcher is done with a write,
	// so this polls.
	sent := make([]byte, 4<<20)
	rand.Read(sent)
	next := 0
	deadline := time.Now().Add(10 * time.Second)
	for moving := false; !moving; {
		if next == len(sent) {
			t.Fatalf("%d bytes went through with the broker not reading", next)
		}
		if _, err := client.Write(sent[next : next+1000]); err != nil {
			t.Fatal(err)
		}
		next += 1000
		for {
			r.mu.Lock()
			moving = r.flows[0].state == flowMoving
			through := r.flows[0].n
			r.mu.Unlock()
			if moving || through == int64(next) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the watcher neither wrote nor handed over a small write")
			}
			runtime.Gosched()
		}
	}
	// The rest arrives while the goroutine waits.
	go func() {
		for b := sent[next:]; len(b) > 0; b = b[min(len(b), 1000):] {
			if _, err := client.Write(b[:min(len(b), 1000)]); err != nil {
				return
			}
		}
		client.CloseWrite()
	}()
	got, err := io.ReadAll(broker)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != filled+len(sent) || !bytes.Equal(got[filled:], sent) {
		t.Fatalf("broker got %d bytes, want %d of filler and then the client's %d intact", len(got), filled, len(sent))
	}
	broker.Write([]byte("bye"))
	broker.Close()
	if back := readAll(t, client); string(back) != "bye" {
		t.Errorf("client got %q, want %q", back, "bye")
	}
	if c := <-done; c != (counts{int64(len(sent)), 3}) {
		t.Errorf("done reported %+v, want {from:%d to:3}", c, len(sent))
	}
}

// TestDialRelayWaitsForTheBroker: a first write larger than the socket
// buffers makes the relay's own dial wait for the broker through the
// watcher; it arrives intact once the broker reads, and the relay then
// carries both ways.
func TestDialRelayWaitsForTheBroker(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	first := make([]byte, 32<<20)
	rand.Read(first)
	startReading := make(chan struct{})
	brokerGot := make(chan []byte, 1)
	addr := netip.MustParseAddrPort(startBroker(t, func(c net.Conn) {
		<-startReading
		b := make([]byte, len(first))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Error(err)
		}
		brokerGot <- b
		c.Write([]byte("connack"))
		io.Copy(io.Discard, c)
	}))
	client, proxyClient := tcpPair(t)
	ws := testWatchers(t)
	cfd, ok := socketOf(proxyClient)
	if !ok {
		t.Fatal("no descriptor")
	}
	done := make(chan int64, 1)
	r := ws.pick().newRelay(cfd, time.Second, func(from, to int64) { proxyClient.Close(); done <- to })
	dialed := make(chan error, 1)
	go func() { dialed <- r.dial(addr, first, time.Now().Add(time.Minute)) }()
	// The broker reads only once the dial waits on the watcher: no event
	// says so, so this polls.
	for waiting := false; !waiting; runtime.Gosched() {
		r.mu.Lock()
		waiting = r.flows[1].watchOut
		r.mu.Unlock()
		select {
		case err := <-dialed:
			t.Fatalf("dial returned %v before the broker read anything", err)
		default:
		}
	}
	close(startReading)
	if err := <-dialed; err != nil {
		t.Fatal(err)
	}
	if got := <-brokerGot; !bytes.Equal(got, first) {
		t.Fatal("the broker did not get the first bytes intact")
	}
	if err := r.start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("connack"))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "connack" {
		t.Fatalf("client read %q, %v; want the broker's answer", buf, err)
	}
	client.Close()
	if to := <-done; to != int64(len("connack")) {
		t.Errorf("done reported %d bytes to the client, want %d", to, len("connack"))
	}
}

// TestDialRelayFailures: a refused address is skipped for the next one; a
// broker that does not read fails the dial at its deadline, and the
// relay's socket is closed.
func TestDialRelayFailures(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	ws := testWatchers(t)

	refusedLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := refusedLn.Addr().(*net.TCPAddr).AddrPort()
	refusedLn.Close()

	if _, err := ws.dialRelay([]netip.AddrPort{refused}, []byte("x"), time.Now().Add(5*time.Second), time.Second, nil); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial to a closed port: %v, want connection refused", err)
	}

	got := make(chan string, 1)
	open := netip.MustParseAddrPort(startBroker(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got <- string(b)
	}))
	r, err := ws.dialRelay([]netip.AddrPort{refused, open}, []byte("hello"), time.Now().Add(5*time.Second), time.Second, nil)
	if err != nil {
		t.Fatalf("dial with a refused address first: %v, want the next address", err)
	}
	r.cancel() // closes the relay's socket: the broker reads EOF
	if s := <-got; s != "hello" {
		t.Errorf("broker got %q, want %q", s, "hello")
	}

	drained := make(chan error, 1)
	stalled := make(chan struct{})
	silent := netip.MustParseAddrPort(startBroker(t, func(c net.Conn) {
		<-stalled
		_, err := io.Copy(io.Discard, c)
		drained <- err
	}))
	_, err = ws.dialRelay([]netip.AddrPort{silent}, make([]byte, 32<<20), time.Now().Add(100*time.Millisecond), time.Second, nil)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("dial to a broker that does not read: %v, want the deadline exceeded", err)
	}
	close(stalled)
	if err := <-drained; err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("broker read %v after the failed dial, want EOF or a reset: the socket was closed", err)
	}
}

// TestUpstreamByName: a broker named by host name is resolved at each
// dial, and every address is tried in turn (localhost may come first as
// ::1, where nothing listens).
func TestUpstreamByName(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	_, port, _ := net.SplitHostPort(rec.Addr)
	addr := startProxy(t, &Proxy{Upstream: net.JoinHostPort("localhost", port), Verifier: passwordVerifier{}})
	connect := connectPacket(t, packets.ProtocolV311, "good")
	c := dial(t, addr)
	c.Write(connect)
	rec.WaitReceived(t, 0, len(connect))
	if got := rec.Received()[0]; !bytes.Equal(got, connect) {
		t.Errorf("broker got %q, want the CONNECT", got)
	}
}

// TestRelayAbortWakesAWaitingFlow: a flow whose goroutine waits for a
// destination that does not read ends when the relay is aborted (token
// expiry, Close): done is called and both peers see the connection end.
func TestRelayAbortWakesAWaitingFlow(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	client, proxyClient := tcpPair(t)
	proxyUp, broker := tcpPair(t)
	ws := testWatchers(t)
	done := make(chan struct{})
	r, ok := ws.startRelay(proxyClient, proxyUp, time.Minute, func(int64, int64) {
		proxyClient.Close()
		proxyUp.Close()
		close(done)
	})
	if !ok {
		t.Fatal("startRelay did not take two TCP connections")
	}
	// The broker does not read: the client's bytes pile up until a flow
	// goroutine waits for the broker's side to drain.
	go func() {
		b := make([]byte, 64<<10)
		for {
			if _, err := client.Write(b); err != nil {
				return
			}
		}
	}()
	for waiting := false; !waiting; runtime.Gosched() {
		r.mu.Lock()
		waiting = r.flows[0].state == flowMoving && r.flows[0].writable != nil
		r.mu.Unlock()
	}
	r.abort()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("done was not called after abort with a flow waiting for the broker")
	}
	if _, err := io.Copy(io.Discard, broker); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("broker: %v, want the connection to end", err)
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, client); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client: %v, want the connection to end", err)
	}
}

// TestDialRelayIPv6: the relay's own socket reaches a broker on an IPv6
// address.
func TestDialRelayIPv6(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	ws := testWatchers(t)
	r, err := ws.dialRelay([]netip.AddrPort{ln.Addr().(*net.TCPAddr).AddrPort()}, []byte("hello"), time.Now().Add(5*time.Second), time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.cancel()
	if s := <-got; s != "hello" {
		t.Errorf("broker got %q, want %q", s, "hello")
	}
}

// TestWatchersPickPastTheCounterSign: the round robin over the watchers
// goes on where its counter passes 2^31 (the sign of a 32-bit int) and
// 2^32 (where it wraps): a proxy on 32-bit Linux gets there after about a
// billion connections.
func TestWatchersPickPastTheCounterSign(t *testing.T) {
	ws := &watchers{all: []*watcher{{}, {}, {}}}
	index := func(w *watcher) int {
		for i, x := range ws.all {
			if x == w {
				return i
			}
		}
		return -1
	}
	for _, start := range []uint32{1<<31 - 4, math.MaxUint32 - 4} {
		ws.next.Store(start)
		for n := range 8 {
			want := int((uint64(start) + uint64(n) + 1) % (1 << 32) % uint64(len(ws.all)))
			if got := index(ws.pick()); got != want {
				t.Errorf("pick %d after %d: watcher %d, want %d", n+1, start, got, want)
			}
		}
	}
}
