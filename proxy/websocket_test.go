package proxy

import (
	"bufio"
	"bytes"
	"crypto"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// anyClientHS256 accepts any client with a token signed with e2eSecret.
var anyClientHS256 = configs.Authenticator{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret}

// startWebSocketProxy serves p over WebSocket (wss when tlsFiles is set)
// and returns the URL of its MQTT path.
func startWebSocketProxy(t *testing.T, p *Proxy, ws *transport.WebSocketListener, tlsFiles *transport.TLSFiles) string {
	t.Helper()
	ln := listen(t)
	ws.Listener, ws.Logger = ln, p.Logger
	if ws.HandshakeTimeout == 0 {
		ws.HandshakeTimeout = testHeaderTimeout
	}
	scheme := "ws"
	if tlsFiles != nil {
		certs, err := transport.NewCertReloader(*tlsFiles, p.Logger)
		if err != nil {
			t.Fatal(err)
		}
		ws.Listener, scheme = transport.NewTLSListener(ln, certs.Config()), "wss"
	}
	serveOn(t, p, ws.Start())
	return fmt.Sprintf("%s://%s%s", scheme, ln.Addr(), transport.DefaultWebSocketPath)
}

// nodeClient is a running testdata/mqttjs/client.js.
type nodeClient struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its output lines; closed when it exits
}

// startMQTTjs runs client.js with args; the client is stopped at cleanup.
func startMQTTjs(t *testing.T, node string, args ...string) *nodeClient {
	t.Helper()
	cmd := exec.Command(node, append([]string{"testdata/mqttjs/client.js"}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &nodeClient{cmd: cmd, stdin: stdin, lines: make(chan string, 100)}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			n.lines <- scanner.Text()
		}
		close(n.lines)
		cmd.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close() // it disconnects and exits
		select {
		case <-exited:
		case <-time.After(proxytest.DefaultTimeout):
			cmd.Process.Kill()
			<-exited
		}
	})
	return n
}

// next returns the client's next output line, or fails the test.
func (n *nodeClient) next(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-n.lines:
		if !ok {
			t.Fatal("MQTT.js exited")
		}
		return line
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatalf("MQTT.js said nothing within %v", proxytest.DefaultTimeout)
		return ""
	}
}

// TestMQTTjsOverWebSocket runs MQTT.js, over ws:// and wss://, with MQTT
// 3.1.1 and 5, through the proxy to mosquitto, which speaks plain TCP:
// messages flow to the browser client and from it; a bad token is refused.
func TestMQTTjsOverWebSocket(t *testing.T) {
	node := proxytest.RequireNodeModule(t, "testdata/mqttjs", "mqtt")
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	pki := newTestPKI(t, "web")
	certFile, keyFile := pki.issue(t, "proxy", true)
	p := &Proxy{Upstream: broker.Addr, Verifier: jwtChain(t, anyClientHS256)}
	observe(p)
	wsURL := startWebSocketProxy(t, p, &transport.WebSocketListener{TokenQueryParam: "token"}, nil)
	wssURL := startWebSocketProxy(t, p, &transport.WebSocketListener{}, &transport.TLSFiles{CertFile: certFile, KeyFile: keyFile})
	token := mint(t, e2eSecret, "browser", nil)

	for _, tc := range []struct {
		name, url, version, token string
	}{
		{"ws, MQTT 3.1.1", wsURL, "4", token},
		{"ws, MQTT 5", wsURL, "5", token},
		{"wss, MQTT 3.1.1", wssURL, "4", token},
		{"wss, MQTT 5", wssURL, "5", token},
		{"ws, token in the URL", wsURL + "?token=" + token, "5", "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := "web/" + strings.NewReplacer(" ", "", ",", "-", ".", "").Replace(tc.name)
			browser := startMQTTjs(t, node, tc.url, tc.version, tc.token, topic, pki.CAFile)
			if line := browser.next(t); line != "ready" {
				t.Fatalf("MQTT.js: %q, want ready", line)
			}
			echoes := proxytest.StartSub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", topic+"/out", "-q", "1")...)
			pub := proxytest.Pub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", topic+"/in", "-q", "1", "-m", "to the browser")...)
			if pub.Err != nil {
				t.Fatalf("publishing to the browser: %v\n%s", pub.Err, pub.Output)
			}
			if line := browser.next(t); line != "got to the browser" {
				t.Errorf("MQTT.js: %q, want the message", line)
			}
			if msg, ok := echoes.Next(proxytest.DefaultTimeout); !ok || msg != "echo to the browser" {
				t.Errorf("the browser's message reached the broker as %q, %v", msg, ok)
			}
		})
	}
	t.Run("bad token", func(t *testing.T) {
		browser := startMQTTjs(t, node, wsURL, "5", token+"x", "web/denied", pki.CAFile)
		if line := browser.next(t); !strings.HasPrefix(line, "error ") || !strings.Contains(strings.ToLower(line), "not authorized") {
			t.Errorf("MQTT.js: %q, want a refusal", line)
		}
	})
}

// readPackets reads MQTT packets from the WebSocket's messages, whatever
// their boundaries, until it has n of them.
func readPackets(t *testing.T, ws *websocket.Conn, n int) [][]byte {
	t.Helper()
	var stream []byte
	var packets [][]byte
	ws.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	for len(packets) < n {
		kind, message, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("after %d packets (%x): %v", len(packets), packets, err)
		}
		if kind != websocket.BinaryMessage {
			t.Fatalf("message of kind %d, want binary", kind)
		}
		stream = append(stream, message...)
		// Packets here are short: a one-byte remaining length.
		for len(stream) >= 2 && len(stream) >= 2+int(stream[1]) {
			size := 2 + int(stream[1])
			packets = append(packets, stream[:size])
			stream = stream[size:]
		}
	}
	return packets
}

// TestWebSocketFraming: a CONNECT split over three messages, then a
// SUBSCRIBE and a PUBLISH in one message, reach mosquitto as one stream;
// its answers come back in binary messages.
func TestWebSocketFraming(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	p := &Proxy{Upstream: broker.Addr, Verifier: jwtChain(t, boundHS256)}
	logs := observe(p)
	url := startWebSocketProxy(t, p, &transport.WebSocketListener{}, nil)

	ws, resp, err := (&websocket.Dialer{Subprotocols: []string{"mqtt"}}).Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "mqtt" {
		t.Errorf("subprotocol %q, want mqtt", got)
	}
	connect := connectPacket(t, packets.ProtocolV311, mint(t, e2eSecret, "dev-1", nil))
	for _, part := range [][]byte{connect[:1], connect[1:9], connect[9:]} {
		if err := ws.WriteMessage(websocket.BinaryMessage, part); err != nil {
			t.Fatal(err)
		}
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, append(subscribePacket(packets.ProtocolV311), publishPacket("two in one")...)); err != nil {
		t.Fatal(err)
	}
	got := readPackets(t, ws, 3)
	want := [][]byte{{0x20, 0x02, 0x00, 0x00}, {0x90, 0x03, 0x00, 0x01, 0x01}, publishPacket("two in one")}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("packet %d: %x, want %x", i, got[i], want[i])
		}
	}
	waitLog(t, logs, "authentication accepted")
}

// TestWebSocketUpgrade: the upgrade's path, origin and token options, and
// a text message, which MQTT over WebSocket forbids.
func TestWebSocketUpgrade(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}}
	observe(p)
	url := startWebSocketProxy(t, p, &transport.WebSocketListener{AllowedOrigins: []string{"https://app.example.com"}, TokenFromAuthorization: true}, nil)
	good := connectPacket(t, packets.ProtocolV311, "good")
	noPassword := connectPacket(t, packets.ProtocolV311, "")

	for _, tc := range []struct {
		name    string
		url     string
		header  http.Header
		status  int    // of a refused upgrade; 0 when it succeeds
		send    []byte // sent after the upgrade
		text    bool   // as a text message
		connack bool   // the proxy keeps the connection, the recorder gets send
	}{
		{"wrong path", strings.TrimSuffix(url, "/mqtt") + "/other", nil, http.StatusNotFound, nil, false, false},
		{"origin not allowed", url, http.Header{"Origin": {"https://evil.example.com"}}, http.StatusForbidden, nil, false, false},
		{"origin allowed", url, http.Header{"Origin": {"https://app.example.com"}}, 0, good, false, true},
		{"no origin (not a browser)", url, nil, 0, good, false, true},
		{"token in Authorization", url, http.Header{"Authorization": {"Bearer good"}}, 0, noPassword, false, true},
		{"no token anywhere", url, nil, 0, noPassword, false, false},
		{"text message", url, nil, 0, good, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			accepted := rec.Accepted()
			ws, resp, err := websocket.DefaultDialer.Dial(tc.url, tc.header)
			if tc.status != 0 {
				if err == nil || resp == nil || resp.StatusCode != tc.status {
					t.Fatalf("upgrade: %v, %v; want status %d", err, resp, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			kind := websocket.BinaryMessage
			if tc.text {
				kind = websocket.TextMessage
			}
			if err := ws.WriteMessage(kind, tc.send); err != nil {
				t.Fatal(err)
			}
			if tc.connack {
				rec.WaitReceived(t, accepted, len(tc.send))
				if got := rec.Received()[accepted]; !bytes.Equal(got, tc.send) {
					t.Errorf("upstream got %x, want %x", got, tc.send)
				}
				return
			}
			ws.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
			var answer []byte
			for {
				_, message, err := ws.ReadMessage()
				if err != nil {
					break
				}
				answer = append(answer, message...)
			}
			if tc.text && len(answer) != 0 {
				t.Errorf("a text message was answered with %x, want a close", answer)
			}
			if !tc.text && !bytes.Equal(answer, []byte{0x20, 0x02, 0x00, 0x04}) {
				t.Errorf("answered %x, want CONNACK 4 (no token)", answer)
			}
			if rec.Accepted() != accepted {
				t.Error("a refused client reached the upstream")
			}
		})
	}
}

// TestWebSocketSubprotocol: an upgrade that offers mqtt or mqttv3.1 gets
// it; one that offers neither is served without a subprotocol, or refused
// with 400 when RequireSubprotocol is set (fail_if_no_subprotocol).
func TestWebSocketSubprotocol(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	for _, require := range []bool{false, true} {
		p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}}
		logs := observe(p)
		url := startWebSocketProxy(t, p, &transport.WebSocketListener{RequireSubprotocol: require}, nil)
		for _, tc := range []struct {
			offered []string
			want    string // the subprotocol agreed, or "refused"
		}{
			{[]string{"mqtt"}, "mqtt"},
			{[]string{"mqttv3.1"}, "mqttv3.1"},
			{[]string{"chat", "mqttv3.1", "mqtt"}, "mqtt"},
			{nil, "refused"},
			{[]string{"chat"}, "refused"},
		} {
			want := tc.want
			if want == "refused" && !require {
				want = ""
			}
			t.Run(fmt.Sprintf("require=%v/offered=%v", require, tc.offered), func(t *testing.T) {
				ws, resp, err := (&websocket.Dialer{Subprotocols: tc.offered}).Dial(url, nil)
				if want == "refused" {
					if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
						t.Fatalf("upgrade: %v, %v; want status 400", err, resp)
					}
					waitLog(t, logs, "WebSocket upgrade refused")
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				defer ws.Close()
				if got := ws.Subprotocol(); got != want {
					t.Errorf("subprotocol %q, want %q", got, want)
				}
			})
		}
	}
}

// TestWebSocketLimitsAtAccept: on a WebSocket listener the limits apply
// to each TCP connection as it is accepted, before its upgrade is read, as
// on a TCP listener: sockets that send half an upgrade request are
// bounded by the pending cap, the per-IP rate and the connection cap,
// and a real client still gets in.
func TestWebSocketLimitsAtAccept(t *testing.T) {
	halfUpgrade := func(t *testing.T, src, addr string) net.Conn {
		c := dialFrom(t, src, addr)
		if _, err := io.WriteString(c, "GET /mqtt HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	start := func(t *testing.T, l Limits) (p *Proxy, rec *proxytest.Recorder, addr, url string) {
		rec = proxytest.NewRecorder(t, "")
		p = &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}, Limits: l}
		observe(p)
		ws := &transport.WebSocketListener{}
		url = startWebSocketProxy(t, p, ws, nil)
		waitServing(t, p)
		return p, rec, ws.Listener.Addr().String(), url
	}
	// through connects a WebSocket client from src that sends a good
	// CONNECT, and waits until the broker has it.
	through := func(t *testing.T, src, url string, rec *proxytest.Recorder, conn int) {
		d := websocket.Dialer{NetDialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext}
		ws, _, err := d.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		pk := connectPacket(t, packets.ProtocolV311, "good")
		if err := ws.WriteMessage(websocket.BinaryMessage, pk); err != nil {
			t.Fatal(err)
		}
		rec.WaitReceived(t, conn, len(pk))
	}
	sessions := func(p *Proxy) (open, pending int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.sessions), p.pending.Len()
	}

	t.Run("pending cap", func(t *testing.T) {
		proxytest.VerifyNoLeaks(t)
		p, rec, addr, url := start(t, Limits{MaxPendingConnects: 3})
		var idle []net.Conn
		for range 20 {
			idle = append(idle, halfUpgrade(t, "127.0.0.4", addr))
		}
		waitFor(t, func() bool { open, pending := sessions(p); return open == 3 && pending == 3 })
		if !closedAtAccept(t, idle[0]) {
			t.Error("the oldest half upgrade is still open past the pending cap")
		}
		through(t, "127.0.0.5", url, rec, 0)
		for _, c := range idle {
			c.Close()
		}
		// Each half upgrade's session ends with its socket.
		waitFor(t, func() bool { open, pending := sessions(p); return open == 1 && pending == 0 })
	})

	t.Run("per-IP rate", func(t *testing.T) {
		proxytest.VerifyNoLeaks(t)
		_, rec, addr, url := start(t, Limits{PerIPConnectRate: 0.01, PerIPConnectBurst: 2})
		for i := range 2 {
			if !stillOpen(t, halfUpgrade(t, "127.0.0.2", addr)) {
				t.Fatalf("half upgrade %d within the burst was closed", i+1)
			}
		}
		if !closedAtAccept(t, halfUpgrade(t, "127.0.0.2", addr)) {
			t.Error("third connection from one IP beyond its burst was not closed at accept")
		}
		through(t, "127.0.0.3", url, rec, 0) // counted once, at accept: not again once upgraded
	})

	t.Run("connection cap", func(t *testing.T) {
		proxytest.VerifyNoLeaks(t)
		p, rec, addr, url := start(t, Limits{MaxConnections: 2})
		through(t, "127.0.0.6", url, rec, 0)
		half := halfUpgrade(t, "127.0.0.6", addr)
		if !stillOpen(t, half) {
			t.Fatal("second connection closed under a limit of 2")
		}
		if !closedAtAccept(t, halfUpgrade(t, "127.0.0.6", addr)) {
			t.Error("third connection was not closed at accept")
		}
		half.Close()
		waitFor(t, func() bool { open, _ := sessions(p); return open == 1 })
	})
}

// TestWebSocketEvictedBeforeUpgrade: a WebSocket connection evicted
// before its upgrade has been read is logged and counted in
// authentications_total, as a TCP connection evicted before its CONNECT
// is: one line and one count per eviction.
func TestWebSocketEvictedBeforeUpgrade(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	core, logs := observer.New(zap.InfoLevel)
	reg := prometheus.NewRegistry()
	p := &Proxy{Upstream: proxytest.ClosedAddr(t), Verifier: passwordVerifier{}, Limits: Limits{MaxPendingConnects: 1},
		Logger: zap.New(core), Metrics: NewMetrics(reg, "test")}
	ws := &transport.WebSocketListener{}
	startWebSocketProxy(t, p, ws, nil)
	waitServing(t, p)
	addr := ws.Listener.Addr().String()
	pending := func() int { p.mu.Lock(); defer p.mu.Unlock(); return p.pending.Len() }

	victim := dial(t, addr)
	waitFor(t, func() bool { return pending() == 1 })
	dial(t, addr)
	if !closedAtAccept(t, victim) {
		t.Fatal("the oldest pending connection was not evicted")
	}
	waitLog(t, logs, "connect rejected", zap.String("reason", limitPending), zap.String("remote", victim.LocalAddr().String()))
	limited := gathered(t, reg, "mqtt_jwt_proxy_limit_rejections_total", "kind="+limitPending)
	counted := gathered(t, reg, "mqtt_jwt_proxy_authentications_total", "outcome=refused", "reason="+limitPending)
	if lines := logs.FilterField(zap.String("reason", limitPending)).Len(); limited != 1 || counted != 1 || lines != 1 {
		t.Errorf("one eviction: limit_rejections_total %v, authentications_total %v, %d log lines; want 1 each", limited, counted, lines)
	}
}

// TestReloadBetweenAcceptAndConnect: a WebSocket client accepted just
// before a reload upgrades and sends its CONNECT long after. It is decided
// by the configuration it came under, whose JWKS chain stays open until
// then (the new one, with another key set, would refuse it); the channel
// Reload returns closes once it has been decided, not before.
func TestReloadBetweenAcceptAndConnect(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	key := keyPair(t, "p256")
	keys, otherKeys := startJWKSServer(t), startJWKSServer(t)
	keys.publish(t, map[string]crypto.Signer{"k1": key})
	otherKeys.publish(t, map[string]crypto.Signer{"k2": keyPair(t, "p256")})
	// Closed by the test, once retired, as the command does.
	old, err := authn.New([]configs.Authenticator{{Name: "jwks", Mechanism: "jwt", UseJWKS: true, Endpoint: keys.URL}})
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Upstream: rec.Addr, Verifier: old}
	ws := &transport.WebSocketListener{}
	url := startWebSocketProxy(t, p, ws, nil)
	waitServing(t, p)

	raw := dial(t, ws.Listener.Addr().String())
	waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.sessions) == 1 }) // accepted
	retired := p.Reload(jwtChain(t, configs.Authenticator{Name: "jwks", Mechanism: "jwt", UseJWKS: true, Endpoint: otherKeys.URL}), Limits{}, nil, Authorization{})
	oldClosed := make(chan struct{})
	go func() { <-retired; old.Close(); close(oldClosed) }()

	conn, _, err := (&websocket.Dialer{NetDial: func(string, string) (net.Conn, error) { return raw, nil }}).Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-oldClosed:
		t.Fatal("the replaced chain was closed while a client accepted under it had not sent its CONNECT")
	default:
	}
	pk := connectAs(t, packets.ProtocolV311, "dev-1", signJWT(t, jwa.ES256, key, "k1", "dev-1"))
	if err := conn.WriteMessage(websocket.BinaryMessage, pk); err != nil {
		t.Fatal(err)
	}
	rec.WaitReceived(t, 0, len(pk)) // accepted, by the chain it came under
	select {
	case <-oldClosed:
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatal("the replaced chain was not retired once the last client accepted under it was decided")
	}

	// A client accepted after the reload gets the new chain, which knows
	// no key of this one.
	after, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { after.Close() })
	if err := after.WriteMessage(websocket.BinaryMessage, pk); err != nil {
		t.Fatal(err)
	}
	after.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	if _, got, err := after.ReadMessage(); err != nil || !bytes.Equal(got, []byte{0x20, 0x02, 0x00, 0x05}) {
		t.Errorf("a client accepted after the reload got %x, %v; want CONNACK 5", got, err)
	}
	conn.Close()
}
