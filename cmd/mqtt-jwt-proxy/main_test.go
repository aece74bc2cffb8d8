package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// The example tokens of EMQX's JWT documentation (the project's seeds):
// HS256 with the secret "secret", and with "emqxsecret" and an exp far
// in the future.
const (
	seedToken     = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkVNUVggQ2xvdWQiLCJpYXQiOjE1MTYyMzkwMjJ9.wGxZTwkCZtYPzkS854aQ9WCnP8YGIQ_erFh5RIznhYk"
	seedTokenEMQX = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJkYXRhIjp7ImF1dGhvciI6IndpdndpdiIsInNpdGUiOiJodHRwczovL3dpdndpdi5jb20ifSwiZXhwIjoxNTgyMjU1MzYwNjQyMDAwMCwiaWF0IjoxNTgyMjU1MzYwfQ.FdyAx2fYahm6h3g47m88ttyINzptzKy_speimyUcma4"
)

func TestCheckExampleConfigs(t *testing.T) {
	t.Setenv("JWT_SECRET", "c2VjcmV0LWZvci10ZXN0cw==")
	paths, err := filepath.Glob("../../configs/*.yaml")
	if err != nil || len(paths) < 3 {
		t.Fatalf("example configs: %v %v", paths, err)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(context.Background(), []string{"check", "-config", path}, &out, &errOut); code != 0 {
				t.Fatalf("check exited %d: %s", code, errOut.String())
			}
			if !strings.Contains(out.String(), "OK") {
				t.Errorf("check printed %q", out.String())
			}
		})
	}
}

// TestServeSessionsAPI: with an admin token, serve serves the sessions API
// on the admin endpoint: 401 without the token, the sessions with it, each
// call logged with the caller's address.
func TestServeSessionsAPI(t *testing.T) {
	t.Setenv("MQTT_JWT_PROXY_TEST_ADMIN_TOKEN", testAdminToken)
	lines, stop := serveInProcess(t, "listeners: [{bind: \"127.0.0.1:0\"}]\nupstream: {address: \"127.0.0.1:1\"}\n"+
		"authentication: [{mechanism: jwt, algorithm: hmac-based, secret: "+adminTestSecret+"}]\n"+
		"metrics: {bind: \"127.0.0.1:0\", admin_token_env: MQTT_JWT_PROXY_TEST_ADMIN_TOKEN}\nlog: {format: json}\n")
	defer stop()
	started := waitForLog(t, lines, "admin endpoint started")
	if started["sessions_api"] != true {
		t.Errorf("admin endpoint started with sessions_api %v, want true", started["sessions_api"])
	}
	url := "http://" + started["address"].(string) + "/sessions"
	if status, _, body := adminRequest(t, http.MethodGet, url, ""); status != http.StatusUnauthorized {
		t.Errorf("GET /sessions without the token: %d %s, want 401", status, body)
	}
	refused := waitForLog(t, lines, "admin request refused")
	if remote, _ := refused["remote"].(string); !strings.HasPrefix(remote, "127.0.0.1:") {
		t.Errorf("the refusal was logged with remote %q, want the caller's address", remote)
	}
	if status, _, body := adminRequest(t, http.MethodGet, url, testAdminToken); status != http.StatusOK || body != "[]\n" {
		t.Errorf("GET /sessions with the token: %d %q, want 200 and no sessions", status, body)
	}
	listed := waitForLog(t, lines, "sessions listed")
	if remote, _ := listed["remote"].(string); !strings.HasPrefix(remote, "127.0.0.1:") {
		t.Errorf("the call was logged with remote %q, want the caller's address", remote)
	}
}

func TestCheckReportsErrors(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct {
		yaml string
		want []string
	}{
		"unknown key": {"listeners: [{bind: ':1883', port: 1}]\n", []string{"listeners[0].port: unknown key"}},
		"bad base64": {`listeners: [{bind: ":1883"}]
upstream: {address: "127.0.0.1:1884"}
authentication:
  - {mechanism: jwt, algorithm: hmac-based, secret: "%%%", secret_base64_encoded: true}
`, []string{"secret"}},
		// The checks YAML validation cannot make, each reported.
		"every build problem": {`listeners: [{bind: ":1883"}]
upstream: {address: "127.0.0.1:1884"}
forward: {username: "${claims.}"}
authentication:
  - mechanism: jwt
    algorithm: hmac-based
    secret: s
    verify_claims: {sub: "${clientid", tenant: "${nope}"}
  - mechanism: jwt
    algorithm: public-key
    public_key: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    verify_claims: {exp: "1"}
`, []string{"forward.username:", "authentication[0] (jwt): verify_claims.sub:", "authentication[0] (jwt): verify_claims.tenant:", "authentication[1] (jwt#2): verify_claims: exp may not be named", "authentication[1] (jwt#2): public_key:"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
			os.WriteFile(path, []byte(tc.yaml), 0o600)
			var out, errOut bytes.Buffer
			if code := run(context.Background(), []string{"check", "-config", path}, &out, &errOut); code != 1 {
				t.Errorf("check exited %d, want 1", code)
			}
			for _, want := range tc.want {
				if !strings.Contains(errOut.String(), want) {
					t.Errorf("check said %q, want it to mention %q", errOut.String(), want)
				}
			}
		})
	}
}

func TestUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"frobnicate"}, &out, &errOut); code != 2 {
		t.Errorf("unknown command exited %d, want 2", code)
	}
	if code := run(context.Background(), []string{"check"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "-config FILE (or $MQTT_JWT_PROXY_CONFIG) is required") {
		t.Errorf("check without -config exited %d: %q", code, errOut.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "mqtt-jwt-proxy ") {
		t.Errorf("version exited %d: %q", code, out.String())
	}
}

// TestHelp: -h without a command lists every command, one line each, and
// says how to get a command's flags; each command's -h gives its own.
func TestHelp(t *testing.T) {
	t.Setenv("MQTT_JWT_PROXY_CONFIG", "")
	commands := []string{"serve", "check", "version", "token", "keygen", "verify", "sessions", "help"}
	for _, args := range [][]string{{"-h"}, {"-help"}, {"help"}} {
		code, stdout, stderr := runCommand(t, args...)
		if code != 0 {
			t.Errorf("%s exited %d, want 0 (stderr %q)", args[0], code, stderr)
		}
		for _, cmd := range commands {
			listed := 0
			for line := range strings.Lines(stdout) {
				if strings.HasPrefix(line, "  mqtt-jwt-proxy "+cmd+" ") || strings.HasPrefix(line, "  mqtt-jwt-proxy ["+cmd+"] ") {
					listed++
				}
			}
			if listed != 1 {
				t.Errorf("%s lists %s on %d lines, want 1:\n%s", args[0], cmd, listed, stdout)
			}
		}
		if !strings.Contains(stdout, "mqtt-jwt-proxy COMMAND -h") {
			t.Errorf("%s does not say how to get a command's flags:\n%s", args[0], stdout)
		}
	}
	for _, cmd := range commands[:len(commands)-1] {
		if cmd == "version" {
			continue // no flags
		}
		args := []string{cmd, "-h"}
		if cmd == "sessions" {
			args = []string{cmd, "list", "-h"} // "sessions -h" names the subcommands
		}
		code, _, stderr := runCommand(t, args...)
		if code != 0 || !strings.HasPrefix(stderr, "usage: mqtt-jwt-proxy "+cmd+" ") || !strings.Contains(stderr, "\n  -") {
			t.Errorf("%q exited %d and printed %q, want its usage and flags", args, code, stderr)
		}
	}
	code, _, stderr := runCommand(t, "sessions", "-h")
	if code != 0 || !strings.Contains(stderr, "usage: mqtt-jwt-proxy sessions list ") || !strings.Contains(stderr, "\n       mqtt-jwt-proxy sessions kick ") {
		t.Errorf("sessions -h exited %d and printed %q, want the usage of list and kick", code, stderr)
	}
}

// TestErrorPrefix: every error a command prints, from its flags or from
// its work, starts "mqtt-jwt-proxy COMMAND: ".
func TestErrorPrefix(t *testing.T) {
	t.Setenv("MQTT_JWT_PROXY_CONFIG", "")
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	tests := []struct {
		args     []string
		wantCode int
	}{
		{[]string{"check"}, 2},
		{[]string{"check", "-config", missing}, 1},
		{[]string{"serve", "-config", missing, "extra"}, 2},
		{[]string{"-config", missing}, 1},
		{[]string{"token", "-x"}, 2},
		{[]string{"token", "-ttl", "-1h", "-secret", "s"}, 1},
		{[]string{"keygen", "extra"}, 2},
		{[]string{"keygen", "-bits", "2048"}, 1},
		{[]string{"verify"}, 2},
		{[]string{"verify", "-config", missing, "-from", "cookie", "TOKEN"}, 2},
		{[]string{"verify", "-config", missing, "TOKEN"}, 1},
		{[]string{"version", "-x"}, 2},
		{[]string{"version", "extra"}, 2},
		{[]string{"sessions"}, 2},
		{[]string{"sessions", "kick", "-admin", "http://127.0.0.1:9", "-token-file", missing}, 2},
		{[]string{"sessions", "list", "-admin", "http://127.0.0.1:9", "-token-file", missing}, 1},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := "serve"
			if !strings.HasPrefix(tt.args[0], "-") {
				cmd = tt.args[0]
			}
			code, _, stderr := runCommand(t, tt.args...)
			if code != tt.wantCode || !strings.HasPrefix(stderr, "mqtt-jwt-proxy "+cmd+": ") {
				t.Errorf("exited %d with %q; want %d and an error starting %q", code, stderr, tt.wantCode, "mqtt-jwt-proxy "+cmd+": ")
			}
		})
	}
}

// TestServeQuickstart runs the proxy as the README's first command does,
// on the embedded broker, and connects with the seed documents' tokens.
func TestServeQuickstart(t *testing.T) {
	for _, tc := range []struct{ name, config, token, extra string }{
		{"quickstart.yaml", "quickstart.yaml", seedToken, ""},
		{"emqx4-compat.yaml", "emqx4-compat.yaml", seedTokenEMQX, ""},
		{"quickstart.yaml, portable relay", "quickstart.yaml", seedToken, "tuning: {relay: portable}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := os.ReadFile(filepath.Join("../../configs", tc.config))
			if err != nil {
				t.Fatal(err)
			}
			// Same file, but on a free port, in front of the embedded broker, logging JSON.
			text := strings.Replace(string(cfg), `"127.0.0.1:1883"`, `"127.0.0.1:0"`, 1)
			text = strings.Replace(text, `"127.0.0.1:1884"`, "embedded", 1)
			text = strings.Replace(text, "format: console", "format: json", 1) + tc.extra
			lines, stop := serveInProcess(t, text)
			waitForLog(t, lines, "secret published in documentation")
			addr := waitForLog(t, lines, "listening")["address"].(string)

			for token, want := range map[string]byte{tc.token: 0, tc.token + "x": 5} {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				pk := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 4, CleanStart: true, ClientID: "seed",
					UsernameFlag: true, Username: "any", PasswordFlag: true, Password: []byte(token)}
				raw, err := pk.Encode()
				if err != nil {
					t.Fatal(err)
				}
				c.Write(raw)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				ack := make([]byte, 4)
				if _, err := io.ReadFull(c, ack); err != nil || ack[3] != want {
					t.Errorf("CONNACK %x (%v), want return code %d", ack, err, want)
				}
				c.Close()
			}
			stop()
		})
	}
}

// serveInProcess runs the serve command on the configuration text in this
// process, as the binary would, and returns its log lines and a stop
// function that cancels it and checks it exits 0.
func serveInProcess(t *testing.T, config string) (lines chan map[string]any, stop func()) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logR, logW := io.Pipe()
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"-config", path}, io.Discard, logW)
		logW.Close()
	}()
	lines = logLines(logR)
	return lines, func() {
		cancel()
		if code := <-exited; code != 0 {
			t.Errorf("serve exited %d after cancel, want 0", code)
		}
		for range lines {
		}
	}
}

func logLines(r io.Reader) chan map[string]any {
	lines := make(chan map[string]any, 1<<16) // more than a test logs, fleets of devices included: the child never blocks on it
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
	}()
	return lines
}

// waitForLog returns the first line whose message contains msg. The lines
// come in order, so lines before it are passed over.
func waitForLog(t *testing.T, lines chan map[string]any, msg string) map[string]any {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("log ended before %q", msg)
			}
			if s, _ := m["msg"].(string); strings.Contains(s, msg) {
				return m
			}
		case <-timeout:
			t.Fatalf("no log line %q", msg)
		}
	}
}

// writeCounter counts the writes that reach w, and the syncs asked of
// it, as of a file.
type writeCounter struct {
	w      io.Writer
	writes int
	syncs  int
}

func (c *writeCounter) Sync() error {
	c.syncs++
	return nil
}

func (c *writeCounter) Write(p []byte) (int, error) {
	c.writes++
	return c.w.Write(p)
}

// TestServeLogsInBatches checks that a burst of decisions reaches stderr
// in a few writes, that the lines still waiting when serve stops are
// written, and that stderr is never fsynced.
func TestServeLogsInBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	config := `listeners:
  - name: tcp
    bind: "127.0.0.1:0"
upstream:
  address: embedded
authentication:
  - mechanism: jwt
    algorithm: hmac-based
    secret: "secret"
log:
  format: json
`
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logR, logW := io.Pipe()
	out := &writeCounter{w: logW}
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"-config", path}, io.Discard, out)
		logW.Close()
	}()
	lines := logLines(logR)
	addr := waitForLog(t, lines, "listening")["address"].(string)

	const clients = 40
	pk := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 4, CleanStart: true, ClientID: "burst",
		UsernameFlag: true, Username: "any", PasswordFlag: true, Password: []byte(seedToken + "x")}
	raw, err := pk.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for range clients {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(raw)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil || ack[3] != 5 {
			t.Fatalf("CONNACK %x (%v), want return code 5", ack, err)
		}
		c.Close()
	}
	cancel()
	if code := <-exited; code != 0 {
		t.Errorf("serve exited %d after cancel, want 0", code)
	}
	refused, total := 0, 1 // "listening", read above
	for m := range lines {
		total++
		if m["msg"] == "authentication refused" {
			refused++
		}
	}
	if refused != clients {
		t.Errorf("%d refusals logged, want %d", refused, clients)
	}
	if out.writes > total/2 {
		t.Errorf("%d log lines took %d writes; want them batched", total, out.writes)
	}
	if out.syncs != 0 {
		t.Errorf("stderr was synced %d times; want flushes only", out.syncs)
	}
}

// TestProxyLimits: every limit of the file reaches the proxy.
func TestProxyLimits(t *testing.T) {
	cfg, err := configs.Parse([]byte(`listeners: [{name: edge, bind: "127.0.0.1:1883", max_connections: 7}]
upstream: {address: embedded}
authentication: [{mechanism: jwt, algorithm: hmac-based, secret: s}]
limits:
  connect_timeout: 3s
  max_connect_size: 4096
  max_packet_size: 65536
  max_connections: 100
  max_pending_connects: 50
  max_pending_connect_bytes: 1000000
  per_ip_connect_rate: 5
  per_ip_connect_burst: 10
  per_client_id_connect_rate: 0.5
  per_client_id_connect_burst: 2
`))
	if err != nil {
		t.Fatal(err)
	}
	got := proxyLimits(cfg)
	want := proxy.Limits{
		ConnectTimeout: 3 * time.Second, MaxConnectSize: 4096, MaxPacketSize: 65536, MaxConnections: 100,
		MaxListenerConnections: map[string]int{"edge": 7}, MaxPendingConnects: 50, MaxPendingConnectBytes: 1000000,
		PerIPConnectRate: 5, PerIPConnectBurst: 10, PerClientIDConnectRate: 0.5, PerClientIDConnectBurst: 2,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("proxyLimits = %+v, want %+v", got, want)
	}
	v := reflect.ValueOf(want)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Errorf("the test leaves proxy.Limits.%s unset: add its key above", v.Type().Field(i).Name)
		}
	}
}

// TestConfigWarnings: serve logs each warning about the configuration at
// start, as a warning with its values, and check prints the same.
func TestConfigWarnings(t *testing.T) {
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no keys here", http.StatusServiceUnavailable)
	}))
	defer jwks.Close()
	tests := []struct {
		name           string
		authentication string
		message        string
		fields         map[string]any
	}{
		{"refresh_interval raised", `{mechanism: jwt, use_jwks: true, endpoint: "` + jwks.URL + `", refresh_interval: 2s}`,
			"refresh_interval is under the minimum, which is used instead", map[string]any{"configured": "2s", "effective": "10s"}},
		{"secret from documentation", `{mechanism: jwt, algorithm: hmac-based, secret: "secret"}`,
			"authenticator uses a secret published in documentation; anyone can mint tokens for it", nil},
		{"secret shorter than the hash", `{mechanism: jwt, algorithm: hmac-based, secret: "` + strings.Repeat("k", 40) + `"}`,
			"HMAC secret is shorter than the hash output of algorithms it verifies (RFC 7518 section 3.2: 32 bytes for HS256, 48 for HS384, 64 for HS512)",
			map[string]any{"secret_bytes": float64(40)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			config := "listeners: [{name: tcp, bind: \"127.0.0.1:0\"}]\nupstream: {address: embedded}\nauthentication:\n  - " +
				tt.authentication + "\nlog: {format: json}\n"
			lines, stop := serveInProcess(t, config)
			var logged map[string]any // the warning, at start: before serve listens
			for line := range lines {
				if line["msg"] == tt.message {
					logged = line
				}
				if line["msg"] == "listening" {
					break
				}
			}
			stop()
			if logged["level"] != "warn" || logged["authenticator"] != "jwt" {
				t.Errorf("serve logged %v, want a warning about authenticator jwt", logged)
			}
			for key, want := range tt.fields {
				if logged[key] != want {
					t.Errorf("serve logged %s=%v, want %v", key, logged[key], want)
				}
			}

			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := runCommand(t, "check", "-config", path)
			if code != 0 || !strings.Contains(stderr, "warn\t"+tt.message) {
				t.Errorf("check exited %d and said %q, want 0 and the warning %q", code, stderr, tt.message)
			}
			for key, want := range tt.fields {
				value, _ := json.Marshal(want)
				if field := fmt.Sprintf("%q: %s", key, value); !strings.Contains(stderr, field) {
					t.Errorf("check said %q, want %s in it", stderr, field)
				}
			}
		})
	}
}

// TestTokenInUsernameHint: mosquitto_pub with the token as its user name
// and no password, to a proxy that reads the password, is refused, and
// the log line says where the token went; verify says the same. With
// on_missing_jwt: ignore the authenticator passes and the chain refuses
// (not_authorized), with the same hint.
func TestTokenInUsernameHint(t *testing.T) {
	const hint = "the user name looks like a JWT; this authenticator reads from: password"
	for _, tc := range []struct {
		name, chain string
		connack     int
		reason      string
	}{
		{"the authenticator refuses", hmacChain, 4, "token_missing"},
		{"every authenticator passes", "  - {mechanism: jwt, algorithm: hmac-based, secret: secret, on_missing_jwt: ignore}\n", 5, "not_authorized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			config := "listeners: [{name: tcp, bind: \"127.0.0.1:0\"}]\nupstream: {address: embedded}\n" +
				"authentication:\n" + tc.chain + "log: {format: json}\n"
			lines, stop := serveInProcess(t, config)
			defer stop()
			addr := waitForLog(t, lines, "listening")["address"].(string)

			res := proxytest.Pub(t, append(proxytest.AddrArgs(t, addr), "-V", "mqttv311", "-i", "c1", "-u", seedToken, "-t", "x", "-m", "y")...)
			if res.Connack != tc.connack {
				t.Errorf("CONNACK %d, want %d\n%s", res.Connack, tc.connack, res.Output)
			}
			refused := waitForLog(t, lines, "authentication refused")
			if refused["reason"] != tc.reason || refused["hint"] != hint {
				t.Errorf("refusal logged reason %v, hint %v; want %s, %q", refused["reason"], refused["hint"], tc.reason, hint)
			}

			code, stdout, _ := runCommand(t, "verify", "-config", writeConfig(t, tc.chain), "-from", "username", seedToken)
			if code != 1 || !strings.Contains(stdout, "hint (jwt): "+hint) || !strings.Contains(stdout, "("+tc.reason+")") {
				t.Errorf("verify -from username exited %d and said %q, want 1, %s and the hint", code, stdout, tc.reason)
			}
		})
	}
}
