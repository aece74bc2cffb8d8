package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// TestServeConnExits takes a connection out by each of serveConn's exits
// (and the accept's): each is told what its exit says (a CONNACK, or the
// connection closed without one), logs one line with its reason at its
// level, counts once in its metric, and reaches the broker only when
// accepted.
func TestServeConnExits(t *testing.T) {
	pki := newTestPKI(t, "exits")
	certFile, keyFile := pki.issue(t, "proxy", true)
	certs, err := transport.NewCertReloader(transport.TLSFiles{CertFile: certFile, KeyFile: keyFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	forwardTenant, err := NewForward(configs.Forward{ClientID: "${claims.tenant}"})
	if err != nil {
		t.Fatal(err)
	}
	v5 := func(password string) []byte { return connectPacket(t, packets.ProtocolV5, password) }
	v3 := func(password string) []byte { return connectPacket(t, packets.ProtocolV311, password) }
	// send dials the proxy, writes b and returns what the proxy answers
	// until it closes the connection.
	send := func(b []byte) func(t *testing.T, p *Proxy, addr string) []byte {
		return func(t *testing.T, _ *Proxy, addr string) []byte {
			c := dial(t, addr)
			c.Write(b)
			return readAll(t, c)
		}
	}
	const (
		refused = "mqtt_jwt_proxy_authentications_total"
		limited = "mqtt_jwt_proxy_limit_rejections_total"
	)

	for _, tc := range []struct {
		name     string
		setup    func(p *Proxy)                                   // nil: a proxy with a broker and passwordVerifier
		listener func(net.Listener) net.Listener                  // nil: plain TCP
		client   func(t *testing.T, p *Proxy, addr string) []byte // returns what the proxy answered
		answer   []byte                                           // nil: closed without a byte
		anything bool                                             // the answer is not the proxy's (TLS)
		message  string
		reason   string
		level    zapcore.Level
		metrics  [][]string // each a name and its labels, counted once; no outcome counted unless one is here
		upstream int        // connections the broker sees
	}{
		{
			name:  "refused by a limit at accept",
			setup: func(p *Proxy) { p.Limits = Limits{PerIPConnectRate: 0.001, PerIPConnectBurst: 1} },
			client: func(t *testing.T, p *Proxy, addr string) []byte {
				dial(t, addr).Write(v3("good"))
				waitDecided(t, p, 1)
				c := dial(t, addr)
				c.Write(v3("good"))
				closedWithoutAnswer(t, c)
				return nil
			},
			message: "connection refused by limit", reason: limitRate,
			metrics: [][]string{{limited, "kind=" + limitRate}}, upstream: 1,
		},
		{
			name:     "TLS handshake failed",
			listener: func(ln net.Listener) net.Listener { return transport.NewTLSListener(ln, certs.Config()) },
			client: func(t *testing.T, _ *Proxy, addr string) []byte {
				c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "127.0.0.1"}) // does not trust the proxy's CA
				if err == nil {
					c.Close()
					t.Fatal("TLS handshake succeeded with an unknown CA")
				}
				return nil
			},
			anything: true,
			message:  "connect rejected", reason: reasonTLSHandshake,
			metrics: [][]string{{refused, "outcome=refused", "reason=" + reasonTLSHandshake}},
		},
		{
			name: "PROXY header from an untrusted peer",
			listener: func(ln net.Listener) net.Listener {
				return (&transport.ProxyProtocolListener{Listener: ln, Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}).Start()
			},
			client:  send(append([]byte("PROXY TCP4 203.0.113.7 192.0.2.1 50000 1883\r\n"), v3("good")...)),
			message: "connect rejected", reason: reasonUntrustedProxyHeader,
			metrics: [][]string{{refused, "outcome=refused", "reason=" + reasonUntrustedProxyHeader}},
		},
		{
			name: "first packet not a CONNECT", client: send(publishPacket("x")),
			message: "connect rejected", reason: reasonNotConnect,
			metrics: [][]string{{refused, "outcome=refused", "reason=" + reasonNotConnect}},
		},
		{
			name: "CONNECT too large, answered in MQTT 5", client: send(append([]byte{0x10, 0xff, 0xff, 0xff, 0x7f}, v5("good")[2:12]...)),
			answer:  []byte{0x20, 0x03, 0x00, 0x95, 0x00},
			message: "connect rejected", reason: reasonTooLarge,
			metrics: [][]string{{refused, "outcome=refused", "reason=" + reasonTooLarge}},
		},
		{
			name:    "no CONNECT in time",
			setup:   func(p *Proxy) { p.Limits = Limits{ConnectTimeout: 200 * time.Millisecond} },
			client:  send(nil),
			message: "connect rejected", reason: reasonConnectTimeout,
			metrics: [][]string{{refused, "outcome=refused", "reason=" + reasonConnectTimeout}},
		},
		{
			name: "token refused", client: send(v5(string(authn.ErrBadSignature))),
			answer:  []byte{0x20, 0x03, 0x00, 0x87, 0x00},
			message: "authentication refused", reason: string(authn.ErrBadSignature),
			metrics: [][]string{{refused, "outcome=refused", "reason=" + string(authn.ErrBadSignature)}},
		},
		{
			name:    "forward cannot rewrite the CONNECT",
			setup:   func(p *Proxy) { p.Forward = forwardTenant },
			client:  send(v3("good")),
			answer:  []byte{0x20, 0x02, 0x00, 0x04},
			message: "authentication refused", reason: string(authn.ErrClaimMismatch),
			metrics: [][]string{{refused, "outcome=refused", "reason=" + string(authn.ErrClaimMismatch)}},
		},
		{
			name:  "client ID over its rate",
			setup: func(p *Proxy) { p.Limits = Limits{PerClientIDConnectRate: 0.001, PerClientIDConnectBurst: 1} },
			client: func(t *testing.T, p *Proxy, addr string) []byte {
				dial(t, addr).Write(v3("good"))
				waitDecided(t, p, 1)
				return send(v3("good"))(t, p, addr)
			},
			answer:  []byte{0x20, 0x02, 0x00, 0x03},
			message: "connect rejected", reason: limitClientIDRate,
			metrics: [][]string{{limited, "kind=" + limitClientIDRate}, {refused, "outcome=refused", "reason=" + limitClientIDRate}}, upstream: 1,
		},
		{
			name:    "broker unavailable",
			setup:   func(p *Proxy) { p.Upstream = proxytest.ClosedAddr(t) },
			client:  send(v5("good")),
			answer:  []byte{0x20, 0x03, 0x00, 0x88, 0x00},
			message: "upstream unavailable", reason: reasonUpstreamUnavailable, level: zapcore.WarnLevel,
			metrics: [][]string{{refused, "outcome=refused", "reason=" + reasonUpstreamUnavailable}},
		},
		{
			name:  "evicted for a newer pending connection",
			setup: func(p *Proxy) { p.Limits = Limits{MaxPendingConnects: 1} },
			client: func(t *testing.T, p *Proxy, addr string) []byte {
				oldest := dial(t, addr)
				oldest.Write(v3("good")[:3]) // pending until its CONNECT is whole
				waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.pending.Len() == 1 })
				dial(t, addr).Write(v3("good")[:3])
				closedWithoutAnswer(t, oldest)
				return nil
			},
			message: "connect rejected", reason: limitPending,
			metrics: [][]string{{limited, "kind=" + limitPending}, {refused, "outcome=refused", "reason=" + limitPending}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxytest.VerifyNoLeaks(t)
			rec := proxytest.NewRecorder(t, "")
			core, logs := observer.New(zap.DebugLevel)
			reg := prometheus.NewRegistry()
			p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}, Logger: zap.New(core), Metrics: NewMetrics(reg, "test")}
			if tc.setup != nil {
				tc.setup(p)
			}
			ln := listen(t)
			var served net.Listener = ln
			if tc.listener != nil {
				served = tc.listener(ln)
			}
			serveOn(t, p, served)
			o := &observedProxy{Proxy: p, logs: logs, reg: reg}

			if got := tc.client(t, p, ln.Addr().String()); !bytes.Equal(got, tc.answer) && !tc.anything {
				t.Errorf("the proxy answered %x, want %x", got, tc.answer)
			}
			o.waitLogged(t, tc.message, zap.String("reason", tc.reason))
			line := logs.FilterMessage(tc.message).FilterField(zap.String("reason", tc.reason)).All()[0]
			if line.Level != tc.level {
				t.Errorf("logged at %v, want %v", line.Level, tc.level)
			}
			if line.ContextMap()["outcome"] != "refused" {
				t.Errorf("logged %v, want outcome refused", line.ContextMap())
			}
			outcome := false
			for _, m := range tc.metrics {
				if n := o.metric(t, m[0], m[1:]...); n != 1 {
					t.Errorf("%s%v = %v, want 1", m[0], m[1:], n)
				}
				outcome = outcome || m[0] == refused
			}
			if n := o.metric(t, refused, "outcome=refused", "reason="+tc.reason); !outcome && n != 0 {
				t.Errorf("counted as an outcome (%v), want not: it was not admitted", n)
			}
			if tc.upstream > 0 {
				rec.WaitAccepted(t, tc.upstream)
			}
			if n := rec.Accepted(); n != tc.upstream {
				t.Errorf("the broker saw %d connections, want %d", n, tc.upstream)
			}
		})
	}
}

// waitDecided waits until p holds n sessions, none of them pending: their
// CONNECTs are decided.
func waitDecided(t *testing.T, p *Proxy, n int) {
	t.Helper()
	waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.sessions) == n && p.pending.Len() == 0 })
}

// closedWithoutAnswer checks that the proxy closes c without a byte: the
// client reads EOF, or a reset where its bytes were left unread.
func closedWithoutAnswer(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || (err != io.EOF && !isReset(err)) {
		t.Errorf("read %d bytes, %v; want the connection closed without an answer", n, err)
	}
}
