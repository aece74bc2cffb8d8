package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// servers are plain servers of weight 1 at addrs.
func servers(addrs ...string) []upstream.Server[ServerSettings] {
	out := make([]upstream.Server[ServerSettings], len(addrs))
	for i, a := range addrs {
		out[i] = upstream.Server[ServerSettings]{Address: a, Weight: 1}
	}
	return out
}

// defaultPool is a configuration of one pool, the default, of ss.
func defaultPool(balance upstream.Balance, check *upstream.HealthCheck, ss ...upstream.Server[ServerSettings]) UpstreamsConfig {
	return UpstreamsConfig{Pools: map[string]upstream.PoolConfig[ServerSettings]{
		upstream.DefaultPool: {Servers: ss, Balance: balance, HealthCheck: check},
	}}
}

// startPools serves a proxy in front of cfg's pools, logging to the
// returned observer, and returns it and its address.
func startPools(t *testing.T, cfg UpstreamsConfig, v authn.Verifier) (*Proxy, string, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	logger := zap.New(core)
	pools, err := NewUpstreams(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Upstreams: pools, Verifier: v, Logger: logger}
	return p, startProxy(t, p), logs
}

// brokerAddrs are the brokers' addresses.
func brokerAddrs(brokers []*proxytest.Mosquitto) []string {
	addrs := make([]string, len(brokers))
	for i, b := range brokers {
		addrs[i] = b.Addr
	}
	return addrs
}

// startBrokers starts n mosquitto brokers.
func startBrokers(t *testing.T, n int) []*proxytest.Mosquitto {
	t.Helper()
	brokers := make([]*proxytest.Mosquitto, n)
	for i := range brokers {
		brokers[i] = proxytest.StartMosquitto(t)
	}
	return brokers
}

// deviceConnects are MQTT 3.1.1 CONNECTs of n devices, prefix-0 on, with
// the password passwordVerifier accepts, and their client identifiers.
func deviceConnects(t *testing.T, prefix string, n int) (ids []string, connects [][]byte) {
	t.Helper()
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		ids = append(ids, id)
		connects = append(connects, connectAs(t, packets.ProtocolV311, id, "good"))
	}
	return ids, connects
}

// waitIdle waits until no connection holds a server of p's pools: each
// link's end releases its server.
func waitIdle(t *testing.T, p *Proxy) {
	t.Helper()
	waitFor(t, func() bool {
		for _, st := range p.Upstreams.Status(nil) {
			if st.Active != 0 {
				return false
			}
		}
		return true
	})
}

// TestPoolRoundRobin: three mosquitto brokers behind one proxy share
// 1,000 devices evenly under round_robin, as the brokers count them, and
// each device's connection releases its server when it ends.
func TestPoolRoundRobin(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers := startBrokers(t, 3)
	p, addr, _ := startPools(t, defaultPool(upstream.RoundRobin, nil, servers(brokerAddrs(brokers)...)...), passwordVerifier{})
	n := 1000
	ids, connects := deviceConnects(t, "rr", n)
	proxytest.VisitAll(t, addr, connects)

	where := proxytest.WhereConnected(t, brokers, nil)
	counts := make([]int, len(brokers))
	for _, id := range ids {
		if len(where[id]) != 1 {
			t.Fatalf("%s connected at brokers %v, want one", id, where[id])
		}
		counts[where[id][0]]++
	}
	even := float64(n) / float64(len(brokers))
	for i, c := range counts {
		if d := float64(c) - even; d > even/10 || d < -even/10 {
			t.Errorf("broker %d has %d of %d devices, more than 10%% from %.0f: %v", i, c, n, even, counts)
		}
	}
	waitIdle(t, p)
}

// TestPoolClientIDAffinity: under client_id every device reaches the same
// broker at each visit, through one proxy and through another with pools
// of its own (a replica, or the proxy after a restart), and the brokers
// share the devices.
func TestPoolClientIDAffinity(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers := startBrokers(t, 3)
	cfg := defaultPool(upstream.ClientID, nil, servers(brokerAddrs(brokers)...)...)
	_, first, _ := startPools(t, cfg, passwordVerifier{})
	_, second, _ := startPools(t, cfg, passwordVerifier{})
	n := 600
	ids, connects := deviceConnects(t, "aff", n)
	proxytest.VisitAll(t, first, connects)
	proxytest.VisitAll(t, second, connects)
	proxytest.VisitAll(t, first, connects)

	where := proxytest.WhereConnected(t, brokers, nil)
	counts := make([]int, len(brokers))
	for _, id := range ids {
		if len(where[id]) != 1 {
			t.Fatalf("%s connected at brokers %v, want one", id, where[id])
		}
		counts[where[id][0]]++
	}
	for i, c := range counts {
		if c < n/5 {
			t.Errorf("broker %d has %d of %d devices: %v", i, c, n, counts)
		}
	}
}

// TestPoolFailover: while 300 devices reconnect in a loop, one of three
// brokers is killed (SIGKILL). No device is refused: a dial that finds it
// gone moves on to the next server, and once the health checks have it
// down no dial tries it. Its devices land on the other two, each always
// on the same one, and the others' devices stay where they were.
func TestPoolFailover(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers := startBrokers(t, 3)
	check := &upstream.HealthCheck{Interval: 200 * time.Millisecond, Timeout: 200 * time.Millisecond, Fall: 2, Rise: 2}
	p, addr, logs := startPools(t, defaultPool(upstream.ClientID, check, servers(brokerAddrs(brokers)...)...), passwordVerifier{})
	ids, connects := deviceConnects(t, "fo", 300)
	proxytest.VisitAll(t, addr, connects)
	before := proxytest.WhereConnected(t, brokers, nil)
	const killed = 1
	var lost []string // the killed broker's devices
	for _, id := range ids {
		if before[id][0] == killed {
			lost = append(lost, id)
		}
	}
	if len(lost) == 0 {
		t.Fatal("the broker to kill has no device")
	}
	sinceKill := proxytest.ClientCounts(t, brokers)

	type visit struct {
		afterDown bool
		code      byte
		err       error
	}
	var (
		mu        sync.Mutex
		visits    []visit
		down      atomic.Bool
		afterMark = make([]atomic.Int32, len(ids)) // visits begun after the mark
		stop      = make(chan struct{})
		wg        sync.WaitGroup
	)
	for w := range 16 {
		wg.Go(func() {
			for round := 0; ; round++ {
				for i := w; i < len(ids); i += 16 {
					select {
					case <-stop:
						return
					default:
					}
					afterDown := down.Load()
					code, err := proxytest.Visit(addr, connects[i])
					mu.Lock()
					visits = append(visits, visit{afterDown, code, err})
					mu.Unlock()
					if afterDown {
						afterMark[i].Add(1)
					}
				}
			}
		})
	}
	brokers[killed].Kill()
	waitLog(t, logs, "upstream server marked down", zap.String("server", brokers[killed].Addr))
	down.Store(true)
	waitFor(t, func() bool {
		for i := range afterMark {
			if afterMark[i].Load() < 2 {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()

	var failed, failedAfter int
	for _, v := range visits {
		if v.code != 0 {
			t.Fatalf("a device was refused with CONNACK %d (after the mark: %v)", v.code, v.afterDown)
		}
		if v.err != nil {
			failed++
			if v.afterDown {
				failedAfter++
				t.Errorf("a visit after the broker was marked down failed: %v", v.err)
			}
		}
	}
	t.Logf("%d visits, %d cut off by the kill before the mark, none refused", len(visits), failed)

	alive := slices.Clone(brokers)
	alive[killed] = nil
	after := proxytest.WhereConnected(t, alive, sinceKill)
	for _, id := range ids {
		switch got := after[id]; {
		case len(got) != 1:
			t.Errorf("%s (at broker %d before) connected at brokers %v after the kill, want one of the others", id, before[id][0], got)
		case before[id][0] != killed && got[0] != before[id][0]:
			t.Errorf("%s moved from broker %d to %d, though its broker is up", id, before[id][0], got[0])
		}
	}
	waitIdle(t, p)
}

// TestPoolReloadAddsServer: a fourth broker added by UpdateUpstreams
// takes its share of the devices under client_id, at most 35% of them,
// all moving to it, while a session opened before the reload goes on.
func TestPoolReloadAddsServer(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers := startBrokers(t, 4)
	addrs := brokerAddrs(brokers)
	p, addr, _ := startPools(t, defaultPool(upstream.ClientID, nil, servers(addrs[:3]...)...), passwordVerifier{})
	n := 1000
	ids, connects := deviceConnects(t, "add", n)
	proxytest.VisitAll(t, addr, connects)
	before := proxytest.WhereConnected(t, brokers, nil)
	held, code, err := proxytest.OpenSession(addr, connectAs(t, packets.ProtocolV311, "held", "good"))
	if err != nil || code != 0 {
		t.Fatalf("the held session: CONNACK %d, %v", code, err)
	}
	defer held.Close()
	since := proxytest.ClientCounts(t, brokers)

	if err := p.UpdateUpstreams(defaultPool(upstream.ClientID, nil, servers(addrs...)...), time.Minute); err != nil {
		t.Fatal(err)
	}
	proxytest.VisitAll(t, addr, connects)
	after := proxytest.WhereConnected(t, brokers, since)
	moved := 0
	for _, id := range ids {
		if len(after[id]) != 1 {
			t.Fatalf("%s connected at brokers %v after the reload, want one", id, after[id])
		}
		if got, was := after[id][0], before[id][0]; got != was {
			moved++
			if got != 3 {
				t.Errorf("%s moved from broker %d to %d, not to the new one", id, was, got)
			}
		}
	}
	if moved > n*35/100 || moved < n/10 {
		t.Errorf("%d of %d devices moved to the new broker, want between 10%% and 35%%", moved, n)
	}
	t.Logf("%d of %d devices (%.1f%%) moved to the fourth broker", moved, n, 100*float64(moved)/float64(n))
	proxytest.ExpectPong(t, held)
}

// TestPoolReloadDrainsRemovedServer: the connections of a server a
// reload removes go on for the drain timeout, then are closed, logged
// with the reason and counted as sessions the proxy ended; those of the
// server it keeps go on, and new clients go to the server kept only.
func TestPoolReloadDrainsRemovedServer(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers := startBrokers(t, 2)
	addrs := brokerAddrs(brokers)
	pools, err := NewUpstreams(defaultPool(upstream.RoundRobin, nil, servers(addrs...)...), nil)
	if err != nil {
		t.Fatal(err)
	}
	o := startObserved(t, &Proxy{Upstreams: pools, Verifier: passwordVerifier{}})
	p, addr, logs := o.Proxy, o.addr, o.logs
	ids, connects := deviceConnects(t, "drain", 4)
	sessions := openSessions(t, addr, ids, connects)
	where := proxytest.WhereConnected(t, brokers, nil)
	since := proxytest.ClientCounts(t, brokers)
	var onRemoved string // a device on the broker to remove
	for _, id := range ids {
		if where[id][0] == 1 {
			onRemoved = id
		}
	}

	const drain = 3 * time.Second
	if err := p.UpdateUpstreams(defaultPool(upstream.RoundRobin, nil, servers(addrs[0])...), drain); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, "upstream server removed; draining its connections", zap.String("server", addrs[1]), zap.Int("connections", 2))
	for _, id := range ids {
		proxytest.ExpectPong(t, sessions[id]) // within the drain, both brokers' sessions go on
	}
	for _, id := range ids {
		if where[id][0] != 1 {
			continue
		}
		c := sessions[id]
		c.SetReadDeadline(time.Now().Add(drain + 20*time.Second))
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Errorf("%s on the removed broker: read %x, %v; want the end of the stream", id, b, err)
		}
	}
	waitLog(t, logs, "drain timeout reached; closing the connections left on a removed upstream server", zap.String("server", addrs[1]), zap.Int("connections", 2))
	waitLog(t, logs, "connection closed", zap.String("client_id", onRemoved), zap.String("reason", string(EndedServerRemoved)))
	var ended float64
	waitFor(t, func() bool { // counted once the drain has ended them all, closed or not
		ended = o.metric(t, "mqtt_jwt_proxy_sessions_ended_total", "reason="+string(EndedServerRemoved))
		return ended >= 2
	})
	if ended != 2 {
		t.Errorf("sessions_ended_total{reason=%s} = %v, want 2", EndedServerRemoved, ended)
	}
	for _, id := range ids {
		if where[id][0] == 0 {
			proxytest.ExpectPong(t, sessions[id])
		}
	}

	_, more := deviceConnects(t, "after", 4)
	proxytest.VisitAll(t, addr, more)
	if got := proxytest.WhereConnected(t, brokers, since); len(got) != 4 {
		t.Errorf("after the reload, clients reached %v, want the 4 new ones at broker 0", got)
	} else {
		for id, at := range got {
			if !slices.Equal(at, []int{0}) {
				t.Errorf("%s reached brokers %v after the reload, want [0]", id, at)
			}
		}
	}
	waitFor(t, func() bool { // the new clients' links release the server as they end
		st := p.Upstreams.Status(nil)
		return len(st) == 1 && st[0].Address == addrs[0] && st[0].Active == 2
	})
	// The removed server is forgotten with its last session.
	if held, want := serversHeld(p), []string{addrs[0] + " (2 sessions)"}; !slices.Equal(held, want) {
		t.Errorf("the proxy holds the sessions of %v, want %v", held, want)
	}
}

// TestPoolReloadTellsFramedV5ToUseAnotherServer: an MQTT 5 session the
// proxy frames (it has topic rules) on a server a reload removes goes on
// through the drain, then gets DISCONNECT 0x9C (use another server) and
// the close; connecting again, the device lands on the server that stays.
func TestPoolReloadTellsFramedV5ToUseAnotherServer(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers := startBrokers(t, 2)
	addrs := brokerAddrs(brokers)
	pools, err := NewUpstreams(defaultPool(upstream.RoundRobin, nil, servers(addrs[0])...), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := authzProxy(t, "", fleetRules())
	p.Upstreams = pools
	addr := startProxy(t, p)

	const id = "c-moved"
	c := dial(t, addr)
	c.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	if _, err := c.Write(connectAs(t, packets.ProtocolV5, id, mint(t, e2eSecret, id, nil))); err != nil {
		t.Fatal(err)
	}
	ack, err := pahopackets.ReadPacket(c)
	if err != nil || ack.Type != pahopackets.CONNACK || ack.Content.(*pahopackets.Connack).ReasonCode != 0 {
		t.Fatalf("CONNACK: %v, %v; want success", ack, err)
	}
	c.SetReadDeadline(time.Time{})

	const drain = 3 * time.Second
	reloaded := time.Now()
	if err := p.UpdateUpstreams(defaultPool(upstream.RoundRobin, nil, servers(addrs[1])...), drain); err != nil {
		t.Fatal(err)
	}
	proxytest.ExpectPong(t, c) // within the drain the session goes on
	got, err := readToClose(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0xE0, 0x02, 0x9C, 0x00}; !bytes.Equal(got, want) {
		t.Errorf("the session on the removed server read % X until the close; want DISCONNECT 0x9C (% X), then the close", got, want)
	}
	if took := time.Since(reloaded); took < drain {
		t.Errorf("the session was ended %v after the reload, within the drain timeout %v", took, drain)
	}

	if code, err := proxytest.Visit(addr, connectAs(t, packets.ProtocolV311, id, mint(t, e2eSecret, id, nil))); err != nil || code != 0 {
		t.Fatalf("connecting again: CONNACK %d, %v", code, err)
	}
	if at := proxytest.WhereConnected(t, brokers, nil)[id]; !slices.Equal(at, []int{0, 1}) {
		t.Errorf("%s reached brokers %v, want [0 1]: 0 before the reload, 1 after", id, at)
	}
}

// serversHeld lists the servers the proxy keeps the sessions of, each
// with how many it has.
func serversHeld(p *Proxy) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var held []string
	for server, set := range p.servers {
		held = append(held, fmt.Sprintf("%s (%d sessions)", server.Server().Address, len(set.sessions)))
	}
	return held
}

// TestPoolReloadForgetsIdleServer: a server that a reload removes when
// none of its sessions is left has nothing to drain and is forgotten at
// once; the server kept keeps its (empty) set for its next sessions.
func TestPoolReloadForgetsIdleServer(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers := startBrokers(t, 2)
	addrs := brokerAddrs(brokers)
	p, addr, logs := startPools(t, defaultPool(upstream.RoundRobin, nil, servers(addrs...)...), passwordVerifier{})
	_, connects := deviceConnects(t, "idle", 2)
	proxytest.VisitAll(t, addr, connects) // one visit to each server, by the turns
	waitIdle(t, p)
	if err := p.UpdateUpstreams(defaultPool(upstream.RoundRobin, nil, servers(addrs[0])...), time.Minute); err != nil {
		t.Fatal(err)
	}
	if held, want := serversHeld(p), []string{addrs[0] + " (0 sessions)"}; !slices.Equal(held, want) {
		t.Errorf("after the reload the proxy holds the sessions of %v, want %v", held, want)
	}
	if n := logs.FilterMessage("upstream server removed; draining its connections").Len(); n != 0 {
		t.Errorf("%d drains logged for a server without connections, want none", n)
	}
}

// claimVerifier accepts the password "good" with the claim tenant taken
// from the client identifier's prefix, "acme-7" -> acme; "none-" has no
// tenant claim.
type claimVerifier struct{}

func (claimVerifier) Verify(_ context.Context, req authn.Request) (authn.Identity, error) {
	if string(req.Password) != "good" {
		return authn.Identity{}, &authn.RefuseError{Reason: authn.ErrBadSignature}
	}
	claims := map[string]any{"sub": req.ClientID}
	if tenant, _, _ := strings.Cut(req.ClientID, "-"); tenant != "none" {
		claims["tenant"] = tenant
	}
	return authn.Identity{Authenticator: "test", Subject: req.ClientID, Claims: claims}, nil
}

// TestPoolRoutesByClaims: two tenants' devices, routed by their tenant
// claim, each reach their tenant's broker only, and the accepting line
// names the pool and server; without a default pool, a
// device no route takes is refused with 0x87 / 5 (no_route) and reaches
// no broker.
func TestPoolRoutesByClaims(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	acme, globex := proxytest.StartMosquitto(t), proxytest.StartMosquitto(t)
	cfg := UpstreamsConfig{
		Pools: map[string]upstream.PoolConfig[ServerSettings]{
			"acme":   {Servers: servers(acme.Addr), Balance: upstream.RoundRobin},
			"globex": {Servers: servers(globex.Addr), Balance: upstream.RoundRobin},
		},
		Routes: []upstream.Route{
			{Claims: map[string]string{"tenant": "acme"}, Pool: "acme"},
			{Claims: map[string]string{"tenant": "globex"}, Pool: "globex"},
		},
	}
	_, addr, logs := startPools(t, cfg, claimVerifier{})
	acmeIDs, acmeConnects := deviceConnects(t, "acme", 20)
	globexIDs, globexConnects := deviceConnects(t, "globex", 20)
	var all [][]byte
	for i := range acmeConnects {
		all = append(all, acmeConnects[i], globexConnects[i])
	}
	proxytest.VisitAll(t, addr, all)

	for version, want := range map[byte][]byte{
		packets.ProtocolV311: {0x20, 0x02, 0x00, 0x05},
		packets.ProtocolV5:   {0x20, 0x03, 0x00, 0x87, 0x00},
	} {
		c := dial(t, addr)
		c.Write(connectAs(t, version, "none-1", "good"))
		if got := readAll(t, c); !bytes.Equal(got, want) {
			t.Errorf("v%d without a tenant: answered %x, want %x", version, got, want)
		}
	}
	waitLog(t, logs, "connect rejected", zap.String("client_id", "none-1"), zap.String("reason", reasonNoRoute))
	waitLog(t, logs, "authentication accepted", zap.String("client_id", "acme-0"), zap.String("pool", "acme"), zap.String("server", acme.Addr))
	waitLog(t, logs, "authentication accepted", zap.String("client_id", "globex-0"), zap.String("pool", "globex"), zap.String("server", globex.Addr))

	for _, b := range []struct {
		name   string
		broker *proxytest.Mosquitto
		want   []string
	}{{"acme", acme, acmeIDs}, {"globex", globex, globexIDs}} {
		b.broker.SyncLog(t)
		got := slices.Sorted(slices.Values(b.broker.ClientIDs()))
		if want := slices.Sorted(slices.Values(b.want)); !slices.Equal(got, want) {
			t.Errorf("the %s broker saw %v, want %v", b.name, got, want)
		}
		if n := b.broker.Connections(); n != len(b.want) {
			t.Errorf("the %s broker took %d connections, want %d: a refused client reached it", b.name, n, len(b.want))
		}
	}
}

// TestPoolNoServerUp: a client is refused with 0x88 / 3 when every server
// of its pool fails its dial, each failure counted against its server,
// and at once, without a dial, when the health checks have them all down:
// brokers never there, or mosquitto brokers killed, until one is back.
func TestPoolNoServerUp(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	closed := []string{proxytest.ClosedAddr(t), proxytest.ClosedAddr(t)}
	unavailable := map[byte][]byte{
		packets.ProtocolV311: {0x20, 0x02, 0x00, 0x03},
		packets.ProtocolV5:   {0x20, 0x03, 0x00, 0x88, 0x00},
	}
	refused := func(t *testing.T, addr string) {
		t.Helper()
		for version, want := range unavailable {
			c := dial(t, addr)
			c.Write(connectPacket(t, version, "good"))
			if got := readAll(t, c); !bytes.Equal(got, want) {
				t.Errorf("v%d: answered %x, want %x", version, got, want)
			}
		}
	}

	t.Run("every dial fails", func(t *testing.T) {
		p, addr, logs := startPools(t, defaultPool(upstream.RoundRobin, nil, servers(closed...)...), passwordVerifier{})
		refused(t, addr)
		for _, st := range p.Upstreams.Status(nil) {
			if st.DialFailures != 2 || st.Active != 0 {
				t.Errorf("%s: %d dial failures, %d active; want 2 (one per client), 0", st.Address, st.DialFailures, st.Active)
			}
		}
		waitLog(t, logs, "upstream server failed; trying the next")
		waitLog(t, logs, "upstream unavailable", zap.String("reason", reasonUpstreamUnavailable))
	})
	t.Run("every server marked down", func(t *testing.T) {
		check := &upstream.HealthCheck{Interval: time.Hour, Timeout: 10 * time.Second}
		p, addr, _ := startPools(t, defaultPool(upstream.ClientID, check, servers(closed...)...), passwordVerifier{})
		waitFor(t, func() bool { return p.Upstreams.Ready() != nil })
		refused(t, addr)
		for _, st := range p.Upstreams.Status(nil) {
			if st.Dials != 0 {
				t.Errorf("%s: %d dials, want none while it is down", st.Address, st.Dials)
			}
		}
	})
	t.Run("every broker killed", func(t *testing.T) {
		proxytest.RequireMosquitto(t)
		brokers := startBrokers(t, 2)
		check := &upstream.HealthCheck{Interval: 100 * time.Millisecond, Timeout: 10 * time.Second, Fall: 1, Rise: 1}
		p, addr, _ := startPools(t, defaultPool(upstream.ClientID, check, servers(brokerAddrs(brokers)...)...), passwordVerifier{})
		connect := connectAs(t, packets.ProtocolV311, "survivor", "good")
		if code, err := proxytest.Visit(addr, connect); code != 0 || err != nil {
			t.Fatalf("with the brokers up: CONNACK %d, %v", code, err)
		}
		for _, b := range brokers {
			b.Kill()
		}
		waitFor(t, func() bool { return p.Upstreams.Ready() != nil })
		refused(t, addr)
		brokers[1].Restart(t)
		waitFor(t, func() bool { return p.Upstreams.Ready() == nil })
		if code, err := proxytest.Visit(addr, connect); code != 0 || err != nil {
			t.Errorf("with a broker back: CONNACK %d, %v; want 0", code, err)
		}
		brokers[1].WaitForClient(t, "survivor", proxytest.DefaultTimeout)
	})
}

// tlsServer is a loopback TLS listener with a certificate of pki for
// 127.0.0.1, which runs serve on each connection once its handshake is
// done.
func tlsServer(t *testing.T, pki *testPKI, serve func(net.Conn)) string {
	t.Helper()
	certFile, keyFile := pki.issue(t, "broker", true)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	config := &tls.Config{Certificates: []tls.Certificate{cert}}
	return proxytest.ServeTCP(t, func(c net.Conn) {
		tc := tls.Server(c, config)
		tc.SetDeadline(time.Now().Add(30 * time.Second))
		if tc.Handshake() != nil {
			return
		}
		tc.SetDeadline(time.Time{})
		serve(tc)
	})
}

// TestPoolServerSettings: each server of a pool is dialed with its own
// TLS configuration and PROXY header version. A server whose TLS fails
// (an untrusted certificate) passes the client on to the next, over TLS
// to mosquitto, and then to a broker behind a PROXY v1 header; the
// client's own connection is untouched by the failed try, and its session
// goes on.
func TestPoolServerSettings(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers, other := newTestPKI(t, "brokers"), newTestPKI(t, "other")
	certFile, keyFile := brokers.issue(t, "mosquitto", true)
	tlsPort := proxytest.FreePort(t)
	broker := proxytest.StartMosquitto(t, fmt.Sprintf("listener %d 127.0.0.1", tlsPort), "certfile "+certFile, "keyfile "+keyFile)
	relay, headers := headerRelay(t, broker.Addr)
	untrusted := tlsServer(t, other, func(net.Conn) { t.Error("a client went on with an untrusted server") })
	trust := &tls.Config{RootCAs: brokers.pool(), ServerName: "127.0.0.1"}
	cfg := defaultPool(upstream.RoundRobin, nil,
		upstream.Server[ServerSettings]{Address: untrusted, Weight: 1, Settings: ServerSettings{TLS: trust}},
		upstream.Server[ServerSettings]{Address: fmt.Sprintf("127.0.0.1:%d", tlsPort), Weight: 1, Settings: ServerSettings{TLS: trust}},
		upstream.Server[ServerSettings]{Address: relay, Weight: 1, Settings: ServerSettings{ProxyHeader: transport.ProxyHeaderV1}},
	)
	p, addr, logs := startPools(t, cfg, passwordVerifier{})
	// Round robin's turns from the start: the untrusted server (which
	// fails, and hands the client to the TLS broker), the TLS broker, the
	// relay.
	var clients []net.Conn
	for i := range 3 {
		c, code, err := proxytest.OpenSession(addr, connectAs(t, packets.ProtocolV311, fmt.Sprintf("set-%d", i), "good"))
		if err != nil || code != 0 {
			t.Fatalf("client %d: CONNACK %d, %v", i, code, err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	for _, c := range clients {
		proxytest.ExpectPong(t, c)
	}
	h := <-headers
	if h.Version != 1 || h.SourceAddr.String() != clients[2].LocalAddr().String() {
		t.Errorf("the relay got a v%d header from %s, want v1 from %s", h.Version, h.SourceAddr, clients[2].LocalAddr())
	}
	broker.WaitForClient(t, "set-0", proxytest.DefaultTimeout)
	broker.WaitForClient(t, "set-1", proxytest.DefaultTimeout)
	for _, st := range p.Upstreams.Status(nil) {
		if want := map[bool]uint64{true: 1}[st.Address == untrusted]; st.DialFailures != want {
			t.Errorf("%s: %d dial failures, want %d", st.Address, st.DialFailures, want)
		}
	}
	failed := waitLog(t, logs, "upstream server failed; trying the next", zap.String("server", untrusted), zap.String("client_id", "set-0"))
	if err := failed.ContextMap()["error"]; !strings.Contains(fmt.Sprint(err), "certificate signed by unknown authority") {
		t.Errorf("the untrusted server's failure: %v, want an unknown authority", err)
	}
}

// TestPoolHealthCheckDialsAsClients: health checks go through each
// server's TLS and PROXY header, a LOCAL one: a server behind an
// untrusted certificate is marked down, the others are up.
func TestPoolHealthCheckDialsAsClients(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	pki, other := newTestPKI(t, "brokers"), newTestPKI(t, "other")
	trust := &tls.Config{RootCAs: pki.pool(), ServerName: "127.0.0.1"}
	checked := make(chan struct{}, 100)
	trusted := tlsServer(t, pki, func(net.Conn) {
		select {
		case checked <- struct{}{}:
		default:
		}
	})
	untrusted := tlsServer(t, other, func(net.Conn) {})
	headers := make(chan *proxyproto.Header, 100)
	v2 := proxytest.ServeTCP(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if h, err := proxyproto.Read(bufio.NewReader(c)); err == nil {
			select {
			case headers <- h:
			default:
			}
		}
	})
	check := &upstream.HealthCheck{Interval: 100 * time.Millisecond, Timeout: 10 * time.Second, Fall: 1, Rise: 1}
	pools, err := NewUpstreams(defaultPool(upstream.RoundRobin, check,
		upstream.Server[ServerSettings]{Address: trusted, Weight: 1, Settings: ServerSettings{TLS: trust}},
		upstream.Server[ServerSettings]{Address: untrusted, Weight: 1, Settings: ServerSettings{TLS: trust}},
		upstream.Server[ServerSettings]{Address: v2, Weight: 1, Settings: ServerSettings{ProxyHeader: transport.ProxyHeaderV2}},
	), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pools.Close()
	<-checked
	if h := <-headers; h.Version != 2 || h.Command != proxyproto.LOCAL {
		t.Errorf("a check sent a v%d header with command %v, want v2 LOCAL", h.Version, h.Command)
	}
	waitFor(t, func() bool {
		for _, st := range pools.Status(nil) {
			if st.Up != (st.Address != untrusted) {
				return false
			}
		}
		return true
	})
}

// TestPoolFailoverFromHungServer: a server that takes the TCP connection
// and then never answers (its TLS handshake hangs) has half the client's
// dial timeout; the client is passed on to the next server within that
// timeout and accepted, and the hung server is charged the failure.
func TestPoolFailoverFromHungServer(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	hung := proxytest.ServeTCP(t, func(c net.Conn) { io.Copy(io.Discard, c) }) // until the proxy gives up and closes
	cfg := defaultPool(upstream.RoundRobin, nil,
		upstream.Server[ServerSettings]{Address: hung, Weight: 1, Settings: ServerSettings{TLS: &tls.Config{ServerName: "127.0.0.1"}}},
		upstream.Server[ServerSettings]{Address: broker.Addr, Weight: 1},
	)
	pc := cfg.Pools[upstream.DefaultPool]
	pc.DialTimeout = 4 * time.Second // the first try has 2 s, under -race on a loaded machine too
	cfg.Pools[upstream.DefaultPool] = pc
	p, addr, logs := startPools(t, cfg, passwordVerifier{})
	c, code, err := proxytest.OpenSession(addr, connectAs(t, packets.ProtocolV311, "patient", "good"))
	if err != nil || code != 0 {
		t.Fatalf("a client whose first server hangs: CONNACK %d, %v; want 0 from the next", code, err)
	}
	defer c.Close()
	proxytest.ExpectPong(t, c)
	broker.WaitForClient(t, "patient", proxytest.DefaultTimeout)
	waitLog(t, logs, "upstream server failed; trying the next", zap.String("server", hung), zap.String("client_id", "patient"))
	for _, st := range p.Upstreams.Status(nil) {
		if want := map[bool]uint64{true: 1}[st.Address == hung]; st.DialFailures != want {
			t.Errorf("%s: %d dial failures, want %d", st.Address, st.DialFailures, want)
		}
	}
}

// expiringVerifier accepts "good" with a session that must end after
// ttl.
type expiringVerifier struct{ ttl time.Duration }

func (v expiringVerifier) Verify(ctx context.Context, req authn.Request) (authn.Identity, error) {
	id, err := passwordVerifier{}.Verify(ctx, req)
	id.DisconnectAt = time.Now().Add(v.ttl)
	return id, err
}

// TestPoolDialEndedFromOutside: a client ended while its dial is under
// way (here its token expires) tries no further server once the dial of
// the one in hand fails, is refused for the reason it was ended, and
// holds no server.
func TestPoolDialEndedFromOutside(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	accepted := make(chan net.Conn, 1)
	release := make(chan struct{})
	stalling := proxytest.ServeTCP(t, func(c net.Conn) { // takes the TCP connection, then no TLS
		accepted <- c
		<-release
	})
	rec := proxytest.NewRecorder(t, "")
	cfg := defaultPool(upstream.RoundRobin, nil,
		upstream.Server[ServerSettings]{Address: stalling, Weight: 1, Settings: ServerSettings{TLS: &tls.Config{ServerName: "127.0.0.1"}}},
		upstream.Server[ServerSettings]{Address: rec.Addr, Weight: 1},
	)
	p, addr, logs := startPools(t, cfg, expiringVerifier{ttl: 200 * time.Millisecond})
	c := dial(t, addr)
	c.Write(connectPacket(t, packets.ProtocolV311, "good"))
	<-accepted
	if b := readAll(t, c); len(b) != 0 { // the expiry closed the client
		t.Errorf("the ended client got %x, want nothing", b)
	}
	close(release) // the TLS handshake fails now, well before the dial timeout
	waitLog(t, logs, "connect rejected", zap.String("reason", string(authn.ErrTokenExpired)))
	if n := rec.Accepted(); n != 0 {
		t.Errorf("the next server got %d connections, want none", n)
	}
	waitIdle(t, p)
}

// TestPoolReloadReweights: a reload that changes the servers' weights
// shares the next clients out by the new weights, and the sessions
// established before it go on with their servers.
func TestPoolReloadReweights(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers := startBrokers(t, 2)
	addrs := brokerAddrs(brokers)
	p, addr, _ := startPools(t, defaultPool(upstream.RoundRobin, nil, servers(addrs...)...), passwordVerifier{})
	_, connects := deviceConnects(t, "held", 2)
	var held []net.Conn
	for i := range connects {
		c, code, err := proxytest.OpenSession(addr, connects[i])
		if err != nil || code != 0 {
			t.Fatalf("held %d: CONNACK %d, %v", i, code, err)
		}
		defer c.Close()
		held = append(held, c)
	}
	if where := proxytest.WhereConnected(t, brokers, nil); !slices.Equal(where["held-0"], []int{0}) || !slices.Equal(where["held-1"], []int{1}) {
		t.Fatalf("the held sessions are at %v, want one at each broker", where)
	}
	since := proxytest.ClientCounts(t, brokers)

	reweighted := servers(addrs...)
	reweighted[0].Weight = 3
	if err := p.UpdateUpstreams(defaultPool(upstream.RoundRobin, nil, reweighted...), time.Minute); err != nil {
		t.Fatal(err)
	}
	_, more := deviceConnects(t, "after", 40)
	proxytest.VisitAll(t, addr, more)
	counts := [2]int{}
	for _, at := range proxytest.WhereConnected(t, brokers, since) {
		counts[at[0]]++
	}
	if counts != [2]int{30, 10} {
		t.Errorf("40 clients after the reweighting went %v, want [30 10] (weights 3 and 1)", counts)
	}
	for _, c := range held {
		proxytest.ExpectPong(t, c)
	}
	for _, st := range p.Upstreams.Status(nil) {
		if st.Active < 1 {
			t.Errorf("%s holds %d connections after the reload, want its held session still counted", st.Address, st.Active)
		}
	}
}

// openSessions opens a session through the proxy at addr for each of ids
// with its CONNECT, failing the test on a refusal; each is closed at
// cleanup.
func openSessions(t *testing.T, addr string, ids []string, connects [][]byte) map[string]net.Conn {
	t.Helper()
	sessions := map[string]net.Conn{}
	for i, id := range ids {
		c, code, err := proxytest.OpenSession(addr, connects[i])
		if err != nil || code != 0 {
			t.Fatalf("%s: CONNACK %d, %v", id, code, err)
		}
		t.Cleanup(func() { c.Close() })
		sessions[id] = c
	}
	return sessions
}
