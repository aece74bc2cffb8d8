// Package proxytest runs the real parts that end-to-end tests of the proxy
// need, much as net/http/httptest runs an HTTP server: a mosquitto broker
// process, configured as an edge broker's bridge to another broker if need
// be (Bridge), the mosquitto_pub and mosquitto_sub clients, an HAProxy in
// front of the proxy, and a Recorder that stands in for a broker and keeps
// every byte it receives.
//
// Typical usage:
//
//	func TestPublishThroughProxy(t *testing.T) {
//		proxytest.RequireMosquitto(t)   // skip (or fail in CI) before starting anything
//		proxytest.VerifyNoLeaks(t)      // first cleanup registered, so it runs last
//		broker := proxytest.StartMosquitto(t)
//		proxyAddr := startProxy(t, broker.Addr) // the code under test
//		client := append(proxytest.AddrArgs(t, proxyAddr), "-V", "mqttv5", "-u", "device", "-P", token, "-t", "t/1")
//
//		sub := proxytest.StartSub(t, client...)
//		pub := proxytest.Pub(t, append(client, "-m", "hello")...)
//		if pub.Connack != 0 || sub.Connack() != 0 {
//			t.Fatalf("refused: pub %d, sub %d\n%s", pub.Connack, sub.Connack(), pub.Output)
//		}
//		if msg, ok := sub.Next(proxytest.DefaultTimeout); msg != "hello" {
//			t.Errorf("subscriber got %q, %v; want hello", msg, ok)
//		}
//	}
//
// Devices by the hundred, where a process per client would take minutes,
// send a CONNECT each and read the CONNACK (VisitAll, OpenSession), and
// the brokers tell where each went, for tests of several brokers behind
// one proxy:
//
//	proxytest.VisitAll(t, proxyAddr, connects) // each accepted, then DISCONNECT
//	where := proxytest.WhereConnected(t, brokers, nil)
//	if len(where["dev-7"]) != 1 { ... } // dev-7 reached more than one broker
//
// Everything started here is stopped at t.Cleanup, and every goroutine the
// package starts ends with the process or connection it serves, so a
// goleak check registered before them (VerifyNoLeaks) passes.
//
// When the mosquitto binaries (or haproxy) are missing, the tests that
// need them are skipped, unless the environment variable named by
// RequireEnv is set, in which case they fail: CI must not pass by skipping.
package proxytest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// RequireEnv names the environment variable that turns "mosquitto (or
// another binary the harness runs, such as haproxy) is not installed" from
// a skip into a test failure. CI sets it to 1. Empty, "0" and "false" mean
// not required.
const RequireEnv = "MQTT_JWT_PROXY_REQUIRE_MOSQUITTO"

// DefaultTimeout bounds every wait in this package that takes no explicit
// timeout: broker start-up, a mosquitto_pub run, a subscription, and the
// Recorder's Wait methods. It is generous because a busy machine running
// tests under -race is slow; waits end as soon as their condition holds.
const DefaultTimeout = 30 * time.Second

// sbinDirs are searched after PATH because Debian installs the broker in
// /usr/sbin, which is not on an unprivileged user's PATH.
var sbinDirs = []string{"/usr/sbin", "/usr/local/sbin"}

// required reports whether RequireEnv asks for missing binaries to fail tests.
func required() bool {
	switch strings.ToLower(os.Getenv(RequireEnv)) {
	case "", "0", "false":
		return false
	}
	return true
}

// LookPath returns the path of a mosquitto binary (mosquitto, mosquitto_pub,
// mosquitto_sub) or of another tool the harness runs, searching PATH and
// then the sbin directories. When it is missing LookPath skips the test, or
// fails it when RequireEnv is set; it then returns "" (only reachable with
// a testing.TB whose Skip and Fatal do not stop the goroutine).
func LookPath(t testing.TB, name string) string {
	t.Helper()
	if path, err := exec.LookPath(name); err == nil {
		return path
	}
	for _, dir := range sbinDirs {
		if path, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return path
		}
	}
	if required() {
		t.Fatalf("%s not found in PATH or %v, and %s is set: install it (Debian: mosquitto, mosquitto-clients, haproxy)", name, sbinDirs, RequireEnv)
	} else {
		t.Skipf("%s not found in PATH or %v (set %s=1 to fail instead of skipping)", name, sbinDirs, RequireEnv)
	}
	return ""
}

// RequireMosquitto looks up every binary the harness runs (mosquitto,
// mosquitto_pub, mosquitto_sub, and stdbuf for StartSub), skipping or
// failing the test as LookPath does when one is missing. Call it first in a
// test that needs them, so the test skips before it starts anything, rather
// than part-way with its later assertions unchecked.
func RequireMosquitto(t testing.TB) {
	t.Helper()
	for _, name := range []string{"mosquitto", "mosquitto_pub", "mosquitto_sub", "stdbuf"} {
		if LookPath(t, name) == "" {
			return
		}
	}
}

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago.
// Another process may take it before the caller binds it; StartMosquitto
// retries in that case.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// ServeTCP is a stand-in broker on a loopback port: it runs serve on each
// connection it accepts, in a goroutine of its own, and closes the
// connection when serve returns. It stops, and waits for every serve, at
// cleanup. It returns the address to dial.
func ServeTCP(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening for a stand-in broker: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// ClosedAddr returns a loopback address where a dial is refused, and stays
// refused until the test ends: the port is held by a bound socket that
// does not listen. A listener opened and closed again would free its port
// for the next listener of the test, which the kernel may give it.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("reserving a closed port: %v", err)
	}
	syscall.CloseOnExec(fd) // not into the brokers and clients the test starts
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("reserving a closed port: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("reserving a closed port: %v", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}

// AddrArgs returns the mosquitto_pub/mosquitto_sub arguments that point a
// client at addr (host:port): "-h", host, "-p", port.
func AddrArgs(t testing.TB, addr string) []string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("client address %q: %v", addr, err)
	}
	return []string{"-h", host, "-p", port}
}

// VerifyNoLeaks checks at the end of the test, with goleak.VerifyNone and
// options, that no goroutine is left over. Call it first in a test: it
// runs as a cleanup, and cleanups run last-registered first, so it runs
// after the cleanups that stop brokers, clients and recorders. A deferred
// goleak.VerifyNone runs before any cleanup and would report their
// goroutines as leaks.
func VerifyNoLeaks(t testing.TB, options ...goleak.Option) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t, options...) })
}

// watched is state guarded by mu that goroutines can wait on, with a
// timeout, until a condition holds. A channel closed on every change
// rather than a sync.Cond, because a Cond wait cannot time out.
type watched struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced by change; nil until first used
}

// changedLocked returns the channel closed by the next change; mu is held.
func (w *watched) changedLocked() chan struct{} {
	if w.changed == nil {
		w.changed = make(chan struct{})
	}
	return w.changed
}

// change runs update under mu and wakes every waiter.
func (w *watched) change(update func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	update()
	close(w.changedLocked())
	w.changed = make(chan struct{})
}

// read runs f under mu.
func (w *watched) read(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f()
}

// wait calls done under mu, at once and after every change, until it
// returns true (wait returns true) or timeout passes (wait returns false).
func (w *watched) wait(timeout time.Duration, done func() bool) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		w.mu.Lock()
		if done() {
			w.mu.Unlock()
			return true
		}
		changed := w.changedLocked()
		w.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}
