package acl

import (
	"strings"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// TestFromConfigExample decides with the example configuration's rules.
func TestFromConfigExample(t *testing.T) {
	t.Setenv("JWT_SECRET", "c2VjcmV0LWZvci10ZXN0cw==")
	f, err := configs.Load("../../configs/authorization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := FromConfig(f.Authorization)
	if err != nil {
		t.Fatal(err)
	}
	cl := Client{Request: &authn.Request{ClientID: "dev1"}, Claims: claimsOf(t, `{"sub": "dev1", "exp": 2000000000}`), ACLClaim: f.Authentication[0].ACL.Claim}
	check(t, cfg, cl, []expect{
		denyBy(SourceConfig, 0, pub("devices/dev1/config", 1, false)),
		allowBy(SourceConfig, 1, pub("devices/dev1/temp", 1, false)),
		allowBy(SourceConfig, 1, sub("devices/dev1/#", 2)),
		denyBy(SourceNoMatch, -1, sub("devices/+/temp", 0)),
		denyBy(SourceNoMatch, -1, pub("devices/dev2/temp", 0, false)),
		allowBy(SourceConfig, 2, sub("firmware/#", 1)),
		allowBy(SourceConfig, 2, sub("firmware/latest", 0)),
		denyBy(SourceNoMatch, -1, sub("firmware/latest", 2)),
		denyBy(SourceNoMatch, -1, sub("firmware/v2", 0)),
		allowBy(SourceConfig, 3, pub("status/dev1", 1, true)),
		denyBy(SourceNoMatch, -1, pub("status/dev1", 1, false)),
	})
	// A token with rules of its own: checked first.
	cl.Claims = claimsOf(t, `{"sub": "dev1", "acl": [{"permission": "allow", "action": "publish", "topic": "devices/${clientid}/config"}]}`)
	check(t, cfg, cl, []expect{
		allowBy(SourceToken, 0, pub("devices/dev1/config", 1, false)),
	})
}

func TestFromConfigErrors(t *testing.T) {
	_, err := FromConfig(configs.Authorization{
		NoMatch: "maybe",
		Rules: []configs.AuthorizationRule{
			{Permission: "allow", Action: "all", Topics: []string{"ok/${clientid}", "a/#/b", "${claims.}"}},
			{Permission: "allow", Action: "publish", Topic: "$queue/a"},
			{Permission: "nope", Action: "subscribe", Topic: "a", Retain: new(bool), QoS: []int{1, 5}},
			{Permission: "deny", Action: "all", Topic: "a", Topics: []string{"b"}},
		},
	})
	if err == nil {
		t.Fatal("FromConfig accepted it")
	}
	for _, want := range []string{
		`authorization.no_match: "maybe" is not one of allow, deny`,
		`authorization.rules[2].permission: "nope" is not one of allow, deny`,
		"authorization.rules[2].retain: applies to publishes only",
		"authorization.rules[2].qos: 5 is not 0, 1 or 2",
		"authorization.rules[3].topic: give topic or topics, not both",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// Once those hold, the filters are checked, every one.
	_, err = FromConfig(configs.Authorization{Rules: []configs.AuthorizationRule{
		{Permission: "allow", Action: "all", Topics: []string{"ok/${clientid}", "a/#/b", "${claims.}"}},
		{Permission: "allow", Action: "publish", Topic: "$queue/a"},
	}})
	if err == nil {
		t.Fatal("FromConfig accepted it")
	}
	for _, want := range []string{
		`authorization.rules[0].topics[1]: "a/#/b" is not a topic filter`,
		"authorization.rules[0].topics[2]: placeholder ${claims.} names no claim",
		`authorization.rules[1].topics[0]: "$queue/a" would never apply`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "topics[0]: \"ok") {
		t.Errorf("error %q names a good filter", err)
	}
}
