package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// binary is the command built once for the tests that run it as a real
// process, to send it real signals.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mqtt-jwt-proxy-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "mqtt-jwt-proxy")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		panic("building the command: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// process is the proxy running as a child process.
type process struct {
	cmd    *exec.Cmd
	lines  chan map[string]any
	addr   string
	admin  string // the admin endpoint's base URL, when metrics.bind is set
	config string
	exited chan error
}

// startProcess writes config (a YAML text with listener 127.0.0.1:0) and
// runs the proxy on it until the test ends.
func startProcess(t *testing.T, config string) *process {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "-config", path)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, lines: logLines(stderr), config: path, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
	})
	for p.addr == "" { // the admin endpoint starts before the listeners
		switch line := waitForLog(t, p.lines, ""); line["msg"] {
		case "admin endpoint started":
			p.admin = "http://" + line["address"].(string)
		case "listening":
			p.addr = line["address"].(string)
		}
	}
	return p
}

// kill ends the proxy at once, as a crash or kill -9 would, and waits
// until it has exited.
func (p *process) kill(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	err := <-p.exited
	p.exited <- err // for the cleanup
}

func (p *process) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func hsToken(t *testing.T, secret, sub string) string {
	t.Helper()
	tok, err := mintToken(tokenRequest{Alg: jwa.HS256, Key: []byte(secret), Subject: sub, TTL: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func proxyConfig(upstream, secret string) string {
	return `
listeners: [{name: tcp, bind: "127.0.0.1:0"}]
upstream: {address: "` + upstream + `"}
authentication:
  - {mechanism: jwt, algorithm: hmac-based, secret: "` + secret + `"}
shutdown: {drain_timeout: 3s}
log: {format: json}
`
}

// TestReload: SIGHUP applies a new secret to new connections, keeps the
// connections made before it exchanging messages, and rejects a broken
// file while the running configuration stays in force.
func TestReload(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	p := startProcess(t, proxyConfig(broker.Addr, "first-secret"))
	client := func(id, token string, args ...string) []string {
		return append(append(proxytest.AddrArgs(t, p.addr), "-V", "mqttv311", "-i", id, "-u", id, "-P", token), args...)
	}

	sub := proxytest.StartSub(t, client("sub", hsToken(t, "first-secret", "sub"), "-t", "reload/#", "-v")...)
	if sub.Connack() != 0 {
		t.Fatalf("subscriber refused before reload: %s", sub.Output())
	}

	os.WriteFile(p.config, []byte(proxyConfig(broker.Addr, "second-secret")), 0o600)
	p.signal(t, syscall.SIGHUP)
	waitForLog(t, p.lines, "configuration reloaded")

	if res := proxytest.Pub(t, client("old", hsToken(t, "first-secret", "old"), "-t", "reload/x", "-m", "old")...); res.Connack != 5 {
		t.Errorf("token with the old secret after reload: CONNACK %d, want 5\n%s", res.Connack, res.Output)
	}
	if res := proxytest.Pub(t, client("new", hsToken(t, "second-secret", "new"), "-t", "reload/x", "-m", "new")...); res.Connack != 0 {
		t.Errorf("token with the new secret after reload: CONNACK %d, want 0\n%s", res.Connack, res.Output)
	}
	if msg, ok := sub.Next(10 * time.Second); !ok || msg != "reload/x new" {
		t.Errorf("subscriber connected before the reload got %q, %v; want the new message", msg, ok)
	}

	// What a reload cannot apply is named, key by key, and left as it was.
	changed := strings.Replace(proxyConfig(broker.Addr, "second-secret"), "log: {format: json}", "log: {format: console}", 1)
	changed += "tuning: {relay: portable}\n"
	os.WriteFile(p.config, []byte(changed), 0o600)
	p.signal(t, syscall.SIGHUP)
	warning := waitForLog(t, p.lines, "these changes take effect at the next restart; the rest is reloaded")
	if keys := fmt.Sprint(warning["keys"]); keys != "[log.format tuning.relay]" {
		t.Errorf("the reload warning names %s, want [log.format tuning.relay]", keys)
	}
	waitForLog(t, p.lines, "configuration reloaded") // still JSON: the log was kept

	os.WriteFile(p.config, []byte("listeners: [{bind: nowhere}]\n"), 0o600)
	p.signal(t, syscall.SIGHUP)
	waitForLog(t, p.lines, "reload rejected")
	if res := proxytest.Pub(t, client("after", hsToken(t, "second-secret", "after"), "-t", "reload/x", "-m", "still")...); res.Connack != 0 {
		t.Errorf("after a rejected reload: CONNACK %d, want 0 (the running config)\n%s", res.Connack, res.Output)
	}
}

// TestDrain: SIGTERM closes the listeners at once, lets connected clients
// run until the drain timeout, then closes them and exits 0.
func TestDrain(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	p := startProcess(t, proxyConfig(broker.Addr, "drain-secret"))
	sub := proxytest.StartSub(t, append(proxytest.AddrArgs(t, p.addr), "-i", "drainer", "-u", "d", "-P", hsToken(t, "drain-secret", "d"), "-t", "drain/#")...)
	if sub.Connack() != 0 {
		t.Fatalf("subscriber refused: %s", sub.Output())
	}

	start := time.Now()
	p.signal(t, syscall.SIGTERM)
	waitForLog(t, p.lines, "listeners closed; draining")
	if c, err := net.Dial("tcp", p.addr); err == nil {
		c.Close()
		t.Error("a new connection was accepted while draining")
	}
	select {
	case err := <-p.exited:
		took := time.Since(start)
		if err != nil {
			t.Errorf("exit: %v, want status 0", err)
		}
		if took < 2*time.Second {
			t.Errorf("exited after %v with a client connected, before the 3s drain timeout", took)
		}
		p.exited <- err // for the cleanup
	case <-time.After(15 * time.Second):
		t.Fatal("the proxy did not exit within the drain timeout")
	}
	sub.Stop()
	if out := sub.Output(); !strings.Contains(out, "CONNACK") {
		t.Errorf("subscriber output has no CONNACK: %s", out)
	}
}

// TestReloadBeforeWebSocketConnect: a WebSocket client whose TCP
// connection was accepted just before SIGHUP upgrades later, and sends
// its CONNECT later still: after connect_timeout has passed since the
// reload, but within connect_timeout of its upgrade, which is when its
// CONNECT deadline starts. The chain it came under, a JWKS one, must still
// decide it: a reload never refuses a client that the old and the new
// configuration both accept. The waits are the scenario: time that must
// pass, for which there is no signal.
func TestReloadBeforeWebSocketConnect(t *testing.T) {
	const connectTimeout = 6 * time.Second
	broker := proxytest.StartMosquitto(t)
	keys, key := signingJWKSServer(t)
	p := startProcess(t, `
listeners: [{name: ws, bind: "127.0.0.1:0", websocket: {}}]
upstream: {address: "`+broker.Addr+`"}
authentication:
  - {name: jwks, mechanism: jwt, use_jwks: true, endpoint: "`+keys.URL+`"}
limits: {connect_timeout: `+connectTimeout.String()+`}
log: {format: json}
`)
	token, err := mintToken(tokenRequest{Alg: jwa.ES256, Key: key, KeyID: "k1", Subject: "browser", TTL: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	accepted := time.Now()
	raw, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	p.signal(t, syscall.SIGHUP)
	waitForLog(t, p.lines, "configuration reloaded")
	reloaded := time.Now()

	// The upgrade, well within the handshake timeout (connect_timeout,
	// from the accept).
	time.Sleep(time.Until(accepted.Add(connectTimeout * 7 / 10)))
	ws, _, err := (&websocket.Dialer{Subprotocols: []string{"mqtt"}, NetDial: func(string, string) (net.Conn, error) { return raw, nil }}).
		Dial("ws://"+p.addr+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	// The CONNECT, past connect_timeout since the reload, and well within
	// it since the upgrade.
	time.Sleep(time.Until(reloaded.Add(connectTimeout * 12 / 10)))
	pk := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 4, CleanStart: true, ClientID: "browser",
		UsernameFlag: true, Username: "browser", PasswordFlag: true, Password: []byte(token)}
	connect, err := pk.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, connect); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, ack, err := ws.ReadMessage(); err != nil || !bytes.Equal(ack, []byte{0x20, 0x02, 0x00, 0x00}) {
		t.Errorf("the client accepted before the reload got %x, %v; want CONNACK 0", ack, err)
	}
}
