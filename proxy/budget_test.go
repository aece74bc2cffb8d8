package proxy

// Two ways past limits.max_pending_connect_bytes found in review: the
// record crypto/tls buffers for a pending TLS client, and the decoded
// user properties of a CONNECT whose token is being checked.

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.golang/packets"
	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// TestPendingBytesCountTLSRecords measures what pending TLS clients hold
// beyond the budget: each sends all but the last byte of a 16 KiB record,
// which crypto/tls buffers whole. Every pending TLS client is counted for
// configs.PendingTLSRecordBytes, so that the budget evicts all but as many
// as fit, and the record buffers of those that stay are within what they
// are counted for.
func TestPendingBytesCountTLSRecords(t *testing.T) {
	const clients, budget = 300, 2 << 20
	rec := proxytest.NewRecorder(t, "")
	p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}, Limits: Limits{MaxPendingConnectBytes: budget, ConnectTimeout: time.Minute}}
	pki := newTestPKI(t, "budget")
	c, k := pki.issue(t, "127.0.0.1", true)
	certs, err := transport.NewCertReloader(transport.TLSFiles{CertFile: c, KeyFile: k}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	serveOn(t, p, transport.NewTLSListener(ln, certs.Config()))
	open := func(record bool) []net.Conn {
		var conns []net.Conn
		for range clients {
			raw := dial(t, ln.Addr().String())
			tc := tls.Client(raw, pki.clientConfig(t, ""))
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			if record {
				if _, err := raw.Write(append([]byte{0x17, 0x03, 0x03, 0x40, 0x00}, make([]byte, 16_000)...)); err != nil {
					t.Fatal(err)
				}
			}
			conns = append(conns, raw)
		}
		return conns
	}
	// pending counts the sessions not evicted.
	pending := func() (n int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		for s := range p.sessions {
			if s.connect != nil && !s.aborted {
				n++
			}
		}
		return n
	}
	closeAll := func(conns []net.Conn) {
		for _, c := range conns {
			c.Close()
		}
		waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.sessions) == 0 })
	}
	// The proxy gives no sign of having read a record's bytes: a second
	// lets it read those of the last clients.
	base := settledHeap()
	idle := open(false)
	time.Sleep(time.Second)
	idleGrowth, idlePending := liveHeap()-base, pending()
	closeAll(idle)
	base = settledHeap()
	records := open(true)
	time.Sleep(time.Second)
	recordGrowth, recordPending := liveHeap()-base, pending()
	p.mu.Lock()
	held := p.heldBytes
	p.mu.Unlock()
	closeAll(records)
	t.Logf("%d TLS clients: idle, %d KiB with %d pending; with 16,000 bytes of a record each, %d KiB with %d pending; counted in the budget: %d bytes (budget %d)",
		clients, idleGrowth>>10, idlePending, recordGrowth>>10, recordPending, held, budget)
	// The heap moves by some KiB of its own (the runtime's, the test's).
	const noise = 64 << 10
	beyond := int(recordGrowth) - int(idleGrowth)
	if beyond > budget+noise {
		t.Errorf("trickled TLS records hold %d KiB beyond the idle cost, over the %d KiB budget", beyond>>10, budget>>10)
	}
	if recordPending != idlePending || recordPending == 0 {
		t.Fatalf("%d pending with records, %d idle: want as many, and some", recordPending, idlePending)
	}
	if perClient := (beyond - noise) / recordPending; perClient > configs.PendingTLSRecordBytes {
		t.Errorf("a pending TLS client's record holds %d bytes, over the %d it is counted for", perClient, configs.PendingTLSRecordBytes)
	}
}

// TestPendingTLSRecordCharged: a connection whose TLS the proxy
// terminates is counted a record's buffer from accept, before its
// handshake, on a TLS listener and under a WebSocket one (wss) alike, and
// no longer once its CONNECT is decided or it ends; a plain TCP one is
// not.
func TestPendingTLSRecordCharged(t *testing.T) {
	pki := newTestPKI(t, "budget")
	c, k := pki.issue(t, "127.0.0.1", true)
	certs, err := transport.NewCertReloader(transport.TLSFiles{CertFile: c, KeyFile: k}, nil)
	if err != nil {
		t.Fatal(err)
	}
	held := func(p *Proxy) (bytes, sessions int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.heldBytes, len(p.sessions)
	}
	// A bare socket of the epoll engine is read only once bytes are
	// queued; the portable engine's connections block in a read, whose
	// first buffer (a CONNECT's least size) is counted before it.
	bareCharge := 0
	if defaultRelay == RelayPortable {
		bareCharge = packets.MinConnectSize
	}
	for _, tc := range []struct {
		name    string
		wrap    func(p *Proxy, ln net.Listener) net.Listener
		charged int
	}{
		{"tcp", func(_ *Proxy, ln net.Listener) net.Listener { return ln }, bareCharge},
		{"tls", func(_ *Proxy, ln net.Listener) net.Listener { return transport.NewTLSListener(ln, certs.Config()) }, configs.PendingTLSRecordBytes},
		{"wss", func(p *Proxy, ln net.Listener) net.Listener {
			return (&transport.WebSocketListener{Listener: transport.NewTLSListener(ln, certs.Config()), HandshakeTimeout: testHeaderTimeout}).Start()
		}, configs.PendingTLSRecordBytes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Proxy{Upstream: proxytest.ClosedAddr(t), Verifier: passwordVerifier{}}
			ln := listen(t)
			serveOn(t, p, tc.wrap(p, ln))
			waitServing(t, p)
			conn := dial(t, ln.Addr().String())
			// The portable engine's read buffer is counted once its
			// goroutine reads, after the session is listed: the count is
			// awaited, and a wrong one is a timeout.
			waitFor(t, func() bool { n, sessions := held(p); return sessions == 1 && n == tc.charged })
			conn.Close()
			waitFor(t, func() bool { n, sessions := held(p); return n == 0 && sessions == 0 })
		})
	}
	t.Run("decided", func(t *testing.T) {
		rec := proxytest.NewRecorder(t, "")
		p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}}
		ln := listen(t)
		serveOn(t, p, transport.NewTLSListener(ln, certs.Config()))
		tc, err := tls.Dial("tcp", ln.Addr().String(), pki.clientConfig(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		connect := connectAs(t, packets.ProtocolV311, "dev", "good")
		if _, err := tc.Write(connect); err != nil {
			t.Fatal(err)
		}
		rec.WaitReceived(t, 0, len(connect))
		if n, sessions := held(p); n != 0 || sessions != 1 {
			t.Errorf("an accepted TLS client relayed: %d bytes counted, %d sessions; want 0 and 1", n, sessions)
		}
	})
}

// liveHeap is the bytes of live objects after a collection: finer than
// heapInUse, which counts whole spans.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// settledHeap is liveHeap once it has stopped moving by more than 16 KiB
// from one collection to the next (for at most 2 s): what the tests
// before left is freed by goroutines of theirs that end meanwhile, and a
// base taken while it is would make the growth after it look smaller.
func settledHeap() uint64 {
	heap := liveHeap()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		next := liveHeap()
		if max(next, heap)-min(next, heap) < 16<<10 {
			return next
		}
		heap = next
	}
	return heap
}

// TestPendingBytesCountDecodedProperties: CONNECTs of empty user
// properties, waiting for a JWKS fetch, hold their decoded properties
// beside their bytes, several times as much: what they hold is counted,
// and the heap they take stays within the budget.
func TestPendingBytesCountDecodedProperties(t *testing.T) {
	hang := make(chan struct{})
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(keys.Close)
	t.Cleanup(func() { close(hang) })
	chain := jwtChain(t, configs.Authenticator{Name: "jwks", Mechanism: "jwt", UseJWKS: true, Endpoint: keys.URL,
		MinRefreshInterval: configs.Duration(time.Millisecond)})
	// Each CONNECT is 250 KB, about 2 MB decoded: one fits the budget.
	const budget, clients, props = 5 << 19, 3, 50_000
	o := startObserved(t, &Proxy{Upstream: proxytest.ClosedAddr(t), Verifier: chain,
		Limits: Limits{MaxPendingConnectBytes: budget, ConnectTimeout: time.Minute}})
	token := signJWT(t, jwa.ES256, keyPair(t, "p256"), "k1", "dev")
	users := make([]paho.User, props)
	pk, err := (&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, CleanStart: true, ClientID: "dev",
		Properties:   &paho.Properties{User: users},
		UsernameFlag: true, Username: "u", PasswordFlag: true, Password: []byte(token)}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	users = nil
	base := heapInUse()
	var closed atomic.Int64 // clients the proxy closed: evicted
	for range clients {
		c := dial(t, o.addr)
		if _, err := c.Write(pk); err != nil {
			t.Fatal(err)
		}
		go func() {
			io.Copy(io.Discard, c)
			closed.Add(1)
		}()
	}
	// Each client is either evicted, and its session gone, or waits for
	// the keys with its CONNECT held whole and, decoded, counted. The code
	// before the decoded CONNECT was counted never gets there: its heap
	// is measured once the CONNECTs have had 8 s to decode, before the
	// keys' fetch gives up (10 s).
	decoded := func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		waiting := 0
		for s := range o.sessions {
			if s.connect == nil || s.connect.charged <= len(pk) || s.aborted {
				return false
			}
			waiting++
		}
		return waiting+int(closed.Load()) == clients
	}
	waited := time.Now()
	for deadline := waited.Add(8 * time.Second); !decoded() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	o.mu.Lock()
	held := o.heldBytes
	o.mu.Unlock()
	grown := heapInUse() - base
	t.Logf("%d clients of %d bytes (%d user properties each), budget %d: %d evicted, counted %d bytes held after %v, heap grew %d KiB",
		clients, len(pk), props, budget, closed.Load(), held, time.Since(waited).Round(time.Millisecond), grown>>10)
	if grown > budget {
		t.Errorf("heap grew by %d KiB while the budget is %d KiB", grown>>10, budget>>10)
	}
	// What the heap holds besides the pending CONNECTs (the sessions,
	// logs, the keys' fetch) is well under 1 MiB.
	if grown > uint64(held)+1<<20 {
		t.Errorf("heap grew by %d KiB, but %d KiB are counted as held", grown>>10, held>>10)
	}
}
