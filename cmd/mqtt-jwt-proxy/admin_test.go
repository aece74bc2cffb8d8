package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

const adminTestSecret = "admin-test-secret"

// adminTestConfig is a configuration with one listener, named tcp, and
// the admin endpoint on a free loopback port.
func adminTestConfig(pprof bool) *configs.File {
	return &configs.File{
		Listeners: []configs.Listener{{Name: "tcp", Bind: "127.0.0.1:0"}},
		Metrics:   configs.Metrics{Bind: "127.0.0.1:0", Pprof: pprof},
	}
}

// newTestChain builds a chain of an HMAC authenticator named devices and,
// for each endpoint, a JWKS authenticator named jwks, jwks#2, ...; it
// waits for every JWKS authenticator's first fetch.
func newTestChain(t *testing.T, jwksEndpoints ...string) *authn.Chain {
	t.Helper()
	auths := []configs.Authenticator{{Name: "devices", Mechanism: "jwt", Algorithm: "hmac-based", Secret: adminTestSecret}}
	for i, endpoint := range jwksEndpoints {
		name := "jwks"
		if i > 0 {
			name += "#" + string(rune('1'+i))
		}
		auths = append(auths, configs.Authenticator{Name: name, Mechanism: "jwt", UseJWKS: true, Endpoint: endpoint})
	}
	chain, err := authn.New(auths)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	waitUntil(t, "the first JWKS fetches", func() bool {
		for _, ks := range chain.Status() {
			if ks.Refreshes+ks.Failures == 0 {
				return false
			}
		}
		return true
	})
	return chain
}

// startTestAdmin starts the admin endpoint of cfg for p, chain and list
// (nil: no revocation list) and returns its base URL; it is closed at
// cleanup.
func startTestAdmin(t *testing.T, cfg *configs.File, p *proxy.Proxy, chain *authn.Chain, list *revocation.List) string {
	t.Helper()
	ln, err := listenAdmin(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := startAdmin(ln, cfg, p, chain.Status, func() *revocation.List { return list }, zap.NewNop())
	t.Cleanup(a.Close)
	return "http://" + a.addr.String()
}

// serveTestProxy serves p on a loopback listener named tcp and returns its
// address; p is closed at cleanup. Where p has no connect or dial timeout,
// it gets one far longer than a step takes on a busy machine under -race.
func serveTestProxy(t *testing.T, p *proxy.Proxy) string {
	t.Helper()
	if p.Limits.ConnectTimeout == 0 {
		p.Limits.ConnectTimeout = time.Minute
	}
	if p.DialTimeout == 0 {
		p.DialTimeout = 30 * time.Second
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln, "tcp") }()
	t.Cleanup(func() {
		p.Close()
		if err := <-served; !errors.Is(err, proxy.ErrProxyClosed) {
			t.Errorf("Serve returned %v, want ErrProxyClosed", err)
		}
	})
	waitUntil(t, "the listener serving", func() bool { return p.Health().Listeners == 1 })
	return ln.Addr().String()
}

// waitUntil polls cond until it holds, or fails the test after 20 s. For
// state that has no signal to wait on: the proxy's counters and the JWKS
// fetches.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// get fetches url without keeping the connection, so no goroutine of the
// client outlives the request.
func get(t *testing.T, url string) (status int, body string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// scrape fetches /metrics and parses it as Prometheus does.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	status, body := get(t, base+"/metrics")
	if status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", status, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return families
}

// sample returns the value of the series of family name whose labels
// include want (a label absent from the series counts as ""). Histograms
// and summaries give their sample count.
func sample(families map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	family, ok := families[name]
	if !ok {
		return 0, false
	}
series:
	for _, m := range family.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Summary != nil:
			return float64(m.Summary.GetSampleCount()), true
		}
	}
	return 0, false
}

// activeConnections scrapes connections_active of listener tcp.
func activeConnections(t *testing.T, base string) float64 {
	v, _ := sample(scrape(t, base), "mqtt_jwt_proxy_connections_active", map[string]string{"listener": "tcp"})
	return v
}

// jwksServer serves a JWKS document with one fresh P-256 key.
func jwksServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv, _ := signingJWKSServer(t)
	return srv
}

// signingJWKSServer serves a JWKS document with one fresh P-256 key, k1,
// and returns its private key.
func signingJWKSServer(t *testing.T) (*httptest.Server, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	public, err := jwk.FromRaw(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	public.Set(jwk.KeyIDKey, "k1")
	set := jwk.NewSet()
	set.AddKey(public)
	doc, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(doc) }))
	t.Cleanup(srv.Close)
	return srv, key
}

// failingServer answers every request with 500.
func failingServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down for maintenance", http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// mqttConnect encodes an MQTT 3.1.1 CONNECT carrying password, or none
// when it is empty.
func mqttConnect(t *testing.T, password string) []byte {
	t.Helper()
	pk := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: packets.ProtocolV311, CleanStart: true, ClientID: "dev-1",
		UsernameFlag: true, Username: "dev", PasswordFlag: password != "", Password: []byte(password)}
	raw, err := pk.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// dialProxy connects to addr; the connection is closed at cleanup.
func dialProxy(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// TestMetricsAfterTraffic scrapes /metrics after known traffic through a
// real proxy and authentication chain: one accepted client, one closed by
// max_connections while it is connected, and two refused.
func TestMetricsAfterTraffic(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	chain := newTestChain(t, jwksServer(t).URL)
	p := &proxy.Proxy{Upstream: rec.Addr, Verifier: chain, Limits: proxy.Limits{MaxConnections: 1}}
	base := startTestAdmin(t, adminTestConfig(false), p, chain, nil)
	addr := serveTestProxy(t, p)

	accepted := dialProxy(t, addr)
	pingreq := []byte{0xc0, 0x00}
	sent := append(mqttConnect(t, hsToken(t, adminTestSecret, "dev-1")), pingreq...)
	accepted.Write(sent)
	rec.WaitReceived(t, 0, len(sent))

	overLimit := dialProxy(t, addr)
	if n, err := overLimit.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client over max_connections read %d bytes, %v; want the connection closed", n, err)
	}
	accepted.Close()
	waitUntil(t, "the accepted client's release", func() bool { return activeConnections(t, base) == 0 })

	for _, password := range []string{hsToken(t, "not-the-secret", "dev-1"), ""} {
		c := dialProxy(t, addr)
		c.Write(mqttConnect(t, password))
		if ack, err := io.ReadAll(c); err != nil || len(ack) != 4 || ack[3] == 0 {
			t.Errorf("refused client read %x, %v; want a refusing CONNACK", ack, err)
		}
		c.Close()
		waitUntil(t, "the refused client's release", func() bool { return activeConnections(t, base) == 0 })
	}

	families := scrape(t, base)
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"mqtt_jwt_proxy_connections_accepted_total", map[string]string{"listener": "tcp"}, 4}, // the one over the limit too
		{"mqtt_jwt_proxy_connections_active", map[string]string{"listener": "tcp"}, 0},
		{"mqtt_jwt_proxy_authentications_total", map[string]string{"outcome": "accepted", "reason": ""}, 1},
		{"mqtt_jwt_proxy_authentications_total", map[string]string{"outcome": "refused", "reason": "bad_signature"}, 1},
		{"mqtt_jwt_proxy_authentications_total", map[string]string{"outcome": "refused", "reason": "token_missing"}, 1},
		{"mqtt_jwt_proxy_bytes_total", map[string]string{"direction": "from_client"}, float64(len(sent))},
		{"mqtt_jwt_proxy_bytes_total", map[string]string{"direction": "to_client"}, 0},
		{"mqtt_jwt_proxy_limit_rejections_total", map[string]string{"kind": "max_connections"}, 1},
		{"mqtt_jwt_proxy_limit_rejections_total", map[string]string{"kind": "per_ip_connect_rate"}, 0},
		{"mqtt_jwt_proxy_limit_rejections_total", map[string]string{"kind": "per_client_id_connect_rate"}, 0},
		{"mqtt_jwt_proxy_upstream_dial_seconds", nil, 1},
		{"mqtt_jwt_proxy_upstream_dial_failures_total", nil, 0},
		{"mqtt_jwt_proxy_connect_decision_seconds", nil, 3},
		{"mqtt_jwt_proxy_build_info", map[string]string{"version": buildVersion(), "goversion": runtime.Version()}, 1},
		{"mqtt_jwt_proxy_jwks_refreshes_total", map[string]string{"authenticator": "jwks", "result": "success"}, 1},
		{"mqtt_jwt_proxy_jwks_refreshes_total", map[string]string{"authenticator": "jwks", "result": "failure"}, 0},
		{"mqtt_jwt_proxy_jwks_keys_loaded", map[string]string{"authenticator": "jwks"}, 1},
	}
	for _, c := range checks {
		t.Run(c.name+labelString(c.labels), func(t *testing.T) {
			got, ok := sample(families, c.name, c.labels)
			if !ok || got != c.want {
				t.Errorf("%s%s = %v (present: %v), want %v", c.name, labelString(c.labels), got, ok, c.want)
			}
		})
	}
	for _, name := range []string{"mqtt_jwt_proxy_jwks_keyset_age_seconds", "go_goroutines", "process_open_fds"} {
		if _, ok := families[name]; !ok {
			t.Errorf("%s is not exported", name)
		}
	}
}

func labelString(labels map[string]string) string {
	if len(labels) == 0 {
		return ""
	}
	b, _ := json.Marshal(labels)
	return string(b)
}

func TestReadiness(t *testing.T) {
	cases := []struct {
		name         string
		upstreamDown bool
		jwksDown     bool
		notServing   bool // Serve is never called
		drain        bool // a client is connected and Shutdown has begun
		wantStatus   int
		wantBody     string
	}{
		{name: "ready", wantStatus: http.StatusOK, wantBody: "ok"},
		{name: "listener not serving", notServing: true, wantStatus: http.StatusServiceUnavailable, wantBody: "0 of 1 listeners serving"},
		{name: "upstream down", upstreamDown: true, wantStatus: http.StatusServiceUnavailable, wantBody: "upstream: dial tcp"},
		{name: "JWKS without keys", jwksDown: true, wantStatus: http.StatusServiceUnavailable, wantBody: "authenticator jwks has no usable JWKS keys"},
		{name: "draining", drain: true, wantStatus: http.StatusServiceUnavailable, wantBody: "draining"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			proxytest.VerifyNoLeaks(t)
			rec := proxytest.NewRecorder(t, "")
			upstream := rec.Addr
			if tc.upstreamDown {
				upstream = proxytest.ClosedAddr(t)
			}
			endpoint := jwksServer(t).URL
			if tc.jwksDown {
				endpoint = failingServer(t).URL
			}
			chain := newTestChain(t, endpoint)
			p := &proxy.Proxy{Upstream: upstream, Verifier: chain}
			base := startTestAdmin(t, adminTestConfig(false), p, chain, nil)
			if !tc.notServing {
				addr := serveTestProxy(t, p)
				if tc.drain {
					drain(t, p, addr, rec)
				}
			}

			if status, body := get(t, base+"/readyz"); status != tc.wantStatus || !strings.Contains(body, tc.wantBody) {
				t.Errorf("/readyz = %d %q, want %d with %q", status, body, tc.wantStatus, tc.wantBody)
			}
			if status, body := get(t, base+"/healthz"); status != http.StatusOK || body != "ok\n" {
				t.Errorf("/healthz = %d %q, want 200 ok: the process is alive", status, body)
			}
		})
	}
}

// drain connects a client through p and begins p's Shutdown, which waits
// for that client until the test ends.
func drain(t *testing.T, p *proxy.Proxy, addr string, rec *proxytest.Recorder) {
	t.Helper()
	c := dialProxy(t, addr)
	connect := mqttConnect(t, hsToken(t, adminTestSecret, "dev-1"))
	c.Write(connect)
	rec.WaitReceived(t, 0, len(connect))

	stop, cancel := context.WithCancel(context.Background())
	shutdown := make(chan error, 1)
	go func() { shutdown <- p.Shutdown(stop) }()
	t.Cleanup(func() {
		cancel()
		<-shutdown
	})
	waitUntil(t, "Shutdown to begin", func() bool { return p.Health().Draining })
	select {
	case err := <-shutdown:
		shutdown <- err // for the cleanup, which waits for it
		t.Fatalf("Shutdown returned %v with a client connected", err)
	default:
	}
}

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// countingDialer counts dials and fails them while down is set. Each dial
// waits for gate when it is set, so that callers can pile up on one probe.
type countingDialer struct {
	mu    sync.Mutex
	dials int
	down  bool
	gate  chan struct{}
}

func (d *countingDialer) dial(ctx context.Context) (net.Conn, error) {
	d.mu.Lock()
	d.dials++
	down, gate := d.down, d.gate
	d.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if down {
		return nil, errors.New("connection refused")
	}
	client, server := net.Pipe()
	server.Close()
	return client, nil
}

func (d *countingDialer) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials
}

// TestUpstreamCheck: probes answer only when the proxy's own dials do not,
// start at most once per upstreamProbeInterval, and are shared by
// concurrent callers, so /readyz cannot flood the broker.
func TestUpstreamCheck(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	dialer := &countingDialer{}
	check := &upstreamCheck{dial: dialer.dial, now: clock.Now}
	t.Cleanup(check.wait)

	steps := []struct {
		name      string
		advance   time.Duration
		down      bool
		health    func(now time.Time) proxy.Health // the proxy's dials; nil: none
		wantDials int                              // in total, after this step
		wantErr   string                           // empty: reachable
	}{
		{name: "no dial yet: probe", wantDials: 1},
		{name: "probed 4s ago: cached", advance: 4 * time.Second, wantDials: 1},
		{name: "probe expired: probe again", advance: time.Second, wantDials: 2},
		{name: "down, but probed just now: cached", down: true, wantDials: 2},
		{name: "down and probe expired", advance: upstreamProbeInterval, down: true, wantDials: 3, wantErr: "connection refused"},
		{name: "failed probe cached", advance: time.Second, wantDials: 3, wantErr: "connection refused"},
		{name: "a client dialed just now: no probe", advance: time.Second,
			health: func(now time.Time) proxy.Health { return proxy.Health{LastDialSuccess: now} }, wantDials: 3},
		{name: "a client failed after the probe: its failure, no probe", advance: time.Second,
			health:    func(now time.Time) proxy.Health { return proxy.Health{LastDialFailure: now} },
			wantDials: 3, wantErr: errClientDialFailed.Error()},
		{name: "a client failed and the probe expired: probe", advance: upstreamProbeInterval,
			health:    func(now time.Time) proxy.Health { return proxy.Health{LastDialFailure: now} },
			wantDials: 4},
		{name: "a client's success long ago: probe", advance: time.Hour,
			health:    func(now time.Time) proxy.Health { return proxy.Health{LastDialSuccess: now.Add(-time.Minute)} },
			wantDials: 5},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			clock.advance(step.advance)
			dialer.mu.Lock()
			dialer.down = step.down
			dialer.mu.Unlock()
			var h proxy.Health
			if step.health != nil {
				h = step.health(clock.Now())
			}
			err := check.check(context.Background(), h)
			if got := errString(err); got != step.wantErr {
				t.Errorf("check = %q, want %q", got, step.wantErr)
			}
			if got := dialer.count(); got != step.wantDials {
				t.Errorf("dials = %d, want %d", got, step.wantDials)
			}
		})
	}

	t.Run("concurrent callers share one probe", func(t *testing.T) {
		clock.advance(upstreamProbeInterval)
		gate := make(chan struct{})
		dialer.mu.Lock()
		dialer.down, dialer.gate = false, gate
		dialer.mu.Unlock()
		before := dialer.count()

		const callers = 50
		errs := make(chan error, callers)
		for range callers {
			go func() { errs <- check.check(context.Background(), proxy.Health{}) }()
		}
		waitUntil(t, "the probe to start", func() bool { return dialer.count() > before })
		close(gate)
		for range callers {
			if err := <-errs; err != nil {
				t.Errorf("check = %v, want reachable", err)
			}
		}
		if got := dialer.count() - before; got != 1 {
			t.Errorf("%d callers caused %d dials, want 1", callers, got)
		}
	})

	t.Run("a caller's context ends the wait, not the probe", func(t *testing.T) {
		clock.advance(upstreamProbeInterval)
		gate := make(chan struct{})
		dialer.mu.Lock()
		dialer.gate = gate
		dialer.mu.Unlock()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := check.check(ctx, proxy.Health{}); !errors.Is(err, context.Canceled) {
			t.Errorf("check with a cancelled context = %v, want context.Canceled", err)
		}
		close(gate)
		check.wait()
		if err := check.check(context.Background(), proxy.Health{}); err != nil {
			t.Errorf("check after the probe = %v, want its success", err)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestPprofFlag(t *testing.T) {
	for _, tc := range []struct {
		pprof      bool
		wantStatus int
	}{
		{pprof: false, wantStatus: http.StatusNotFound},
		{pprof: true, wantStatus: http.StatusOK},
	} {
		t.Run(map[bool]string{false: "off by default", true: "on"}[tc.pprof], func(t *testing.T) {
			proxytest.VerifyNoLeaks(t)
			chain := newTestChain(t)
			p := &proxy.Proxy{Upstream: "127.0.0.1:1", Verifier: chain}
			base := startTestAdmin(t, adminTestConfig(tc.pprof), p, chain, nil)
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline"} {
				if status, body := get(t, base+path); status != tc.wantStatus {
					t.Errorf("GET %s = %d, want %d\n%.200s", path, status, tc.wantStatus, body)
				}
			}
			if status, _ := get(t, base+"/metrics"); status != http.StatusOK {
				t.Errorf("GET /metrics = %d, want 200 either way", status)
			}
		})
	}
}

// TestAdminInProcess runs the command with metrics.bind and checks that
// the endpoint serves the proxy's metrics, reports ready, and turns not
// ready on SIGTERM while an established connection drains.
func TestAdminInProcess(t *testing.T) {
	rec := proxytest.NewRecorder(t, "")
	admin := fmt.Sprintf("127.0.0.1:%d", proxytest.FreePort(t))
	config := strings.Replace(proxyConfig(rec.Addr, adminTestSecret), "shutdown: {drain_timeout: 3s}",
		"shutdown: {drain_timeout: 20s}\nmetrics: {bind: \""+admin+"\"}", 1)
	proc := startProcess(t, config)
	base := "http://" + admin

	// The listener is logged just before it serves: ready follows shortly.
	waitUntil(t, "/readyz to answer 200", func() bool {
		status, _ := get(t, base+"/readyz")
		return status == http.StatusOK
	})
	c := dialProxy(t, proc.addr)
	connect := mqttConnect(t, hsToken(t, adminTestSecret, "dev-1"))
	c.Write(connect)
	rec.WaitReceived(t, 1, len(connect)) // connection 0 was /readyz's probe
	// The acceptance is counted once the broker has the CONNECT, which
	// the broker may read first.
	waitUntil(t, "authentications_total{outcome=accepted} to be 1", func() bool {
		v, _ := sample(scrape(t, base), "mqtt_jwt_proxy_authentications_total", map[string]string{"outcome": "accepted"})
		return v == 1
	})

	proc.signal(t, syscall.SIGTERM)
	waitForLog(t, proc.lines, "listeners closed; draining")
	if status, body := get(t, base+"/readyz"); status != http.StatusServiceUnavailable || body != "not ready: draining\n" {
		t.Errorf("/readyz while draining = %d %q, want 503 draining", status, body)
	}
	c.Close() // the drain ends with the last connection
	select {
	case err := <-proc.exited:
		if err != nil {
			t.Errorf("exit: %v, want status 0", err)
		}
		proc.exited <- err // for the cleanup
	case <-time.After(15 * time.Second):
		t.Fatal("the proxy did not exit once its last connection closed")
	}
}

// TestPprofBeyondLoopbackWarns: the profiler on an address beyond
// loopback (as -bind-host 0.0.0.0 makes it) is served, with a warning.
func TestPprofBeyondLoopbackWarns(t *testing.T) {
	for _, tc := range []struct {
		bind string
		want int
	}{
		{"127.0.0.1:0", 0},
		{"0.0.0.0:0", 1},
	} {
		t.Run(tc.bind, func(t *testing.T) {
			cfg := adminTestConfig(true)
			cfg.Metrics.Bind = tc.bind
			ln, err := listenAdmin(cfg)
			if err != nil {
				t.Fatal(err)
			}
			chain := newTestChain(t)
			core, logs := observer.New(zap.WarnLevel)
			a := startAdmin(ln, cfg, &proxy.Proxy{Upstream: "127.0.0.1:1", Verifier: chain}, chain.Status, func() *revocation.List { return nil }, zap.New(core))
			defer a.Close()
			if got := logs.FilterMessageSnippet("profiler is served beyond loopback").Len(); got != tc.want {
				t.Errorf("%d warnings about the profiler, want %d: %v", got, tc.want, logs.All())
			}
		})
	}
}

// TestRevocationMetrics: the revocation list in force is exported: its
// entries, whether it is in force, its refreshes by result and its age; a
// failed refresh counts and keeps the last good entries. Without a list,
// none of its series is exported.
func TestRevocationMetrics(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revoked.json")
	if err := os.WriteFile(path, []byte(`{"jti": ["a", "b"], "sub": ["mallory"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	list, err := revocation.New(configs.Revocation{File: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(list.Close)
	chain := newTestChain(t)
	p := &proxy.Proxy{Upstream: "127.0.0.1:1", Verifier: chain}
	base := startTestAdmin(t, adminTestConfig(false), p, chain, list)

	check := func(when string, want map[string]float64) {
		t.Helper()
		families := scrape(t, base)
		for key, v := range want {
			name, result, _ := strings.Cut(key, "/")
			var labels map[string]string
			if result != "" {
				labels = map[string]string{"result": result}
			}
			if got, ok := sample(families, name, labels); !ok || got != v {
				t.Errorf("%s: %s = %v (present: %v), want %v", when, key, got, ok, v)
			}
		}
		if _, ok := families["mqtt_jwt_proxy_revocation_age_seconds"]; !ok {
			t.Errorf("%s: mqtt_jwt_proxy_revocation_age_seconds is not exported", when)
		}
	}
	check("loaded", map[string]float64{
		"mqtt_jwt_proxy_revocation_entries":                 3,
		"mqtt_jwt_proxy_revocation_in_force":                1,
		"mqtt_jwt_proxy_revocation_refreshes_total/success": 1,
		"mqtt_jwt_proxy_revocation_refreshes_total/failure": 0,
	})

	if err := os.WriteFile(path, []byte(`{"kid": ["x"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := list.Refresh(context.Background()); err == nil {
		t.Fatal("a document with an unknown key refreshed")
	}
	check("after a failed refresh", map[string]float64{
		"mqtt_jwt_proxy_revocation_entries":                 3,
		"mqtt_jwt_proxy_revocation_in_force":                1,
		"mqtt_jwt_proxy_revocation_refreshes_total/success": 1,
		"mqtt_jwt_proxy_revocation_refreshes_total/failure": 1,
	})

	none := startTestAdmin(t, adminTestConfig(false), &proxy.Proxy{Upstream: "127.0.0.1:1", Verifier: chain}, chain, nil)
	for name := range scrape(t, none) {
		if strings.HasPrefix(name, "mqtt_jwt_proxy_revocation_") {
			t.Errorf("%s is exported without a revocation list", name)
		}
	}
}
