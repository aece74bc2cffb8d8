package main

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
)

// TestVerifyJWKS runs verify against an authenticator whose keys come from
// a JWKS endpoint serving the jwks.json keygen wrote: the key is picked by
// the token's kid, and verify reports an unknown kid, a forged signature
// and an endpoint that is down with the reasons the proxy would log.
func TestVerifyJWKS(t *testing.T) {
	keyDir := t.TempDir()
	code, stdout, stderr := runCommand(t, "keygen", "-out", keyDir)
	if code != 0 {
		t.Fatalf("keygen exited %d: %s", code, stderr)
	}
	kid := printedValue(t, stdout, "kid")
	jwks := httptest.NewServer(http.FileServer(http.Dir(keyDir)))
	t.Cleanup(jwks.Close)

	otherDir := t.TempDir()
	if code, _, stderr := runCommand(t, "keygen", "-out", otherDir); code != 0 {
		t.Fatalf("keygen exited %d: %s", code, stderr)
	}
	sign := func(keyDir, kid string) string {
		t.Helper()
		token, err := mintToken(tokenRequest{Alg: jwa.ES256, Key: mustSigningKey(t, filepath.Join(keyDir, "private.pem")),
			KeyID: kid, Subject: "sensor-7", TTL: time.Hour}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return token
	}

	authenticator := func(endpoint string) string {
		return "  - {mechanism: jwt, use_jwks: true, endpoint: \"" + endpoint + "\", verify_claims: {sub: \"${clientid}\"}}\n"
	}
	up := authenticator(jwks.URL + "/jwks.json")
	cases := []verifyCase{
		{"key picked by kid", up, []string{"-client-id", "sensor-7", sign(keyDir, kid)}, 0,
			[]string{" accept ", `sub="sensor-7"`, "accepted by jwt: CONNACK 0x00"}, ""},
		{"no kid, the set's only key", up, []string{"-client-id", "sensor-7", sign(keyDir, "")}, 0,
			[]string{"accepted by jwt"}, ""},
		{"claims still checked", up, []string{"-client-id", "sensor-8", sign(keyDir, kid)}, 1,
			[]string{" claim_mismatch ", "CONNACK 0x86"}, "token refused: claim_mismatch"},
		{"unknown kid", up, []string{"-client-id", "sensor-7", sign(otherDir, "another-kid")}, 1,
			[]string{" no_key ", `kid "another-kid" is not in the key set`, "refused by jwt (no_key): CONNACK 0x87 not authorized (MQTT 5), return code 5 (MQTT 3.1.1)"}, "token refused: no_key"},
		{"known kid, another key", up, []string{"-client-id", "sensor-7", sign(otherDir, kid)}, 1,
			[]string{" bad_signature ", "CONNACK 0x87"}, "token refused: bad_signature"},
		{"endpoint not found", authenticator(jwks.URL + "/missing.json"), []string{"-client-id", "sensor-7", sign(keyDir, kid)}, 1,
			[]string{" keys_unavailable ", "404 Not Found", "CONNACK 0x87"}, "token refused: keys_unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { tc.check(t) })
	}
}
