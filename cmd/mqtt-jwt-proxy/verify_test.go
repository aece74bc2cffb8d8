package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
)

// writeConfig writes a configuration with the given authentication section
// to a temporary file and returns its path.
func writeConfig(t *testing.T, authentication string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	text := "listeners: [{bind: \"127.0.0.1:1883\"}]\nupstream: {address: \"127.0.0.1:1884\"}\nauthentication:\n" + authentication
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// hs256 mints an HS256 token with the secret "secret", valid for an hour
// from now.
func hs256(t *testing.T, now time.Time, subject string, claims map[string]any) string {
	t.Helper()
	if claims == nil {
		claims = map[string]any{}
	}
	token, err := mintToken(tokenRequest{Alg: jwa.HS256, Key: []byte("secret"), Subject: subject, TTL: time.Hour, Claims: claims}, now)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func mustSigningKey(t *testing.T, path string) any {
	t.Helper()
	key, err := signingKey(jwa.ES256, "", false, path)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// runVerify runs verify -config path args, checks its exit code and that
// its output holds each of wantStdout, and returns its output.
func runVerify(t *testing.T, path string, args []string, wantCode int, wantStdout []string) (stdout, stderr string) {
	t.Helper()
	code, stdout, stderr := runCommand(t, append([]string{"verify", "-config", path}, args...)...)
	if code != wantCode {
		t.Errorf("exit %d, want %d; stderr %q", code, wantCode, stderr)
	}
	for _, want := range wantStdout {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	return stdout, stderr
}

// verifyCase is one run of verify with a configuration that writeConfig
// writes from auth.
type verifyCase struct {
	name       string
	auth       string
	args       []string
	wantCode   int
	wantStdout []string // each in the output
	wantStderr string   // in the standard error; "" for none at all
}

// check runs tc and checks what it printed; it returns the output.
func (tc verifyCase) check(t *testing.T) (stdout string) {
	t.Helper()
	stdout, stderr := runVerify(t, writeConfig(t, tc.auth), tc.args, tc.wantCode, tc.wantStdout)
	if !strings.Contains(stderr, tc.wantStderr) || (tc.wantStderr == "") != (stderr == "") {
		t.Errorf("stderr %q, want %q", stderr, tc.wantStderr)
	}
	return stdout
}

func TestVerify(t *testing.T) {
	keyDir := t.TempDir()
	if code, _, stderr := runCommand(t, "keygen", "-out", keyDir); code != 0 {
		t.Fatalf("keygen exited %d: %s", code, stderr)
	}
	ecToken, err := mintToken(tokenRequest{Alg: jwa.ES256, Key: mustSigningKey(t, filepath.Join(keyDir, "private.pem")), Subject: "sensor", TTL: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	device := hs256(t, now, "device-1", nil)
	admin := hs256(t, now, "admin", nil)
	// device-1's header and signature around admin's claims.
	tampered := strings.Split(device, ".")[0] + "." + strings.Split(admin, ".")[1] + "." + strings.Split(device, ".")[2]

	hmac := "  - {mechanism: jwt, algorithm: hmac-based, secret: secret}\n"
	// Devices put their token in the password; users, in the user name with no password.
	devicesThenUsers := "  - {name: devices, mechanism: jwt, algorithm: hmac-based, secret: secret, on_missing_jwt: ignore}\n" +
		"  - {name: users, mechanism: jwt, from: username, algorithm: hmac-based, secret: users-secret}\n"
	userToken, err := mintToken(tokenRequest{Alg: jwa.HS256, Key: []byte("users-secret"), Subject: "alice", TTL: time.Hour}, now)
	if err != nil {
		t.Fatal(err)
	}
	cases := []verifyCase{
		{"seed token", hmac, []string{seedToken}, 0,
			[]string{"jwt ", " accept ", `sub="1234567890" exp=none`, "accepted by jwt: CONNACK 0x00 success (MQTT 5), return code 0 (MQTT 3.1.1)"}, ""},
		{"minted token", hmac, []string{device}, 0,
			[]string{`sub="device-1" exp=` + now.Add(time.Hour).UTC().Format(time.RFC3339), "accepted by jwt"}, ""},
		{"tampered payload", hmac, []string{tampered}, 1,
			[]string{" refuse ", " bad_signature ", "refused by jwt (bad_signature): CONNACK 0x87 not authorized (MQTT 5), return code 5 (MQTT 3.1.1)"},
			"mqtt-jwt-proxy verify: token refused: bad_signature"},
		{"expired", hmac, []string{hs256(t, now, "device-1", map[string]any{"exp": 1})}, 1,
			[]string{" token_expired ", "CONNACK 0x86 bad user name or password (MQTT 5), return code 4 (MQTT 3.1.1)"},
			"token refused: token_expired"},
		{"public key from keygen", "  - {mechanism: jwt, algorithm: public-key, public_key: " + filepath.Join(keyDir, "public.pem") + "}\n",
			[]string{ecToken}, 0, []string{`sub="sensor"`, "accepted by jwt"}, ""},
		{"HS token against public key", "  - {mechanism: jwt, algorithm: public-key, public_key: " + filepath.Join(keyDir, "public.pem") + "}\n",
			[]string{device}, 1, []string{" algorithm_not_allowed ", "CONNACK 0x87"}, "token refused: algorithm_not_allowed"},
		{"client id placeholder holds", "  - {mechanism: jwt, algorithm: hmac-based, secret: secret, verify_claims: {sub: \"${clientid}\"}}\n",
			[]string{"-client-id", "device-1", device}, 0, []string{"accepted by jwt"}, ""},
		{"client id placeholder fails", "  - {mechanism: jwt, algorithm: hmac-based, secret: secret, verify_claims: {sub: \"${clientid}\"}}\n",
			[]string{"-client-id", "device-2", device}, 1, []string{" claim_mismatch ", "CONNACK 0x86"}, "token refused: claim_mismatch"},
		{"from username takes the token", "  - {mechanism: jwt, from: username, algorithm: hmac-based, secret: secret}\n",
			[]string{device}, 0, []string{"accepted by jwt"}, ""},
		{"from username with -username", "  - {mechanism: jwt, from: username, algorithm: hmac-based, secret: secret}\n",
			[]string{"-username", "alice", device}, 1, []string{" token_malformed "}, "token refused: token_malformed"},
		{"chain passes to the next", "  - {name: users, mechanism: jwt, from: username, algorithm: hmac-based, secret: other, on_missing_jwt: ignore}\n" + hmac,
			[]string{"-username", "", device}, 0, []string{"users ", " pass ", " token_missing ", "accepted by jwt#2"}, ""},
		{"-from username reaches the users' authenticator", devicesThenUsers,
			[]string{"-from", "username", userToken}, 0, []string{"devices ", " pass ", " token_missing ", "users ", " accept ", "accepted by users"}, ""},
		{"without -from the devices' authenticator refuses it", devicesThenUsers,
			[]string{userToken}, 1, []string{"devices ", " bad_signature ", "refused by devices"}, "token refused: bad_signature"},
		{"every authenticator passes", "  - {mechanism: jwt, from: username, algorithm: hmac-based, secret: secret, on_missing_jwt: ignore}\n",
			[]string{"-username", "", device}, 1, []string{" pass ", "refused (not_authorized): CONNACK 0x87 not authorized (MQTT 5), return code 5"},
			"token refused: not_authorized"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { tc.check(t) })
	}
}

// TestVerifyCertificate: -cert-common-name and -cert-subject stand for a
// verified client certificate, for certificate authenticators and the
// ${cert_...} placeholders.
func TestVerifyCertificate(t *testing.T) {
	testdata, err := filepath.Abs("../../configs/testdata")
	if err != nil {
		t.Fatal(err)
	}
	mtls := fmt.Sprintf("listeners: [{bind: \"127.0.0.1:8883\", tls: {cert_file: %[1]s/server.pem, key_file: %[1]s/server.key, client_ca_file: %[1]s/ca.pem, client_auth: optional}}]\n"+
		"upstream: {address: \"127.0.0.1:1884\"}\nauthentication:\n", testdata)
	token := hs256(t, time.Now(), "device-1", nil)
	certOrToken := "  - {name: devices, mechanism: certificate}\n  - {mechanism: jwt, algorithm: hmac-based, secret: secret}\n"
	bound := "  - {mechanism: jwt, algorithm: hmac-based, secret: secret, verify_claims: {sub: \"${cert_common_name}\", org: \"${cert_subject}\"}}\n"
	orgToken := hs256(t, time.Now(), "device-1", map[string]any{"org": "CN=device-1,O=Example"})
	for _, tc := range []struct {
		name, auth string
		args       []string
		wantCode   int
		wantStdout []string
	}{
		{"certificate accepts", certOrToken, []string{"-cert-common-name", "device-1", "whatever"}, 0,
			[]string{"devices ", " accept ", `sub="device-1" exp=none`, "accepted by devices"}},
		{"no certificate: the token decides", certOrToken, []string{token}, 0,
			[]string{"devices ", " pass ", "no verified client certificate", "accepted by jwt#2"}},
		{"no certificate, a bad token", certOrToken, []string{"whatever"}, 1,
			[]string{" pass ", "refused by jwt#2 (token_malformed)"}},
		{"token bound to the certificate", bound, []string{"-cert-common-name", "device-1", "-cert-subject", "CN=device-1,O=Example", orgToken}, 0,
			[]string{"accepted by jwt"}},
		{"subject defaults to CN= and the common name", bound, []string{"-cert-common-name", "device-1",
			hs256(t, time.Now(), "device-1", map[string]any{"org": "CN=device-1"})}, 0, []string{"accepted by jwt"}},
		{"the default subject is not another", bound, []string{"-cert-common-name", "device-1", orgToken}, 1,
			[]string{" claim_mismatch "}},
		{"another device's certificate", bound, []string{"-cert-common-name", "device-2", "-cert-subject", "CN=device-1,O=Example", orgToken}, 1,
			[]string{" claim_mismatch "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(mtls+tc.auth), 0o600); err != nil {
				t.Fatal(err)
			}
			runVerify(t, path, tc.args, tc.wantCode, tc.wantStdout)
		})
	}
}

func TestVerifyReadsStdin(t *testing.T) {
	path := writeConfig(t, "  - {mechanism: jwt, algorithm: hmac-based, secret: secret}\n")
	cases := []struct {
		name  string
		stdin string
		want  error
	}{
		{"token and newline", seedToken + "\n", nil},
		{"tampered", seedToken + "x\n", errTokenRefused},
		{"empty", "", errTokenRefused},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := verifyCommand(context.Background(), []string{"-config", path, "-"}, strings.NewReader(tc.stdin), &stdout, &stderr)
			if !errors.Is(err, tc.want) {
				t.Errorf("verify returned %v, want %v; output:\n%s", err, tc.want, stdout.String())
			}
		})
	}
}

func TestVerifyUsage(t *testing.T) {
	good := writeConfig(t, "  - {mechanism: jwt, algorithm: hmac-based, secret: secret}\n")
	badKey := writeConfig(t, "  - {mechanism: jwt, algorithm: public-key, public_key: \"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n\"}\n")
	cases := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no config", []string{seedToken}, 2, "-config FILE (or $MQTT_JWT_PROXY_CONFIG) and TOKEN (or - to read it from stdin) are required"},
		{"no token", []string{"-config", good}, 2, "are required"},
		{"two tokens", []string{"-config", good, seedToken, seedToken}, 2, "unexpected arguments"},
		{"missing config file", []string{"-config", filepath.Join(t.TempDir(), "absent.yaml"), seedToken}, 1, "read config"},
		{"bad key in config", []string{"-config", badKey, seedToken}, 1, "authentication[0] (jwt): public_key"},
		{"bad -from", []string{"-config", good, "-from", "clientid", seedToken}, 2, `-from "clientid": want password or username`},
		{"-from username and -username", []string{"-config", good, "-from", "username", "-username", "bob", seedToken}, 2, "-username cannot also be given"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCommand(t, append([]string{"verify"}, tc.args...)...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, stdout, stderr, tc.wantCode, tc.wantErr)
			}
		})
	}
}

func TestVerifyRequest(t *testing.T) {
	password := []configs.Authenticator{{From: "password"}}
	both := []configs.Authenticator{{From: "password"}, {From: "username"}}
	alice := "alice"
	cases := []struct {
		name     string
		auths    []configs.Authenticator
		username *string
		from     string
		want     authn.Request
	}{
		{"password only", password, nil, "",
			authn.Request{ClientID: "c", Password: []byte("T"), HasPassword: true}},
		{"username given", password, &alice, "",
			authn.Request{ClientID: "c", Username: "alice", HasUsername: true, Password: []byte("T"), HasPassword: true}},
		{"token as username", both, nil, "",
			authn.Request{ClientID: "c", Username: "T", HasUsername: true, Password: []byte("T"), HasPassword: true}},
		{"given username wins", both, &alice, "",
			authn.Request{ClientID: "c", Username: "alice", HasUsername: true, Password: []byte("T"), HasPassword: true}},
		{"-from password", both, nil, "password",
			authn.Request{ClientID: "c", Password: []byte("T"), HasPassword: true}},
		{"-from password with a username", both, &alice, "password",
			authn.Request{ClientID: "c", Username: "alice", HasUsername: true, Password: []byte("T"), HasPassword: true}},
		{"-from username", both, nil, "username",
			authn.Request{ClientID: "c", Username: "T", HasUsername: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := verifyRequest(tc.auths, "T", "c", tc.username, tc.from); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestConnackCode pins the reason-to-CONNACK table of EMQX that the proxy
// answers with.
func TestConnackCode(t *testing.T) {
	cases := []struct {
		reason authn.RefuseReason
		v5     packets.ReasonCode
		v3     byte
	}{
		{authn.ErrTokenMissing, 0x86, 4},
		{authn.ErrTokenMalformed, 0x86, 4},
		{authn.ErrTokenExpired, 0x86, 4},
		{authn.ErrTokenNotYetValid, 0x86, 4},
		{authn.ErrClaimMismatch, 0x86, 4},
		{authn.ErrBadSignature, 0x87, 5},
		{authn.ErrAlgorithmNotAllowed, 0x87, 5},
		{authn.ErrNoKey, 0x87, 5},
		{authn.ErrKeysUnavailable, 0x87, 5},
		{authn.ErrRevoked, 0x87, 5},
		{authn.ErrRevocationUnavailable, 0x87, 5},
		{authn.ErrNoAuthenticatorAccepted, 0x87, 5},
	}
	for _, tc := range cases {
		t.Run(string(tc.reason), func(t *testing.T) {
			code := proxy.RefuseCode(tc.reason)
			v3, ok := code.V3ReturnCode()
			if code != tc.v5 || v3 != tc.v3 || !ok {
				t.Errorf("CONNACK 0x%02X / %d (%v), want 0x%02X / %d", byte(code), v3, ok, byte(tc.v5), tc.v3)
			}
		})
	}
}

// TestVerifyHintOnlyForRefusals: the hint that a token sits in the field
// an authenticator does not read explains a refusal. In a chain for
// devices (token in the password, on_missing_jwt: ignore) and users (token
// in the user name), a user's token passes the devices' authenticator for
// want of a password and is accepted by the users': no hint. Without the
// users' authenticator the same client is refused, with the hint.
func TestVerifyHintOnlyForRefusals(t *testing.T) {
	const hint = "hint (devices): the user name looks like a JWT; this authenticator reads from: password"
	devices := "  - {name: devices, mechanism: jwt, algorithm: hmac-based, secret: secret, on_missing_jwt: ignore}\n"
	users := "  - {name: users, mechanism: jwt, from: username, algorithm: hmac-based, secret: secret}\n"
	userToken := hs256(t, time.Now(), "alice", nil)

	code, stdout, _ := runCommand(t, "verify", "-config", writeConfig(t, devices+users), "-from", "username", userToken)
	if code != 0 || !strings.Contains(stdout, "accepted by users") {
		t.Fatalf("exit %d, want 0 and accepted by users:\n%s", code, stdout)
	}
	if strings.Contains(stdout, "hint") {
		t.Errorf("an accepted token got a hint:\n%s", stdout)
	}

	code, stdout, _ = runCommand(t, "verify", "-config", writeConfig(t, devices), "-from", "username", userToken)
	if code != 1 || !strings.Contains(stdout, hint) {
		t.Errorf("exit %d, want 1 and %q:\n%s", code, hint, stdout)
	}
}
