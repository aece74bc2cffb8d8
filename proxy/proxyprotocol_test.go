package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// proxyHeader formats a PROXY header of version from src to dst, with
// tlvs (v2 only).
func proxyHeader(t *testing.T, version byte, src, dst string, tlvs ...proxyproto.TLV) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	if err := h.SetTLVs(tlvs); err != nil {
		t.Fatal(err)
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProxyProtocolIn sends v1 and v2 headers from a trusted and from an
// untrusted peer. A trusted peer's header gives the client address the
// proxy logs, and nothing of it goes upstream; an untrusted peer's header
// is refused; a trusted peer must send one.
func TestProxyProtocolIn(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	good := connectPacket(t, packets.ProtocolV311, "good")
	publish := publishPacket("right behind")
	for _, tc := range []struct {
		name    string
		trusted string
		send    []byte
		remote  string // logged; "" for the TCP peer's own address
		reason  string // "" when accepted
	}{
		{"trusted v1", "127.0.0.1/32", append(proxyHeader(t, 1, "203.0.113.7:50000", "192.0.2.1:1883"), good...), "203.0.113.7:50000", ""},
		{"trusted v2", "127.0.0.0/8", append(proxyHeader(t, 2, "[2001:db8::7]:50001", "[2001:db8::1]:1883"), good...), "[2001:db8::7]:50001", ""},
		{"trusted v2, packets behind the CONNECT", "127.0.0.1", append(append(proxyHeader(t, 2, "198.51.100.9:50002", "192.0.2.1:1883"), good...), publish...), "198.51.100.9:50002", ""},
		{"trusted, no header", "127.0.0.1/32", good, "", "no header"},
		{"untrusted v1", "10.0.0.0/8", append(proxyHeader(t, 1, "203.0.113.7:50000", "192.0.2.1:1883"), good...), "", reasonUntrustedProxyHeader},
		{"untrusted v2", "10.0.0.0/8", append(proxyHeader(t, 2, "203.0.113.7:50000", "192.0.2.1:1883"), good...), "", reasonUntrustedProxyHeader},
		{"untrusted, no header", "10.0.0.0/8", good, "", ""},
	} {
		// Under the header, a socket from the net package, and one that
		// Proxy.Listener accepts outside it, as the command does.
		for _, under := range []string{"net", "Proxy.Listener"} {
			t.Run(tc.name+", "+under, func(t *testing.T) {
				rec := proxytest.NewRecorder(t, "")
				prefix, err := netip.ParsePrefix(tc.trusted)
				if err != nil {
					prefix = netip.PrefixFrom(netip.MustParseAddr(tc.trusted), 32)
				}
				p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}}
				logs := observe(p)
				ln := listen(t)
				inner := ln
				if under == "Proxy.Listener" {
					inner = p.Listener(ln)
				}
				serveOn(t, p, (&transport.ProxyProtocolListener{Listener: inner, Trusted: []netip.Prefix{prefix}, Timeout: testHeaderTimeout, Logger: p.Logger}).Start())
				c := dial(t, ln.Addr().String())
				if _, err := c.Write(tc.send); err != nil {
					t.Fatal(err)
				}
				remote := tc.remote
				if remote == "" {
					remote = c.LocalAddr().String()
				}
				switch tc.reason {
				case "":
					waitLog(t, logs, "authentication accepted", zap.String("remote", remote))
					want := tc.send[bytes.Index(tc.send, good):]
					rec.WaitReceived(t, 0, len(want))
					if got := rec.Received()[0]; !bytes.Equal(got, want) {
						t.Errorf("upstream received %x, want %x", got, want)
					}
					c.Close()
					waitLog(t, logs, "connection closed", zap.String("remote", remote))
				case "no header":
					if got := readAll(t, c); len(got) != 0 {
						t.Errorf("proxy answered %x, want a close", got)
					}
					waitLog(t, logs, "PROXY protocol header refused", zap.String("peer", remote))
				default:
					if got := readAll(t, c); len(got) != 0 {
						t.Errorf("proxy answered %x, want a close", got)
					}
					waitLog(t, logs, "connect rejected", zap.String("remote", remote), zap.String("reason", tc.reason))
				}
				if tc.reason != "" && rec.Accepted() != 0 {
					t.Error("a refused connection reached the upstream")
				}
			})
		}
	}
}

// headerRelay stands in for a broker that reads PROXY headers (Debian's
// mosquitto 2.0 cannot): it reads each connection's header, hands it to
// the test, and relays the rest to forward.
func headerRelay(t *testing.T, forward string) (addr string, headers chan *proxyproto.Header) {
	headers = make(chan *proxyproto.Header, 10)
	addr = proxytest.ServeTCP(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			t.Errorf("relay: reading the PROXY header: %v", err)
			return
		}
		headers <- h
		up, err := net.Dial("tcp", forward)
		if err != nil {
			t.Errorf("relay: %v", err)
			return
		}
		defer up.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			io.Copy(c, up)
			c.Close()
		}()
		io.Copy(up, br)
		up.Close()
		<-done
	})
	return addr, headers
}

// TestProxyProtocolOut: the broker gets a PROXY header with the client's
// address, and with v2 the TLS facts of a TLS client, its certificate's
// common name among them; the MQTT session then works as usual.
func TestProxyProtocolOut(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	relay, headers := headerRelay(t, broker.Addr)
	accepted := []byte{0x20, 0x02, 0x00, 0x00}

	t.Run("v1 from a TCP client", func(t *testing.T) {
		addr := startProxy(t, &Proxy{Upstream: relay, Verifier: passwordVerifier{}, UpstreamProxyHeader: transport.ProxyHeaderV1})
		c := dial(t, addr)
		c.Write(connectPacket(t, packets.ProtocolV311, "good"))
		answer := make([]byte, len(accepted))
		if _, err := io.ReadFull(c, answer); err != nil || !bytes.Equal(answer, accepted) {
			t.Fatalf("the broker answered %x, %v; want %x", answer, err, accepted)
		}
		h := <-headers
		if h.Version != 1 || h.SourceAddr.String() != c.LocalAddr().String() || h.DestinationAddr.String() != addr {
			t.Errorf("header v%d %s -> %s, want v1 %s -> %s", h.Version, h.SourceAddr, h.DestinationAddr, c.LocalAddr(), addr)
		}
	})

	t.Run("v2 from a TLS client with a certificate", func(t *testing.T) {
		pki := newTestPKI(t, "devices")
		serverCert, serverKey := pki.issue(t, "proxy", true)
		p := &Proxy{Upstream: relay, Verifier: passwordVerifier{}, UpstreamProxyHeader: transport.ProxyHeaderV2}
		addr, _, _ := startTLSProxy(t, p, transport.TLSFiles{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: pki.CAFile, ClientAuth: tls.RequireAndVerifyClientCert})
		c, answer, open := tlsConnect(t, addr, pki.clientConfig(t, "device-9"), "good")
		if !open || !bytes.Equal(answer, accepted) {
			t.Fatalf("the broker answered %x (connection open: %v), want %x", answer, open, accepted)
		}
		h := <-headers
		if h.Version != 2 || h.SourceAddr.String() != c.LocalAddr().String() {
			t.Errorf("header v%d from %s, want v2 from %s", h.Version, h.SourceAddr, c.LocalAddr())
		}
		tlvs, err := h.TLVs()
		if err != nil {
			t.Fatal(err)
		}
		ssl, ok := tlvparse.FindSSL(tlvs)
		if !ok {
			t.Fatalf("no SSL TLV in %v", tlvs)
		}
		cn, _ := ssl.ClientCN()
		version, _ := ssl.SSLVersion()
		if !ssl.ClientSSL() || !ssl.ClientCertConn() || !ssl.Verified() || cn != "device-9" || version != "TLSv1.3" {
			t.Errorf("SSL TLV: ssl %v, cert %v, verified %v, CN %q, version %q; want a verified TLSv1.3 client device-9",
				ssl.ClientSSL(), ssl.ClientCertConn(), ssl.Verified(), cn, version)
		}
	})
}

// TestProxyProtocolUnderTLS: a load balancer's header comes before the
// TLS handshake; the client behind it is logged with the header's address
// and its bytes are copied without loss past the header's read-ahead.
func TestProxyProtocolUnderTLS(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	pki := newTestPKI(t, "edge")
	certFile, keyFile := pki.issue(t, "proxy", true)
	certs, err := transport.NewCertReloader(transport.TLSFiles{CertFile: certFile, KeyFile: keyFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := proxytest.NewRecorder(t, "")
	p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}}
	logs := observe(p)
	ln := listen(t)
	pp := (&transport.ProxyProtocolListener{Listener: ln, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Timeout: testHeaderTimeout, Logger: p.Logger}).Start()
	serveOn(t, p, transport.NewTLSListener(pp, certs.Config()))

	raw := dial(t, ln.Addr().String())
	if _, err := raw.Write(proxyHeader(t, 2, "203.0.113.50:40000", "192.0.2.1:8883")); err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, pki.clientConfig(t, ""))
	sent := append(connectPacket(t, packets.ProtocolV311, "good"), publishPacket("behind a balancer, over TLS")...)
	if _, err := c.Write(sent); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, "authentication accepted", zap.String("remote", "203.0.113.50:40000"))
	rec.WaitReceived(t, 0, len(sent))
	if got := rec.Received()[0]; !bytes.Equal(got, sent) {
		t.Errorf("upstream received %x, want %x", got, sent)
	}
}

// sslHeader is a v2 PROXY header from a balancer that terminated TLS,
// with a PP2_TYPE_SSL TLV of client flags, verify result and, when cn is
// set, the client certificate's common name.
func sslHeader(t *testing.T, client uint8, verify uint32, cn string) []byte {
	t.Helper()
	ssl := tlvparse.PP2SSL{Client: client, Verify: verify, TLV: []proxyproto.TLV{{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte("TLSv1.3")}}}
	if cn != "" {
		ssl.TLV = append(ssl.TLV, proxyproto.TLV{Type: proxyproto.PP2_SUBTYPE_SSL_CN, Value: []byte(cn)})
	}
	tlv, err := ssl.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return proxyHeader(t, 2, "203.0.113.9:40000", "192.0.2.1:8883", tlv)
}

// TestProxyProtocolClientCertificate: with ClientCertificates, the client
// certificate a balancer verified, named in the header's SSL TLV, is
// accepted by a certificate authenticator, over TCP and WebSocket; a
// certificate the balancer did not verify, a TLV without one, and any
// TLV while ClientCertificates is off count as no certificate, and the
// CONNECT without a token is refused. The v2 header sent upstream carries
// the balancer's TLV as it came, and none while ClientCertificates is off.
func TestProxyProtocolClientCertificate(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	chain, err := authn.New([]configs.Authenticator{{Name: "devices", Mechanism: configs.MechanismCertificate}, anyClientHS256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	const withCert = tlvparse.PP2_BITFIELD_CLIENT_SSL | tlvparse.PP2_BITFIELD_CLIENT_CERT_CONN
	noToken := connectAs(t, packets.ProtocolV311, "dev-9", "")
	withToken := connectAs(t, packets.ProtocolV311, "dev-9", mint(t, e2eSecret, "dev-9", nil))
	verified := sslHeader(t, withCert, 0, "device-9")
	noTLV := proxyHeader(t, 2, "203.0.113.9:40000", "192.0.2.1:8883")
	for _, tc := range []struct {
		name     string
		certs    bool // ClientCertificates
		header   []byte
		connect  []byte
		accepted string // by this authenticator, or "" for refused
		upstream []byte // the PROXY header sent upstream
	}{
		{"verified certificate", true, verified, noToken, "devices", verified},
		{"certificate not verified", true, sslHeader(t, withCert, 20, "device-9"), noToken, "", nil},
		{"TLS without a certificate", true, sslHeader(t, tlvparse.PP2_BITFIELD_CLIENT_SSL, 0, ""), noToken, "", nil},
		{"no SSL TLV", true, noTLV, noToken, "", nil},
		{"ClientCertificates off", false, verified, noToken, "", nil},
		{"certificate not verified, with a token", true, sslHeader(t, withCert, 20, "device-9"), withToken, "jwt", sslHeader(t, withCert, 20, "device-9")},
		{"ClientCertificates off, with a token", false, verified, withToken, "jwt", noTLV},
	} {
		for _, wire := range []string{"tcp", "websocket"} {
			t.Run(tc.name+", "+wire, func(t *testing.T) {
				rec := proxytest.NewRecorder(t, "")
				p := &Proxy{Upstream: rec.Addr, Verifier: chain, UpstreamProxyHeader: transport.ProxyHeaderV2}
				logs := observe(p)
				ln := listen(t)
				pp := (&transport.ProxyProtocolListener{Listener: ln, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
					ClientCertificates: tc.certs, Timeout: testHeaderTimeout, Logger: p.Logger}).Start()
				var answer func() []byte // the proxy's first packet
				if wire == "tcp" {
					serveOn(t, p, pp)
					c := dial(t, ln.Addr().String())
					if _, err := c.Write(append(append([]byte(nil), tc.header...), tc.connect...)); err != nil {
						t.Fatal(err)
					}
					answer = func() []byte {
						b := make([]byte, 4)
						c.SetReadDeadline(time.Now().Add(10 * time.Second))
						if _, err := io.ReadFull(c, b); err != nil {
							t.Fatal(err)
						}
						return b
					}
				} else {
					serveOn(t, p, (&transport.WebSocketListener{Listener: pp, HandshakeTimeout: testHeaderTimeout, Logger: p.Logger}).Start())
					dialer := websocket.Dialer{Subprotocols: []string{"mqtt"}, NetDial: func(network, addr string) (net.Conn, error) {
						c, err := net.Dial(network, addr)
						if err == nil {
							_, err = c.Write(tc.header)
						}
						return c, err
					}}
					ws, _, err := dialer.Dial("ws://"+ln.Addr().String()+transport.DefaultWebSocketPath, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer ws.Close()
					if err := ws.WriteMessage(websocket.BinaryMessage, tc.connect); err != nil {
						t.Fatal(err)
					}
					answer = func() []byte { return readPackets(t, ws, 1)[0] }
				}
				if tc.accepted == "" {
					if got, want := answer(), []byte{0x20, 0x02, 0x00, 4}; !bytes.Equal(got, want) {
						t.Fatalf("answer %x, want %x: no certificate and no token", got, want)
					}
					if rec.Accepted() != 0 {
						t.Error("a refused client reached the upstream")
					}
					return
				}
				// The recorder is no broker: the CONNECT reaching it is the acceptance.
				want := append(append([]byte(nil), tc.upstream...), tc.connect...)
				rec.WaitReceived(t, 0, len(want))
				if got := rec.Received()[0]; !bytes.Equal(got, want) {
					t.Errorf("upstream received %x,\nwant the header %x and the CONNECT", got, tc.upstream)
				}
				entry := waitLog(t, logs, "authentication accepted", zap.String("remote", "203.0.113.9:40000"))
				sub := map[string]string{"devices": "device-9", "jwt": "dev-9"}[tc.accepted]
				if f := entry.ContextMap(); f["authenticator"] != tc.accepted || f["sub"] != sub {
					t.Errorf("accepted by %v as %v, want %s as %s", f["authenticator"], f["sub"], tc.accepted, sub)
				}
			})
		}
	}
}
