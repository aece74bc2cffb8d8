package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// The tests of this file run the built proxy in front of mosquitto, with
// real MQTT clients, and call its sessions API over HTTP, with curl's
// requests and through the sessions command.

const e2eSecret = "sessions-e2e-secret-of-more-than-32-bytes"

// sessionClaims says what a test token carries besides sub and exp.
type sessionClaims struct {
	jti    string
	issued time.Time // iat; zero: now
	// framed adds topic rules (an acl claim): the proxy frames the
	// session, and can end an MQTT 5 one with a DISCONNECT.
	framed bool
}

// e2eToken is a token of e2eSecret for sub, valid for an hour.
func e2eToken(t *testing.T, sub string, c sessionClaims) string {
	t.Helper()
	claims := map[string]any{}
	if c.jti != "" {
		claims["jti"] = c.jti
	}
	if !c.issued.IsZero() {
		claims["iat"] = c.issued.Unix()
	}
	if c.framed {
		claims["acl"] = []any{map[string]any{"permission": "deny", "action": "publish", "topic": "forbidden/#"}}
	}
	tok, err := mintToken(tokenRequest{Alg: jwa.HS256, Key: []byte(e2eSecret), Subject: sub, TTL: time.Hour, Claims: claims}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// v5Client is a paho MQTT 5 client connected through the proxy, whose
// connection's end the test sees.
type v5Client struct {
	*paho.Client
	local string // the client's address, as the proxy sees it
	ends  proxytest.Ending
}

// connectV5 connects a paho MQTT 5 client to addr as id with token as its
// password, and returns it, or the CONNACK's reason code when refused.
func connectV5(t *testing.T, addr, id, username, token string) (*v5Client, byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, proxytest.DefaultTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c := &v5Client{local: conn.LocalAddr().String(), ends: proxytest.NewEnding()}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn:               conn,
		OnServerDisconnect: func(d *paho.Disconnect) { c.ends.End(int(d.ReasonCode)) },
		OnClientError:      func(error) { c.ends.End(-1) },
	})
	ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
	defer cancel()
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30,
		UsernameFlag: true, Username: username, PasswordFlag: true, Password: []byte(token)})
	if err != nil {
		conn.Close()
		if ack == nil {
			t.Fatalf("paho client %s: %v, without a CONNACK", id, err)
		}
		return nil, ack.ReasonCode
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c, 0
}

// mustConnectV5 is connectV5 for a client that must be accepted.
func mustConnectV5(t *testing.T, addr, id, username, token string) *v5Client {
	t.Helper()
	c, code := connectV5(t, addr, id, username, token)
	if c == nil {
		t.Fatalf("paho client %s refused: CONNACK 0x%02x", id, code)
	}
	return c
}

// ended waits for the client's connection to end and returns the code of
// the server's DISCONNECT, or -1 when there was none.
func (c *v5Client) ended(t *testing.T) int {
	t.Helper()
	return c.ends.Wait(t, c.ClientID())
}

// connected reports whether the client's connection has not ended.
func (c *v5Client) connected() bool { return c.ends.Connected() }

// waitForLogWith returns the first line whose message contains msg and
// whose fields have the values of want (numbers as JSON gives them,
// float64), within 30 seconds. The lines come in order, so lines before
// it are passed over.
func waitForLogWith(t *testing.T, lines chan map[string]any, msg string, want map[string]any) map[string]any {
	t.Helper()
	var passed []map[string]any // lines with msg, for the failure
	timeout := time.After(proxytest.DefaultTimeout)
	for {
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("log ended before %q with %v; passed over %v", msg, want, passed)
			}
			if s, _ := m["msg"].(string); !strings.Contains(s, msg) {
				continue
			}
			matches := true
			for k, v := range want {
				matches = matches && m[k] == v
			}
			if matches {
				return m
			}
			passed = append(passed, m)
		case <-timeout:
			t.Fatalf("no log line %q with %v within %v; passed over %v", msg, want, proxytest.DefaultTimeout, passed)
		}
	}
}

// sessionsConfig is proxyConfig with e2eSecret, an admin endpoint whose
// sessions API takes the token in the file tokenFile, and extra.
func sessionsConfig(broker, tokenFile, extra string) string {
	return proxyConfig(broker, e2eSecret) + `metrics: {bind: "127.0.0.1:0", admin_token_file: "` + tokenFile + `"}` + "\n" + extra
}

// listSessions calls GET /sessions?query with the admin token.
func listSessions(t *testing.T, admin, query string) []map[string]any {
	t.Helper()
	status, _, body := adminRequest(t, http.MethodGet, admin+"/sessions?"+query, testAdminToken)
	if status != http.StatusOK {
		t.Fatalf("GET /sessions?%s: %d %s", query, status, body)
	}
	var sessions []map[string]any
	if err := json.Unmarshal([]byte(body), &sessions); err != nil {
		t.Fatalf("GET /sessions?%s: %q: %v", query, body, err)
	}
	return sessions
}

// clientIDs are the client_id of each session, sorted.
func clientIDs(sessions []map[string]any) []string {
	var ids []string
	for _, s := range sessions {
		ids = append(ids, fmt.Sprint(s["client_id"]))
	}
	slices.Sort(ids)
	return ids
}

// TestSessionsAPIEndToEnd: the built proxy, in front of mosquitto, with a
// mosquitto_sub (MQTT 3.1.1, relayed byte for byte), a paho MQTT 5 client
// with topic rules (framed) and one without (relayed byte for byte)
// connected. The sessions API refuses a call without the admin token or
// with a wrong one (401), and logs it with the caller's address; with it,
// GET /sessions lists the three with every documented field and filters
// by client_id, username, sub, listener and remote, as "sessions list"
// does. DELETE /sessions ends what it selects and answers how many: the
// framed MQTT 5 client gets DISCONNECT 0x98 (administrative action), the
// others' connections close; "sessions kick" does the same. The ended
// sessions are counted in sessions_ended_total, and mosquitto_sub, which
// reconnects, is listed again. SIGHUP rotates the token.
func TestSessionsAPIEndToEnd(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	tokenFile := writeTokenFile(t, testAdminToken)
	p := startProcess(t, sessionsConfig(broker.Addr, tokenFile, ""))

	before := time.Now().Truncate(time.Second)
	sub := proxytest.StartSub(t, append(proxytest.AddrArgs(t, p.addr), "-V", "mqttv311", "-i", "sub-1", "-u", "alice",
		"-P", e2eToken(t, "user-1", sessionClaims{jti: "j-1"}), "-t", "e2e/#", "-v")...)
	if sub.Connack() != 0 {
		t.Fatalf("mosquitto_sub refused: %s", sub.Output())
	}
	framed := mustConnectV5(t, p.addr, "paho-framed", "bob", e2eToken(t, "user-2", sessionClaims{jti: "j-2", framed: true}))
	spliced := mustConnectV5(t, p.addr, "paho-spliced", "carol", e2eToken(t, "user-3", sessionClaims{jti: "j-3"}))

	// Without the token, or with another, nothing is listed.
	for _, token := range []string{"", testAdminToken + "x"} {
		if status, _, body := adminRequest(t, http.MethodGet, p.admin+"/sessions", token); status != http.StatusUnauthorized || strings.Contains(body, "paho") {
			t.Errorf("GET /sessions with token %q: %d %s, want 401 and no session", token, status, body)
		}
		if status, _, body := adminRequest(t, http.MethodDelete, p.admin+"/sessions?all=true", token); status != http.StatusUnauthorized {
			t.Errorf("DELETE /sessions with token %q: %d %s, want 401", token, status, body)
		}
		refused := waitForLogWith(t, p.lines, "admin request refused", map[string]any{"status": float64(401)})
		if remote, _ := refused["remote"].(string); !strings.HasPrefix(remote, "127.0.0.1:") {
			t.Errorf("a refused call was logged with remote %q, want the caller's address", remote)
		}
	}
	if !framed.connected() || !spliced.connected() {
		t.Fatal("a call without the admin token ended sessions")
	}

	all := listSessions(t, p.admin, "")
	if ids := clientIDs(all); !slices.Equal(ids, []string{"paho-framed", "paho-spliced", "sub-1"}) {
		t.Fatalf("GET /sessions listed %q, want the three clients", ids)
	}
	listed := waitForLog(t, p.lines, "sessions listed")
	if remote, _ := listed["remote"].(string); !strings.HasPrefix(remote, "127.0.0.1:") {
		t.Errorf("GET /sessions was logged with remote %q, want the caller's address", remote)
	}
	s := listSessions(t, p.admin, "client_id=paho-framed")[0]
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"bytes_from_client", "bytes_to_client", "client_id", "connected_at", "expires_at", "jti", "listener", "remote", "sub", "username"}; !slices.Equal(keys, want) {
		t.Errorf("a session's fields: %q, want %q", keys, want)
	}
	if s["username"] != "bob" || s["sub"] != "user-2" || s["jti"] != "j-2" || s["listener"] != "tcp" || s["remote"] != framed.local {
		t.Errorf("paho-framed listed as %v; want bob, user-2, j-2, listener tcp, remote %s", s, framed.local)
	}
	connectedAt, err1 := time.Parse(time.RFC3339Nano, fmt.Sprint(s["connected_at"]))
	expiresAt, err2 := time.Parse(time.RFC3339, fmt.Sprint(s["expires_at"]))
	if err1 != nil || err2 != nil || connectedAt.Before(before) || connectedAt.After(time.Now()) || expiresAt.Sub(connectedAt) < 59*time.Minute {
		t.Errorf("paho-framed: connected_at %v, expires_at %v; want RFC 3339 times, since the test began and an hour later", s["connected_at"], s["expires_at"])
	}
	if from, to := s["bytes_from_client"].(float64), s["bytes_to_client"].(float64); from < 100 || to < 4 {
		t.Errorf("paho-framed: %v bytes from the client, %v to it; want its CONNECT and CONNACK counted", from, to)
	}

	for query, want := range map[string][]string{
		"sub=user-2":                   {"paho-framed"},
		"username=alice":               {"sub-1"},
		"listener=tcp":                 {"paho-framed", "paho-spliced", "sub-1"},
		"listener=other":               nil,
		"remote=127.0.0.1":             {"paho-framed", "paho-spliced", "sub-1"},
		"remote=" + spliced.local:      {"paho-spliced"},
		"client_id=sub-1&username=bob": nil,
	} {
		if got := clientIDs(listSessions(t, p.admin, query)); !slices.Equal(got, want) {
			t.Errorf("GET /sessions?%s listed %q, want %q", query, got, want)
		}
	}
	code, stdout, stderr := runCommand(t, "sessions", "list", "-admin", p.admin, "-token-file", tokenFile, "-sub", "user-3")
	if code != 0 || !strings.Contains(stdout, "paho-spliced") || strings.Contains(stdout, "paho-framed") || strings.Contains(stdout, "sub-1") {
		t.Errorf("sessions list -sub user-3: exit %d\n%s%s\nwant paho-spliced only", code, stdout, stderr)
	}

	// DELETE ends the framed MQTT 5 session with DISCONNECT 0x98.
	status, _, body := adminRequest(t, http.MethodDelete, p.admin+"/sessions?client_id=paho-framed", testAdminToken)
	if status != http.StatusOK || body != `{"ended":1}`+"\n" {
		t.Errorf("DELETE /sessions?client_id=paho-framed: %d %s, want 200 {\"ended\":1}", status, body)
	}
	if code := framed.ended(t); code != 0x98 {
		t.Errorf("paho-framed ended with DISCONNECT %d, want 0x98 (administrative action)", code)
	}
	ended := waitForLogWith(t, p.lines, "sessions ended", map[string]any{"ended": float64(1)})
	if remote, _ := ended["remote"].(string); !strings.HasPrefix(remote, "127.0.0.1:") {
		t.Errorf("DELETE /sessions was logged with remote %q, want the caller's address", remote)
	}
	if !spliced.connected() {
		t.Error("paho-spliced was ended by a DELETE that selected paho-framed")
	}

	// The command ends the session relayed byte for byte: its connection
	// closes, without a DISCONNECT.
	code, stdout, stderr = runCommand(t, "sessions", "kick", "-admin", p.admin, "-token-file", tokenFile, "-client-id", "paho-spliced")
	if code != 0 || stdout != "ended 1 session\n" {
		t.Errorf("sessions kick -client-id paho-spliced: exit %d, %q %s", code, stdout, stderr)
	}
	if code := spliced.ended(t); code != -1 {
		t.Errorf("paho-spliced, relayed byte for byte, got DISCONNECT 0x%02x; want its connection closed", code)
	}

	// mosquitto_sub reconnects once ended, and is listed again.
	first := listSessions(t, p.admin, "username=alice")[0]["connected_at"]
	code, stdout, stderr = runCommand(t, "sessions", "kick", "-admin", p.admin, "-token-file", tokenFile, "-username", "alice", "-remote", "127.0.0.1")
	if code != 0 || stdout != "ended 1 session\n" {
		t.Errorf("sessions kick -username alice -remote 127.0.0.1: exit %d, %q %s", code, stdout, stderr)
	}
	waitForLogWith(t, p.lines, "connection closed", map[string]any{"client_id": "sub-1", "reason": "admin"})
	waitForLogWith(t, p.lines, "authentication accepted", map[string]any{"client_id": "sub-1"})
	if again := listSessions(t, p.admin, "username=alice"); len(again) != 1 || again[0]["connected_at"] == first {
		t.Errorf("after the kick, alice's sessions are %v; want the one mosquitto_sub reconnected", again)
	}
	if got, _ := sample(scrape(t, p.admin), "mqtt_jwt_proxy_sessions_ended_total", map[string]string{"reason": "admin"}); got != 3 {
		t.Errorf("sessions_ended_total{reason=admin} = %v, want 3", got)
	}

	// SIGHUP reads the token file again: the token is rotated without
	// a restart.
	const rotated = "rotated-admin-token-0123456789"
	if err := os.WriteFile(tokenFile, []byte(rotated+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitForLog(t, p.lines, "configuration reloaded")
	if status, _, _ := adminRequest(t, http.MethodGet, p.admin+"/sessions", testAdminToken); status != http.StatusUnauthorized {
		t.Errorf("the old token after the rotation: %d, want 401", status)
	}
	if status, _, body := adminRequest(t, http.MethodGet, p.admin+"/sessions", rotated); status != http.StatusOK || !strings.Contains(body, "sub-1") {
		t.Errorf("the rotated token: %d %s, want 200 and the sessions", status, body)
	}
}

// revocationCase is a client connected before its token, subject or
// client identifier is revoked, or that stays.
type revocationCase struct {
	id, sub string
	claims  sessionClaims
}

func (c revocationCase) token(t *testing.T) string { return e2eToken(t, c.sub, c.claims) }

// TestRevocationFileEndToEnd: the built proxy with a revocation file ends
// the live sessions that each new version of the file revokes, by jti and
// sub when SIGHUP says it changed, by client_id and issued_before when a
// check every refresh_interval (1s, after a reload that set it) finds it
// changed; a framed MQTT 5 client gets DISCONNECT 0x87, the others'
// connections close, the sessions not revoked go on; and a new CONNECT
// with a revoked token is refused: 0x87 for MQTT 5, 5 for MQTT 3.1.1.
func TestRevocationFileEndToEnd(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	list := filepath.Join(t.TempDir(), "revoked.json")
	if err := os.WriteFile(list, []byte(`{}`), 0o600); err != nil {
		t.Fatal(err)
	}
	config := sessionsConfig(broker.Addr, writeTokenFile(t, testAdminToken), "revocation: {file: \""+list+"\", refresh_interval: 1h}\n")
	p := startProcess(t, config)
	cutoff := time.Now().Add(-time.Minute).Truncate(time.Second)
	byJTI := revocationCase{"c-jti", "carol", sessionClaims{jti: "stolen", framed: true}}
	bySub := revocationCase{"c-sub", "mallory", sessionClaims{jti: "m-1"}}
	byClientID := revocationCase{"sensor-13", "dave", sessionClaims{jti: "d-1", framed: true}}
	byIssued := revocationCase{"c-old", "alice", sessionClaims{jti: "a-1", issued: cutoff.Add(-time.Hour)}}
	kept := []revocationCase{
		{"c-new", "alice", sessionClaims{jti: "a-2", issued: cutoff, framed: true}},
		{"c-ok", "erin", sessionClaims{jti: "e-1"}},
	}
	clients := map[string]*v5Client{}
	for _, c := range append([]revocationCase{byJTI, bySub, byClientID, byIssued}, kept...) {
		clients[c.id] = mustConnectV5(t, p.addr, c.id, c.id, c.token(t))
	}
	refusedNow := func(c revocationCase) {
		t.Helper()
		if cl, code := connectV5(t, p.addr, c.id, c.id, c.token(t)); cl != nil || code != 0x87 {
			t.Errorf("%s connecting again, MQTT 5: CONNACK 0x%02x, want 0x87 (not authorized)", c.id, code)
		}
		args := append(proxytest.AddrArgs(t, p.addr), "-V", "mqttv311", "-i", c.id, "-u", c.id, "-P", c.token(t), "-t", "e2e/x", "-m", "x")
		if res := proxytest.Pub(t, args...); res.Connack != 5 {
			t.Errorf("%s connecting again, MQTT 3.1.1: CONNACK %d, want 5\n%s", c.id, res.Connack, res.Output)
		}
	}
	checkEnded := func(c revocationCase, want int) {
		t.Helper()
		if got := clients[c.id].ended(t); got != want {
			t.Errorf("%s ended with DISCONNECT %d, want %d", c.id, got, want)
		}
	}

	// By jti and by sub, read at SIGHUP.
	if err := os.WriteFile(list, []byte(`{"jti": ["stolen"], "sub": ["mallory"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitForLogWith(t, p.lines, "revocation list checked against the sessions", map[string]any{"ended": float64(2)})
	checkEnded(byJTI, 0x87)
	checkEnded(bySub, -1)
	refusedNow(byJTI)
	refusedNow(bySub)

	// By client_id and issued_before, found by the check every second.
	if err := os.WriteFile(p.config, []byte(strings.Replace(config, "refresh_interval: 1h", "refresh_interval: 1s", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	// The reload's new list, read from the file, checked against the four
	// sessions left: the file may change from now on.
	waitForLogWith(t, p.lines, "revocation list checked against the sessions", map[string]any{"sessions": float64(4), "ended": float64(0)})
	// Renamed over the list, as editors and volume updates do: a check
	// never reads it half written.
	doc := fmt.Sprintf(`{"jti": ["stolen"], "sub": ["mallory"], "client_id": ["sensor-13"], "issued_before": {"alice": %q}}`, cutoff.Format(time.RFC3339))
	if err := os.WriteFile(list+".new", []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(list+".new", list); err != nil {
		t.Fatal(err)
	}
	waitForLogWith(t, p.lines, "revocation list checked against the sessions", map[string]any{"ended": float64(2)})
	checkEnded(byClientID, 0x87)
	checkEnded(byIssued, -1)
	refusedNow(byClientID)
	refusedNow(byIssued)

	for _, c := range kept {
		if !clients[c.id].connected() {
			t.Errorf("%s, not revoked, was ended", c.id)
		}
	}
	if got := clientIDs(listSessions(t, p.admin, "")); !slices.Equal(got, []string{"c-new", "c-ok"}) {
		t.Errorf("sessions after the revocations: %q, want c-new and c-ok", got)
	}
	if got, _ := sample(scrape(t, p.admin), "mqtt_jwt_proxy_sessions_ended_total", map[string]string{"reason": "revoked"}); got != 4 {
		t.Errorf("sessions_ended_total{reason=revoked} = %v, want 4", got)
	}
}

// revocationServer serves a revocation document that the test changes.
type revocationServer struct {
	*httptest.Server
	mu  sync.Mutex
	doc string
}

func startRevocationServer(t *testing.T, doc string) *revocationServer {
	s := &revocationServer{doc: doc}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, s.doc)
	}))
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func (s *revocationServer) set(doc string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doc = doc
}

// TestRevocationURLTwoProxies: two proxy processes read the same
// revocation URL, each with clients connected, mallory's on both. When
// the server's answer changes, both end, within one refresh_interval and
// with no signal, every live session the new answer revokes (by jti, sub,
// client_id and issued_before), mallory's on each; both refuse the
// revoked tokens from then on, and keep the sessions not revoked.
func TestRevocationURLTwoProxies(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	srv := startRevocationServer(t, `{}`)
	config := sessionsConfig(broker.Addr, writeTokenFile(t, testAdminToken),
		"revocation: {url: \""+srv.URL+"\", refresh_interval: 10s}\n")
	cutoff := time.Now().Add(-time.Minute).Truncate(time.Second)
	// mallory has a session on each proxy, with client identifiers of
	// their own: the broker would end the first of two sessions with one.
	cases := [2][]revocationCase{
		{{"m-phone", "mallory", sessionClaims{jti: "m-1", framed: true}}, {"c-jti", "carol", sessionClaims{jti: "stolen"}}, {"sensor-13", "dave", sessionClaims{framed: true}}},
		{{"m-laptop", "mallory", sessionClaims{jti: "m-2"}}, {"c-old", "alice", sessionClaims{jti: "a-1", issued: cutoff.Add(-time.Hour), framed: true}}},
	}
	keep := [2]revocationCase{{"c-ok-0", "erin", sessionClaims{jti: "e-1"}}, {"c-ok-1", "erin", sessionClaims{jti: "e-1", framed: true}}}
	var procs [2]*process
	var kept [2]*v5Client
	revoked := [2]map[string]*v5Client{{}, {}}
	for i := range procs {
		procs[i] = startProcess(t, config) // listening once the list is loaded
		for _, c := range cases[i] {
			revoked[i][c.id] = mustConnectV5(t, procs[i].addr, c.id, c.id, c.token(t))
		}
		kept[i] = mustConnectV5(t, procs[i].addr, keep[i].id, keep[i].id, keep[i].token(t))
	}

	srv.set(fmt.Sprintf(`{"jti": ["stolen"], "sub": ["mallory"], "client_id": ["sensor-13"], "issued_before": {"alice": %q}}`, cutoff.Format(time.RFC3339)))
	for i, p := range procs {
		waitForLogWith(t, p.lines, "revocation list checked against the sessions", map[string]any{"ended": float64(len(cases[i]))})
		for _, c := range cases[i] {
			want := -1
			if c.claims.framed {
				want = 0x87
			}
			if got := revoked[i][c.id].ended(t); got != want {
				t.Errorf("proxy %d: %s ended with DISCONNECT %d, want %d", i, c.id, got, want)
			}
			if cl, code := connectV5(t, p.addr, c.id, c.id, c.token(t)); cl != nil || code != 0x87 {
				t.Errorf("proxy %d: %s connecting again: CONNACK 0x%02x, want 0x87", i, c.id, code)
			}
		}
		if !kept[i].connected() {
			t.Errorf("proxy %d: %s, not revoked, was ended", i, keep[i].id)
		}
		if got := clientIDs(listSessions(t, p.admin, "")); !slices.Equal(got, []string{keep[i].id}) {
			t.Errorf("proxy %d: sessions after the revocation: %q, want %s only", i, got, keep[i].id)
		}
	}
}
