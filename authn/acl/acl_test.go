package acl

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
)

// claimsOf decodes a token's claims as authn does: numbers as json.Number.
func claimsOf(t testing.TB, text string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		t.Fatalf("claims %s: %v", text, err)
	}
	return claims
}

func pub(topic string, qos byte, retain bool) Request {
	return Request{Action: Publish, Topic: topic, QoS: qos, Retain: retain}
}

func sub(filter string, qos byte) Request {
	return Request{Action: Subscribe, Topic: filter, QoS: qos}
}

// expect is one request and the decision it must get.
type expect struct {
	req     Request
	allowed bool
	source  Source
	index   int
}

func allowBy(src Source, i int, req Request) expect { return expect{req, true, src, i} }
func denyBy(src Source, i int, req Request) expect  { return expect{req, false, src, i} }

// check compiles cfg for the client and checks each expectation.
func check(t *testing.T, cfg *Config, cl Client, expects []expect) {
	t.Helper()
	p, err := cfg.Compile(cl)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	for _, e := range expects {
		d := p.Allow(e.req)
		if d.Allowed != e.allowed || d.Source != e.source || d.Index != e.index {
			t.Errorf("%s %q qos %d retain %v: %s (allowed %v, %s, index %d); want allowed %v by %s index %d",
				e.req.Action, e.req.Topic, e.req.QoS, e.req.Retain, d, d.Allowed, d.Source, d.Index, e.allowed, e.source, e.index)
		}
	}
}

func mustNew(t *testing.T, rules []Rule, noMatch Permission) *Config {
	t.Helper()
	c, err := New(rules, noMatch)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func boolp(b bool) *bool { return &b }

// TestEMQXNewFormatExample is the example of EMQX's documentation of the
// ACL claim (access-control/authn/acl), rule by rule.
func TestEMQXNewFormatExample(t *testing.T) {
	claims := claimsOf(t, `{"exp": 1706844358, "username": "emqx_u", "acl": [
		{"permission": "allow", "action": "publish", "topic": "t/${clientid}"},
		{"permission": "allow", "action": "subscribe", "topic": "eq t/1/#", "qos": [1]},
		{"permission": "deny", "action": "publish", "topic": "t/2", "retain": true},
		{"permission": "deny", "action": "all", "topic": "t/3"}]}`)
	cl := Client{Request: &authn.Request{ClientID: "emqx_c", Username: "emqx_u", HasUsername: true}, Claims: claims}
	common := []expect{
		allowBy(SourceToken, 0, pub("t/emqx_c", 0, false)),
		allowBy(SourceToken, 1, sub("t/1/#", 1)),
		allowBy(SourceToken, 1, sub("$share/g/t/1/#", 1)),
		denyBy(SourceToken, 2, pub("t/2", 1, true)),
		denyBy(SourceToken, 3, pub("t/3", 0, false)),
		denyBy(SourceToken, 3, sub("t/3", 0)),
		denyBy(SourceToken, 3, sub("t/+", 0)), // it could receive t/3
	}
	t.Run("no_match allow", func(t *testing.T) {
		check(t, &Config{}, cl, append(common,
			allowBy(SourceNoMatch, -1, pub("t/other", 0, false)),
			allowBy(SourceNoMatch, -1, sub("t/1/#", 0)), // QoS 0, not the rule's
			allowBy(SourceNoMatch, -1, sub("t/1/x", 1)), // eq: only t/1/# itself
			allowBy(SourceNoMatch, -1, pub("t/2", 1, false)),
		))
	})
	t.Run("no_match deny", func(t *testing.T) {
		check(t, mustNew(t, nil, Deny), cl, append(common,
			denyBy(SourceNoMatch, -1, pub("t/other", 0, false)),
			denyBy(SourceNoMatch, -1, sub("t/1/#", 0)),
			denyBy(SourceNoMatch, -1, sub("t/1/x", 1)),
			denyBy(SourceNoMatch, -1, pub("t/2", 1, false)),
		))
	})
}

// TestEMQXOldFormatExample is the old-format example of the same page:
// allow lists, and whatever they do not name is denied, whatever the
// configuration says.
func TestEMQXOldFormatExample(t *testing.T) {
	claims := claimsOf(t, `{"exp": 1654254601, "username": "emqx_u", "acl": {
		"pub": ["testpub1/${username}", "eq testpub2/${username}"],
		"sub": ["testsub1/${username}", "testsub2/${clientid}", "testsub2/#"],
		"all": ["testall1/${username}", "testall2/${clientid}", "testall3/#"]}}`)
	cl := Client{Request: &authn.Request{ClientID: "emqx_c", Username: "emqx_u", HasUsername: true}, Claims: claims}
	everything := mustNew(t, []Rule{{Permission: Allow, Action: All, Topics: []string{"#"}}}, Allow)
	check(t, everything, cl, []expect{
		allowBy(SourceToken, 0, pub("testpub1/emqx_u", 0, false)),
		allowBy(SourceToken, 0, pub("testpub2/${username}", 0, false)), // eq: as written
		denyBy(SourceToken, -1, pub("testpub2/emqx_u", 0, false)),
		allowBy(SourceToken, 1, sub("testsub1/emqx_u", 0)),
		allowBy(SourceToken, 1, sub("testsub2/emqx_c", 2)),
		allowBy(SourceToken, 1, sub("testsub2/#", 0)),
		denyBy(SourceToken, -1, pub("testsub1/emqx_u", 0, false)), // a sub list
		allowBy(SourceToken, 2, pub("testall3/x/y", 1, true)),
		allowBy(SourceToken, 2, sub("testall3/+", 0)),
		allowBy(SourceToken, 2, sub("testall2/emqx_c", 0)),
		denyBy(SourceToken, -1, sub("#", 0)), // the configured allow-all is never reached
		denyBy(SourceToken, -1, pub("other", 0, false)),
	})
}

// TestEMQX4Placeholders: %c and %u stand for the client identifier and
// user name as whole levels, and are literal elsewhere, as in EMQX 4.
func TestEMQX4Placeholders(t *testing.T) {
	claims := claimsOf(t, `{"acl": {"pub": ["devices/%c/up"], "sub": ["devices/%c/down/#", "users/%u/#", "x%c", "eq %c"]}}`)
	check(t, &Config{}, Client{Request: &authn.Request{ClientID: "c1", Username: "alice", HasUsername: true}, Claims: claims}, []expect{
		allowBy(SourceToken, 0, pub("devices/c1/up", 1, false)),
		denyBy(SourceToken, -1, pub("devices/c2/up", 1, false)),
		allowBy(SourceToken, 1, sub("devices/c1/down/+", 1)),
		allowBy(SourceToken, 1, sub("users/alice/#", 0)),
		allowBy(SourceToken, 1, sub("x%c", 0)),
		denyBy(SourceToken, -1, sub("xc1", 0)),
		allowBy(SourceToken, 1, sub("%c", 0)),
	})
	// Without a user name, users/%u/# names nothing.
	check(t, &Config{}, Client{Request: &authn.Request{ClientID: "c1"}, Claims: claims}, []expect{
		denyBy(SourceToken, -1, sub("users//#", 0)),
		denyBy(SourceToken, -1, sub("users/%u/#", 0)),
		allowBy(SourceToken, 1, sub("devices/c1/down/x", 0)),
	})
}

// TestHostilePlaceholderValues: a value that is absent, empty, or that
// would add a level, a wildcard or a leading '$' never widens what a rule
// allows, and never narrows what a rule denies.
func TestHostilePlaceholderValues(t *testing.T) {
	allowOwn := mustNew(t, []Rule{{Permission: Allow, Action: All, Topics: []string{"devices/${clientid}/#", "${username}/inbox"}}}, Deny)
	for _, tc := range []struct {
		clientID string
		denied   []Request
	}{
		{"#", []Request{sub("devices/#", 0), sub("devices/+/#", 0), pub("devices/x", 0, false)}},
		{"+", []Request{sub("devices/+/#", 0), sub("devices/+/x", 0), pub("devices/+/x", 0, false)}},
		{"a/b", []Request{pub("devices/a/b/x", 0, false), sub("devices/a/b/#", 0), sub("devices/a/#", 0)}},
		{"a+b", []Request{pub("devices/a+b/x", 0, false)}},
		{"", []Request{sub("devices//#", 0), pub("devices//x", 0, false)}},
		{"a\x00b", []Request{pub("devices/a\x00b/x", 0, false)}},
	} {
		p, err := allowOwn.Compile(Client{Request: &authn.Request{ClientID: tc.clientID}})
		if err != nil {
			t.Fatal(err)
		}
		for _, req := range tc.denied {
			if d := p.Allow(req); d.Allowed {
				t.Errorf("client id %q: %s %q allowed: %s", tc.clientID, req.Action, req.Topic, d)
			}
		}
	}
	check(t, allowOwn, Client{Request: &authn.Request{ClientID: "ok", Username: "$SYS", HasUsername: true}}, []expect{
		allowBy(SourceConfig, 0, sub("devices/ok/#", 0)),
		denyBy(SourceNoMatch, -1, sub("$SYS/inbox", 0)), // a value may not make a $ topic
		denyBy(SourceNoMatch, -1, sub("devices/#", 0)),
	})

	denyOwn := mustNew(t, []Rule{
		{Permission: Deny, Action: Publish, Topics: []string{"devices/${clientid}/config"}},
		{Permission: Deny, Action: All, Topics: []string{"tenants/${claims.tenant}/#"}},
		{Permission: Allow, Action: All, Topics: []string{"#"}},
	}, Allow)
	check(t, denyOwn, Client{Request: &authn.Request{ClientID: "a/b"}, Claims: claimsOf(t, `{"tenant": "t1"}`)}, []expect{
		denyBy(SourceConfig, 0, pub("devices/a/b/config", 0, false)),
		denyBy(SourceConfig, 0, pub("anything", 0, false)), // the deny covers every topic
		denyBy(SourceConfig, 1, sub("tenants/t1/x", 0)),
		allowBy(SourceConfig, 2, sub("anything", 0)), // rule 0 is about publishes
	})
	check(t, denyOwn, Client{Request: &authn.Request{ClientID: "c1"}, Claims: claimsOf(t, `{"sub": "s"}`)}, []expect{
		denyBy(SourceConfig, 0, pub("devices/c1/config", 0, false)),
		denyBy(SourceConfig, 1, sub("x", 0)), // no tenant claim: rule 1 denies everything
	})
	check(t, denyOwn, Client{Request: &authn.Request{ClientID: "c1"}, Claims: claimsOf(t, `{"tenant": "t1"}`)}, []expect{
		allowBy(SourceConfig, 2, pub("devices/c2/config", 0, false)),
		allowBy(SourceConfig, 2, sub("tenants/t2/x", 0)),
	})
}

// TestPlaceholders: every placeholder, in configured and token rules.
func TestPlaceholders(t *testing.T) {
	cfg := mustNew(t, []Rule{
		{Permission: Allow, Action: All, Topics: []string{"t/${claims.tenant}/${claims.sub}/#"}},
		{Permission: Allow, Action: Publish, Topics: []string{"certs/${cert_common_name}"}},
		{Permission: Allow, Action: Publish, Topics: []string{"n/${claims.n}/${claims.admin}"}},
		{Permission: Allow, Action: Publish, Topics: []string{"ns/${claims.https://example.com/team}"}},
	}, Deny)
	claims := claimsOf(t, `{"sub": "s1", "tenant": "acme", "n": 42, "admin": true, "https://example.com/team": "red",
		"acl": [{"permission": "allow", "action": "sub", "topic": "own/${claims.sub}/${clientid}/${username}"}]}`)
	req := &authn.Request{ClientID: "c1", Username: "u1", HasUsername: true, CertCommonName: "dev-1"}
	check(t, cfg, Client{Request: req, Claims: claims}, []expect{
		allowBy(SourceToken, 0, sub("own/s1/c1/u1", 0)),
		allowBy(SourceConfig, 0, sub("t/acme/s1/#", 0)),
		denyBy(SourceNoMatch, -1, sub("t/acme/#", 0)),
		allowBy(SourceConfig, 1, pub("certs/dev-1", 0, false)),
		allowBy(SourceConfig, 2, pub("n/42/true", 0, false)),
		allowBy(SourceConfig, 3, pub("ns/red", 0, false)),
	})
	// Without a certificate, certs/${cert_common_name} names nothing.
	check(t, cfg, Client{Request: &authn.Request{ClientID: "c1"}, Claims: claims}, []expect{
		denyBy(SourceNoMatch, -1, pub("certs/", 0, false)),
	})
}

func TestTokenRulesFirstThenConfig(t *testing.T) {
	cfg := mustNew(t, []Rule{
		{Permission: Deny, Action: Publish, Topics: []string{"a/private"}},
		{Permission: Allow, Action: All, Topics: []string{"a/#"}},
	}, Deny)
	claims := claimsOf(t, `{"acl": [{"permission": "allow", "action": "publish", "topic": "a/private"},
		{"permission": "deny", "action": "all", "topic": "a/b"}]}`)
	check(t, cfg, Client{Request: &authn.Request{ClientID: "c"}, Claims: claims}, []expect{
		allowBy(SourceToken, 0, pub("a/private", 0, false)),
		denyBy(SourceToken, 1, pub("a/b", 0, false)),
		allowBy(SourceConfig, 1, pub("a/c", 0, false)),
		denyBy(SourceNoMatch, -1, pub("b", 0, false)),
	})
	// Without the claim, the configuration alone.
	check(t, cfg, Client{Request: &authn.Request{ClientID: "c"}}, []expect{
		denyBy(SourceConfig, 0, pub("a/private", 0, false)),
		allowBy(SourceConfig, 1, pub("a/b", 0, false)),
	})
	// Another claim name: acl is then an ordinary claim.
	check(t, cfg, Client{Request: &authn.Request{ClientID: "c"}, Claims: claims, ACLClaim: "perms"}, []expect{
		denyBy(SourceConfig, 0, pub("a/private", 0, false)),
	})
}

func TestSubscriptionsMustBeCovered(t *testing.T) {
	cfg := mustNew(t, []Rule{
		{Permission: Deny, Action: Subscribe, Topics: []string{"a/secret"}},
		{Permission: Allow, Action: Subscribe, Topics: []string{"a/#", "b/+"}},
		{Permission: Allow, Action: Subscribe, Topics: []string{"eq c/#"}},
		{Permission: Allow, Action: All, Topics: []string{"#"}, QoS: []byte{0}},
	}, Deny)
	check(t, cfg, Client{}, []expect{
		allowBy(SourceConfig, 1, sub("a/+/b", 1)),
		allowBy(SourceConfig, 1, sub("a/public", 1)),
		denyBy(SourceConfig, 0, sub("a/+", 1)), // could receive a/secret
		denyBy(SourceConfig, 0, sub("a/#", 1)),
		denyBy(SourceConfig, 0, sub("+/secret", 1)),
		denyBy(SourceConfig, 0, sub("a/secret", 1)),
		allowBy(SourceConfig, 1, sub("b/x", 1)),
		denyBy(SourceNoMatch, -1, sub("b/#", 1)), // b/+ does not cover b/#
		allowBy(SourceConfig, 2, sub("c/#", 1)),
		denyBy(SourceNoMatch, -1, sub("c/x", 1)), // eq: only c/# itself
		allowBy(SourceConfig, 2, sub("$queue/c/#", 1)),
		allowBy(SourceConfig, 3, sub("d/#", 0)),
		denyBy(SourceNoMatch, -1, sub("$SYS/#", 0)), // '#' does not match $ topics
		denyBy(SourceNoMatch, -1, pub("$SYS/x", 0, false)),
		denyBy(SourceConfig, 0, sub("#", 0)), // could receive a/secret too
	})
}

func TestQoSAndRetain(t *testing.T) {
	cfg := mustNew(t, []Rule{
		{Permission: Allow, Action: Publish, Topics: []string{"q"}, QoS: []byte{0, 1}},
		{Permission: Deny, Action: Publish, Topics: []string{"r"}, Retain: boolp(true)},
		{Permission: Allow, Action: All, Topics: []string{"r", "s"}, Retain: boolp(false)},
		{Permission: Allow, Action: Subscribe, Topics: []string{"q"}, QoS: []byte{2}},
	}, Deny)
	check(t, cfg, Client{}, []expect{
		allowBy(SourceConfig, 0, pub("q", 1, true)),
		denyBy(SourceNoMatch, -1, pub("q", 2, false)),
		denyBy(SourceConfig, 1, pub("r", 0, true)),
		allowBy(SourceConfig, 2, pub("r", 0, false)),
		denyBy(SourceNoMatch, -1, pub("s", 0, true)),
		allowBy(SourceConfig, 2, sub("s", 2)), // retain is not about subscriptions
		allowBy(SourceConfig, 3, sub("q", 2)), // QoS is
		denyBy(SourceNoMatch, -1, sub("q", 1)),
	})
}

func TestSharedAndPrefixedTopics(t *testing.T) {
	cfg := mustNew(t, []Rule{
		{Permission: Allow, Action: All, Topics: []string{"a/#"}},
		{Permission: Allow, Action: Subscribe, Topics: []string{"eq e/#"}},
	}, Deny)
	check(t, cfg, Client{}, []expect{
		allowBy(SourceConfig, 0, sub("$share/g/a/b", 1)),
		denyBy(SourceNoMatch, -1, sub("$share/g/b", 1)),
		allowBy(SourceConfig, 0, sub("$queue/a/x", 1)),
		allowBy(SourceConfig, 0, sub("$exclusive/a/x", 1)),
		allowBy(SourceConfig, 1, sub("$share/g/e/#", 1)),
		allowBy(SourceConfig, 0, pub("$delayed/30/a/x", 1, false)),
		denyBy(SourceNoMatch, -1, pub("$delayed/30/b", 1, false)),
		denyBy(SourceInvalid, -1, pub("$delayed/30", 1, false)),
		denyBy(SourceInvalid, -1, sub("$share/g", 1)),
		denyBy(SourceInvalid, -1, sub("$share/g/$share/h/a/b", 1)),
	})
}

func TestInvalidRequestsDenied(t *testing.T) {
	check(t, &Config{}, Client{}, []expect{
		denyBy(SourceInvalid, -1, pub("a/+", 0, false)),
		denyBy(SourceInvalid, -1, pub("a/#", 0, false)),
		denyBy(SourceInvalid, -1, pub("", 0, false)),
		denyBy(SourceInvalid, -1, pub("a", 3, false)),
		denyBy(SourceInvalid, -1, sub("a/#/b", 0)),
		denyBy(SourceInvalid, -1, sub("a+", 0)),
		denyBy(SourceInvalid, -1, Request{Action: All, Topic: "a"}),
		denyBy(SourceInvalid, -1, Request{Topic: "a"}),
		allowBy(SourceNoMatch, -1, pub("a/b", 0, false)),
	})
}

func TestExpire(t *testing.T) {
	cfg := mustNew(t, []Rule{{Permission: Allow, Action: All, Topics: []string{"#"}}}, Allow)
	claims := claimsOf(t, `{"acl": [{"permission": "allow", "action": "all", "topic": "t/#"}]}`)
	p, err := cfg.Compile(Client{Claims: claims})
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Allow(pub("t/1", 0, false)); !d.Allowed || d.Source != SourceToken {
		t.Fatalf("before Expire: %s", d)
	}
	p.Expire()
	for _, req := range []Request{pub("t/1", 0, false), sub("x", 0)} {
		if d := p.Allow(req); d.Allowed || d.Source != SourceToken || d.String() != "deny: token: its rules ended when it expired" {
			t.Errorf("after Expire, %s %q: %s", req.Action, req.Topic, d)
		}
	}
	// Without token rules, nothing ends: the policy is shared by clients.
	shared, _ := cfg.Compile(Client{})
	shared.Expire()
	if d := shared.Allow(pub("t/1", 0, false)); !d.Allowed {
		t.Errorf("a policy without token rules, after Expire: %s", d)
	}
}

func TestUnrestrictedAndShared(t *testing.T) {
	allowOnly := mustNew(t, []Rule{{Permission: Allow, Action: All, Topics: []string{"#"}}}, Allow)
	denying := mustNew(t, []Rule{{Permission: Deny, Action: All, Topics: []string{"x"}}}, Allow)
	templated := mustNew(t, []Rule{{Permission: Allow, Action: All, Topics: []string{"${clientid}/#"}}}, Allow)
	tokenClaims := claimsOf(t, `{"acl": []}`)
	for _, tc := range []struct {
		name string
		cfg  *Config
		cl   Client
		want bool
	}{
		{"zero config", &Config{}, Client{}, true},
		{"allow rules only", allowOnly, Client{}, true},
		{"a deny rule", denying, Client{}, false},
		{"no_match deny", mustNew(t, nil, Deny), Client{}, false},
		{"token with an empty list", &Config{}, Client{Claims: tokenClaims}, false},
		{"templated allow rules", templated, Client{Request: &authn.Request{ClientID: "c"}}, true},
	} {
		p, err := tc.cfg.Compile(tc.cl)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Unrestricted(); got != tc.want {
			t.Errorf("%s: Unrestricted = %v, want %v", tc.name, got, tc.want)
		}
	}
	a, _ := denying.Compile(Client{Request: &authn.Request{ClientID: "a"}})
	b, _ := denying.Compile(Client{Request: &authn.Request{ClientID: "b"}})
	if a != b {
		t.Error("rules without placeholders: each client got its own policy, want one shared")
	}
	a, _ = templated.Compile(Client{Request: &authn.Request{ClientID: "a"}})
	b, _ = templated.Compile(Client{Request: &authn.Request{ClientID: "b"}})
	if a == b || !a.Allow(sub("a/x", 0)).Allowed || b.Allow(sub("a/x", 0)).Source != SourceNoMatch {
		t.Error("templated rules: the clients share a policy")
	}
}

func TestDecisionString(t *testing.T) {
	cfg := mustNew(t, []Rule{{Permission: Allow, Action: All, Topics: []string{"d/${clientid}/#", "eq e/#", "u/${username}"}, QoS: []byte{0, 1}, Retain: boolp(false)}}, Deny)
	claims := claimsOf(t, `{"acl": [{"permission": "deny", "action": "pub", "topic": "t/${clientid}"}]}`)
	p, err := cfg.Compile(Client{Request: &authn.Request{ClientID: "c1"}, Claims: claims})
	if err != nil {
		t.Fatal(err)
	}
	for req, want := range map[Request]string{
		pub("t/c1", 0, false): `deny: token rule 0: deny publish "t/${clientid}" (for this client: "t/c1")`,
		pub("d/c1/x", 1, false): `allow: config rule 0: allow all "d/${clientid}/#" "eq e/#" "u/${username}" qos 0,1 retain false` +
			` (for this client: "d/c1/#", no topic: a placeholder has no safe value)`,
		pub("x", 0, false):   "deny: no rule applies (no_match: deny)",
		pub("x/#", 0, false): "deny: not a valid topic or filter for this action, or a QoS over 2",
	} {
		d := p.Allow(req)
		if got := d.String(); got != want {
			t.Errorf("%s %q:\n got %s\nwant %s", req.Action, req.Topic, got, want)
		}
		if d.rule == nil && d.Rule() != "" {
			t.Errorf("%s %q: Rule() = %q without a rule", req.Action, req.Topic, d.Rule())
		}
	}
	lists, err := (&Config{}).Compile(Client{Claims: claimsOf(t, `{"acl": {"sub": ["a"]}}`)})
	if err != nil {
		t.Fatal(err)
	}
	if got := lists.Allow(pub("a", 0, false)).String(); got != "deny: token: not named by the acl claim's pub, sub or all lists" {
		t.Errorf("old format, not listed: %s", got)
	}
	for s, want := range map[Source]string{SourceInvalid: "invalid", SourceToken: "token", SourceConfig: "config", SourceNoMatch: "no_match"} {
		if s.String() != want {
			t.Errorf("Source %d = %q, want %q", s, s, want)
		}
	}
}

func TestClaimFormats(t *testing.T) {
	cases := []struct {
		name   string
		claim  string
		format Format
		want   []Rule
	}{
		{"topics list and aliases", `[{"permission": "allow", "action": "pub", "topics": ["a", "b"]}, {"permission": "deny", "action": "sub", "topic": "c", "retain": true}]`,
			FormatRules, []Rule{{Permission: Allow, Action: Publish, Topics: []string{"a", "b"}}, {Permission: Deny, Action: Subscribe, Topics: []string{"c"}}}},
		{"qos as EMQX writes it", `[{"permission": "allow", "action": "all", "topic": "a", "qos": "0,2"}, {"permission": "allow", "action": "all", "topic": "a", "qos": 1},
			{"permission": "allow", "action": "all", "topic": "a", "qos": ["1", 2]}, {"permission": "allow", "action": "all", "topic": "a", "qos": null}]`,
			FormatRules, []Rule{{Permission: Allow, Action: All, Topics: []string{"a"}, QoS: []byte{0, 2}}, {Permission: Allow, Action: All, Topics: []string{"a"}, QoS: []byte{1}},
				{Permission: Allow, Action: All, Topics: []string{"a"}, QoS: []byte{1, 2}}, {Permission: Allow, Action: All, Topics: []string{"a"}}}},
		{"retain as EMQX writes it", `[{"permission": "allow", "action": "publish", "topic": "a", "retain": "all"}, {"permission": "allow", "action": "publish", "topic": "a", "retain": 0},
			{"permission": "allow", "action": "publish", "topic": "a", "retain": "true"}]`,
			FormatRules, []Rule{{Permission: Allow, Action: Publish, Topics: []string{"a"}}, {Permission: Allow, Action: Publish, Topics: []string{"a"}, Retain: boolp(false)},
				{Permission: Allow, Action: Publish, Topics: []string{"a"}, Retain: boolp(true)}}},
		{"empty list", `[]`, FormatRules, []Rule{}},
		{"lists in EMQX 5's order", `{"all": ["c"], "sub": ["b/%u"], "pub": []}`, FormatLists,
			[]Rule{{Permission: Allow, Action: Subscribe, Topics: []string{"b/${username}"}}, {Permission: Allow, Action: All, Topics: []string{"c"}}}},
		{"empty object", `{}`, FormatLists, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rules, format, err := ParseClaim(claimsOf(t, `{"acl": `+tc.claim+`}`)["acl"])
			if err != nil {
				t.Fatal(err)
			}
			if format != tc.format || !rulesEqual(rules, tc.want) {
				t.Errorf("ParseClaim = %v, format %d; want %v, format %d", rules, format, tc.want, tc.format)
			}
		})
	}
}

func rulesEqual(a, b []Rule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].String() != b[i].String() {
			return false
		}
	}
	return true
}

// TestMalformedClaims: a claim that cannot be read exactly as its issuer
// meant refuses the client, with the reason and where.
func TestMalformedClaims(t *testing.T) {
	rule := func(members string) string {
		return `[{"permission": "allow", "action": "all", ` + members + `}]`
	}
	cases := []struct {
		name, claim string
		want        []string
	}{
		{"string", `"t/#"`, []string{`claim "acl": a string is neither a list of rules nor an object of pub, sub and all lists`}},
		{"null", `null`, []string{"null is neither"}},
		{"number in the list", `[1]`, []string{"[0]: a rule is an object, not a number"}},
		{"empty rule", `[{}]`, []string{"[0].permission: required", "[0].action: required", "[0].topic: required (or topics)"}},
		{"bad permission", `[{"permission": "maybe", "action": "all", "topic": "a"}]`, []string{`[0].permission: "maybe" is not "allow" or "deny"`}},
		{"bad action", `[{"permission": "allow", "action": "publish_all", "topic": "a"}]`, []string{`[0].action: "publish_all" is not`}},
		{"topic not a string", rule(`"topic": 5`), []string{"[0].topic: 5 is not a string"}},
		{"topic and topics", rule(`"topic": "a", "topics": ["b"]`), []string{"[0].topic: give topic or topics, not both"}},
		{"empty topics", rule(`"topics": []`), []string{"[0].topics: the list is empty"}},
		{"topics not strings", rule(`"topics": ["a", 1]`), []string{"[0].topics: [1]: 1 is not a string"}},
		{"qos 3", rule(`"topic": "a", "qos": 3`), []string{"[0].qos: 3 is not 0, 1 or 2"}},
		{"qos fraction", rule(`"topic": "a", "qos": [1.5]`), []string{"[0].qos: 1.5 is not 0, 1 or 2"}},
		{"qos string", rule(`"topic": "a", "qos": "0,3"`), []string{`[0].qos: "3" is not 0, 1 or 2`}},
		{"empty qos", rule(`"topic": "a", "qos": []`), []string{"[0].qos: the list is empty"}},
		{"bad retain", rule(`"topic": "a", "retain": "yes"`), []string{`[0].retain: "yes" is not true, false or "all"`}},
		{"EMQX condition", rule(`"topic": "a", "clientid_re": "^c"`), []string{"[0].clientid_re: EMQX's client conditions are not supported"}},
		{"unknown member", rule(`"topic": "a", "comment": "x"`), []string{"[0].comment: unknown member"}},
		{"invalid filter", rule(`"topic": "a/#/b"`), []string{`[0].topics[0]: "a/#/b" is not a topic filter`}},
		{"wildcard inside a level", rule(`"topic": "a/${clientid}+"`), []string{`[0].topics[0]: "a/x+" is not a topic filter`, `(with each placeholder as "x")`}},
		{"empty topic", rule(`"topic": ""`), []string{`[0].topics[0]: "" is not a topic filter`}},
		{"unknown placeholder", rule(`"topic": "a/${nope}"`), []string{"[0].topics[0]: unknown placeholder ${nope}"}},
		{"shared filter", rule(`"topic": "$share/g/a"`), []string{`[0].topics[0]: "$share/g/a" would never apply`}},
		{"every problem", `[{"permission": "x", "action": "y", "topic": "a"}, 2]`, []string{"[0].permission", "[0].action", "[1]: a rule is an object"}},
		{"list not a list", `{"pub": "a/b"}`, []string{`pub: "a/b" is not a list of strings`}},
		{"list of numbers", `{"sub": [1]}`, []string{"sub: [0]: 1 is not a string"}},
		{"unknown list", `{"publish": ["a"]}`, []string{"publish: unknown member; the lists are pub, sub and all"}},
		{"bad filter in a list", `{"all": ["a/#/b"]}`, []string{`[0].topics[0]: "a/#/b" is not a topic filter`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := (&Config{}).Compile(Client{Claims: claimsOf(t, `{"acl": `+tc.claim+`}`)})
			if err == nil {
				t.Fatal("Compile accepted it")
			}
			if !errors.Is(err, authn.ErrTokenMalformed) || authn.ReasonOf(err) != authn.ErrTokenMalformed {
				t.Errorf("error %v is not token_malformed", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	_, err := New([]Rule{
		{Permission: Allow, Action: All, Topics: []string{"ok", "a/#/b", "${clientid"}},
		{Action: Publish, Topics: []string{"a"}, QoS: []byte{}},
		{Permission: Deny, Action: 7, Topics: nil, QoS: []byte{3}},
	}, 9)
	if err == nil {
		t.Fatal("New accepted it")
	}
	for _, want := range []string{
		"no_match: Permission(9) is not allow or deny",
		`rules[0].topics[1]: "a/#/b" is not a topic filter`,
		`rules[0].topics[2]: unterminated placeholder in "${clientid"`,
		"rules[1].permission: required",
		"rules[1].qos: an empty list matches nothing",
		"rules[2].action: required",
		"rules[2].topics: at least one topic is required",
		"rules[2].qos: 3 is not 0, 1 or 2",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// TestNewCopiesRules: a caller that reuses its slice does not change the
// compiled rules.
func TestNewCopiesRules(t *testing.T) {
	rules := []Rule{{Permission: Allow, Action: All, Topics: []string{"a"}}}
	cfg := mustNew(t, rules, Deny)
	rules[0] = Rule{Permission: Deny, Action: All, Topics: []string{"b"}}
	p, _ := cfg.Compile(Client{})
	if d := p.Allow(pub("a", 0, false)); !d.Allowed || !strings.Contains(d.String(), `allow all "a"`) {
		t.Errorf("after the caller changed its slice: %s", d)
	}
}

// TestAllowDoesNotAllocate: the check the proxy makes for every packet.
func TestAllowDoesNotAllocate(t *testing.T) {
	cfg := mustNew(t, []Rule{
		{Permission: Deny, Action: Subscribe, Topics: []string{"d/+/secret"}},
		{Permission: Allow, Action: All, Topics: []string{"d/${clientid}/#"}},
	}, Deny)
	claims := claimsOf(t, `{"acl": [{"permission": "allow", "action": "publish", "topic": "t/${clientid}/+", "qos": [0, 1]}]}`)
	p, err := cfg.Compile(Client{Request: &authn.Request{ClientID: "c1"}, Claims: claims})
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []Request{pub("t/c1/x", 1, false), sub("$share/g/d/c1/#", 1), sub("d/+/x", 0), pub("nope", 0, false)} {
		if n := testing.AllocsPerRun(100, func() { p.Allow(req) }); n != 0 {
			t.Errorf("%s %q: %v allocations", req.Action, req.Topic, n)
		}
	}
}

// TestPolicyConcurrentUse: a policy is decided on by several goroutines
// (the two directions of a session) while its token expires; run with
// -race.
func TestPolicyConcurrentUse(t *testing.T) {
	cfg := mustNew(t, []Rule{{Permission: Allow, Action: All, Topics: []string{"d/${clientid}/#"}}}, Deny)
	claims := claimsOf(t, `{"acl": [{"permission": "allow", "action": "all", "topic": "t/#"}]}`)
	p, err := cfg.Compile(Client{Request: &authn.Request{ClientID: "c"}, Claims: claims})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan Decision)
	for range 4 {
		go func() {
			var last Decision
			for range 1000 {
				last = p.Allow(pub("t/x", 0, false))
			}
			done <- last
		}()
	}
	p.Expire()
	for range 4 {
		<-done
	}
	if d := p.Allow(pub("t/x", 0, false)); d.Allowed {
		t.Errorf("after Expire: %s", d)
	}
}
