package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// dialFrom connects to addr from the loopback address src (127.0.0.0/8
// is all local on Linux), so tests can stand in for different client IPs.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedAtAccept reports whether the proxy closed c without a byte. It
// waits for the close up to proxytest.DefaultTimeout: call it where the
// close is expected, and stillOpen where it is not.
func closedAtAccept(t *testing.T, c net.Conn) bool {
	t.Helper()
	return closedWithin(t, c, proxytest.DefaultTimeout)
}

// stillOpen reports whether c, just accepted, is still open a moment
// later, without a byte from the proxy: waiting for a CONNECT.
func stillOpen(t *testing.T, c net.Conn) bool {
	t.Helper()
	return !closedWithin(t, c, 200*time.Millisecond)
}

// closedWithin reports whether the proxy closes c without a byte within
// wait.
func closedWithin(t *testing.T, c net.Conn, wait time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	n, err := c.Read(make([]byte, 1))
	if n == 0 && (err == io.EOF || isReset(err)) {
		return true
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false // still open, waiting for a CONNECT
	}
	t.Fatalf("read %d bytes, %v", n, err)
	return false
}

func isReset(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte("connection reset"))
}

// connectThrough sends a good CONNECT on c and waits until the upstream
// has it: the client got in.
func connectThrough(t *testing.T, c net.Conn, rec *proxytest.Recorder, conn int) {
	t.Helper()
	pk := connectPacket(t, packets.ProtocolV311, "good")
	if _, err := c.Write(pk); err != nil {
		t.Fatal(err)
	}
	rec.WaitReceived(t, conn, len(pk))
}

func TestMaxConnections(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}, Limits: Limits{MaxConnections: 2}}
	addr := startProxy(t, p)

	a, b := dial(t, addr), dial(t, addr)
	connectThrough(t, a, rec, 0) // one authenticated, one pending: both count
	if !stillOpen(t, b) {
		t.Fatal("second connection closed under a limit of 2")
	}
	if !closedAtAccept(t, dial(t, addr)) {
		t.Error("third connection was not closed at accept")
	}
	a.Close()
	rec.WaitEnded(t, 0)
	waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.sessions) == 1 })
	c := dial(t, addr) // room again once one has gone
	connectThrough(t, c, rec, 1)
}

func TestMaxListenerConnections(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	addr := startProxy(t, &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{},
		Limits: Limits{MaxListenerConnections: map[string]int{"test": 1, "other": 5}}})
	connectThrough(t, dial(t, addr), rec, 0)
	if !closedAtAccept(t, dial(t, addr)) {
		t.Error("second connection on a listener capped at 1 was not closed")
	}
}

func TestPerIPConnectRate(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	addr := startProxy(t, &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{},
		Limits: Limits{PerIPConnectRate: 0.01, PerIPConnectBurst: 2}})
	for i := range 2 {
		if !stillOpen(t, dialFrom(t, "127.0.0.2", addr)) {
			t.Fatalf("connection %d within the burst was closed", i+1)
		}
	}
	if !closedAtAccept(t, dialFrom(t, "127.0.0.2", addr)) {
		t.Error("third connection from one IP beyond its burst was not closed")
	}
	connectThrough(t, dialFrom(t, "127.0.0.3", addr), rec, 0) // another IP has its own bucket
}

// TestSlowlorisFlood: thousands of sockets that never send a byte do not
// keep a real client out; the pending cap evicts the idle ones.
func TestSlowlorisFlood(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}, Limits: Limits{MaxPendingConnects: 200}}
	addr := startProxy(t, p)

	const flood = 3000
	idle := make([]net.Conn, 0, flood)
	for range flood {
		idle = append(idle, dialFrom(t, "127.0.0.4", addr))
	}
	// The proxy accepts in order: once the last flood socket is pending,
	// the cap holds.
	waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.pending.Len() == 200 && len(p.sessions) == 200 })
	if !closedAtAccept(t, idle[0]) {
		t.Error("the oldest idle socket is still open past the pending cap")
	}
	connectThrough(t, dial(t, addr), rec, 0)
	if got := rec.Accepted(); got != 1 {
		t.Errorf("upstream saw %d connections, want the real client's only", got)
	}
}

// TestNoGrowthAfterCycles: thousands of accepted and refused connections
// leave no goroutine and no file descriptor behind.
func TestNoGrowthAfterCycles(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	up := proxytest.ServeTCP(t, func(c net.Conn) { // answers CONNACK, then waits for EOF
		if _, err := packets.ReadConnect(c, 0); err == nil {
			c.Write([]byte{0x20, 0x02, 0x00, 0x00})
			io.Copy(io.Discard, c)
		}
	})
	p := &Proxy{Upstream: up, Verifier: passwordVerifier{}}
	addr := startProxy(t, p)
	good := connectPacket(t, packets.ProtocolV311, "good")
	bad := connectPacket(t, packets.ProtocolV311, "bad_signature")

	cycle := func(n int) {
		for i := range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			pk := good
			if i%2 == 1 {
				pk = bad
			}
			c.Write(pk)
			ack := make([]byte, 4)
			if _, err := io.ReadFull(c, ack); err != nil {
				t.Fatalf("cycle %d: %v", i, err)
			}
			c.Write([]byte{0xe0, 0x00}) // DISCONNECT
			c.Close()
		}
	}
	cycle(200) // warm up pools
	idle := func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.sessions) == 0 }
	waitFor(t, idle)
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	cycle(2000)
	waitFor(t, idle)
	waitFor(t, func() bool { return runtime.NumGoroutine() <= goroutines+2 && openFDs(t) <= fds+2 })
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(entries)
}

// waitFor polls cond: it is for state with no signal to wait on, such as
// counts inside the proxy or the kernel.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 20s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPerClientIDConnectRate: authenticated connections per client ID
// are rate limited before the upstream is dialed, with CONNACK 0x9F (3 in
// MQTT 3.1.1); refused tokens and empty IDs do not count, and the ID is
// the one the broker would get.
func TestPerClientIDConnectRate(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	limits := Limits{PerClientIDConnectRate: 0.01, PerClientIDConnectBurst: 2}
	rateExceeded := map[byte][]byte{
		packets.ProtocolV311: {0x20, 0x02, 0x00, 0x03},
		packets.ProtocolV5:   {0x20, 0x03, 0x00, 0x9f, 0x00},
	}

	t.Run("client IDs", func(t *testing.T) {
		rec := proxytest.NewRecorder(t, "")
		reg := prometheus.NewRegistry()
		p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}, Limits: limits, Metrics: NewMetrics(reg, "test")}
		logs := observe(p)
		addr := startProxy(t, p)
		through := 0
		connect := func(version byte, id, password string) {
			t.Helper()
			pk := connectAs(t, version, id, password)
			if _, err := dial(t, addr).Write(pk); err != nil {
				t.Fatal(err)
			}
			rec.WaitReceived(t, through, len(pk))
			through++
		}
		refused := func(version byte, id, password string, want []byte) {
			t.Helper()
			c := dial(t, addr)
			c.Write(connectAs(t, version, id, password))
			if got := readAll(t, c); !bytes.Equal(got, want) {
				t.Errorf("%s: answered %x, want %x", id, got, want)
			}
		}
		for range 3 {
			refused(packets.ProtocolV311, "dev-1", "bad_signature", []byte{0x20, 0x02, 0x00, 0x05})
		}
		connect(packets.ProtocolV311, "dev-1", "good") // the refusals used up nothing
		connect(packets.ProtocolV5, "dev-1", "good")
		for version, want := range rateExceeded {
			refused(version, "dev-1", "good", want)
		}
		connect(packets.ProtocolV311, "dev-2", "good") // another ID has its own bucket
		for range 3 {
			connect(packets.ProtocolV311, "", "good") // the broker assigns one: not limited
		}
		if got := rec.Accepted(); got != through {
			t.Errorf("upstream saw %d connections, want %d: a limited client was dialed", got, through)
		}
		waitLog(t, logs, "connect rejected", zap.String("reason", "per_client_id_connect_rate"), zap.String("client_id", "dev-1"))
		// Counted as logged: refused, not accepted (the good token
		// notwithstanding).
		if n := gathered(t, reg, "mqtt_jwt_proxy_authentications_total", "outcome=refused", "reason=per_client_id_connect_rate"); n != 2 {
			t.Errorf("authentications_total{refused,per_client_id_connect_rate} = %v, want 2", n)
		}
		waitFor(t, func() bool { return logs.FilterMessage("authentication accepted").Len() == through })
		if n := gathered(t, reg, "mqtt_jwt_proxy_authentications_total", "outcome=accepted", "reason="); n != float64(through) {
			t.Errorf("authentications_total{accepted} = %v, want %d", n, through)
		}
	})

	t.Run("the ID the broker gets", func(t *testing.T) {
		rec := proxytest.NewRecorder(t, "")
		forward, err := NewForward(configs.Forward{ClientID: "fleet"})
		if err != nil {
			t.Fatal(err)
		}
		addr := startProxy(t, &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}, Limits: limits, Forward: forward})
		for i, id := range []string{"dev-a", "dev-b"} {
			dial(t, addr).Write(connectAs(t, packets.ProtocolV311, id, "good"))
			rec.WaitReceived(t, i, 1)
		}
		c := dial(t, addr)
		c.Write(connectAs(t, packets.ProtocolV311, "dev-c", "good"))
		if got := readAll(t, c); !bytes.Equal(got, rateExceeded[packets.ProtocolV311]) {
			t.Errorf("a third client sent upstream as \"fleet\": answered %x, want %x", got, rateExceeded[packets.ProtocolV311])
		}
	})
}

// blockingVerifier accepts every client once release is closed; entered
// gets a value as each Verify begins.
type blockingVerifier struct{ entered, release chan struct{} }

func (v blockingVerifier) Verify(_ context.Context, req authn.Request) (authn.Identity, error) {
	v.entered <- struct{}{}
	<-v.release
	return authn.Identity{Authenticator: "test", Subject: req.ClientID}, nil
}

// TestEvictedWhileVerifying: a pending connection evicted while its token
// is checked (a JWKS fetch for a new kid, say) goes no further when the
// check then accepts it. Its broker connection is never opened, and the
// descriptor it had, whose number the next accepted socket gets, is not
// joined to the broker: that socket never sent a CONNECT.
func TestEvictedWhileVerifying(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	v := blockingVerifier{entered: make(chan struct{}, 1), release: make(chan struct{})}
	core, logs := observer.New(zap.InfoLevel)
	reg := prometheus.NewRegistry()
	p := &Proxy{Upstream: rec.Addr, Verifier: v, Limits: Limits{MaxPendingConnects: 1}, Logger: zap.New(core), Metrics: NewMetrics(reg, "test")}
	addr := startProxy(t, p)

	victim := dial(t, addr)
	if _, err := victim.Write(connectAs(t, packets.ProtocolV311, "victim", "good")); err != nil {
		t.Fatal(err)
	}
	<-v.entered
	evictor := dial(t, addr)
	if !closedAtAccept(t, victim) {
		t.Fatal("the pending victim was not evicted")
	}
	taker := dial(t, addr) // evicts the evictor; the lowest free descriptor is the victim's old one
	if !closedAtAccept(t, evictor) {
		t.Fatal("the pending evictor was not evicted")
	}
	close(v.release)
	waitLog(t, logs, "connect rejected", zap.String("client_id", "victim"), zap.String("reason", limitPending))
	if n := logs.FilterMessage("authentication accepted").Len(); n != 0 {
		t.Errorf("%d clients logged as accepted, want none", n)
	}
	// Each eviction logged is counted, as the victim's is, and as the
	// evictor's will be.
	waitFor(t, func() bool {
		return gathered(t, reg, "mqtt_jwt_proxy_authentications_total", "outcome=refused", "reason="+limitPending) == 2
	})
	if !stillOpen(t, taker) {
		t.Error("the newest pending socket was closed")
	}
	if got := rec.Accepted(); got != 0 {
		t.Errorf("upstream saw %d connections, want none", got)
	}
}

// TestEvictedWhileFetchingKeys: a pending connection whose token waits
// for a JWKS fetch from an identity provider that hangs, and that is
// evicted over max_pending_connect_bytes, ends at once rather than when
// the fetch gives up: the budget stops counting its CONNECT at eviction,
// so its bytes must not stay held by a check that goes on (a flood of
// such clients would hold what it sends, over the budget, for the fetch
// timeout). Close, too, ends at once a connection whose check waits.
func TestEvictedWhileFetchingKeys(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	hang := make(chan struct{})
	keys := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(keys.Close)
	t.Cleanup(func() { close(hang) }) // first: keys.Close waits for the handlers
	chain := jwtChain(t, configs.Authenticator{Name: "jwks", Mechanism: "jwt", UseJWKS: true, Endpoint: keys.URL,
		MinRefreshInterval: configs.Duration(time.Millisecond)})
	// A fetch that fails counts; none may have failed when the clients
	// waiting for it are decided: the fetch still hangs.
	failures := func() uint64 { return chain.Status()[0].Failures }
	const budget = 64 << 10
	o := startObserved(t, &Proxy{Upstream: proxytest.ClosedAddr(t), Verifier: chain,
		Limits: Limits{MaxPendingConnectBytes: budget, ConnectTimeout: time.Minute}})
	// waiting sends a whole CONNECT and returns once the proxy has read
	// and decoded it (a bare socket's first read takes what has arrived,
	// and counts exactly that; the decoded CONNECT counts next): its
	// token is checked next.
	waiting := func(id string) net.Conn {
		connect := connectAs(t, packets.ProtocolV311, id, signJWT(t, jwa.ES256, keyPair(t, "p256"), "k1", id))
		c := dial(t, o.addr)
		if _, err := c.Write(connect); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool {
			o.mu.Lock()
			defer o.mu.Unlock()
			for s := range o.sessions {
				if s.client.RemoteAddr().String() == c.LocalAddr().String() && s.connect != nil {
					return s.connect.charged > len(connect)
				}
			}
			return false
		})
		return c
	}

	victim := waiting("victim")
	before := failures()
	evictor := dial(t, o.addr) // declares a CONNECT of 1 MB and sends more than the budget of it
	if _, err := evictor.Write(slices.Concat(fixedHeader(1_000_000), []byte("\x00\x04MQTT\x05\xc2\x00\x3c"), make([]byte, budget))); err != nil {
		t.Fatal(err)
	}
	if !closedAtAccept(t, victim) {
		t.Fatal("the victim was not evicted")
	}
	waitLog(t, o.logs, "connect rejected", zap.String("client_id", "victim"), zap.String("reason", limitPendingBytes))
	if n := failures(); n != before {
		t.Errorf("the evicted victim was decided after %d failed fetches, want %d: its check went on after the eviction", n, before)
	}

	waiting("closed")
	before = failures()
	o.Close()
	if n := failures(); n != before {
		t.Errorf("Close returned after %d failed fetches, want %d: it waited for a check", n, before)
	}
}

// TestMaxPendingConnectBytes: the bytes pending CONNECTs hold count as
// they arrive, whatever length the clients declare; over the budget the
// connection that has held bytes longest is closed, logged and counted
// as max_pending_connect_bytes, the budget is never exceeded, and a
// client whose CONNECT comes at once still gets in.
func TestMaxPendingConnectBytes(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	const budget, sent, clients = 64 << 10, 20_000, 6
	o := startObserved(t, &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{},
		Limits: Limits{MaxPendingConnectBytes: budget, ConnectTimeout: time.Minute}})

	// Each declares a CONNECT of 200,000 bytes, within max_connect_size,
	// and sends 20,000 of them: the first 20,000 bytes of a real one.
	long := connectPacket(t, packets.ProtocolV311, string(make([]byte, 60_000)))
	first := slices.Concat(fixedHeader(200_000), connectBody(long))[:sent]
	// charged is what the session of the client c is counted for, -1
	// when it has none (not accepted yet, or evicted and gone), -2 when it
	// is evicted.
	charged := func(c net.Conn) int {
		o.mu.Lock()
		defer o.mu.Unlock()
		for s := range o.sessions {
			switch {
			case s.client.RemoteAddr().String() != c.LocalAddr().String():
			case s.evicted.Load():
				return -2
			case s.connect != nil:
				return s.connect.charged
			}
		}
		return -1
	}
	// closed says whether the proxy has closed c.
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF || isReset(err)
	}
	var conns []net.Conn
	for i := range clients {
		c := dial(t, o.addr)
		if _, err := c.Write(first); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// Until its session holds what it sent, or it is evicted.
		waitFor(t, func() bool { n := charged(c); return n >= sent || n == -2 || n == -1 && closed(c) })
		o.mu.Lock()
		held := o.heldBytes
		o.mu.Unlock()
		if held > budget {
			t.Fatalf("after client %d the pending CONNECTs hold %d bytes, over the budget of %d", i, held, budget)
		}
	}
	evicted := 0 // every client has been accepted: without a session it was evicted
	for evicted < clients && charged(conns[evicted]) < 0 {
		evicted++
	}
	t.Logf("%d of %d clients sending %d bytes each evicted under a budget of %d", evicted, clients, sent, budget)
	if evicted == 0 || evicted == clients {
		t.Fatalf("%d of %d clients holding %d bytes each were evicted under a budget of %d; want the oldest, not all", evicted, clients, sent, budget)
	}
	for i, c := range conns {
		if i < evicted && !closedAtAccept(t, c) || i >= evicted && !stillOpen(t, c) {
			t.Errorf("client %d: want the %d oldest closed and the rest waiting", i, evicted)
		}
	}
	o.waitLogged(t, "connect rejected", zap.String("reason", limitPendingBytes))
	if n := o.logs.FilterMessage("connect rejected").FilterField(zap.String("reason", limitPendingBytes)).Len(); n != evicted {
		t.Errorf("%d evictions logged, want %d", n, evicted)
	}
	if n := o.metric(t, "mqtt_jwt_proxy_limit_rejections_total", "kind="+limitPendingBytes); n != float64(evicted) {
		t.Errorf("limit_rejections_total{kind=%s} = %v, want %d", limitPendingBytes, n, evicted)
	}
	connectThrough(t, dial(t, o.addr), rec, 0)
}
