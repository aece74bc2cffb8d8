package authn

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

func TestParseTemplateErrors(t *testing.T) {
	cases := []struct {
		name, template, want string
	}{
		{"unknown placeholder", "${foo}", "unknown placeholder ${foo}; known are ${clientid}, ${username}, ${cert_common_name}, ${cert_subject}, ${claims.NAME}"},
		{"unterminated", "dev-${claims.sub", `unterminated placeholder in "dev-${claims.sub"`},
		{"claim without name", "${claims.}", "placeholder ${claims.} names no claim"},
		{"case matters", "${ClientID}", "unknown placeholder ${ClientID}"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTemplate(tc.template)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseTemplate(%q) = %v, want an error containing %q", tc.template, err, tc.want)
			}
		})
	}
}

// TestVerifyClaimsRefuseClaimPlaceholders: verify_claims is the same
// engine with ${claims.NAME} left out, and says why.
func TestVerifyClaimsRefuseClaimPlaceholders(t *testing.T) {
	cfg := hmacAuthenticator("secret")
	cfg.VerifyClaims = map[string]string{"sub": "${claims.name}"}
	_, err := New([]configs.Authenticator{cfg})
	want := "authentication[0] (jwt): verify_claims.sub: placeholder ${claims.name} is not allowed here"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("New = %v, want an error containing %q", err, want)
	}
	cfg.VerifyClaims = map[string]string{"sub": "${foo}"}
	_, err = New([]configs.Authenticator{cfg})
	if err == nil || !strings.HasSuffix(err.Error(), "known are ${clientid}, ${username}, ${cert_common_name}, ${cert_subject}") {
		t.Errorf("New = %v, want the placeholders verify_claims knows, without ${claims.NAME}", err)
	}
}

func TestTemplateRender(t *testing.T) {
	req := &Request{ClientID: "dev-1", Username: "alice", HasUsername: true, CertCommonName: "cn-1", CertSubject: "CN=cn-1,O=acme"}
	claims := map[string]any{
		"sub":    "sensor-7",
		"tenant": "acme",
		"n":      json.Number("42"),
		"big":    json.Number("12345678901234567890"),
		"frac":   json.Number("1.50"),
		"admin":  true,
		"off":    false,
		"empty":  "",
		"null":   nil,
		"list":   []any{"a"},
		"obj":    map[string]any{"a": "b"},
		"a.b":    "dotted",
	}
	cases := []struct {
		name     string
		template string
		want     string
		ok       bool
	}{
		{"literal", "proxy", "proxy", true},
		{"empty template", "", "", true},
		{"dollar without brace", "a$b$", "a$b$", true},
		{"string claim", "${claims.sub}", "sensor-7", true},
		{"claims and text", "${claims.tenant}/${claims.sub}", "acme/sensor-7", true},
		{"number as written", "n=${claims.n}", "n=42", true},
		{"large number keeps its digits", "${claims.big}", "12345678901234567890", true},
		{"fraction as written", "${claims.frac}", "1.50", true},
		{"true", "${claims.admin}", "true", true},
		{"false", "${claims.off}", "false", true},
		{"dotted name is one claim", "${claims.a.b}", "dotted", true},
		{"request placeholders", "${clientid}|${username}|${cert_common_name}|${cert_subject}", "dev-1|alice|cn-1|CN=cn-1,O=acme", true},
		{"claim and request", "${claims.tenant}-${clientid}", "acme-dev-1", true},
		{"missing claim", "${claims.nope}", "", false},
		{"missing claim among text", "x-${claims.nope}-y", "", false},
		{"empty claim", "${claims.empty}", "", false},
		{"null claim", "${claims.null}", "", false},
		{"array claim", "${claims.list}", "", false},
		{"object claim", "${claims.obj}", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, err := ParseTemplate(tc.template)
			if err != nil {
				t.Fatalf("ParseTemplate(%q): %v", tc.template, err)
			}
			got, ok := tmpl.Render(req, claims)
			if got != tc.want || ok != tc.ok {
				t.Errorf("Render(%q) = %q, %v; want %q, %v", tc.template, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestTemplateRenderEmptyRequestValues(t *testing.T) {
	cases := []struct {
		name string
		req  Request
	}{
		{"no username flag", Request{ClientID: "c", Username: "ignored"}},
		{"empty username", Request{ClientID: "c", HasUsername: true}},
	}
	tmpl, err := ParseTemplate("${clientid}:${username}")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got, ok := tmpl.Render(&tc.req, nil); ok {
				t.Errorf("Render = %q, true; want false: a placeholder without a value", got)
			}
		})
	}
	if got, ok := (Template{}).Render(&Request{}, nil); got != "" || !ok {
		t.Errorf("zero Template renders %q, %v; want \"\", true", got, ok)
	}
}

func TestTemplateShape(t *testing.T) {
	cases := []struct {
		template, shape string
		placeholders    bool
	}{
		{"devices/${clientid}/#", "devices/x/#", true},
		{"${claims.https://example.com/tenant}/${username}", "x/x", true},
		{"a$b/${clientid}-${claims.n}", "a$b/x-x", true},
		{"plain/topic", "plain/topic", false},
		{"", "", false},
	}
	for _, tc := range cases {
		tmpl, err := ParseTemplate(tc.template)
		if err != nil {
			t.Fatalf("ParseTemplate(%q): %v", tc.template, err)
		}
		if got := tmpl.Shape("x"); got != tc.shape {
			t.Errorf("Shape(%q) = %q, want %q", tc.template, got, tc.shape)
		}
		if got := tmpl.HasPlaceholders(); got != tc.placeholders {
			t.Errorf("HasPlaceholders(%q) = %v, want %v", tc.template, got, tc.placeholders)
		}
	}
}
