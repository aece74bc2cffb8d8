package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/embedded"
)

// startBroker starts the in-process broker for the test.
func startBroker(t *testing.T) string {
	t.Helper()
	b, err := embedded.Start(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.Addr()
}

func testOptions(t *testing.T, addr string, version byte, d time.Duration) *options {
	return &options{
		Addr: addr, MQTT: "test", Version: version, Timeout: 5 * time.Second, Duration: d,
		From: "password", ClientPrefix: t.Name(),
	}
}

func TestConnectAgainstBroker(t *testing.T) {
	addr := startBroker(t)
	tokens, err := newTokenSource(tokenOptions{Alg: "HS256", Secret: "s", Pool: 4})
	if err != nil {
		t.Fatal(err)
	}
	for _, version := range []byte{packets.ProtocolV311, packets.ProtocolV5} {
		t.Run("v"+string('0'+version), func(t *testing.T) {
			o := testOptions(t, addr, version, 500*time.Millisecond)
			o.Procs.Set("self=" + strconv.Itoa(os.Getpid()))
			r, err := runConnect(t.Context(), o, tokens, 4, 0, 0, expectAccept)
			if err != nil {
				t.Fatal(err)
			}
			if r.Connects == 0 || r.Accepted != r.Connects || r.Unexpected != 0 || len(r.Errors) != 0 {
				t.Errorf("connects %d, accepted %d, unexpected %d, errors %v (%s)", r.Connects, r.Accepted, r.Unexpected, r.Errors, r.FirstError)
			}
			if r.Rate <= 0 || r.Latency.P50 <= 0 || r.Latency.Max < r.Latency.P99 {
				t.Errorf("rate %v, latency %+v", r.Rate, r.Latency)
			}
			if self := r.Procs["self"]; self.CPUSeconds <= 0 {
				t.Errorf("the watched process used no CPU: %+v", self)
			}
		})
	}
}

func TestConnectAtFixedRate(t *testing.T) {
	addr := startBroker(t)
	tokens, err := newTokenSource(tokenOptions{Alg: "HS256", Secret: "s", Pool: 4})
	if err != nil {
		t.Fatal(err)
	}
	// 40 connections at 100 a second take 390 ms from the first to the
	// last start, however fast the broker answers.
	o := testOptions(t, addr, packets.ProtocolV311, 0)
	start := time.Now()
	r, err := runConnect(t.Context(), o, tokens, 8, 40, 100, expectAccept)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 390*time.Millisecond {
		t.Errorf("40 connections at -rate 100 took %v; the schedule was not kept", took)
	}
	if r.Connects != 40 || r.Accepted != 40 || len(r.Errors) != 0 {
		t.Errorf("connects %d, accepted %d, errors %v (%s)", r.Connects, r.Accepted, r.Errors, r.FirstError)
	}
	if r.Rate > 105 {
		t.Errorf("rate %.1f/s, above -rate 100", r.Rate)
	}
}

func TestConnectCountsAndExpect(t *testing.T) {
	// A server that refuses everyone as not authorized, as the proxy does
	// a bad signature.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := packets.ReadConnect(c, 0); err == nil {
					packets.WriteConnack(c, packets.ProtocolV311, packets.NotAuthorized)
				}
			}()
		}
	}()
	for _, tc := range []struct {
		expect     expectation
		unexpected bool
	}{{expectRefuse, false}, {expectAny, false}, {expectAccept, true}} {
		t.Run(string(tc.expect), func(t *testing.T) {
			o := testOptions(t, ln.Addr().String(), packets.ProtocolV311, 0)
			r, err := runConnect(t.Context(), o, nil, 2, 20, 0, tc.expect)
			if err != nil {
				t.Fatal(err)
			}
			if r.Connects != 20 || r.Refused != 20 || r.Accepted != 0 {
				t.Errorf("connects %d, refused %d, accepted %d; want exactly -count 20 refused", r.Connects, r.Refused, r.Accepted)
			}
			if got := r.Unexpected == 20; got != tc.unexpected {
				t.Errorf("unexpected %d of 20", r.Unexpected)
			}
		})
	}
}

func TestHoldAgainstBroker(t *testing.T) {
	addr := startBroker(t)
	o := testOptions(t, addr, packets.ProtocolV311, 300*time.Millisecond)
	o.Procs.Set("self=" + strconv.Itoa(os.Getpid()))
	var log bytes.Buffer
	r, err := runHold(t.Context(), o, nil, holdConfig{Conns: 50, Workers: 8, Settle: 100 * time.Millisecond}, &log)
	if err != nil {
		t.Fatal(err)
	}
	if r.Held != 50 || r.Accepted != 50 {
		t.Errorf("held %d, accepted %d, want 50 (errors %v %s)", r.Held, r.Accepted, r.Errors, r.FirstError)
	}
	// This process holds the client ends: at least one descriptor each.
	if self := r.Procs["self"]; self.FDsPerConn < 1 {
		t.Errorf("self: %.2f descriptors per connection, want at least 1", self.FDsPerConn)
	}
	if !strings.Contains(log.String(), "50 of 50 connections open") {
		t.Errorf("log %q does not say the connections are open", log.String())
	}
}

// TestHoldPartial holds connections that send the first bytes of their
// CONNECT only, against a server that reads and never answers: each is
// held, and the server gets exactly -partial bytes from each.
func TestHoldPartial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	const conns, partial = 20, 11
	got := make(chan int, conns)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c) // until the tool closes
				got <- len(b)
			}()
		}
	}()
	tokens, err := newTokenSource(tokenOptions{Alg: "HS256", Secret: "s", Pool: 4})
	if err != nil {
		t.Fatal(err)
	}
	o := testOptions(t, ln.Addr().String(), packets.ProtocolV311, 300*time.Millisecond)
	o.Procs.Set("self=" + strconv.Itoa(os.Getpid()))
	var log bytes.Buffer
	r, err := runHold(t.Context(), o, tokens, holdConfig{Conns: conns, Workers: 4, Settle: 100 * time.Millisecond, Partial: partial}, &log)
	if err != nil {
		t.Fatal(err)
	}
	if r.Held != conns || r.Partial != partial || r.ConnectSize <= partial {
		t.Errorf("held %d, partial %d of %d bytes; want %d held with %d bytes of a longer CONNECT (errors %v %s)",
			r.Held, r.Partial, r.ConnectSize, conns, partial, r.Errors, r.FirstError)
	}
	for range conns {
		if n := <-got; n != partial {
			t.Errorf("the server read %d bytes of a connection, want %d", n, partial)
		}
	}
	if !strings.Contains(log.String(), "with 11 bytes of a") {
		t.Errorf("log %q does not say how much of the CONNECT was sent", log.String())
	}
}

func TestPubsubAgainstBroker(t *testing.T) {
	addr := startBroker(t)
	for _, tc := range []struct {
		name    string
		version byte
		cfg     pubsubConfig
	}{
		{"saturation QoS 0", packets.ProtocolV311, pubsubConfig{Publishers: 2, Subscribers: 2, Size: 64, Window: 50}},
		{"saturation QoS 1 v5", packets.ProtocolV5, pubsubConfig{Publishers: 1, Subscribers: 1, Size: 4096, QoS: 1, Window: 50}},
		{"fixed rate", packets.ProtocolV311, pubsubConfig{Publishers: 1, Subscribers: 1, Size: 16, Rate: 500}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Topic, cfg.Inflight = "bench/"+tc.name, 8
			o := testOptions(t, addr, tc.version, 400*time.Millisecond)
			r, err := runPubsub(t.Context(), o, nil, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if r.Published == 0 || r.Received != r.Published || len(r.Errors) != 0 {
				t.Errorf("published %d, received %d, errors %v (%s)", r.Published, r.Received, r.Errors, r.FirstError)
			}
			if r.Latency.P50 <= 0 || r.Rate <= 0 || r.MBPerSecond <= 0 {
				t.Errorf("latency %+v, rate %v, MB/s %v", r.Latency, r.Rate, r.MBPerSecond)
			}
			if cfg.Rate > 0 && (r.Published < 100 || r.Published > 300) {
				t.Errorf("published %d at 500/s for 0.4 s, want about 200", r.Published)
			}
		})
	}
}

func TestCommandLine(t *testing.T) {
	addr := startBroker(t)
	results := filepath.Join(t.TempDir(), "results.jsonl")
	var all bytes.Buffer
	for _, target := range []string{"direct", "proxy"} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"connect", "-addr", addr, "-count", "30", "-c", "2", "-secret", "s", "-mqtt", "5",
			"-scenario", "connect-hs256", "-target", target}, &stdout, &stderr)
		if code != 0 {
			t.Fatalf("connect exited %d: %s", code, stderr.String())
		}
		var r result
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil || r.Connects != 30 || r.Target != target {
			t.Fatalf("JSON line %q: %v", stdout.String(), err)
		}
		if !strings.Contains(stderr.String(), "30 connects") {
			t.Errorf("summary %q does not count the connects", stderr.String())
		}
		all.Write(stdout.Bytes())
	}
	if err := os.WriteFile(results, all.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var table, stderr bytes.Buffer
	if code := run(context.Background(), []string{"report", "-ratio", "proxy/direct", results}, &table, &stderr); code != 0 {
		t.Fatalf("report exited %d: %s", code, stderr.String())
	}
	if !strings.Contains(table.String(), "connect-hs256") || !strings.Contains(table.String(), "proxy/direct") {
		t.Errorf("report:\n%s", table.String())
	}

	for _, args := range [][]string{
		{"nonsense"},
		{"connect", "-mqtt", "4.2"},
		{"connect", "-expect", "maybe"},
		{"pubsub", "-size", "4"},
		{"hold", "-n", "0"},
		{"connect", "stray"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), args, &stdout, &stderr); code == 0 || stderr.Len() == 0 {
				t.Errorf("exit %d, stderr %q: want a failure that says why", code, stderr.String())
			}
		})
	}
}
