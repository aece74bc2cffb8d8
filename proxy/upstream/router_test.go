package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

func poolOf(addrs ...string) PoolConfig[int] {
	return PoolConfig[int]{Servers: testServers(addrs...), Balance: RoundRobin}
}

func newTestRouter(t *testing.T, cfg RouterConfig[int]) *Router[int] {
	t.Helper()
	r, err := NewRouter(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func TestRoute(t *testing.T) {
	routes := []Route{
		{Claims: map[string]string{"tenant": "acme"}, Pool: "acme"},
		{Claims: map[string]string{"tenant": "globex", "tier": "2"}, Pool: "globex"},
		{Listener: "internal", Pool: "ops"},
		{Subject: "fleet-[0-9]+", Pool: "fleet"},
		{Claims: map[string]string{"beta": "true"}, Listener: "tcp", Pool: "ops"},
	}
	pools := map[string]PoolConfig[int]{
		"acme": poolOf("10.0.1.1:1883"), "globex": poolOf("10.0.2.1:1883"),
		"ops": poolOf("10.0.3.1:1883"), "fleet": poolOf("10.0.4.1:1883"),
	}
	withDefault := map[string]PoolConfig[int]{DefaultPool: poolOf("10.0.0.1:1883")}
	for name, pc := range pools {
		withDefault[name] = pc
	}
	r := newTestRouter(t, RouterConfig[int]{Pools: withDefault, Routes: routes})
	strict := newTestRouter(t, RouterConfig[int]{Pools: pools, Routes: routes})

	for _, tc := range []struct {
		name, listener, subject string
		claims                  map[string]any
		want                    string // the pool; "" for ErrNoRoute without a default
	}{
		{"a claim", "tcp", "d1", map[string]any{"tenant": "acme"}, "acme"},
		{"a claim and a number, as written", "tcp", "d1", map[string]any{"tenant": "globex", "tier": json.Number("2")}, "globex"},
		{"a number written otherwise", "tcp", "d1", map[string]any{"tenant": "globex", "tier": json.Number("2.0")}, ""},
		{"a number as a float", "tcp", "d1", map[string]any{"tenant": "globex", "tier": 2.0}, "globex"},
		{"one condition of two", "tcp", "d1", map[string]any{"tenant": "globex"}, ""},
		{"a claim that is an array", "tcp", "d1", map[string]any{"tenant": []any{"acme"}}, ""},
		{"a claim of another case", "tcp", "d1", map[string]any{"tenant": "ACME"}, ""},
		{"the first route wins", "internal", "fleet-7", map[string]any{"tenant": "acme"}, "acme"},
		{"a listener", "internal", "fleet-7", nil, "ops"},
		{"a subject", "tcp", "fleet-7", nil, "fleet"},
		{"the whole subject must match", "tcp", "x-fleet-7", nil, ""},
		{"not a prefix either", "tcp", "fleet-7x", nil, ""},
		{"a boolean claim and a listener", "tcp", "d1", map[string]any{"beta": true}, "ops"},
		{"the boolean on another listener", "wss", "d1", map[string]any{"beta": true}, ""},
		{"a boolean written as a string", "tcp", "d1", map[string]any{"beta": "true"}, "ops"},
		{"nothing matches", "tcp", "d1", map[string]any{"tenant": "initech"}, ""},
		{"no claims", "tcp", "", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := strict.Route(tc.listener, tc.subject, tc.claims)
			switch {
			case tc.want == "" && !errors.Is(err, ErrNoRoute):
				t.Errorf("without a default: pool %v, error %v; want ErrNoRoute", p, err)
			case tc.want != "" && (err != nil || p.Name() != tc.want):
				t.Errorf("without a default: pool %v, error %v; want %s", p, err, tc.want)
			}
			want := tc.want
			if want == "" {
				want = DefaultPool
			}
			if p, err := r.Route(tc.listener, tc.subject, tc.claims); err != nil || p.Name() != want {
				t.Errorf("with a default: pool %v, error %v; want %s", p, err, want)
			}
		})
	}
}

func TestRouterConfigErrors(t *testing.T) {
	_, err := NewRouter(RouterConfig[int]{
		Pools: map[string]PoolConfig[int]{"a": poolOf("10.0.0.1:1883"), "b": poolOf()},
		Routes: []Route{
			{Subject: "(", Pool: "a"},
			{Pool: "a"},
			{Listener: "tcp", Pool: "c"},
		},
	}, nil, nil)
	for _, want := range []string{"routes[0]: subject \"(\"", "routes[1]: no condition", `routes[2]: no pool named "c"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to mention %q", err, want)
		}
	}
	_, err = NewRouter(RouterConfig[int]{Pools: map[string]PoolConfig[int]{"b": poolOf()}}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), `upstream pool "b": no servers`) {
		t.Errorf("error %v, want the empty pool named", err)
	}
}

// TestRouterUpdate: a reload keeps the pools it keeps (the same pool,
// with its servers' state), starts new ones, retires removed ones (their
// servers' Removed channels close) and routes by the new table.
func TestRouterUpdate(t *testing.T) {
	r := newTestRouter(t, RouterConfig[int]{
		Pools:  map[string]PoolConfig[int]{DefaultPool: poolOf("10.0.0.1:1883"), "acme": poolOf("10.0.1.1:1883")},
		Routes: []Route{{Claims: map[string]string{"tenant": "acme"}, Pool: "acme"}},
	})
	acme := r.Pool("acme")
	held, err := acme.Pick("", nil)
	if err != nil {
		t.Fatal(err)
	}
	held[0].Acquire()

	err = r.Update(RouterConfig[int]{
		Pools:  map[string]PoolConfig[int]{"acme": poolOf("10.0.1.1:1883", "10.0.1.2:1883"), "globex": poolOf("10.0.2.1:1883")},
		Routes: []Route{{Claims: map[string]string{"tenant": "acme"}, Pool: "acme"}, {Claims: map[string]string{"tenant": "globex"}, Pool: "globex"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Pool("acme") != acme || len(acme.Status(nil)) != 2 || acme.Status(nil)[0].Active != 1 {
		t.Errorf("acme after the reload: %p (was %p), %+v", r.Pool("acme"), acme, acme.Status(nil))
	}
	if p, err := r.Route("tcp", "", map[string]any{"tenant": "globex"}); err != nil || p.Name() != "globex" {
		t.Errorf("globex: %v, %v", p, err)
	}
	if _, err := r.Route("tcp", "", nil); !errors.Is(err, ErrNoRoute) {
		t.Errorf("an unmatched client with the default pool gone: %v", err)
	}

	// A refused reload changes nothing.
	if err := r.Update(RouterConfig[int]{Pools: map[string]PoolConfig[int]{"acme": poolOf()}}); err == nil {
		t.Fatal("an empty pool was accepted")
	}
	if p, err := r.Route("tcp", "", map[string]any{"tenant": "globex"}); err != nil || p.Name() != "globex" {
		t.Errorf("after a refused reload: %v, %v", p, err)
	}

	// Removing acme retires its servers, whose connections are drained.
	if err := r.Update(RouterConfig[int]{Pools: map[string]PoolConfig[int]{"globex": poolOf("10.0.2.1:1883")},
		Routes: []Route{{Claims: map[string]string{"tenant": "globex"}, Pool: "globex"}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held[0].Removed():
	default:
		t.Error("the server of a removed pool was not marked removed")
	}
	held[0].Release()

	// Closed, it starts no pool.
	r.Close()
	if err := r.Update(RouterConfig[int]{Pools: map[string]PoolConfig[int]{"new": poolOf("10.0.5.1:1883")}}); err == nil || r.Pool("new") != nil {
		t.Errorf("Update after Close: %v", err)
	}
}

// TestRouterReady: ready while any server of any pool is up.
func TestRouterReady(t *testing.T) {
	r := newTestRouter(t, RouterConfig[int]{
		Pools:  map[string]PoolConfig[int]{DefaultPool: poolOf("10.0.0.1:1883"), "acme": poolOf("10.0.1.1:1883", "10.0.1.2:1883")},
		Routes: []Route{{Listener: "x", Pool: "acme"}},
	})
	if err := r.Ready(); err != nil {
		t.Errorf("Ready = %v with every server up", err)
	}
	for _, name := range []string{DefaultPool, "acme"} {
		for _, b := range r.Pool(name).set.Load().backends {
			b.up.Store(false)
		}
		if name == DefaultPool {
			if err := r.Ready(); err != nil {
				t.Errorf("Ready = %v with acme up", err)
			}
		}
	}
	if err := r.Ready(); !errors.Is(err, ErrNoServerUp) || !strings.Contains(err.Error(), "acme, default") {
		t.Errorf("Ready = %v with every server down, want ErrNoServerUp naming the pools", err)
	}
	if got := len(r.Status(nil)); got != 3 {
		t.Errorf("Status lists %d servers, want 3", got)
	}
}

// TestFromConfig: the configuration's pools and routes as the router
// takes them, the single address as a pool of one.
func TestFromConfig(t *testing.T) {
	f, err := configs.Parse([]byte(`listeners: [{name: tcp, bind: "127.0.0.1:1883"}]
upstream: {address: "10.0.0.1:1883", tls: {server_name: broker}}
upstreams:
  acme:
    servers: [{address: "10.0.1.1:1883", weight: 3}, {address: "10.0.1.2:1883", proxy_protocol: v2}]
    balance: client_id
    dial_timeout: 2s
    health_check: {interval: 1s, fall: 4}
routes:
  - {match: {claims.tenant: acme, listener: tcp, sub: "d-.*"}, upstream: acme}
authentication: [{mechanism: jwt, algorithm: hmac-based, secret: s3cr3t-for-tests}]
`))
	if err != nil {
		t.Fatal(err)
	}
	type settings struct{ pool, server string }
	rc, err := FromConfig(f, func(u configs.Upstream, s configs.UpstreamServer) (settings, error) {
		name := s.ProxyProtocol
		if s.TLS != nil {
			name = "tls:" + s.TLS.ServerName
		}
		return settings{u.Balance, name}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	def, acme := rc.Pools[DefaultPool], rc.Pools["acme"]
	if len(def.Servers) != 1 || def.Servers[0].Settings.server != "tls:broker" || def.Balance != RoundRobin || def.HealthCheck != nil || def.DialTimeout != 0 {
		t.Errorf("default pool %+v", def)
	}
	if len(acme.Servers) != 2 || acme.Servers[0].Weight != 3 || acme.Servers[1].Weight != 1 || acme.Servers[1].Settings != (settings{"client_id", "v2"}) ||
		acme.Balance != ClientID || acme.HealthCheck.Interval.Seconds() != 1 || acme.HealthCheck.Fall != 4 || acme.DialTimeout != 2*time.Second {
		t.Errorf("acme pool %+v, health check %+v", acme, acme.HealthCheck)
	}
	if len(rc.Routes) != 1 || rc.Routes[0].Claims["tenant"] != "acme" || rc.Routes[0].Listener != "tcp" || rc.Routes[0].Subject != "d-.*" || rc.Routes[0].Pool != "acme" {
		t.Errorf("routes %+v", rc.Routes)
	}
	if _, err := NewRouter(rc, nil, nil); err == nil || !strings.Contains(err.Error(), `upstream pool "acme": health checks need a Dialer`) {
		t.Errorf("NewRouter without a Dialer: %v", err)
	}
	unreachable := func(context.Context, *Server[settings]) (net.Conn, error) { return nil, errors.New("unreachable") }
	r, err := NewRouter(rc, unreachable, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.Pool("acme").DialTimeout(); got != 2*time.Second {
		t.Errorf("acme's dial timeout %v, want 2s", got)
	}
	for _, st := range r.Status(nil) {
		if st.Checked != (st.Pool == "acme") {
			t.Errorf("%s %s: checked %v, want %v", st.Pool, st.Address, st.Checked, st.Pool == "acme")
		}
	}
}
