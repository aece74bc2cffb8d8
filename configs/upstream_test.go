package configs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// withUpstream is minimal with its upstream section replaced by upstream
// (YAML at the top level, "" for none) and extra appended.
func withUpstream(upstream, extra string) string {
	doc := strings.Replace(minimal, "upstream:\n  address: \"127.0.0.1:1884\"\n", upstream, 1)
	return doc + extra
}

const threeServers = `upstream:
  servers:
    - {address: "10.0.0.1:1883"}
    - {address: "10.0.0.2:1883", weight: 2}
    - {address: "10.0.0.3:1883", proxy_protocol: v2, tls: {insecure_skip_verify: true}}
  balance: client_id
  health_check: {interval: 1s, timeout: 500ms, fall: 2, rise: 3, connect: {client_id: probe, username: u, password: p}}
`

func TestUpstreamServers(t *testing.T) {
	f, err := Parse([]byte(withUpstream(threeServers, "")))
	if err != nil {
		t.Fatal(err)
	}
	servers := f.Upstream.PoolServers()
	if len(servers) != 3 || *servers[1].Weight != 2 || servers[0].Weight != nil || servers[2].ProxyProtocol != ProxyProtocolV2 || servers[2].TLS == nil {
		t.Errorf("servers = %+v", servers)
	}
	h := f.Upstream.HealthCheck
	if f.Upstream.Balance != BalanceClientID || h.Interval != Duration(time.Second) || h.Fall != 2 || h.Rise != 3 || h.Connect.Password != "p" {
		t.Errorf("upstream = %+v, health check %+v", f.Upstream, h)
	}

	// The single address is a pool of one with the section's transport.
	f, err = Parse([]byte(withUpstream("upstream: {address: \"10.0.0.9:1883\", proxy_protocol: v1, tls: {server_name: b}}\n", "")))
	if err != nil {
		t.Fatal(err)
	}
	if s := f.Upstream.PoolServers(); len(s) != 1 || s[0].Address != "10.0.0.9:1883" || s[0].ProxyProtocol != ProxyProtocolV1 || s[0].TLS.ServerName != "b" {
		t.Errorf("pool of one = %+v", s)
	}
}

const tenants = `upstreams:
  acme:
    servers: [{address: "10.0.1.1:1883"}, {address: "10.0.1.2:1883"}]
  globex: {address: "10.0.2.1:1883"}
routes:
  - {match: {claims.tenant: acme}, upstream: acme}
  - {match: {claims.tenant: globex, sub: "dev-[0-9]+"}, upstream: globex}
`

func TestRoutes(t *testing.T) {
	// Without the upstream section: unmatched clients are refused.
	f, err := Parse([]byte(withUpstream("", tenants)))
	if err != nil {
		t.Fatal(err)
	}
	if !f.Upstream.IsZero() || len(f.Upstreams) != 2 || len(f.Routes) != 2 || f.Routes[1].Match["sub"] != "dev-[0-9]+" {
		t.Errorf("parsed %+v %+v %+v", f.Upstream, f.Upstreams, f.Routes)
	}
	// With it, routes may name it as default.
	if _, err := Parse([]byte(minimal + tenants + "  - {match: {listener: \"127.0.0.1:1883\"}, upstream: default}\n")); err != nil {
		t.Error(err)
	}
}

func TestUpstreamErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"neither address nor servers", withUpstream("upstream: {balance: client_id}\n", ""), []string{"upstream.address: required"}},
		{"no upstream at all", withUpstream("", ""), []string{"upstream.address: required"}},
		{"address and servers", withUpstream("upstream: {address: \"10.0.0.1:1883\", servers: [{address: \"10.0.0.2:1883\"}]}\n", ""),
			[]string{"upstream.servers: give address or servers, not both"}},
		{"embedded among servers", withUpstream("upstream: {servers: [{address: embedded}, {address: \"10.0.0.2:1883\"}]}\n", ""),
			[]string{"upstream.servers[0].address: the embedded broker is the only broker of its pool"}},
		{"embedded in a named pool", withUpstream("", "upstreams: {a: {address: embedded}}\nroutes: [{match: {sub: x}, upstream: a}]\n"),
			[]string{"upstreams.a.address: the embedded broker can only be the upstream section's"}},
		{"weights", withUpstream("upstream: {servers: [{address: \"10.0.0.1:1883\", weight: 0}, {address: \"10.0.0.2:1883\", weight: -2}]}\n", ""),
			[]string{"upstream.servers[0].weight: 0 is under 1", "upstream.servers[1].weight: -2 is under 1"}},
		{"a server twice", withUpstream("upstream: {servers: [{address: \"10.0.0.1:1883\"}, {address: \"10.0.0.1:1883\"}]}\n", ""),
			[]string{`upstream.servers[1].address: "10.0.0.1:1883" is servers[0] already`}},
		{"bad server address", withUpstream("upstream: {servers: [{address: broker}]}\n", ""), []string{"upstream.servers[0].address: \"broker\" is not host:port"}},
		{"a server that is the proxy", withUpstream("upstream: {servers: [{address: \"127.0.0.1:1883\"}]}\n", ""),
			[]string{"upstream.servers[0].address: \"127.0.0.1:1883\" is listeners[0]", "would connect to itself"}},
		{"balance", withUpstream("upstream: {address: \"10.0.0.1:1883\", balance: random}\n", ""),
			[]string{`upstream.balance: "random" is not one of round_robin, least_connections, client_id`}},
		{"pool transport with servers", withUpstream("upstream: {servers: [{address: \"10.0.0.1:1883\"}], tls: {}, proxy_protocol: v1}\n", ""),
			[]string{"upstream.tls: with servers, set tls on each server", "upstream.proxy_protocol: with servers, set proxy_protocol on each server"}},
		{"server transport", withUpstream("upstream: {servers: [{address: \"10.0.0.1:1883\", proxy_protocol: v3, tls: {cert_file: a.pem}}]}\n", ""),
			[]string{`upstream.servers[0].proxy_protocol: "v3" is not one of off, v1, v2`, "upstream.servers[0].tls.cert_file, key_file: give both or neither"}},
		{"health check", withUpstream("upstream: {address: \"10.0.0.1:1883\", health_check: {interval: 10ms, timeout: 1s, fall: -1, rise: -1}}\n", ""),
			[]string{"upstream.health_check.interval: 10ms is under 100ms", "upstream.health_check.timeout: 1s is longer than the interval, 10ms",
				"upstream.health_check.fall: must not be negative", "upstream.health_check.rise: must not be negative"}},
		{"timeout over the default interval", withUpstream("upstream: {address: \"10.0.0.1:1883\", health_check: {timeout: 3s}}\n", ""),
			[]string{"upstream.health_check.timeout: 3s is longer than the interval, 2s"}},
		{"password without user name", withUpstream("upstream: {address: \"10.0.0.1:1883\", health_check: {connect: {password: p}}}\n", ""),
			[]string{"upstream.health_check.connect.username: required with a password"}},
		{"interval not a duration", withUpstream("upstream: {address: \"10.0.0.1:1883\", health_check: {interval: 5}}\n", ""),
			[]string{"upstream.health_check.interval: `5` is not a duration"}},
		{"unknown key in a server", withUpstream("upstream: {servers: [{address: \"10.0.0.1:1883\", wieght: 2}]}\n", ""),
			[]string{"upstream.servers[0].wieght: unknown key"}},
		{"routes", minimal + "upstreams: {a: {address: \"10.0.0.5:1883\"}}\nroutes:\n" +
			"  - {match: {claims.tenant: x}, upstream: b}\n" +
			"  - {match: {}, upstream: a}\n" +
			"  - {match: {tenant: x, claims.: y}, upstream: a}\n" +
			"  - {match: {sub: \"(\", listener: nope, claims.t: \"\"}}\n",
			[]string{`routes[0].upstream: no pool "b" in upstreams`, "routes[1].match: at least one condition",
				"routes[2].match.tenant: unknown condition", "routes[2].match.claims.: unknown condition",
				"routes[3].match.sub: error parsing regexp", `routes[3].match.listener: no listener is named "nope"`,
				"routes[3].match.claims.t: empty", "routes[3].upstream: required"}},
		{"default route without the section", withUpstream("", tenants+"  - {match: {sub: x}, upstream: default}\n"),
			[]string{`routes[2].upstream: "default" is the upstream section, which is not set`}},
		{"pool names", minimal + "upstreams: {default: {address: \"10.0.0.5:1883\"}, \"a b\": {address: \"10.0.0.6:1883\"}}\n" +
			"routes: [{match: {sub: x}, upstream: default}, {match: {sub: y}, upstream: \"a b\"}]\n",
			[]string{`upstreams.default: "default" names the upstream section`, "upstreams.a b: a pool name is letters"}},
		{"a pool no route uses", minimal + "upstreams: {spare: {address: \"10.0.0.5:1883\"}}\n", []string{"upstreams.spare: no route sends clients to it"}},
		{"a named pool's problems", withUpstream("", "upstreams: {a: {servers: [{address: x}], balance: b}}\nroutes: [{match: {sub: x}, upstream: a}]\n"),
			[]string{`upstreams.a.servers[0].address: "x" is not host:port`, `upstreams.a.balance: "b" is not one of`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse accepted\n%s", tc.doc)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestHealthCheckPasswordFile: password_file is read into password, from
// the configuration's directory when relative, and is exclusive with
// password.
func TestHealthCheckPasswordFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "probe.pass"), []byte("probe-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "proxy.yaml")
	doc := withUpstream("upstream: {address: \"10.0.0.1:1883\", health_check: {connect: {username: probe, password_file: probe.pass}}}\n", "")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Upstream.HealthCheck.Connect.Password; got != "probe-secret" {
		t.Errorf("password = %q, want the file's, without its newline", got)
	}

	both := strings.Replace(doc, "username: probe,", "username: probe, password: x,", 1)
	if _, err := Parse([]byte(both)); err == nil || !strings.Contains(err.Error(), "upstream.health_check.connect: give only one of password and password_file") {
		t.Errorf("password and password_file: %v", err)
	}
	missing := strings.Replace(doc, "probe.pass", filepath.Join(dir, "absent"), 1)
	if _, err := Parse([]byte(missing)); err == nil || !strings.Contains(err.Error(), "upstream.health_check.connect.password_file:") {
		t.Errorf("missing password_file: %v", err)
	}
}

func TestDiffUpstreams(t *testing.T) {
	base, err := Parse([]byte(withUpstream(threeServers, tenants)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, from, to string
		want           []string
	}{
		{"a weight", "weight: 2}", "weight: 3}", []string{"upstream.servers[1].weight"}},
		{"a server more", "    - {address: \"10.0.0.1:1883\"}\n", "    - {address: \"10.0.0.1:1883\"}\n    - {address: \"10.0.0.4:1883\"}\n", []string{"upstream.servers"}},
		{"a pool's balance", "globex: {address: \"10.0.2.1:1883\"}", "globex: {address: \"10.0.2.1:1883\", balance: least_connections}", []string{"upstreams.globex.balance"}},
		{"a pool renamed", "globex", "initech", []string{"upstreams", "routes[1].match.claims.tenant", "routes[1].upstream"}},
		{"a claim", "claims.tenant: acme", "claims.tenant: acme2", []string{"routes[0].match.claims.tenant"}},
		{"a check", "fall: 2", "fall: 4", []string{"upstream.health_check.fall"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := withUpstream(threeServers, tenants)
			next, err := Parse([]byte(strings.ReplaceAll(doc, tc.from, tc.to)))
			if err != nil {
				t.Fatal(err)
			}
			got := Diff(base, next)
			slices.Sort(got)
			if want := slices.Sorted(slices.Values(tc.want)); !slices.Equal(got, want) {
				t.Errorf("Diff = %q, want %q", got, want)
			}
		})
	}
}
