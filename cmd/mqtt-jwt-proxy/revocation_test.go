package main

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

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
