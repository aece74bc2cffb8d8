package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// startTLSProxy serves p on a TLS listener with files and returns the
// address and the logs.
func startTLSProxy(t *testing.T, p *Proxy, files transport.TLSFiles) (string, *transport.CertReloader, *observer.ObservedLogs) {
	t.Helper()
	logs := observe(p)
	certs, err := transport.NewCertReloader(files, p.Logger)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	serveOn(t, p, transport.NewTLSListener(ln, certs.Config()))
	return ln.Addr().String(), certs, logs
}

// TestTLSClientAuth runs mosquitto_pub over TLS through the proxy to a
// real mosquitto, for each client_auth mode and each kind of client:
// without a certificate, with one from the proxy's client CA, and with one
// from another CA. A refused client fails at the TLS layer and never
// reaches the broker.
func TestTLSClientAuth(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	pki := newTestPKI(t, "devices")
	serverCert, serverKey := pki.issue(t, "proxy", true)
	goodCert, goodKey := pki.issue(t, "device-1", false)
	otherCert, otherKey := newTestPKI(t, "other").issue(t, "device-1", false)

	clients := []struct{ name, cert, key string }{
		{"no certificate", "", ""},
		{"certificate from the client CA", goodCert, goodKey},
		{"certificate from another CA", otherCert, otherKey},
	}
	for _, mode := range []struct {
		name     string
		auth     tls.ClientAuthType
		accepted []bool // per client above
	}{
		{configs.ClientAuthNone, tls.NoClientCert, []bool{true, true, true}},
		{configs.ClientAuthOptional, tls.VerifyClientCertIfGiven, []bool{true, true, false}},
		{configs.ClientAuthRequired, tls.RequireAndVerifyClientCert, []bool{false, true, false}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			files := transport.TLSFiles{CertFile: serverCert, KeyFile: serverKey}
			if mode.auth != tls.NoClientCert {
				files.ClientCAFile, files.ClientAuth = pki.CAFile, mode.auth
			}
			addr, _, logs := startTLSProxy(t, &Proxy{Upstream: broker.Addr, Verifier: jwtChain(t, boundHS256)}, files)
			for i, client := range clients {
				t.Run(client.name, func(t *testing.T) {
					broker.SyncLog(t)
					before := broker.Connections()
					refusals := logs.FilterField(zap.String("reason", reasonTLSHandshake)).Len()
					id := "tls-" + mode.name + "-" + strconv.Itoa(i)
					args := append(proxytest.AddrArgs(t, addr), "--cafile", pki.CAFile, "-i", id, "-u", "u",
						"-P", mint(t, e2eSecret, id, nil), "-t", "tls/"+id, "-q", "1", "-m", "over tls")
					if client.cert != "" {
						args = append(args, "--cert", client.cert, "--key", client.key)
					}
					res := proxytest.Pub(t, args...)
					broker.SyncLog(t)
					if mode.accepted[i] {
						if res.Err != nil || res.Connack != 0 {
							t.Fatalf("refused (connack %d, %v); want accepted\n%s", res.Connack, res.Err, res.Output)
						}
						if got := broker.Connections() - before; got != 1 {
							t.Errorf("broker saw %d connections, want 1", got)
						}
						return
					}
					if res.Connack != -1 || res.Err == nil {
						t.Fatalf("connack %d, err %v; want the TLS handshake to fail\n%s", res.Connack, res.Err, res.Output)
					}
					waitFor(t, func() bool { return logs.FilterField(zap.String("reason", reasonTLSHandshake)).Len() > refusals })
					if got := broker.Connections() - before; got != 0 {
						t.Errorf("broker saw %d connections from a client refused at the TLS layer, want 0", got)
					}
				})
			}
		})
	}
}

// TestCertificateOrToken: a chain [certificate, jwt] lets a client in
// with a verified certificate and no password, or with a token and no
// certificate, and refuses a client with neither with the jwt
// authenticator's CONNACK; an accepted client's message reaches the
// broker. Three fronts verify the certificate: the proxy's own TLS
// listener with client_auth: optional (mosquitto_pub), and a real HAProxy
// that terminates TLS (verify optional) and names the certificate in the
// PROXY header's SSL TLV (send-proxy-v2-ssl-cn) to a listener with
// proxy_protocol.client_certificates, plain MQTT (mosquitto_pub) or
// WebSocket (a wss client). HAProxy connects from 127.0.0.2, so the
// client's address logged, 127.0.0.1, can only have come from its header.
func TestCertificateOrToken(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.LookPath(t, "haproxy")
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	pki := newTestPKI(t, "devices")
	serverCert, serverKey := pki.issue(t, "proxy", true)
	deviceCert, deviceKey := pki.issue(t, "device-1", false)
	chain, err := authn.New([]configs.Authenticator{{Name: "devices", Mechanism: configs.MechanismCertificate}, boundHS256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)

	// behindHAProxy serves p behind HAProxy, on a PROXY protocol listener
	// that trusts HAProxy's TLV, wrapped by wrap, and returns HAProxy's
	// address and p's logs.
	behindHAProxy := func(t *testing.T, p *Proxy, wrap func(net.Listener) net.Listener) (string, *observer.ObservedLogs) {
		logs := observe(p)
		ln := listen(t)
		serveOn(t, p, wrap((&transport.ProxyProtocolListener{Listener: ln, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
			ClientCertificates: true, Timeout: testHeaderTimeout, Logger: p.Logger}).Start()))
		// HAProxy reads its certificate and key from one file.
		pem := filepath.Join(t.TempDir(), "haproxy.pem")
		var both []byte
		for _, f := range []string{serverCert, serverKey} {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			both = append(both, b...)
		}
		if err := os.WriteFile(pem, both, 0o600); err != nil {
			t.Fatal(err)
		}
		h := proxytest.StartHAProxy(t, "ssl crt "+pem+" ca-file "+pki.CAFile+" verify optional",
			ln.Addr().String(), "source 127.0.0.2 send-proxy-v2-ssl-cn")
		return h.Addr, logs
	}
	mosquittoPub := func(t *testing.T, addr, id, password string, cert bool) proxytest.PubResult {
		args := append(proxytest.AddrArgs(t, addr), "--cafile", pki.CAFile, "-i", id, "-t", "cert/"+id, "-m", "hello")
		if password != "" {
			args = append(args, "-u", "u", "-P", password)
		}
		if cert {
			args = append(args, "--cert", deviceCert, "--key", deviceKey)
		}
		return proxytest.Pub(t, args...)
	}
	fronts := []struct {
		name  string
		start func(t *testing.T, p *Proxy) (addr string, logs *observer.ObservedLogs)
		pub   func(t *testing.T, addr, id, password string, cert bool) proxytest.PubResult
	}{
		{"own TLS", func(t *testing.T, p *Proxy) (string, *observer.ObservedLogs) {
			addr, _, logs := startTLSProxy(t, p,
				transport.TLSFiles{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: pki.CAFile, ClientAuth: tls.VerifyClientCertIfGiven})
			return addr, logs
		}, mosquittoPub},
		{"HAProxy", func(t *testing.T, p *Proxy) (string, *observer.ObservedLogs) {
			return behindHAProxy(t, p, func(ln net.Listener) net.Listener { return ln })
		}, mosquittoPub},
		{"HAProxy, WebSocket", func(t *testing.T, p *Proxy) (string, *observer.ObservedLogs) {
			addr, logs := behindHAProxy(t, p, func(ln net.Listener) net.Listener {
				return (&transport.WebSocketListener{Listener: ln, HandshakeTimeout: testHeaderTimeout, Logger: p.Logger}).Start()
			})
			return "wss://" + addr + transport.DefaultWebSocketPath, logs
		}, func(t *testing.T, url, id, password string, cert bool) proxytest.PubResult {
			cn := ""
			if cert {
				cn = "device-1"
			}
			return wsPub(t, url, pki.clientConfig(t, cn), id, password)
		}},
	}
	for _, front := range fronts {
		t.Run(front.name, func(t *testing.T) {
			addr, logs := front.start(t, &Proxy{Upstream: broker.Addr, Verifier: chain})
			for _, tc := range []struct {
				name, id, password string
				cert               bool
				connack            int    // 0: accepted
				wantBy, wantSub    string // authenticator and sub logged on accept
			}{
				{"certificate, no password", "device-1", "", true, 0, "devices", "device-1"},
				{"certificate and a wrong token: the certificate decides", "device-1b", "not-a-token", true, 0, "devices", "device-1"},
				{"token, no certificate", "app-1", mint(t, e2eSecret, "app-1", nil), false, 0, "jwt", "app-1"},
				{"neither", "app-2", "", false, 4, "", ""},                                  // token_missing: bad user name or password
				{"a wrong token, no certificate", "app-3", "not-a-token", false, 4, "", ""}, // token_malformed
			} {
				t.Run(tc.name, func(t *testing.T) {
					var sub *proxytest.Sub
					if tc.connack == 0 {
						sub = proxytest.StartSub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", "cert/"+tc.id)...)
					}
					broker.SyncLog(t)
					before := broker.Connections()
					res := front.pub(t, addr, tc.id, tc.password, tc.cert)
					broker.SyncLog(t)
					if res.Connack != tc.connack {
						t.Fatalf("connack %d (%v), want %d\n%s", res.Connack, res.Err, tc.connack, res.Output)
					}
					if tc.connack != 0 {
						if got := broker.Connections() - before; got != 0 {
							t.Errorf("broker saw %d connections from a refused client", got)
						}
						return
					}
					if res.Err != nil {
						t.Fatalf("publishing: %v\n%s", res.Err, res.Output)
					}
					if got := broker.Connections() - before; got != 1 {
						t.Errorf("broker saw %d connections, want 1", got)
					}
					if msg, ok := sub.Next(proxytest.DefaultTimeout); !ok || msg != "hello" {
						t.Errorf("the broker delivered %q, %v; want hello", msg, ok)
					}
					accepted := logs.FilterMessage("authentication accepted").FilterField(zap.String("client_id", tc.id)).All()
					if len(accepted) != 1 {
						t.Fatalf("%d accept lines for %s, want 1", len(accepted), tc.id)
					}
					fields := accepted[0].ContextMap()
					if fields["authenticator"] != tc.wantBy || fields["sub"] != tc.wantSub {
						t.Errorf("accepted by %v as %v, want %s as %s", fields["authenticator"], fields["sub"], tc.wantBy, tc.wantSub)
					}
					if remote, _ := fields["remote"].(string); !strings.HasPrefix(remote, "127.0.0.1:") {
						t.Errorf("remote %q, want the client's address, 127.0.0.1:port", remote)
					}
				})
			}
		})
	}
}

// wsPub is mosquitto_pub over WebSocket, which mosquitto_pub cannot do: it
// connects to url with config, sends a v3.1.1 CONNECT as id with password
// (none when empty) and, when the CONNACK accepts, a QoS 0 PUBLISH of
// "hello" to cert/id and a DISCONNECT. Connack is -1 when none came.
func wsPub(t *testing.T, url string, config *tls.Config, id, password string) proxytest.PubResult {
	t.Helper()
	dialer := websocket.Dialer{Subprotocols: []string{"mqtt"}, TLSClientConfig: config, HandshakeTimeout: proxytest.DefaultTimeout}
	ws, _, err := dialer.Dial(url, nil)
	if err != nil {
		return proxytest.PubResult{Connack: -1, Err: fmt.Errorf("dialing %s: %w", url, err)}
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.BinaryMessage, connectAs(t, packets.ProtocolV311, id, password)); err != nil {
		return proxytest.PubResult{Connack: -1, Err: err}
	}
	ack := readPackets(t, ws, 1)[0]
	if len(ack) != 4 || ack[0] != 0x20 {
		return proxytest.PubResult{Connack: -1, Err: fmt.Errorf("answer %x, want a CONNACK", ack)}
	}
	res := proxytest.PubResult{Connack: int(ack[3])}
	if res.Connack == 0 {
		topic := "cert/" + id
		body := append([]byte{0, byte(len(topic))}, topic...)
		publish := append([]byte{0x30, byte(len(body) + 5)}, append(body, "hello"...)...)
		res.Err = ws.WriteMessage(websocket.BinaryMessage, append(publish, 0xe0, 0))
	}
	return res
}

// tlsConnect connects over TLS with config, sends a v3.1.1 CONNECT
// carrying password, and returns what the proxy answered within a second,
// and whether the connection was still open then.
func tlsConnect(t *testing.T, addr string, config *tls.Config, password string) (c net.Conn, answer []byte, open bool) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(connectPacket(t, packets.ProtocolV311, password)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	answer, err = io.ReadAll(c)
	c.SetReadDeadline(time.Time{})
	return c, answer, isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestCertificateNamesInClaims: ${cert_common_name} and ${cert_subject}
// in verify_claims bind a token to the client's certificate.
func TestCertificateNamesInClaims(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	pki := newTestPKI(t, "devices")
	serverCert, serverKey := pki.issue(t, "proxy", true)
	rec := proxytest.NewRecorder(t, "")
	chain := jwtChain(t, configs.Authenticator{
		Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret,
		VerifyClaims: map[string]string{"sub": "${cert_common_name}", "cert": "${cert_subject}"},
	})
	addr, _, _ := startTLSProxy(t, &Proxy{Upstream: rec.Addr, Verifier: chain},
		transport.TLSFiles{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: pki.CAFile, ClientAuth: tls.VerifyClientCertIfGiven})

	token := func(sub, subject string) string {
		return mint(t, e2eSecret, sub, func(b *jwt.Builder) { b.Claim("cert", subject) })
	}
	refused := []byte{0x20, 0x02, 0x00, 4} // v3.1.1 bad user name or password: claim mismatch
	for _, tc := range []struct {
		name, cert, token string
		want              []byte // nil: accepted
	}{
		{"names match", "device-7", token("device-7", "CN=device-7,O=Test Devices"), nil},
		{"another device's token", "device-7", token("device-8", "CN=device-8,O=Test Devices"), refused},
		{"subject differs", "device-7", token("device-7", "CN=device-7"), refused},
		{"no certificate", "", token("device-7", "CN=device-7,O=Test Devices"), refused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			accepted := rec.Accepted()
			_, answer, open := tlsConnect(t, addr, pki.clientConfig(t, tc.cert), tc.token)
			if !bytes.Equal(answer, tc.want) || open != (tc.want == nil) {
				t.Fatalf("proxy answered %x and left the connection open: %v; want %x (nil: accepted)", answer, open, tc.want)
			}
			if tc.want == nil {
				rec.WaitAccepted(t, accepted+1)
			} else if rec.Accepted() != accepted {
				t.Error("a refused client reached the upstream")
			}
		})
	}
}

// TestCertificateFileSwap: a renewed certificate written over the files
// serves new connections without a restart (after the files' change is
// noticed, or at once on Reload), while established connections go on; a
// broken renewal keeps the last good certificate.
func TestCertificateFileSwap(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	pki := newTestPKI(t, "devices")
	certFile, keyFile := pki.issue(t, "proxy", true)
	rec := proxytest.NewRecorder(t, "")
	addr, certs, logs := startTLSProxy(t, &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}}, transport.TLSFiles{CertFile: certFile, KeyFile: keyFile})

	served := func() string {
		c, err := tls.Dial("tcp", addr, pki.clientConfig(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	// renew writes a new certificate over the files, as a renewal does:
	// to a temporary file, then renamed, so no reader sees half a file.
	renew := func(certPEM, keyPEM []byte) {
		for path, data := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
			if err := os.WriteFile(path+".new", data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
		}
	}
	issueNew := func() (certPEM, keyPEM []byte, serial string) {
		c, k := pki.issue(t, "proxy-renewed", true)
		certPEM, _ = os.ReadFile(c)
		keyPEM, _ = os.ReadFile(k)
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return certPEM, keyPEM, cert.Leaf.SerialNumber.String()
	}

	first := served()
	established, answer, open := tlsConnect(t, addr, pki.clientConfig(t, ""), "good")
	if !open {
		t.Fatalf("refused: %x", answer)
	}

	certPEM, keyPEM, second := issueNew()
	renew(certPEM, keyPEM)
	waitFor(t, func() bool { return served() == second })
	waitLog(t, logs, "TLS certificate reloaded")

	certPEM, keyPEM, third := issueNew()
	renew(certPEM, keyPEM)
	if err := certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := served(); got != third {
		t.Errorf("after Reload the proxy serves serial %s, want %s", got, third)
	}

	renew([]byte("half written"), keyPEM)
	if err := certs.Reload(); err == nil {
		t.Error("Reload of a broken certificate succeeded")
	}
	// Handshakes go on; the first that looks at the files again (within
	// a second) finds them broken, and the last good certificate stays.
	broken := "TLS files changed but do not load; the previous certificate stays in force"
	waitFor(t, func() bool {
		if got := served(); got != third || got == first {
			t.Fatalf("after a broken renewal the proxy serves serial %s, want %s", got, third)
		}
		return logs.FilterMessage(broken).Len() > 0
	})

	publish := publishPacket("still here")
	if _, err := established.Write(publish); err != nil {
		t.Fatalf("the connection established before the renewals: %v", err)
	}
	rec.WaitReceived(t, 0, len(connectPacket(t, packets.ProtocolV311, "good"))+len(publish))
}

// TestUpstreamTLS connects to mosquitto's TLS listener: messages flow
// through the proxy to a broker that speaks TLS only there, and a broker
// certificate from an unknown CA makes the client's CONNACK "server
// unavailable".
func TestUpstreamTLS(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	pki := newTestPKI(t, "brokers")
	certFile, keyFile := pki.issue(t, "mosquitto", true)
	tlsPort := strconv.Itoa(proxytest.FreePort(t))
	broker := proxytest.StartMosquitto(t, "listener "+tlsPort+" 127.0.0.1", "certfile "+certFile, "keyfile "+keyFile)
	tlsAddr := net.JoinHostPort("127.0.0.1", tlsPort)

	addr := startProxy(t, &Proxy{Upstream: tlsAddr, Verifier: jwtChain(t, boundHS256),
		UpstreamTLS: &tls.Config{RootCAs: pki.pool(), ServerName: "127.0.0.1"}})
	client := func(id string, args ...string) []string {
		return append(append(proxytest.AddrArgs(t, addr), "-i", id, "-u", "u", "-P", mint(t, e2eSecret, id, nil)), args...)
	}
	sub := proxytest.StartSub(t, client("tls-sub", "-t", "up/tls", "-q", "1")...)
	if sub.Connack() != 0 {
		t.Fatalf("subscriber refused: %s", sub.Output())
	}
	broker.WaitForLog(t, "on port "+tlsPort+".", proxytest.DefaultTimeout)
	pub := proxytest.Pub(t, client("tls-pub", "-t", "up/tls", "-q", "1", "-m", "through tls")...)
	if pub.Err != nil || pub.Connack != 0 {
		t.Fatalf("publisher: %d %v\n%s", pub.Connack, pub.Err, pub.Output)
	}
	if msg, ok := sub.Next(proxytest.DefaultTimeout); !ok || msg != "through tls" {
		t.Errorf("subscriber got %q, %v", msg, ok)
	}

	wrongCA := startProxy(t, &Proxy{Upstream: tlsAddr, Verifier: passwordVerifier{},
		UpstreamTLS: &tls.Config{RootCAs: newTestPKI(t, "other").pool(), ServerName: "127.0.0.1"}})
	c := dial(t, wrongCA)
	c.Write(connectPacket(t, packets.ProtocolV311, "good"))
	if got, want := readAll(t, c), []byte{0x20, 0x02, 0x00, 3}; !bytes.Equal(got, want) {
		t.Errorf("with an untrusted broker certificate the client got %x, want %x (server unavailable)", got, want)
	}
}
