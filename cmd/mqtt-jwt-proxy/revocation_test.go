package main

import (
	"bytes"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// TestServeRevocation: a proxy with a revocation list refuses a revoked
// token with CONNACK 5 and lets every other in; SIGHUP reads the file
// again, and a reload that names another source switches to it.
func TestServeRevocation(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	dir := t.TempDir()
	list := filepath.Join(dir, "revoked.json")
	if err := os.WriteFile(list, []byte(`{"sub": ["mallory"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	config := proxyConfig(broker.Addr, "revocation-secret") + "revocation: {file: " + list + "}\n"
	p := startProcess(t, config)
	connack := func(sub string) int {
		t.Helper()
		args := append(proxytest.AddrArgs(t, p.addr), "-V", "mqttv311", "-i", sub, "-u", sub, "-P", hsToken(t, "revocation-secret", sub), "-t", "revocation/x", "-m", "hi")
		return proxytest.Pub(t, args...).Connack
	}
	if got := connack("mallory"); got != 5 {
		t.Errorf("mallory, listed under sub: CONNACK %d, want 5", got)
	}
	if got := connack("alice"); got != 0 {
		t.Errorf("alice: CONNACK %d, want 0", got)
	}

	// The file changes; SIGHUP reads it at once.
	if err := os.WriteFile(list, []byte(`{"sub": ["alice"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	if v := waitForLog(t, p.lines, "revocation list loaded")["version"]; v != float64(2) {
		t.Errorf("after SIGHUP: version %v, want 2", v)
	}
	if got := connack("alice"); got != 5 {
		t.Errorf("alice, listed after SIGHUP: CONNACK %d, want 5", got)
	}
	if got := connack("mallory"); got != 0 {
		t.Errorf("mallory, no longer listed: CONNACK %d, want 0", got)
	}

	// A reload that moves the list to a URL fetches it from there.
	var mu sync.Mutex
	doc := `{"client_id": ["bob"]}`
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		io.WriteString(w, doc)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	defer srv.Close()
	if err := os.WriteFile(p.config, []byte(strings.Replace(config, "file: "+list, "url: "+srv.URL, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	if url := waitForLog(t, p.lines, "revocation list loaded")["url"]; url != srv.URL {
		t.Errorf("after the reload: loaded from %v, want %s", url, srv.URL)
	}
	if got := connack("bob"); got != 5 {
		t.Errorf("bob, listed under client_id at the URL: CONNACK %d, want 5", got)
	}
	if got := connack("alice"); got != 0 {
		t.Errorf("alice, listed in the file no longer used: CONNACK %d, want 0", got)
	}
}

// TestCheckRevocation: check reads the revocation file and reports what is
// wrong with it.
func TestCheckRevocation(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "revoked.json")
	if err := os.WriteFile(list, []byte(`{"jti": ["a", 7]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.yaml")
	config := proxyConfig("127.0.0.1:1884", "check-secret-of-more-than-32-bytes") + "revocation: {file: revoked.json}\n"
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCommand(t, "check", "-config", path)
	if code != 1 || !strings.Contains(stderr, "revocation: file: jti[1]: a JSON number, not a string") {
		t.Errorf("check exited %d: %q; want 1 and the bad entry", code, stderr)
	}
	if err := os.WriteFile(list, []byte(`{"jti": ["a", "b"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := runCommand(t, "check", "-config", path); code != 0 {
		t.Errorf("check exited %d: %q %q; want 0", code, stdout, stderr)
	}
}

// TestReloadsSharingRevocationList: a client accepted before two reloads,
// the first leaving the revocation section as it was (so that the next
// chain uses the same list) and the second changing it, is decided by the
// chain it came under, whose list must still be in force: a reload never
// refuses a client that the old and the new configuration both accept.
// The wait is the scenario: the retired configuration is closed on a
// goroutine of its own, with no sign of it.
func TestReloadsSharingRevocationList(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	list := filepath.Join(t.TempDir(), "revoked.json")
	if err := os.WriteFile(list, []byte(`{"sub": ["mallory"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	config := proxyConfig(broker.Addr, "revocation-secret") + "limits: {connect_timeout: 30s}\nrevocation: {file: " + list + "}\n"
	p := startProcess(t, config)
	connect, err := (&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: packets.ProtocolV311, CleanStart: true, ClientID: "alice",
		UsernameFlag: true, Username: "alice", PasswordFlag: true, Password: []byte(hsToken(t, "revocation-secret", "alice"))}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(connect[:5]); err != nil { // accepted under the first configuration
		t.Fatal(err)
	}

	p.signal(t, syscall.SIGHUP) // the revocation section as it was: the list is kept
	waitForLog(t, p.lines, "configuration reloaded")
	if err := os.WriteFile(p.config, []byte(strings.Replace(config, "revocation: {file: ", "revocation: {refresh_interval: 60s, file: ", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP) // another section: a new list
	waitForLog(t, p.lines, "configuration reloaded")
	time.Sleep(500 * time.Millisecond) // the configuration the first reload made is retired at once

	if _, err := c.Write(connect[5:]); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || !bytes.Equal(ack, []byte{0x20, 0x02, 0x00, 0x00}) {
		t.Errorf("the client accepted before the reloads got %x, %v; want CONNACK 0", ack, err)
	}
}
