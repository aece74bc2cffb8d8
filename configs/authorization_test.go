package configs

import (
	"slices"
	"strings"
	"testing"
)

func TestLoadAuthorizationExample(t *testing.T) {
	t.Setenv("JWT_SECRET", "c2VjcmV0LWZvci10ZXN0cw==")
	f, err := Load("authorization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := f.Authorization
	if a.NoMatch != PermissionDeny || a.DenyAction != DenyActionIgnore || len(a.Rules) != 4 {
		t.Fatalf("authorization = %+v", a)
	}
	firmware := a.Rules[2]
	if firmware.Action != "subscribe" || !slices.Equal(firmware.Topics, []string{"eq firmware/#", "firmware/latest"}) || !slices.Equal(firmware.QoS, []int{0, 1}) {
		t.Errorf("rules[2] = %+v", firmware)
	}
	if status := a.Rules[3]; status.Retain == nil || !*status.Retain || status.Topic != "status/${clientid}" {
		t.Errorf("rules[3] = %+v", status)
	}
	if got := f.Authentication[0].ACL.Claim; got != "acl" {
		t.Errorf("authentication[0].acl.claim = %q", got)
	}
}

// TestAuthorizationDefaults: without the section, no rules, and the
// defaults are EMQX's (the empty strings that mean allow and ignore).
func TestAuthorizationDefaults(t *testing.T) {
	f, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if a := f.Authorization; a.Rules != nil || a.NoMatch != "" || a.DenyAction != "" || f.Authentication[0].ACL.Claim != "" {
		t.Errorf("authorization = %+v, acl = %+v; want zero values", a, f.Authentication[0].ACL)
	}
}

// TestAuthorizationErrors: every problem of the section is reported at
// once, each naming its key.
func TestAuthorizationErrors(t *testing.T) {
	yaml := minimal + `    acl: {claim: sub}
authorization:
  no_match: maybe
  deny_action: kick
  rules:
    - {action: publish, topic: a}
    - {permission: allow, action: publish_all, topic: a, topics: [b]}
    - {permission: deny, action: all}
    - {permission: allow, action: subscribe, topics: [a, ""], qos: [1, 3], retain: true}
    - {permission: allow, action: all, topic: a, qos: []}
    - {permission: allow, action: all, topic: a, retain: sometimes}
    - {permission: allow, action: all, topic: a, bogus: 1}
`
	_, err := Parse([]byte(yaml))
	if err == nil {
		t.Fatal("Parse accepted it")
	}
	for _, want := range []string{
		"authorization.rules[5].retain: `sometimes` is not true or false",
		"authorization.rules[6].bogus: unknown key",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// Once it decodes, Validate lists the rest.
	yaml = strings.Replace(strings.Replace(yaml, "    - {permission: allow, action: all, topic: a, retain: sometimes}\n", "", 1),
		"    - {permission: allow, action: all, topic: a, bogus: 1}\n", "", 1)
	_, err = Parse([]byte(yaml))
	if err == nil {
		t.Fatal("Parse accepted it")
	}
	for _, want := range []string{
		"authentication[0].acl.claim: sub is a registered claim",
		`authorization.no_match: "maybe" is not one of allow, deny`,
		`authorization.deny_action: "kick" is not one of ignore, disconnect`,
		"authorization.rules[0].permission: required",
		`authorization.rules[1].action: "publish_all" is not one of publish, subscribe, all`,
		"authorization.rules[1]: give topic or topics, not both",
		"authorization.rules[2].topic: required (or topics)",
		"authorization.rules[3].retain: applies to publishes only",
		"authorization.rules[3].topics[1]: empty",
		"authorization.rules[3].qos: 3 is not 0, 1 or 2",
		"authorization.rules[4].qos: an empty list matches nothing",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// TestCertificateAuthenticatorRefusesACL: a certificate carries no token,
// so acl would do nothing there.
func TestCertificateAuthenticatorRefusesACL(t *testing.T) {
	yaml := strings.Replace(minimal, "  - mechanism: jwt", "  - mechanism: certificate\n    acl: {claim: perms}\n  - mechanism: jwt", 1)
	yaml = strings.Replace(yaml, `bind: "127.0.0.1:1883"`, `bind: "127.0.0.1:1883"`+"\n    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key, client_ca_file: testdata/ca.pem, client_auth: required}", 1)
	_, err := Parse([]byte(yaml))
	if err == nil || !strings.Contains(err.Error(), "authentication[0].acl: not used with mechanism: certificate") {
		t.Errorf("Parse = %v, want acl refused for the certificate authenticator", err)
	}
}
