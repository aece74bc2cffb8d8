package proxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
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
// connections would hold 400 pipe descriptors; either engine holds none
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
// order, through many bursts and re-arms of the engine, and the
// upstream's half-close reaches the client after the last byte.
func TestRelayBulkBothWays(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	const size = 8 << 20
	toClient := make([]byte, size)
	rand.Read(toClient)
	connect := connectPacket(t, packets.ProtocolV311, "good")
	brokerGot := make(chan []byte, 1)
	up := proxytest.ServeTCP(t, func(c net.Conn) {
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
