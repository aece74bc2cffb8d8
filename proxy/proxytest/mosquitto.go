package proxytest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Lines mosquitto 2.0 logs (with log_type all), each after a
// "<unix time>: " prefix:
//
//	mosquitto version 2.0.11 running               ready: the listeners are bound
//	Error: Address already in use                  a listener could not bind; it exits
//	New connection from 127.0.0.1:45788 on port 18831.
//	New client connected from 127.0.0.1:45804 as mosq-Yukx4A5dFM8SOG2esy (p1, c1, k60, u'alice').
//	New bridge connected from 127.0.0.1:45810 as edge-1 (p2, c0, k60, u'edge-1').   protocol level with bit 7
//	Sending CONNACK to 127.0.0.1 (0, 5)            refused v3.1 or v3.1.1 client (not authorised)
//	Sending CONNACK to 127.0.0.1 (0, 135)          refused v5 client (0x87, not authorized)
//	Client <unknown> disconnected, not authorised.
const (
	logVersion       = "mosquitto version "
	logReady         = " running"
	logPortTaken     = "Address already in use"
	logNewConnection = "New connection from "
	logNewClient     = "New client connected from "
	logNewBridge     = "New bridge connected from "
)

// Mosquitto is a mosquitto broker process on a free loopback port, started
// by StartMosquitto and stopped at test cleanup. The zero value is not a
// broker; use StartMosquitto.
type Mosquitto struct {
	// Addr is the broker's MQTT listener, 127.0.0.1:port.
	Addr string
	// ConfigFile is the generated configuration the broker runs with.
	ConfigFile string

	binary string
	extra  []string
	port   int

	mu   sync.Mutex // guards proc, which Restart replaces, and syncs
	proc *process
	// syncs counts SyncLog's own connections to proc, which Connections
	// does not count.
	syncs int
}

// StartMosquitto starts mosquitto with a generated config (a listener on
// 127.0.0.1:<free port>, allow_anonymous true, persistence false, the full
// log, plus extraConfig lines, which may override those settings: for
// options given twice mosquitto keeps the last), waits until it is ready by
// reading its log, and stops it (SIGTERM, then kill) at t.Cleanup. If the
// port was taken meanwhile, it retries with another port.
//
// The broker logs to its standard error (log_dest stderr), not stdout:
// mosquitto writes its stdout log through stdio, which buffers it in blocks
// when stdout is a pipe, so the "running" line would arrive only at exit.
// Run as root it keeps root (user root): it would otherwise switch to the
// mosquitto user, who cannot read files in the test's temporary directory,
// such as a password_file passed in extraConfig.
func StartMosquitto(t testing.TB, extraConfig ...string) *Mosquitto {
	t.Helper()
	binary := LookPath(t, "mosquitto")
	dir := t.TempDir()
	m := onFreePort(t, "mosquitto", func(port int) (*Mosquitto, error) {
		return startMosquittoOn(binary, dir, port, extraConfig)
	})
	t.Cleanup(m.Stop)
	return m
}

// Kill ends the broker with SIGKILL, as a crash would: it closes no
// connection cleanly and says nothing to its clients. It waits until the
// broker has exited. Safe to call on a broker already stopped.
func (m *Mosquitto) Kill() { m.process().kill() }

// Restart starts the broker again, on the same port with the same
// configuration, once it has been stopped or killed, and waits until it
// is ready. The log starts afresh. It fails the test if the port was
// taken meanwhile.
func (m *Mosquitto) Restart(t testing.TB) {
	t.Helper()
	m.Stop()
	next, err := startMosquittoOn(m.binary, filepath.Dir(m.ConfigFile), m.port, m.extra)
	if err != nil {
		t.Fatalf("restarting mosquitto on %s: %v", m.Addr, err)
	}
	m.mu.Lock()
	m.proc, m.syncs = next.proc, 0
	m.mu.Unlock()
}

// process is the broker process running now.
func (m *Mosquitto) process() *process {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc
}

// startMosquittoOn writes the config for port into dir and starts the
// broker, returning once it is ready. A failed broker has exited.
func startMosquittoOn(binary, dir string, port int, extraConfig []string) (*Mosquitto, error) {
	config := []string{
		"listener " + strconv.Itoa(port) + " 127.0.0.1",
		"allow_anonymous true",
		"persistence false",
		"log_dest stderr",
		"log_type all",
	}
	if os.Geteuid() == 0 {
		config = append(config, "user root")
	}
	config = append(config, extraConfig...)
	configFile := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(configFile, []byte(strings.Join(config, "\n")+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing config: %w", err)
	}
	ready := func(line string) bool { return strings.Contains(line, logVersion) && strings.HasSuffix(line, logReady) }
	proc, err := startReady(exec.Command(binary, "-c", configFile), port, ready, logPortTaken)
	if err != nil {
		return nil, err
	}
	return &Mosquitto{
		Addr:       net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		ConfigFile: configFile,
		binary:     binary,
		extra:      extraConfig,
		port:       port,
		proc:       proc,
	}, nil
}

// Stop ends the broker (SIGTERM, then kill after a grace period) and waits
// until it has exited. StartMosquitto registers it as a cleanup; a test
// calls it early to make the broker disappear. Safe to call more than once.
func (m *Mosquitto) Stop() { m.process().stop() }

// Connections returns how many client TCP connections the broker has
// logged so far ("New connection from ..."), SyncLog's own excepted. Tests
// assert it did not change for refused clients; call SyncLog first so the
// count is not behind the broker.
func (m *Mosquitto) Connections() int {
	m.mu.Lock()
	proc, syncs := m.proc, m.syncs
	m.mu.Unlock()
	count := 0
	proc.read(func() {
		for _, line := range proc.lines {
			if strings.Contains(line, logNewConnection) {
				count++
			}
		}
	})
	return count - syncs
}

// ClientIDs returns the client identifiers of the clients the broker has
// logged as connected so far ("New client connected from ... as ID
// (...)"), in order, one per connection; bridges are not counted, nor are
// connections before a Restart. Call SyncLog first so that the list is
// not behind the broker.
func (m *Mosquitto) ClientIDs() []string {
	proc := m.process()
	var ids []string
	proc.read(func() {
		for _, line := range proc.lines {
			_, rest, ok := strings.Cut(line, logNewClient)
			if !ok {
				continue
			}
			if _, rest, ok = strings.Cut(rest, " as "); ok {
				id, _, _ := strings.Cut(rest, " (")
				ids = append(ids, id)
			}
		}
	})
	return ids
}

// syncSerial numbers SyncLog's connections, across brokers.
var syncSerial atomic.Uint32

// SyncLog waits until the broker's log holds everything the broker did
// before the call. The broker writes its log asynchronously to the test,
// so without it Connections may miss a connection accepted a moment ago.
// It opens a connection of its own, waits for the broker to log it, and
// closes it; Connections does not count that connection.
func (m *Mosquitto) SyncLog(t testing.TB) {
	t.Helper()
	// From an address of its own in 127/8, so that its log line cannot be
	// confused with an earlier connection from a reused port.
	n := syncSerial.Add(1)
	syncSource := net.IPv4(127, 77, byte(n>>8), byte(n))
	d := net.Dialer{Timeout: DefaultTimeout, LocalAddr: &net.TCPAddr{IP: syncSource}}
	conn, err := d.Dial("tcp", m.Addr)
	if err != nil {
		t.Fatalf("connecting to mosquitto to sync its log: %v\n%s", err, m.Log())
	}
	defer conn.Close()
	from := conn.LocalAddr().String()
	m.WaitForLog(t, logNewConnection+from+" ", DefaultTimeout)
	m.mu.Lock()
	m.syncs++
	m.mu.Unlock()
}

// WaitForLog waits until a log line containing substr appears, counting
// lines logged before the call, or fails the test after timeout or when
// the broker exits.
func (m *Mosquitto) WaitForLog(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	found := m.process().waitLines(timeout, func(lines []string) bool {
		for _, line := range lines {
			if strings.Contains(line, substr) {
				return true
			}
		}
		return false
	})
	if !found {
		t.Fatalf("mosquitto logged no line containing %q within %v; log:\n%s", substr, timeout, m.Log())
	}
}

// Log returns the whole log so far, for failure messages.
func (m *Mosquitto) Log() string { return m.process().output() }
