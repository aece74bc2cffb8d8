package acl

import (
	"runtime"
	"strconv"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
)

// benchConfig is a fleet's configured rules, with or without placeholders.
func benchConfig(b *testing.B, templated bool) *Config {
	own := "devices/+/#"
	if templated {
		own = "devices/${clientid}/#"
	}
	return mustNewB(b, []Rule{
		{Permission: Deny, Action: Publish, Topics: []string{"devices/+/config"}},
		{Permission: Allow, Action: All, Topics: []string{own}},
		{Permission: Allow, Action: Subscribe, Topics: []string{"eq firmware/#", "firmware/latest"}, QoS: []byte{0, 1}},
	}, Deny)
}

func mustNewB(b *testing.B, rules []Rule, noMatch Permission) *Config {
	c, err := New(rules, noMatch)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// The token claims of the benchmarks: EMQX 5.5's example, and EMQX 4's
// lists.
const (
	benchRulesClaim = `{"sub": "dev-000001", "exp": 2000000000, "acl": [
		{"permission": "allow", "action": "publish", "topic": "t/${clientid}"},
		{"permission": "allow", "action": "subscribe", "topic": "eq t/1/#", "qos": [1]},
		{"permission": "deny", "action": "publish", "topic": "t/2", "retain": true},
		{"permission": "deny", "action": "all", "topic": "t/3"}]}`
	benchListsClaim = `{"sub": "dev-000001", "exp": 2000000000, "acl": {"pub": ["devices/%c/up"], "sub": ["devices/%c/down/#"]}}`
)

// benchCases are the policies a proxy compiles for typical clients.
func benchCases(b *testing.B) []struct {
	name   string
	cfg    *Config
	claims map[string]any
} {
	plain, templated := benchConfig(b, false), benchConfig(b, true)
	return []struct {
		name   string
		cfg    *Config
		claims map[string]any
	}{
		{"config without placeholders", plain, claimsOf(b, `{"sub": "dev-000001"}`)},
		{"config with placeholders", templated, claimsOf(b, `{"sub": "dev-000001"}`)},
		{"token rules", plain, claimsOf(b, benchRulesClaim)},
		{"token lists", plain, claimsOf(b, benchListsClaim)},
		{"token rules and templated config", templated, claimsOf(b, benchRulesClaim)},
	}
}

// BenchmarkCompile is the work done once per accepted client, and the
// memory its policy keeps (retained-B/policy: the heap that 10,000
// policies for distinct clients hold, per policy).
func BenchmarkCompile(b *testing.B) {
	for _, tc := range benchCases(b) {
		b.Run(tc.name, func(b *testing.B) {
			req := &authn.Request{ClientID: "dev-000001"}
			retained := retainedPerPolicy(b, tc.cfg, tc.claims)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tc.cfg.Compile(Client{Request: req, Claims: tc.claims}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(retained, "retained-B/policy") // after the loop, which resets metrics
		})
	}
}

// retainedPerPolicy compiles policies for 10,000 clients with distinct
// identifiers and returns the heap they hold, per policy.
func retainedPerPolicy(b *testing.B, cfg *Config, claims map[string]any) float64 {
	const n = 10_000
	reqs := make([]authn.Request, n)
	for i := range reqs {
		reqs[i].ClientID = "dev-" + strconv.Itoa(100000+i)
	}
	policies := make([]*Policy, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range policies {
		p, err := cfg.Compile(Client{Request: &reqs[i], Claims: claims})
		if err != nil {
			b.Fatal(err)
		}
		policies[i] = p
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(policies)
	// reqs was allocated before: freed now, it would count against the
	// policies. The heap may also shrink a little: no policy is then 0.
	runtime.KeepAlive(reqs)
	return max(0, float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/n)
}

// BenchmarkAllow is the check made for every PUBLISH and every filter of a
// SUBSCRIBE.
func BenchmarkAllow(b *testing.B) {
	var cases []struct {
		name string
		p    *Policy
		req  Request
	}
	for _, tc := range benchCases(b) {
		p, err := tc.cfg.Compile(Client{Request: &authn.Request{ClientID: "dev-000001"}, Claims: tc.claims})
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range []struct {
			name string
			req  Request
		}{
			{"publish allowed", pub("devices/dev-000001/telemetry/temp", 1, false)},
			{"publish denied", pub("devices/dev-000002/telemetry/temp", 1, false)},
			{"subscribe shared", sub("$share/g/devices/dev-000001/cmd/+", 1)},
		} {
			cases = append(cases, struct {
				name string
				p    *Policy
				req  Request
			}{tc.name + "/" + r.name, p, r.req})
		}
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tc.p.Allow(tc.req)
			}
		})
	}
}

// BenchmarkAllowBaseline is mochi-mqtt's ACL ledger (hooks/auth) deciding
// the same publish with the same kind of rules, as a baseline measured in
// the same run: a Go MQTT broker's own topic check.
func BenchmarkAllowBaseline(b *testing.B) {
	ledger := &auth.Ledger{ACL: auth.ACLRules{{
		Client: "dev-000001",
		Filters: auth.Filters{
			"devices/+/config":     auth.Deny,
			"devices/dev-000001/#": auth.ReadWrite,
			"firmware/latest":      auth.ReadOnly,
		},
	}}}
	cl := &mqtt.Client{ID: "dev-000001"}
	b.Run("mochi ledger/publish allowed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := ledger.ACLOk(cl, "devices/dev-000001/telemetry/temp", true); !ok {
				b.Fatal("denied")
			}
		}
	})
}
