package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// tcpDial dials a server as a plain TCP client does.
func tcpDial(ctx context.Context, s *Server[int]) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", s.Address)
}

// statusOf is the state of the pool's server at addr.
func statusOf(t testing.TB, p *Pool[int], addr string) ServerStatus {
	t.Helper()
	for _, s := range p.Status(nil) {
		if s.Address == addr {
			return s
		}
	}
	t.Fatalf("no server %s in %+v", addr, p.Status(nil))
	return ServerStatus{}
}

// TestHealthChecksFollowBrokers: three mosquitto brokers; one killed is
// marked down within fall x interval (and scheduling slack), is never a
// candidate while down, and is marked up again after rise checks once it
// is back; the others stay up throughout.
func TestHealthChecksFollowBrokers(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	var brokers []*proxytest.Mosquitto
	var addrs []string
	for range 3 {
		b := proxytest.StartMosquitto(t)
		brokers = append(brokers, b)
		addrs = append(addrs, b.Addr)
	}
	core, logs := observer.New(zap.InfoLevel)
	// A live broker answers a check far within its timeout, also on a
	// busy machine under -race: none of them is marked down by a slow
	// answer.
	check := &HealthCheck{Interval: 100 * time.Millisecond, Timeout: 5 * time.Second, Fall: 3, Rise: 2}
	p, err := NewPool("brokers", PoolConfig[int]{Servers: testServers(addrs...), Balance: ClientID, HealthCheck: check}, tcpDial, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// Every broker has been checked at least once, and is up.
	waitFor(t, "a first check of each broker", func() bool {
		for _, b := range p.set.Load().backends {
			b.health.mu.Lock()
			settled := b.health.settled
			b.health.mu.Unlock()
			if !settled || !b.Up() {
				return false
			}
		}
		return true
	})

	// Slack for timers and the scheduler of a loaded machine under -race;
	// checks every DefaultCheckInterval (2 s), not Interval, would take
	// 6 s, over it.
	const slack = 4 * time.Second
	killed := brokers[1].Addr
	brokers[1].Kill()
	start := time.Now()
	waitFor(t, "the killed broker marked down", func() bool { return !statusOf(t, p, killed).Up })
	if took, limit := time.Since(start), time.Duration(check.Fall)*check.Interval+slack; took > limit {
		t.Errorf("marked down %v after the kill; want within %v", took, limit)
	}
	if s := statusOf(t, p, killed); !strings.Contains(s.LastError, "connection refused") {
		t.Errorf("last error %q, want the refused connection", s.LastError)
	}
	for _, id := range deviceIDs(100) {
		if got := pick(t, p, id); len(got) != 2 || slices.Contains(got, killed) {
			t.Fatalf("%s: candidates %v with %s down", id, got, killed)
		}
	}
	if !p.Ready() {
		t.Error("not ready with two brokers up")
	}

	brokers[1].Restart(t)
	start = time.Now()
	waitFor(t, "the restarted broker marked up", func() bool { return statusOf(t, p, killed).Up })
	if took, limit := time.Since(start), time.Duration(check.Rise)*check.Interval+slack; took > limit {
		t.Errorf("marked up %v after the restart; want within %v", took, limit)
	}
	for _, addr := range []string{addrs[0], addrs[2]} {
		if s := statusOf(t, p, addr); !s.Up || s.LastError != "" {
			t.Errorf("%s: %+v, want up throughout", addr, s)
		}
	}
	down := logs.FilterMessage("upstream server marked down").AllUntimed()
	up := logs.FilterMessage("upstream server marked up").AllUntimed()
	if len(down) != 1 || len(up) != 1 || down[0].ContextMap()["server"] != killed || down[0].ContextMap()["pool"] != "brokers" {
		t.Errorf("logged %d down (%v) and %d up; want one each, for %s", len(down), down, len(up), killed)
	}
}

// TestFirstCheckDecides: a server down when the pool starts is marked
// down by its first check, without waiting for fall failures.
func TestFirstCheckDecides(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	dead := proxytest.ClosedAddr(t)
	addr := proxytest.ServeTCP(t, func(c net.Conn) { c.Close() })
	check := &HealthCheck{Interval: time.Hour, Fall: 5}
	p, err := NewPool("p", PoolConfig[int]{Servers: testServers(addr, dead), Balance: RoundRobin, HealthCheck: check}, tcpDial, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	waitFor(t, "the dead server marked down", func() bool { return !statusOf(t, p, dead).Up })
	if got := pick(t, p, ""); !slices.Equal(got, []string{addr}) {
		t.Errorf("candidates %v, want the live server only", got)
	}
}

// TestDialFailuresMarkDown: a client's failed dial counts as a failed
// check, fall of them in a row mark the server down, a success between
// them starts the run again, and the client's own cancellation does not
// count. Without health checks, failures mark nothing down.
func TestDialFailuresMarkDown(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	addr := proxytest.ServeTCP(t, func(c net.Conn) { c.Close() })
	// The first check passes; the next is an hour away.
	check := &HealthCheck{Interval: time.Hour, Fall: 3, Rise: 2}
	p, err := NewPool("p", PoolConfig[int]{Servers: testServers(addr, "10.0.0.2:1883"), Balance: RoundRobin, HealthCheck: check}, tcpDial, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b := p.set.Load().backends[0]
	waitFor(t, "the first check", func() bool {
		b.health.mu.Lock()
		defer b.health.mu.Unlock()
		return b.health.settled
	})
	refused := errors.New("connection refused")
	b.Dialed(time.Millisecond, refused)
	b.Dialed(time.Millisecond, refused)
	b.Dialed(time.Millisecond, nil)
	b.Dialed(time.Millisecond, refused)
	b.Dialed(time.Millisecond, context.Canceled)
	b.Dialed(time.Millisecond, refused)
	if !b.Up() {
		t.Fatal("marked down after two failures in a row (fall 3)")
	}
	b.Dialed(time.Millisecond, refused)
	if b.Up() {
		t.Fatal("up after three failures in a row")
	}
	s := statusOf(t, p, addr)
	if s.Dials != 7 || s.DialFailures != 6 || s.DialTime != time.Millisecond || !strings.Contains(s.LastError, "dial: connection refused") {
		t.Errorf("status %+v", s)
	}

	q := newTestPool(t, RoundRobin, "a:1")
	qb := q.set.Load().backends[0]
	for range 10 {
		qb.Dialed(time.Millisecond, refused)
	}
	if !qb.Up() {
		t.Error("a pool without health checks marked a server down")
	}
}

// TestMQTTProbe: with connect credentials, a check is an MQTT session
// the broker must accept: the right password keeps mosquitto's server
// up (and the probe says DISCONNECT), a wrong one marks it down where a
// TCP check would not.
func TestMQTTProbe(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	passwordFile := filepath.Join(t.TempDir(), "passwords")
	if out, err := exec.Command(proxytest.LookPath(t, "mosquitto_passwd"), "-b", "-c", passwordFile, "probe", "probe-secret").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
	}
	broker := proxytest.StartMosquitto(t, "allow_anonymous false", "password_file "+passwordFile)

	newPool := func(connect *ProbeConnect) *Pool[int] {
		check := &HealthCheck{Interval: time.Hour, Timeout: 5 * time.Second, Connect: connect}
		p, err := NewPool("p", PoolConfig[int]{Servers: testServers(broker.Addr), Balance: RoundRobin, HealthCheck: check}, tcpDial, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	settled := func(p *Pool[int]) func() bool {
		return func() bool {
			b := p.set.Load().backends[0]
			b.health.mu.Lock()
			defer b.health.mu.Unlock()
			return b.health.settled
		}
	}

	good := newPool(&ProbeConnect{ClientID: "probe-good", Username: "probe", Password: []byte("probe-secret")})
	waitFor(t, "the check with the right password", settled(good))
	if s := statusOf(t, good, broker.Addr); !s.Up {
		t.Errorf("down with the right password: %s", s.LastError)
	}
	broker.WaitForLog(t, "as probe-good (p2, c1, k60, u'probe')", proxytest.DefaultTimeout)
	broker.WaitForLog(t, "Client probe-good disconnected.", proxytest.DefaultTimeout)

	bad := newPool(&ProbeConnect{ClientID: "probe-bad", Username: "probe", Password: []byte("wrong")})
	waitFor(t, "the check with a wrong password", settled(bad))
	if s := statusOf(t, bad, broker.Addr); s.Up || !strings.Contains(s.LastError, "return code 5, not authorized") {
		t.Errorf("with a wrong password: %+v, want down, not authorized", s)
	}

	tcpOnly := newPool(nil)
	waitFor(t, "the TCP check", settled(tcpOnly))
	if s := statusOf(t, tcpOnly, broker.Addr); !s.Up {
		t.Errorf("a TCP check found the broker down: %s", s.LastError)
	}
}

// TestProbeThroughTheDialer: checks dial as the caller's Dialer does, here
// over TLS to mosquitto's TLS listener, with the server's settings.
func TestProbeThroughTheDialer(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	testdata := "../../configs/testdata"
	tlsPort := strconv.Itoa(proxytest.FreePort(t))
	broker := proxytest.StartMosquitto(t, "listener "+tlsPort+" 127.0.0.1",
		"certfile "+filepath.Join(testdata, "server.pem"), "keyfile "+filepath.Join(testdata, "server.key"))
	roots, err := configs.LoadCertPool(filepath.Join(testdata, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var settings []int
	dial := func(ctx context.Context, s *Server[int]) (net.Conn, error) {
		mu.Lock()
		settings = append(settings, s.Settings)
		mu.Unlock()
		d := tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: "localhost"}}
		return d.DialContext(ctx, "tcp", s.Address)
	}
	servers := []Server[int]{{Address: net.JoinHostPort("127.0.0.1", tlsPort), Weight: 1, Settings: 42}}
	check := &HealthCheck{Interval: time.Hour, Timeout: 5 * time.Second, Connect: &ProbeConnect{ClientID: "probe-tls"}}
	p, err := NewPool("tls", PoolConfig[int]{Servers: servers, Balance: RoundRobin, HealthCheck: check}, dial, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	broker.WaitForLog(t, "as probe-tls", proxytest.DefaultTimeout)
	broker.WaitForLog(t, "Client probe-tls disconnected.", proxytest.DefaultTimeout)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(settings, []int{42}) {
		t.Errorf("the dialer got settings %v, want the server's, 42, once", settings)
	}
}

// TestProbeAnswers: what a check makes of each answer to its CONNECT.
func TestProbeAnswers(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	probe, err := encodeProbe(&ProbeConnect{Username: "u", Password: []byte("p")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		answer []byte // nil: say nothing until the client leaves
		want   string // "" for a pass
	}{
		{"accepted", []byte{0x20, 0x02, 0x00, 0x00}, ""},
		{"accepted with a session", []byte{0x20, 0x02, 0x01, 0x00}, ""},
		{"bad credentials", []byte{0x20, 0x02, 0x00, 0x04}, "return code 4, bad user name or password"},
		{"unknown code", []byte{0x20, 0x02, 0x00, 0x77}, "return code 119, unknown"},
		{"an MQTT 5 CONNACK", []byte{0x20, 0x03, 0x00, 0x00, 0x00}, "not an MQTT 3.1.1 CONNACK"},
		{"not MQTT", []byte("HTTP/1.1 400 Bad Request\r\n\r\n"), "not an MQTT 3.1.1 CONNACK"},
		{"closed", []byte{}, "read CONNACK: EOF"},
		{"silent", nil, "i/o timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			received := make(chan []byte, 1)
			addr := proxytest.ServeTCP(t, func(c net.Conn) {
				defer c.Close()
				got := make([]byte, len(probe))
				c.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
				n, _ := c.Read(got)
				received <- got[:n]
				if tc.answer == nil {
					c.Read(make([]byte, 1)) // until the probe gives up
					return
				}
				c.Write(tc.answer)
			})
			p := &Pool[int]{dial: tcpDial}
			// The silent broker waits it out; the others answer well
			// within it, also on a busy machine under -race.
			err := p.checkOnce(context.Background(), &Server[int]{Address: addr}, 2*time.Second, probe)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("check failed: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("check error %v, want %q", err, tc.want)
			}
			if got := <-received; string(got) != string(probe) {
				t.Errorf("the broker got % x, want the CONNECT % x", got, probe)
			}
		})
	}
}

// TestCloseStopsAChecksUnderWay: Close ends a check that waits on a
// silent broker at once, not at the check's timeout, and leaves no
// goroutine behind.
func TestCloseStopsAChecksUnderWay(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	accepted := make(chan struct{}, 1)
	addr := proxytest.ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		accepted <- struct{}{}
		c.Read(make([]byte, 1024))
		c.Read(make([]byte, 1)) // until the probe gives up
	})
	check := &HealthCheck{Interval: time.Hour, Timeout: time.Hour, Connect: &ProbeConnect{}}
	p, err := NewPool("p", PoolConfig[int]{Servers: testServers(addr), Balance: RoundRobin, HealthCheck: check}, tcpDial, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-accepted
	closed := make(chan struct{})
	go func() {
		p.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatal("Close waits on the check's hour-long timeout")
	}
	if !statusOf(t, p, addr).Up {
		t.Error("a check stopped by Close counted as a failure")
	}
}

// TestPasswordFromConfigFile: FromConfig carries a health check's
// credentials, as the configuration resolved them, to the probe.
func TestPasswordFromConfigFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "proxy.yaml")
	doc := `listeners: [{bind: "127.0.0.1:1883"}]
upstream:
  address: "10.0.0.1:1883"
  health_check: {connect: {client_id: hc, username: probe, password_file: pw}}
authentication: [{mechanism: jwt, algorithm: hmac-based, secret: s3cr3t-for-tests}]
`
	if err := os.WriteFile(cfgPath, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := configs.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := FromConfig(f, func(configs.Upstream, configs.UpstreamServer) (int, error) { return 0, nil })
	if err != nil {
		t.Fatal(err)
	}
	c := rc.Pools[DefaultPool].HealthCheck.Connect
	if c.ClientID != "hc" || c.Username != "probe" || string(c.Password) != "from-file" {
		t.Errorf("probe CONNECT %+v", c)
	}
}
