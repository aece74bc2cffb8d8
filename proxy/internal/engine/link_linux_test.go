package engine

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
	"syscall"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

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

// testEpoll starts an epoll engine that stops when the test ends.
func testEpoll(t *testing.T) *epoll {
	t.Helper()
	return &epoll{ws: testWatchers(t)}
}

// TestRelayCarriesWhatTheDestinationCannotTake: with the broker's side
// full, the watcher has read bytes it cannot write; a goroutine carries
// them until the broker reads again, while the client goes on sending.
// Everything arrives intact and in order, and done reports the counts.
func TestRelayCarriesWhatTheDestinationCannotTake(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	client, proxyClient := tcpConns(t)
	proxyUp, broker := tcpConns(t)
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

	e := testEpoll(t)
	type counts struct{ from, to int64 }
	done := make(chan counts, 1)
	// The half-close bound is long: after the client's FIN the broker
	// still reads megabytes from its socket buffers before it answers,
	// which under -race on a busy machine has taken more than a second.
	l, ok := e.Join(proxyClient, proxyUp, Options{HalfClose: time.Minute, Done: func(from, to int64) {
		done <- counts{from, to}
	}}).(*epollLink)
	if !ok {
		t.Fatal("Join did not take two TCP connections over")
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
			l.mu.Lock()
			moving = l.flows[0].state == flowMoving
			through := l.flows[0].n
			l.mu.Unlock()
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
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if back, err := io.ReadAll(client); err != nil || string(back) != "bye" {
		t.Errorf("client got %q, want %q", back, "bye")
	}
	if c := <-done; c != (counts{int64(len(sent)), 3}) {
		t.Errorf("done reported %+v, want {from:%d to:3}", c, len(sent))
	}
}

// TestDialWaitsForTheBroker: a first write larger than the socket
// buffers makes the engine's own dial wait for the broker through the
// watcher; it arrives intact once the broker reads, and the link then
// carries both ways.
func TestDialWaitsForTheBroker(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	first := make([]byte, 32<<20)
	rand.Read(first)
	startReading := make(chan struct{})
	brokerGot := make(chan []byte, 1)
	addr := netip.MustParseAddrPort(proxytest.ServeTCP(t, func(c net.Conn) {
		<-startReading
		b := make([]byte, len(first))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Error(err)
		}
		brokerGot <- b
		c.Write([]byte("connack"))
		io.Copy(io.Discard, c)
	}))
	client, proxyClient := tcpConns(t)
	e := testEpoll(t)
	type dialed struct {
		c   net.Conn
		err error
	}
	dialing := make(chan dialed, 1)
	go func() {
		c, err := e.Dial([]netip.AddrPort{addr}, first, time.Now().Add(time.Minute))
		dialing <- dialed{c, err}
	}()
	// The broker reads only once the dial waits on a watcher: no event
	// says so, so this polls.
	for !waitingInWatcher(e.ws) {
		select {
		case d := <-dialing:
			t.Fatalf("dial returned %v before the broker read anything", d.err)
		default:
			runtime.Gosched()
		}
	}
	close(startReading)
	d := <-dialing
	if d.err != nil {
		t.Fatal(d.err)
	}
	if got := <-brokerGot; !bytes.Equal(got, first) {
		t.Fatal("the broker did not get the first bytes intact")
	}
	done := make(chan int64, 1)
	e.Join(proxyClient, d.c, Options{HalfClose: time.Second, Done: func(from, to int64) { done <- to }})
	buf := make([]byte, len("connack"))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "connack" {
		t.Fatalf("client read %q, %v; want the broker's answer", buf, err)
	}
	client.Close()
	if to := <-done; to != int64(len("connack")) {
		t.Errorf("done reported %d bytes to the client, want %d", to, len("connack"))
	}
}

// waitingInWatcher reports whether an fdConn waits in one of ws.
func waitingInWatcher(ws *watchers) bool {
	for _, w := range ws.all {
		w.mu.Lock()
		for _, h := range w.handlers {
			if _, ok := h.(*fdConn); ok {
				w.mu.Unlock()
				return true
			}
		}
		w.mu.Unlock()
	}
	return false
}

// TestDialFailures: a refused address is skipped for the next one; a
// broker that does not read fails the dial at its deadline, and the
// engine's socket is closed.
func TestDialFailures(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	e := testEpoll(t)

	refusedLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := refusedLn.Addr().(*net.TCPAddr).AddrPort()
	refusedLn.Close()

	if _, err := e.Dial([]netip.AddrPort{refused}, []byte("x"), time.Now().Add(5*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial to a closed port: %v, want connection refused", err)
	}

	got := make(chan string, 1)
	open := netip.MustParseAddrPort(proxytest.ServeTCP(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got <- string(b)
	}))
	c, err := e.Dial([]netip.AddrPort{refused, open}, []byte("hello"), time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatalf("dial with a refused address first: %v, want the next address", err)
	}
	c.Close() // the broker reads EOF
	if s := <-got; s != "hello" {
		t.Errorf("broker got %q, want %q", s, "hello")
	}

	drained := make(chan error, 1)
	stalled := make(chan struct{})
	silent := netip.MustParseAddrPort(proxytest.ServeTCP(t, func(c net.Conn) {
		<-stalled
		_, err := io.Copy(io.Discard, c)
		drained <- err
	}))
	_, err = e.Dial([]netip.AddrPort{silent}, make([]byte, 32<<20), time.Now().Add(100*time.Millisecond))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("dial to a broker that does not read: %v, want the deadline exceeded", err)
	}
	close(stalled)
	if err := <-drained; err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("broker read %v after the failed dial, want EOF or a reset: the socket was closed", err)
	}
}

// TestAbortWakesAWaitingFlow: a flow whose goroutine waits for a
// destination that does not read ends when the link is aborted (token
// expiry, Close): done is called and both peers see the connection end.
func TestAbortWakesAWaitingFlow(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	client, proxyClient := tcpConns(t)
	proxyUp, broker := tcpConns(t)
	e := testEpoll(t)
	done := make(chan struct{})
	r, ok := e.Join(proxyClient, proxyUp, Options{HalfClose: time.Minute, Done: func(int64, int64) { close(done) }}).(*epollLink)
	if !ok {
		t.Fatal("Join did not take two TCP connections over")
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
		waiting = r.flows[0].state == flowMoving && r.writable(0) != nil
		r.mu.Unlock()
	}
	r.Abort()
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

// TestDialIPv6: the engine's own socket reaches a broker on an IPv6
// address.
func TestDialIPv6(t *testing.T) {
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
	e := testEpoll(t)
	c, err := e.Dial([]netip.AddrPort{ln.Addr().(*net.TCPAddr).AddrPort()}, []byte("hello"), time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
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
