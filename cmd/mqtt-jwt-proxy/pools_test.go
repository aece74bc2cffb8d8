package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

const poolSecret = "pool-secret-for-tests"

// poolConfig is a proxy configuration whose upstream section is a pool of
// brokers balanced by balance, with drain as its drain timeout.
func poolConfig(brokers []*proxytest.Mosquitto, balance string, drain time.Duration) string {
	var servers []string
	for _, b := range brokers {
		servers = append(servers, `{address: "`+b.Addr+`"}`)
	}
	return `
listeners: [{name: tcp, bind: "127.0.0.1:0"}]
upstream:
  servers: [` + strings.Join(servers, ", ") + `]
  balance: ` + balance + `
  health_check: {interval: 1s}
authentication:
  - {mechanism: jwt, algorithm: hmac-based, secret: "` + poolSecret + `"}
shutdown: {drain_timeout: ` + drain.String() + `}
log: {format: json}
`
}

// tokenConnects are MQTT 3.1.1 CONNECTs of n devices, prefix-0 on, each
// with a token that claims, besides its sub, claims; and their client
// identifiers.
func tokenConnects(t *testing.T, prefix string, n int, claims map[string]any) (ids []string, connects [][]byte) {
	t.Helper()
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		token, err := mintToken(tokenRequest{Alg: jwa.HS256, Key: []byte(poolSecret), Subject: id, TTL: time.Hour, Claims: claims}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		pk := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: packets.ProtocolV311, CleanStart: true, ClientID: id,
			UsernameFlag: true, Username: id, PasswordFlag: true, Password: []byte(token)}
		raw, err := pk.Encode()
		if err != nil {
			t.Fatal(err)
		}
		ids, connects = append(ids, id), append(connects, raw)
	}
	return ids, connects
}

// onlyBroker returns the one broker where[id] names, failing the test if
// it names none or several.
func onlyBroker(t *testing.T, where map[string][]int, id string) int {
	t.Helper()
	if len(where[id]) != 1 {
		t.Fatalf("%s connected at brokers %v, want exactly one", id, where[id])
	}
	return where[id][0]
}

// TestServePoolClientIDAcrossProcesses: three mosquitto brokers behind a
// client_id pool; each device reaches the same broker through one proxy
// process, through another, and through the first restarted after a kill
// -9, as the brokers see it, and the brokers share the devices.
func TestServePoolClientIDAcrossProcesses(t *testing.T) {
	brokers := []*proxytest.Mosquitto{proxytest.StartMosquitto(t), proxytest.StartMosquitto(t), proxytest.StartMosquitto(t)}
	config := poolConfig(brokers, configs.BalanceClientID, time.Second)
	first, second := startProcess(t, config), startProcess(t, config)
	ids, connects := tokenConnects(t, "device", 300, nil)

	proxytest.VisitAll(t, first.addr, connects)
	proxytest.VisitAll(t, second.addr, connects)
	first.kill(t)
	restarted := startProcess(t, config)
	proxytest.VisitAll(t, restarted.addr, connects)

	where := proxytest.WhereConnected(t, brokers, nil)
	counts := make([]int, len(brokers))
	for _, id := range ids {
		counts[onlyBroker(t, where, id)]++
	}
	for i, c := range counts {
		if c < len(ids)/5 {
			t.Errorf("broker %d has %d of %d devices: %v", i, c, len(ids), counts)
		}
	}
}

// TestServePoolReload: SIGHUP adds a fourth broker to a client_id pool,
// which takes at most 35% of the devices, all moving to it, while
// established sessions go on; a second SIGHUP removes a broker, whose
// session is closed once shutdown.drain_timeout has passed, while the
// others go on.
func TestServePoolReload(t *testing.T) {
	brokers := []*proxytest.Mosquitto{proxytest.StartMosquitto(t), proxytest.StartMosquitto(t), proxytest.StartMosquitto(t), proxytest.StartMosquitto(t)}
	p := startProcess(t, poolConfig(brokers[:3], configs.BalanceClientID, 30*time.Second))
	// 1,000, so that the share that moves, 25% on average, is under 35%
	// by seven standard deviations.
	ids, connects := tokenConnects(t, "device", 1000, nil)
	proxytest.VisitAll(t, p.addr, connects)
	before := proxytest.WhereConnected(t, brokers, nil)

	// A session on broker 0, which the second reload removes, and one on
	// broker 1, which stays; devices of their own, since a device that
	// connects again takes its session over.
	held := map[int]net.Conn{}
	heldIDs, heldConnects := tokenConnects(t, "held", 100, nil)
	for i := 0; len(held) < 2; i++ {
		if i == len(heldIDs) {
			t.Fatalf("no session of %d on broker 0 or 1: %v", i, held)
		}
		since := proxytest.ClientCounts(t, brokers)
		c, code, err := proxytest.OpenSession(p.addr, heldConnects[i])
		if err != nil || code != 0 {
			t.Fatalf("%s: CONNACK %d, %v", heldIDs[i], code, err)
		}
		at := onlyBroker(t, proxytest.WhereConnected(t, brokers, since), heldIDs[i])
		if _, ok := held[at]; ok || at > 1 {
			c.Close()
			continue
		}
		defer c.Close()
		held[at] = c
	}
	proxytest.VisitAll(t, p.addr, connects) // the closed sessions' lines logged before the reloads'
	since := proxytest.ClientCounts(t, brokers)

	os.WriteFile(p.config, []byte(poolConfig(brokers, configs.BalanceClientID, 30*time.Second)), 0o600)
	p.signal(t, syscall.SIGHUP)
	waitForLog(t, p.lines, "configuration reloaded")
	proxytest.VisitAll(t, p.addr, connects)
	after := proxytest.WhereConnected(t, brokers, since)
	moved := 0
	for _, id := range ids {
		if got, was := onlyBroker(t, after, id), before[id][0]; got != was {
			moved++
			if got != 3 {
				t.Errorf("%s moved from broker %d to %d, not to the new one", id, was, got)
			}
		}
	}
	if moved > len(ids)*35/100 || moved < len(ids)/10 {
		t.Errorf("%d of %d devices moved, want between 10%% and 35%%", moved, len(ids))
	}
	t.Logf("%d of %d devices moved to the fourth broker", moved, len(ids))
	for _, c := range held {
		proxytest.ExpectPong(t, c)
	}

	os.WriteFile(p.config, []byte(poolConfig(brokers[1:], configs.BalanceClientID, time.Second)), 0o600)
	p.signal(t, syscall.SIGHUP)
	if line := waitForLog(t, p.lines, "upstream server removed; draining its connections"); line["server"] != brokers[0].Addr || line["connections"] != 1.0 {
		t.Errorf("drain line %v, want server %s with 1 connection", line, brokers[0].Addr)
	}
	proxytest.ExpectPong(t, held[0]) // it goes on within the drain timeout
	held[0].SetReadDeadline(time.Now().Add(30 * time.Second))
	if b, err := io.ReadAll(held[0]); err != nil || len(b) != 0 {
		t.Errorf("the session on the removed broker read %x, %v; want the end of the stream", b, err)
	}
	if line := waitForLog(t, p.lines, "connection closed"); line["reason"] != "upstream_server_removed" {
		t.Errorf("closing line %v, want reason upstream_server_removed", line)
	}
	proxytest.ExpectPong(t, held[1])
}

// TestServeTenantsByClaim: two tenants' devices, routed by their token's
// tenant claim to two brokers, each broker seeing its own tenant's
// devices only; a token of no tenant the routes know is refused with
// CONNACK 5 (no_route), as there is no default upstream, and reaches no
// broker.
func TestServeTenantsByClaim(t *testing.T) {
	acme, globex := proxytest.StartMosquitto(t), proxytest.StartMosquitto(t)
	p := startProcess(t, `
listeners: [{name: tcp, bind: "127.0.0.1:0"}]
upstreams:
  acme: {address: "`+acme.Addr+`"}
  globex: {address: "`+globex.Addr+`"}
routes:
  - {match: {claims.tenant: acme}, upstream: acme}
  - {match: {claims.tenant: globex}, upstream: globex}
authentication:
  - {mechanism: jwt, algorithm: hmac-based, secret: "`+poolSecret+`"}
log: {format: json}
`)
	acmeIDs, acmeConnects := tokenConnects(t, "acme", 30, map[string]any{"tenant": "acme"})
	globexIDs, globexConnects := tokenConnects(t, "globex", 30, map[string]any{"tenant": "globex"})
	proxytest.VisitAll(t, p.addr, append(acmeConnects, globexConnects...))
	_, strangers := tokenConnects(t, "initech", 1, map[string]any{"tenant": "initech"})
	if code, err := proxytest.Visit(p.addr, strangers[0]); code != 5 || err != nil {
		t.Errorf("a device of no known tenant: CONNACK %d, %v; want 5", code, err)
	}
	if line := waitForLog(t, p.lines, "connect rejected"); line["reason"] != "no_route" || line["client_id"] != "initech-0" {
		t.Errorf("refusal line %v, want initech-0 refused with no_route", line)
	}
	for _, b := range []struct {
		name   string
		broker *proxytest.Mosquitto
		want   []string
	}{{"acme", acme, acmeIDs}, {"globex", globex, globexIDs}} {
		b.broker.SyncLog(t)
		if got := slices.Sorted(slices.Values(b.broker.ClientIDs())); !slices.Equal(got, slices.Sorted(slices.Values(b.want))) {
			t.Errorf("the %s broker saw %v, want its own %v", b.name, got, b.want)
		}
		if n := b.broker.Connections(); n != len(b.want) {
			t.Errorf("the %s broker took %d connections, want %d", b.name, n, len(b.want))
		}
	}
}

// startPoolProxy serves a proxy in front of cfg's pools with the admin
// endpoint; it returns the proxy's address and the admin endpoint's base
// URL.
func startPoolProxy(t *testing.T, cfg *configs.File) (string, string) {
	t.Helper()
	p := servingProxy(t, cfg)
	chain := newTestChain(t)
	p.Verifier = chain
	admin := adminTestConfig(false)
	base := startTestAdmin(t, admin, p, chain, nil)
	return serveTestProxy(t, p), base
}

// adminConnects are CONNECTs of n devices with tokens of the admin tests'
// secret, and their client identifiers.
func adminConnects(t *testing.T, prefix string, n int) (ids []string, connects [][]byte) {
	t.Helper()
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		pk := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: packets.ProtocolV311, CleanStart: true, ClientID: id,
			UsernameFlag: true, Username: id, PasswordFlag: true, Password: []byte(hsToken(t, adminTestSecret, id))}
		raw, err := pk.Encode()
		if err != nil {
			t.Fatal(err)
		}
		ids, connects = append(ids, id), append(connects, raw)
	}
	return ids, connects
}

// TestPoolServerMetrics: /metrics has each server of the pools: whether
// it is up, the connections that hold it, its successful dials and their
// time, and its failed dials, each of which passed the client on to the
// next server.
func TestPoolServerMetrics(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	brokers := []*proxytest.Mosquitto{proxytest.StartMosquitto(t), proxytest.StartMosquitto(t)}
	cfg := &configs.File{Upstream: configs.Upstream{Balance: configs.BalanceClientID,
		Servers: []configs.UpstreamServer{{Address: brokers[0].Addr}, {Address: brokers[1].Addr}}}}
	addr, base := startPoolProxy(t, cfg)
	ids, connects := adminConnects(t, "metered", 40)
	proxytest.VisitAll(t, addr, connects)
	where := proxytest.WhereConnected(t, brokers, nil)
	var held net.Conn
	var onSecond [][]byte // the devices of broker 1
	for i, id := range ids {
		switch at := onlyBroker(t, where, id); {
		case at == 0 && held == nil:
			c, code, err := proxytest.OpenSession(addr, connects[i])
			if err != nil || code != 0 {
				t.Fatalf("%s: CONNACK %d, %v", id, code, err)
			}
			defer c.Close()
			held = c
		case at == 1:
			onSecond = append(onSecond, connects[i])
		}
	}
	server := func(i int) map[string]string { return map[string]string{"pool": "default", "server": brokers[i].Addr} }
	waitUntil(t, "the visits' links to end", func() bool {
		families := scrape(t, base)
		first, _ := sample(families, "mqtt_jwt_proxy_upstream_server_connections_active", server(0))
		second, _ := sample(families, "mqtt_jwt_proxy_upstream_server_connections_active", server(1))
		return first == 1 && second == 0
	})
	families := scrape(t, base)
	dials := 0.0
	for i := range brokers {
		if up, ok := sample(families, "mqtt_jwt_proxy_upstream_server_up", server(i)); !ok || up != 1 {
			t.Errorf("server %d up = %v (exported: %v), want 1", i, up, ok)
		}
		n, _ := sample(families, "mqtt_jwt_proxy_upstream_server_dial_seconds", server(i))
		dials += n
	}
	if dials != float64(len(ids)+1) {
		t.Errorf("%v successful dials counted, want %d", dials, len(ids)+1)
	}

	brokers[1].Kill()
	proxytest.VisitAll(t, addr, onSecond) // each fails over to broker 0
	families = scrape(t, base)
	if failed, _ := sample(families, "mqtt_jwt_proxy_upstream_server_dial_failures_total", server(1)); failed != float64(len(onSecond)) {
		t.Errorf("broker 1's dial failures %v, want %d (one per device that found it gone)", failed, len(onSecond))
	}
	if up, _ := sample(families, "mqtt_jwt_proxy_upstream_server_up", server(1)); up != 1 {
		t.Errorf("broker 1 up = %v without health checks, want 1: nothing marks it down", up)
	}
	if status, body := get(t, base+"/readyz"); status != http.StatusOK {
		t.Errorf("/readyz with a broker up = %d %q, want 200", status, body)
	}
}

// TestPoolReadiness: /readyz is ready while a server is up: in a pool
// with health checks, as they have it; in one without, as a dial finds
// it.
func TestPoolReadiness(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	t.Run("health checks", func(t *testing.T) {
		broker := proxytest.StartMosquitto(t)
		cfg := &configs.File{Upstream: configs.Upstream{
			Servers:     []configs.UpstreamServer{{Address: broker.Addr}, {Address: proxytest.ClosedAddr(t)}},
			HealthCheck: &configs.HealthCheck{Interval: configs.Duration(100 * time.Millisecond), Fall: 1, Rise: 1}}}
		_, base := startPoolProxy(t, cfg)
		ready := func(want int, body string) {
			t.Helper()
			waitUntil(t, fmt.Sprintf("/readyz %d", want), func() bool {
				status, got := get(t, base+"/readyz")
				return status == want && strings.Contains(got, body)
			})
		}
		ready(http.StatusOK, "ok")
		broker.Kill()
		ready(http.StatusServiceUnavailable, "upstream: no server is up (default "+broker.Addr+": health check: ")
		broker.Restart(t)
		ready(http.StatusOK, "ok")
	})
	t.Run("no health checks", func(t *testing.T) {
		cfg := &configs.File{Upstream: configs.Upstream{
			Servers: []configs.UpstreamServer{{Address: proxytest.ClosedAddr(t)}, {Address: proxytest.ClosedAddr(t)}}}}
		_, base := startPoolProxy(t, cfg)
		if status, body := get(t, base+"/readyz"); status != http.StatusServiceUnavailable || !strings.Contains(body, "upstream: dial tcp") {
			t.Errorf("/readyz with no server reachable = %d %q, want 503 with the dial's error", status, body)
		}
		broker := proxytest.StartMosquitto(t)
		cfg.Upstream.Servers[1].Address = broker.Addr
		_, base = startPoolProxy(t, cfg)
		if status, body := get(t, base+"/readyz"); status != http.StatusOK {
			t.Errorf("/readyz with a server reachable = %d %q, want 200", status, body)
		}
	})
}

// TestReloadEmbedded: a reload keeps address: embedded on the broker that
// started with the proxy; one that asks for the embedded broker when none
// runs is rejected, and the running configuration stays in force.
func TestReloadEmbedded(t *testing.T) {
	config := func(address string) string {
		return `
listeners: [{name: tcp, bind: "127.0.0.1:0"}]
upstream: {address: "` + address + `"}
authentication:
  - {mechanism: jwt, algorithm: hmac-based, secret: "` + poolSecret + `"}
log: {format: json}
`
	}
	_, connects := tokenConnects(t, "device", 1, nil)
	embedded := startProcess(t, config(configs.EmbeddedAddress))
	embedded.signal(t, syscall.SIGHUP)
	waitForLog(t, embedded.lines, "configuration reloaded")
	if code, err := proxytest.Visit(embedded.addr, connects[0]); code != 0 || err != nil {
		t.Errorf("through the embedded broker after a reload: CONNACK %d, %v; want 0", code, err)
	}

	broker := proxytest.StartMosquitto(t)
	p := startProcess(t, config(broker.Addr))
	os.WriteFile(p.config, []byte(config(configs.EmbeddedAddress)), 0o600)
	p.signal(t, syscall.SIGHUP)
	if line := waitForLog(t, p.lines, "reload rejected"); !strings.Contains(fmt.Sprint(line["error"]), "the embedded broker starts with the proxy only") {
		t.Errorf("reload line %v, want the embedded broker named", line)
	}
	if code, err := proxytest.Visit(p.addr, connects[0]); code != 0 || err != nil {
		t.Errorf("after the rejected reload: CONNACK %d, %v; want 0", code, err)
	}
	broker.WaitForClient(t, "device-0", proxytest.DefaultTimeout)
}
