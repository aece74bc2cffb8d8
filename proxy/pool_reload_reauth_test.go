package proxy

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// TestPoolServerPutBackWithinDrainKeepsSessions: a reload removes a
// server, and the next reload, within the drain timeout, puts it back (an
// operator rolling back a mistaken file). The server is kept, as one
// that was never removed is (docs/cluster.md): its connection is counted
// against it (Active 1, which least_connections balances on), and the
// first drain's timer does not end its session.
func TestPoolServerPutBackWithinDrainKeepsSessions(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	brokers := startBrokers(t, 2)
	addrs := brokerAddrs(brokers)
	both := defaultPool(upstream.RoundRobin, nil, servers(addrs...)...)
	p, addr, logs := startPools(t, both, passwordVerifier{})
	ids, connects := deviceConnects(t, "readd", 2)
	sessions := openSessions(t, addr, ids, connects)
	where := proxytest.WhereConnected(t, brokers, nil)
	var onB string
	for _, id := range ids {
		if where[id][0] == 1 {
			onB = id
		}
	}
	if onB == "" {
		t.Fatalf("no device on broker 1: %v", where)
	}

	const drain = 2 * time.Second
	if err := p.UpdateUpstreams(defaultPool(upstream.RoundRobin, nil, servers(addrs[0])...), drain); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, "upstream server removed; draining its connections", zap.String("server", addrs[1]), zap.Int("connections", 1))
	if err := p.UpdateUpstreams(both, drain); err != nil { // rolled back
		t.Fatal(err)
	}
	for _, st := range p.Upstreams.Status(nil) {
		if st.Address == addrs[1] && st.Active != 1 {
			t.Errorf("re-added server %s: Active = %d with %s connected to it, want 1", st.Address, st.Active, onB)
		}
	}
	// The session on the re-added server should outlive the first drain.
	c := sessions[onB]
	c.SetReadDeadline(time.Now().Add(drain + 5*time.Second))
	var b [1]byte
	_, err := c.Read(b[:])
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s on the re-added server: read %v, want no end (its server is configured again)", onB, err)
	}
	if n := logs.FilterMessage("drain timeout reached; closing the connections left on a removed upstream server").Len(); n != 0 {
		t.Errorf("the drain of a server put back by the next reload closed its connections (%d lines)", n)
	}
	proxytest.ExpectPong(t, sessions[onB])
}

// TestReauthRoutedToAnotherPoolRefused: pools routed by the token's
// tenant claim; an MQTT 5 client under the Authentication Method JWT
// connects with a tenant acme token (acme's broker), then
// re-authenticates with a token of the same sub whose tenant is globex.
// The routes send such a token to globex's broker, and a session cannot
// move: the re-authentication is refused (DISCONNECT 0x87, reason
// route_changed), never accepted on acme's broker under globex's token.
func TestReauthRoutedToAnotherPoolRefused(t *testing.T) {
	proxytest.RequireMosquitto(t)
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
	pools, err := NewUpstreams(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := acl.FromConfig(configs.Authorization{NoMatch: "deny"})
	if err != nil {
		t.Fatal(err)
	}
	o := startObserved(t, &Proxy{Upstreams: pools, Verifier: jwtChain(t, boundHS256), Authorization: Authorization{Rules: rules}})
	tenant := func(name string) func(*jwt.Builder) { return func(b *jwt.Builder) { b.Claim("tenant", name) } }
	const id = "dev-1"
	c := connectMethod(t, o.addr, id, tokenOf(t, e2eSecret, id, ownTopics("devices"), tenant("acme")))
	if where := proxytest.WhereConnected(t, []*proxytest.Mosquitto{acme, globex}, nil); len(where[id]) != 1 || where[id][0] != 0 {
		t.Fatalf("%s connected at brokers %v, want [0] (acme)", id, where[id])
	}
	r := c.reauthenticate(t, "JWT", tokenOf(t, e2eSecret, id, ownTopics("devices"), tenant("globex")))
	if r == nil || r.Success || r.ReasonCode != 0x87 {
		t.Fatalf("re-authentication with a token the routes send to pool globex, on a session at pool acme's broker: answer %+v, want DISCONNECT 0x87", r)
	}
	disconnected(t, c.disconnects, 0x87)
	waitLog(t, o.logs, "re-authentication refused", zap.String("reason", "route_changed"))
}
