package proxy

import (
	"os"
	"strings"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

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
// connections would hold 400 pipe descriptors. With copyBursts the only
// pipes are the few the runtime's splice pool caches between bursts.
func TestIdleConnectionsHoldNoPipe(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	addr := startProxy(t, &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}})
	before := openPipes(t)

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
	open(0, 50)
	at50 := openPipes(t) - before
	open(50, 100)
	at100 := openPipes(t) - before
	t.Logf("pipes held: %d with 50 idle connections, %d with 100", at50, at100)
	// The pool's size follows GC timing, not the connections: bound it well
	// below one pipe pair per connection.
	if at100 >= 50 {
		t.Errorf("pipes grow with idle connections: %d at 50, %d at 100 (io.Copy would hold 400)", at50, at100)
	}
	for i, got := range rec.Received() {
		if want := string(connect) + string(publish); string(got) != want {
			t.Fatalf("connection %d: upstream got %d bytes, want exactly the client's %d", i, len(got), len(want))
		}
	}
}
