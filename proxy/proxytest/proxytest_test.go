package proxytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// outcomeTB is a testing.TB whose Skipf and Fatalf record the outcome and
// return instead of ending the test, so a test can check that a helper
// skips or fails.
type outcomeTB struct {
	testing.TB
	skipped, failed bool
	message         string
}

func (o *outcomeTB) Helper() {}

func (o *outcomeTB) Skipf(format string, args ...any) {
	o.skipped, o.message = true, fmt.Sprintf(format, args...)
}

func (o *outcomeTB) Fatalf(format string, args ...any) {
	o.failed, o.message = true, fmt.Sprintf(format, args...)
}

func (o *outcomeTB) Error(args ...any) {
	o.failed, o.message = true, fmt.Sprint(args...)
}

func TestLookPath(t *testing.T) {
	// A PATH holding one executable, so the test does not depend on what
	// the machine has installed.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "mosquitto_present"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	cases := []struct {
		name, binary, env    string
		wantFound            bool
		wantSkip, wantFailed bool
	}{
		{name: "present", binary: "mosquitto_present", env: "1", wantFound: true},
		{name: "missing, env unset", binary: "mosquitto_missing", env: "", wantSkip: true},
		{name: "missing, env 0", binary: "mosquitto_missing", env: "0", wantSkip: true},
		{name: "missing, env false", binary: "mosquitto_missing", env: "false", wantSkip: true},
		{name: "missing, env 1", binary: "mosquitto_missing", env: "1", wantFailed: true},
		{name: "missing, env true", binary: "mosquitto_missing", env: "true", wantFailed: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(RequireEnv, tc.env)
			outcome := &outcomeTB{TB: t}
			path := LookPath(outcome, tc.binary)
			if found := path != ""; found != tc.wantFound {
				t.Errorf("LookPath(%q) = %q, want found %v", tc.binary, path, tc.wantFound)
			}
			if outcome.skipped != tc.wantSkip || outcome.failed != tc.wantFailed {
				t.Errorf("skipped %v, failed %v (%q); want skipped %v, failed %v",
					outcome.skipped, outcome.failed, outcome.message, tc.wantSkip, tc.wantFailed)
			}
			if (tc.wantSkip || tc.wantFailed) && !strings.Contains(outcome.message, RequireEnv) {
				t.Errorf("message %q does not name %s", outcome.message, RequireEnv)
			}
		})
	}
	t.Run("RequireMosquitto", func(t *testing.T) {
		t.Setenv(RequireEnv, "")
		outcome := &outcomeTB{TB: t}
		RequireMosquitto(outcome) // mosquitto_pub is not in this PATH nor an sbin directory
		if !outcome.skipped || !strings.Contains(outcome.message, "mosquitto_pub") {
			t.Errorf("RequireMosquitto without mosquitto_pub: skipped %v (%q), want a skip naming it", outcome.skipped, outcome.message)
		}
	})
}

func TestClosedAddr(t *testing.T) {
	addr := ClosedAddr(t)
	for range 2 {
		if c, err := net.Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("dialing ClosedAddr %s: %v, want connection refused", addr, err)
		}
	}
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Errorf("listening on ClosedAddr %s succeeded; want its port held", addr)
	}
}

func TestFreePortAndAddrArgs(t *testing.T) {
	port := FreePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("FreePort returned %d, which cannot be bound: %v", port, err)
	}
	ln.Close()
	if got, want := AddrArgs(t, addr), []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}; !slices.Equal(got, want) {
		t.Errorf("AddrArgs(%q) = %q, want %q", addr, got, want)
	}
}

func TestVerifyNoLeaksReportsLeftovers(t *testing.T) {
	outcome := &outcomeTB{TB: t}
	release := make(chan struct{})
	// Cleanups run last-registered first: the check, then this assertion,
	// then the release that ends the deliberately leaked goroutine.
	t.Cleanup(func() { close(release) })
	t.Cleanup(func() {
		if !outcome.failed || !strings.Contains(outcome.message, "leftoverGoroutine") {
			t.Errorf("VerifyNoLeaks did not report the leftover goroutine: %q", outcome.message)
		}
	})
	VerifyNoLeaks(outcome)
	go leftoverGoroutine(release)
}

// leftoverGoroutine blocks until release is closed; its name is what the
// leak report must show.
func leftoverGoroutine(release <-chan struct{}) { <-release }

// brokerArgs returns the client arguments that reach addr, followed by args.
func brokerArgs(t *testing.T, addr string, args ...string) []string {
	return append(AddrArgs(t, addr), args...)
}

// TestMosquittoKillAndRestart: a killed broker refuses connections; once
// restarted it takes them on the same address, with its log and count
// begun afresh.
func TestMosquittoKillAndRestart(t *testing.T) {
	RequireMosquitto(t)
	VerifyNoLeaks(t)
	broker := StartMosquitto(t)
	if pub := Pub(t, brokerArgs(t, broker.Addr, "-i", "before", "-t", "t", "-m", "before")...); pub.Connack != 0 {
		t.Fatalf("publish before the kill: %d %v\n%s", pub.Connack, pub.Err, pub.Output)
	}
	broker.Kill()
	if c, err := net.DialTimeout("tcp", broker.Addr, DefaultTimeout); err == nil {
		c.Close()
		t.Fatal("the killed broker took a connection")
	}
	broker.Restart(t)
	if pub := Pub(t, brokerArgs(t, broker.Addr, "-i", "after", "-t", "t", "-m", "after")...); pub.Connack != 0 {
		t.Fatalf("publish after the restart: %d %v\n%s", pub.Connack, pub.Err, pub.Output)
	}
	broker.SyncLog(t)
	if got := broker.Connections(); got != 1 {
		t.Errorf("Connections() = %d after the restart, want 1 (the publisher since)\n%s", got, broker.Log())
	}
	if got := broker.ClientIDs(); !slices.Equal(got, []string{"after"}) {
		t.Errorf("ClientIDs() = %q after the restart, want [after] (the publisher since)\n%s", got, broker.Log())
	}
}

func TestPubSubThroughMosquitto(t *testing.T) {
	RequireMosquitto(t)
	VerifyNoLeaks(t)
	broker := StartMosquitto(t)
	cases := []struct{ version, qos string }{
		{"mqttv31", "1"},
		{"mqttv311", "0"},
		{"mqttv311", "1"},
		{"mqttv5", "0"},
		{"mqttv5", "1"},
	}
	for _, tc := range cases {
		t.Run(tc.version+"/qos"+tc.qos, func(t *testing.T) {
			topic := "test/" + tc.version + "/" + tc.qos
			payload := "hello " + tc.version + " qos " + tc.qos
			sub := StartSub(t, brokerArgs(t, broker.Addr, "-V", tc.version, "-q", tc.qos, "-t", topic)...)
			if got := sub.Connack(); got != 0 {
				t.Fatalf("subscriber CONNACK %d, want 0\n%s", got, sub.Output())
			}
			pub := Pub(t, brokerArgs(t, broker.Addr, "-V", tc.version, "-q", tc.qos, "-t", topic, "-m", payload)...)
			if pub.Connack != 0 || pub.Err != nil {
				t.Fatalf("publisher CONNACK %d, err %v, want 0, nil\n%s", pub.Connack, pub.Err, pub.Output)
			}
			if got, ok := sub.Next(DefaultTimeout); got != payload {
				t.Errorf("subscriber got %q, %v; want %q\n%s", got, ok, payload, sub.Output())
			}
			sub.Stop()
			if got, ok := sub.Next(time.Minute); ok {
				t.Errorf("Next after Stop returned %q, want nothing\n%s", got, sub.Output())
			}
		})
	}
	broker.SyncLog(t)
	if got, want := broker.Connections(), 2*len(cases); got != want {
		t.Errorf("Connections() = %d, want %d (a subscriber and a publisher per case)\n%s", got, want, broker.Log())
	}
}

func TestSubFormat(t *testing.T) {
	RequireMosquitto(t)
	VerifyNoLeaks(t)
	broker := StartMosquitto(t)
	sub := StartSub(t, brokerArgs(t, broker.Addr, "-t", "fmt/#", "-F", "%t %p")...)
	for _, payload := range []string{"first", "second"} {
		if pub := Pub(t, brokerArgs(t, broker.Addr, "-t", "fmt/a", "-m", payload)...); pub.Err != nil {
			t.Fatalf("publishing %q: %v\n%s", payload, pub.Err, pub.Output)
		}
	}
	for _, want := range []string{"fmt/a first", "fmt/a second"} {
		if got, ok := sub.Next(DefaultTimeout); got != want {
			t.Errorf("Next() = %q, %v; want %q", got, ok, want)
		}
	}
	if got, ok := sub.Next(50 * time.Millisecond); ok {
		t.Errorf("Next() = %q with nothing published, want a timeout", got)
	}
}

func TestRefusedConnack(t *testing.T) {
	RequireMosquitto(t)
	VerifyNoLeaks(t)
	broker := StartMosquitto(t, "allow_anonymous false")
	cases := []struct {
		version string
		want    int
	}{
		{"mqttv31", 5},   // Connection Refused, not authorized
		{"mqttv311", 5},  // Connection Refused, not authorized
		{"mqttv5", 0x87}, // Not authorized
	}
	for _, tc := range cases {
		t.Run(tc.version, func(t *testing.T) {
			pub := Pub(t, brokerArgs(t, broker.Addr, "-V", tc.version, "-t", "t", "-m", "x")...)
			if pub.Connack != tc.want {
				t.Errorf("publisher CONNACK %d, want %d\n%s", pub.Connack, tc.want, pub.Output)
			}
			var exitErr *exec.ExitError
			if !errors.As(pub.Err, &exitErr) || exitErr.ExitCode() != tc.want {
				t.Errorf("publisher Err = %v, want exit status %d", pub.Err, tc.want)
			}
			sub := StartSub(t, brokerArgs(t, broker.Addr, "-V", tc.version, "-t", "t")...)
			if got := sub.Connack(); got != tc.want {
				t.Errorf("subscriber CONNACK %d, want %d\n%s", got, tc.want, sub.Output())
			}
			if got, ok := sub.Next(time.Minute); ok {
				t.Errorf("refused subscriber received %q", got)
			}
		})
	}
	broker.SyncLog(t)
	broker.SyncLog(t)
	if got, want := broker.Connections(), 2*len(cases); got != want {
		t.Errorf("Connections() = %d, want %d: refused clients count, SyncLog's do not\n%s", got, want, broker.Log())
	}
	broker.WaitForLog(t, "Sending CONNACK to 127.0.0.1 (0, 135)", DefaultTimeout)
}

func TestPasswordFileInTempDir(t *testing.T) {
	RequireMosquitto(t)
	mosquittoPasswd := LookPath(t, "mosquitto_passwd")
	VerifyNoLeaks(t)
	passwordFile := filepath.Join(t.TempDir(), "passwords")
	if out, err := exec.Command(mosquittoPasswd, "-b", "-c", passwordFile, "alice", "secret").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
	}
	if err := os.Chmod(passwordFile, 0o600); err != nil {
		t.Fatal(err)
	}
	broker := StartMosquitto(t, "allow_anonymous false", "password_file "+passwordFile)
	for password, want := range map[string]int{"secret": 0, "wrong": 5} {
		pub := Pub(t, brokerArgs(t, broker.Addr, "-u", "alice", "-P", password, "-t", "t", "-m", "x")...)
		if pub.Connack != want {
			t.Errorf("password %q: CONNACK %d, want %d\n%s", password, pub.Connack, want, pub.Output)
		}
	}
}

func TestWaitForLogFailsOnTimeout(t *testing.T) {
	VerifyNoLeaks(t)
	broker := StartMosquitto(t)
	outcome := &outcomeTB{TB: t}
	start := time.Now()
	broker.WaitForLog(outcome, "no broker logs this", 100*time.Millisecond)
	if !outcome.failed || !strings.Contains(outcome.message, "running") {
		t.Errorf("WaitForLog failed %v with %q, want a failure quoting the log", outcome.failed, outcome.message)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("WaitForLog took %v with a 100ms timeout", elapsed)
	}
	broker.Stop()
	outcome = &outcomeTB{TB: t}
	broker.WaitForLog(outcome, "no broker logs this", time.Minute)
	if !outcome.failed {
		t.Error("WaitForLog on a stopped broker did not fail")
	}
	if !strings.Contains(broker.Log(), "terminating") {
		t.Errorf("stopped broker did not log its exit:\n%s", broker.Log())
	}
}

// TestStartPortTaken: a server started on a port another socket holds
// fails with errPortTaken, which StartMosquitto and StartHAProxy retry.
func TestStartPortTaken(t *testing.T) {
	VerifyNoLeaks(t)
	for name, start := range map[string]func(binary, dir string, port int) error{
		"mosquitto": func(binary, dir string, port int) error {
			_, err := startMosquittoOn(binary, dir, port, nil)
			return err
		},
		"haproxy": func(binary, dir string, port int) error {
			_, err := startHAProxyOn(binary, dir, port, "", "127.0.0.1:1", "")
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			binary := LookPath(t, name)
			taken, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer taken.Close()
			if err := start(binary, t.TempDir(), taken.Addr().(*net.TCPAddr).Port); !errors.Is(err, errPortTaken) {
				t.Errorf("starting on a taken port: %v, want errPortTaken", err)
			}
		})
	}
}

func TestRecorderRecordsOnly(t *testing.T) {
	VerifyNoLeaks(t)
	rec := NewRecorder(t, "")
	sent := [][]byte{[]byte("first connection"), []byte("second")}
	var conns []net.Conn
	for i, b := range sent {
		conn, err := net.Dial("tcp", rec.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, conn)
		rec.WaitAccepted(t, i+1) // keeps the accept order equal to the dial order
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
		rec.WaitReceived(t, i, len(b))
	}
	if got := rec.Received(); !slices.EqualFunc(got, sent, bytes.Equal) {
		t.Errorf("Received() = %q, want %q", got, sent)
	}
	if got := rec.Accepted(); got != len(sent) {
		t.Errorf("Accepted() = %d, want %d", got, len(sent))
	}
	conns[0].SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := conns[0].Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("record-only Recorder answered: %d bytes, %v", n, err)
	}
	conns[1].Close()
	rec.WaitEnded(t, 1)
	if err := rec.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if _, err := net.Dial("tcp", rec.Addr); err == nil {
		t.Error("closed Recorder still accepts connections")
	}
}

func TestRecorderRelays(t *testing.T) {
	RequireMosquitto(t)
	VerifyNoLeaks(t)
	broker := StartMosquitto(t)
	refusing := StartMosquitto(t, "allow_anonymous false")
	cases := []struct {
		name, version string
		broker        *Mosquitto
		want          int
	}{
		{"accepted v311", "mqttv311", broker, 0},
		{"accepted v5", "mqttv5", broker, 0},
		{"refused v311", "mqttv311", refusing, 5},
		{"refused v5", "mqttv5", refusing, 0x87},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := NewRecorder(t, tc.broker.Addr)
			pub := Pub(t, brokerArgs(t, rec.Addr, "-V", tc.version, "-i", "relayed", "-t", "relay/t", "-m", "through")...)
			if pub.Connack != tc.want {
				t.Fatalf("CONNACK through the Recorder %d, want %d\n%s", pub.Connack, tc.want, pub.Output)
			}
			rec.WaitEnded(t, 0)
			received := rec.Received()
			if len(received) != 1 || len(received[0]) == 0 || received[0][0] != 0x10 {
				t.Fatalf("Received() = %x, want one connection starting with CONNECT", received)
			}
			if !bytes.Contains(received[0], []byte("relayed")) {
				t.Errorf("recorded bytes %q lack the client id", received[0])
			}
			if wantPublish := tc.want == 0; bytes.Contains(received[0], []byte("through")) != wantPublish {
				t.Errorf("recorded bytes %q: PUBLISH present should be %v", received[0], wantPublish)
			}
		})
	}
	for _, b := range []*Mosquitto{broker, refusing} {
		b.SyncLog(t)
		if got := b.Connections(); got != 2 {
			t.Errorf("broker saw %d relayed connections, want 2\n%s", got, b.Log())
		}
	}
}

func TestRecorderForwardUnreachable(t *testing.T) {
	VerifyNoLeaks(t)
	rec := NewRecorder(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t))))
	conn, err := net.Dial("tcp", rec.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(DefaultTimeout))
	if n, err := conn.Read(make([]byte, 1)); err == nil {
		t.Errorf("client of an unrelayable connection read %d bytes, want the connection closed", n)
	}
	if err := rec.Close(); err == nil || !strings.Contains(err.Error(), "relaying to") {
		t.Errorf("Close() = %v, want the relay failure", err)
	}
}

// closingServer accepts connections and closes each at once, as a server
// that refuses without a CONNACK does.
func closingServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

func TestClientsWithoutConnack(t *testing.T) {
	RequireMosquitto(t)
	VerifyNoLeaks(t)
	closing := closingServer(t)
	for _, version := range []string{"mqttv311", "mqttv5"} {
		t.Run(version, func(t *testing.T) {
			sub := StartSub(t, brokerArgs(t, closing, "-V", version, "-t", "t")...)
			if got := sub.Connack(); got != -1 {
				t.Errorf("subscriber CONNACK %d from a server that sends none, want -1", got)
			}
			pub := PubWithTimeout(t, 2*time.Second, brokerArgs(t, closing, "-V", version, "-t", "t", "-m", "x")...)
			if pub.Connack != -1 || pub.Err == nil {
				t.Errorf("publisher CONNACK %d, err %v; want -1 and an error\n%s", pub.Connack, pub.Err, pub.Output)
			}
		})
	}
}

// TestPubTimeout: mosquitto_pub to a server that never answers its
// CONNECT is killed at PubWithTimeout's timeout, with no CONNACK, after
// sending the CONNECT. The first timeout is short to keep the test quick;
// on a loaded machine mosquitto_pub may not even have connected by then,
// so a run whose server has no CONNECT yet is repeated with a longer
// timeout, and the last run's CONNECT is waited for.
func TestPubTimeout(t *testing.T) {
	RequireMosquitto(t)
	VerifyNoLeaks(t)
	const longest = 20 * time.Second
	for timeout := 300 * time.Millisecond; ; timeout *= 4 {
		silent := NewRecorder(t, "")
		pub := PubWithTimeout(t, timeout, brokerArgs(t, silent.Addr, "-t", "t", "-m", "x")...)
		if !errors.Is(pub.Err, context.DeadlineExceeded) || pub.Connack != -1 {
			t.Errorf("Pub to a silent server, killed after %v: CONNACK %d, err %v; want -1, deadline exceeded", timeout, pub.Connack, pub.Err)
		}
		if received := silent.Received(); timeout*4 <= longest && (len(received) == 0 || len(received[0]) < 2) {
			t.Logf("the silent server had no CONNECT when mosquitto_pub was killed after %v; again with a longer timeout", timeout)
			continue
		}
		silent.WaitReceived(t, 0, 2)
		if got := silent.Received()[0][0]; got != 0x10 {
			t.Errorf("first byte the silent server received: %#x, want CONNECT 0x10", got)
		}
		return
	}
}

// TestBridgeConfig: an edge mosquitto configured with Bridge connects to
// the cloud broker as a bridge for MQTT 3.1.1 (protocol level 0x84) and as
// a plain client for MQTT 5, and relays what is published at the edge.
func TestBridgeConfig(t *testing.T) {
	RequireMosquitto(t)
	VerifyNoLeaks(t)
	for _, tc := range []struct {
		version    string
		wantBridge bool
	}{
		{"mqttv311", true},
		{"mqttv50", false},
	} {
		t.Run(tc.version, func(t *testing.T) {
			cloud := StartMosquitto(t)
			bridge := Bridge{Address: cloud.Addr, ClientID: "edge-" + tc.version, ProtocolVersion: tc.version, Topics: []string{"up/# out 1"}}
			edge := StartMosquitto(t, bridge.Config()...)
			if got := cloud.WaitForClient(t, bridge.ClientID, DefaultTimeout); got != tc.wantBridge {
				t.Errorf("WaitForClient = %v, want %v\n%s", got, tc.wantBridge, cloud.Log())
			}
			// The bridge subscribes nothing at the cloud (direction out), so
			// once connected it relays at once.
			sub := StartSub(t, brokerArgs(t, cloud.Addr, "-t", "up/#", "-v")...)
			if pub := Pub(t, brokerArgs(t, edge.Addr, "-t", "up/1", "-q", "1", "-m", "relayed")...); pub.Err != nil {
				t.Fatalf("publishing at the edge: %v\n%s", pub.Err, pub.Output)
			}
			if got, ok := sub.Next(DefaultTimeout); got != "up/1 relayed" {
				t.Errorf("cloud subscriber got %q, %v; want the edge's message\n%s", got, ok, edge.Log())
			}
		})
	}
}

// connect311 is an MQTT 3.1.1 CONNECT of client id, clean, without
// credentials.
func connect311(id string) []byte {
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, byte(len(id))}, id...)
	return append([]byte{0x10, byte(len(body))}, body...)
}

// TestFleet: visits are accepted and counted where they went, and a
// refused one returns its code without failing.
func TestFleet(t *testing.T) {
	RequireMosquitto(t)
	VerifyNoLeaks(t)
	brokers := []*Mosquitto{StartMosquitto(t), StartMosquitto(t), StartMosquitto(t, "allow_anonymous false")}
	VisitAll(t, brokers[0].Addr, [][]byte{connect311("a")})
	since := ClientCounts(t, brokers)
	VisitAll(t, brokers[1].Addr, [][]byte{connect311("b"), connect311("c")})
	VisitAll(t, brokers[0].Addr, [][]byte{connect311("c")})
	if got := WhereConnected(t, brokers, nil); !slices.Equal(got["a"], []int{0}) || !slices.Equal(got["b"], []int{1}) || !slices.Equal(got["c"], []int{0, 1}) || len(got) != 3 {
		t.Errorf("WhereConnected = %v, want a at 0, b at 1, c at both", got)
	}
	if got := WhereConnected(t, brokers, since); got["a"] != nil || len(got) != 2 {
		t.Errorf("WhereConnected since %v = %v, want b and c only", since, got)
	}
	if got := ClientCounts(t, brokers); !slices.Equal(got, []int{2, 2, 0}) {
		t.Errorf("ClientCounts = %v, want [2 2 0]", got)
	}
	if code, err := Visit(brokers[2].Addr, connect311("d")); code != 5 || err != nil {
		t.Errorf("a refused visit: CONNACK %d, %v; want 5", code, err)
	}
	c, code, err := OpenSession(brokers[0].Addr, connect311("e"))
	if err != nil || code != 0 {
		t.Fatalf("OpenSession: CONNACK %d, %v", code, err)
	}
	defer c.Close()
	c.Write([]byte{0xC0, 0x00}) // PINGREQ
	c.SetReadDeadline(time.Now().Add(DefaultTimeout))
	var pong [2]byte
	if _, err := io.ReadFull(c, pong[:]); err != nil || pong != [2]byte{0xD0, 0} {
		t.Errorf("the open session answered PINGREQ with %x, %v", pong, err)
	}
}
