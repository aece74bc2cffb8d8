package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// runCommand runs the CLI with args and returns its exit code and output.
func runCommand(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// writePEM writes one PEM block to a new file in dir and returns its path.
func writePEM(t *testing.T, dir, name, blockType string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func pkcs8(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func sec1(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestTokenRoundTrip mints a token with every algorithm through the
// command line, each private key in one of the PEM encodings the command
// reads, and verifies it with jwx and the public key.
func TestTokenRoundTrip(t *testing.T) {
	dir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKeys := map[string]*ecdsa.PrivateKey{}
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		if ecKeys[curve.Params().Name], err = ecdsa.GenerateKey(curve, rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaPKCS1 := writePEM(t, dir, "rsa-pkcs1.pem", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))
	rsaPKCS8 := writePEM(t, dir, "rsa-pkcs8.pem", "PRIVATE KEY", pkcs8(t, rsaKey))
	p256SEC1 := writePEM(t, dir, "p256-sec1.pem", "EC PRIVATE KEY", sec1(t, ecKeys["P-256"]))
	p384PKCS8 := writePEM(t, dir, "p384-pkcs8.pem", "PRIVATE KEY", pkcs8(t, ecKeys["P-384"]))
	p521SEC1 := writePEM(t, dir, "p521-sec1.pem", "EC PRIVATE KEY", sec1(t, ecKeys["P-521"]))
	edPKCS8 := writePEM(t, dir, "ed25519.pem", "PRIVATE KEY", pkcs8(t, edKey))

	secret := []byte("a secret long enough for HS512, 64 bytes of key material ......")
	cases := []struct {
		alg       jwa.SignatureAlgorithm
		keyFlags  []string
		verifyKey any
	}{
		{jwa.HS256, []string{"-secret", string(secret)}, secret},
		{jwa.HS384, []string{"-secret", string(secret)}, secret},
		{jwa.HS512, []string{"-secret", base64.StdEncoding.EncodeToString(secret), "-secret-base64"}, secret},
		{jwa.RS256, []string{"-key", rsaPKCS1}, &rsaKey.PublicKey},
		{jwa.RS384, []string{"-key", rsaPKCS8}, &rsaKey.PublicKey},
		{jwa.RS512, []string{"-key", rsaPKCS1}, &rsaKey.PublicKey},
		{jwa.PS256, []string{"-key", rsaPKCS8}, &rsaKey.PublicKey},
		{jwa.PS384, []string{"-key", rsaPKCS1}, &rsaKey.PublicKey},
		{jwa.PS512, []string{"-key", rsaPKCS8}, &rsaKey.PublicKey},
		{jwa.ES256, []string{"-key", p256SEC1}, &ecKeys["P-256"].PublicKey},
		{jwa.ES384, []string{"-key", p384PKCS8}, &ecKeys["P-384"].PublicKey},
		{jwa.ES512, []string{"-key", p521SEC1}, &ecKeys["P-521"].PublicKey},
		{jwa.EdDSA, []string{"-key", edPKCS8}, edKey.Public()},
	}
	if len(cases) != len(tokenAlgorithms) {
		t.Fatalf("%d cases for %d algorithms", len(cases), len(tokenAlgorithms))
	}
	for _, tc := range cases {
		t.Run(tc.alg.String(), func(t *testing.T) {
			args := append([]string{"token", "-alg", tc.alg.String(), "-sub", "device-1", "-iss", "tests", "-aud", "mqtt",
				"-kid", "k1", "-claim", "level=3", "-claim", "role=admin"}, tc.keyFlags...)
			before := time.Now().Truncate(time.Second)
			code, stdout, stderr := runCommand(t, args...)
			if code != 0 {
				t.Fatalf("token exited %d: %s", code, stderr)
			}
			if stderr != "" || !strings.HasSuffix(stdout, "\n") || strings.Count(stdout, "\n") != 1 {
				t.Errorf("want just the token and a newline on stdout; stdout %q, stderr %q", stdout, stderr)
			}
			raw := []byte(strings.TrimSuffix(stdout, "\n"))
			token, err := jwt.Parse(raw, jwt.WithKey(tc.alg, tc.verifyKey), jwt.WithValidate(true))
			if err != nil {
				t.Fatalf("jwx does not verify the token: %v", err)
			}
			if token.Subject() != "device-1" || token.Issuer() != "tests" || !reflect.DeepEqual(token.Audience(), []string{"mqtt"}) {
				t.Errorf("sub %q iss %q aud %q", token.Subject(), token.Issuer(), token.Audience())
			}
			if exp := token.Expiration(); exp.Before(before.Add(time.Hour)) || exp.After(time.Now().Add(time.Hour)) {
				t.Errorf("exp %v, want about an hour from now", exp)
			}
			if level, _ := token.Get("level"); level != float64(3) {
				t.Errorf("level claim %#v, want the number 3", level)
			}
			if role, _ := token.Get("role"); role != "admin" {
				t.Errorf("role claim %#v, want the string admin", role)
			}
			msg, err := jws.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			headers := msg.Signatures()[0].ProtectedHeaders()
			if headers.KeyID() != "k1" || headers.Type() != "JWT" || headers.Algorithm() != tc.alg {
				t.Errorf("headers kid %q typ %q alg %q", headers.KeyID(), headers.Type(), headers.Algorithm())
			}
		})
	}
}

// TestMintTokenClaims checks the claim set mintToken builds at a fixed
// time, decoding the payload without verification.
func TestMintTokenClaims(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	minute := time.Minute
	back := -time.Minute
	cases := []struct {
		name string
		req  tokenRequest
		args []string // -claim values
		want map[string]any
	}{
		{"default exp and iat", tokenRequest{TTL: time.Hour}, nil,
			map[string]any{"iat": 1_700_000_000.0, "exp": 1_700_003_600.0}},
		{"ttl 0 means no exp", tokenRequest{}, nil,
			map[string]any{"iat": 1_700_000_000.0}},
		{"nbf ahead", tokenRequest{NotBefore: &minute}, nil,
			map[string]any{"iat": 1_700_000_000.0, "nbf": 1_700_000_060.0}},
		{"nbf behind", tokenRequest{NotBefore: &back}, nil,
			map[string]any{"iat": 1_700_000_000.0, "nbf": 1_699_999_940.0}},
		{"claim values as JSON or string", tokenRequest{}, []string{
			"n=42", "f=1.5", "big=15822553606420000", "list=[1,\"a\"]", "obj={\"a\":true}", "yes=true", "nothing=null",
			"word=admin", "quoted=\"007\"", "zeros=007", "spaced=a b", "empty=", "eq=a=b",
		}, map[string]any{
			"iat": 1_700_000_000.0, "n": 42.0, "f": 1.5, "big": 15822553606420000.0, "list": []any{1.0, "a"},
			"obj": map[string]any{"a": true}, "yes": true, "nothing": nil, "word": "admin", "quoted": "007",
			"zeros": "007", "spaced": "a b", "empty": "", "eq": "a=b",
		}},
		{"claims replace flags", tokenRequest{Subject: "from-flag", TTL: time.Hour}, []string{"sub=from-claim", "exp=1"},
			map[string]any{"iat": 1_700_000_000.0, "exp": 1.0, "sub": "from-claim"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Alg, tc.req.Key = jwa.HS256, []byte("secret")
			tc.req.Claims = map[string]any{}
			for _, kv := range tc.args {
				if err := claimFlag(tc.req.Claims).Set(kv); err != nil {
					t.Fatalf("-claim %s: %v", kv, err)
				}
			}
			token, err := mintToken(tc.req, now)
			if err != nil {
				t.Fatal(err)
			}
			payload, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[1])
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(payload, &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("claims %s\nwant %v", payload, tc.want)
			}
		})
	}
}

func TestTokenErrors(t *testing.T) {
	dir := t.TempDir()
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256 := writePEM(t, dir, "p256.pem", "PRIVATE KEY", pkcs8(t, ecKey))
	publicDER, err := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	public := writePEM(t, dir, "public.pem", "PUBLIC KEY", publicDER)
	encrypted := writePEM(t, dir, "encrypted.pem", "ENCRYPTED PRIVATE KEY", []byte{1, 2, 3})
	garbled := writePEM(t, dir, "garbled.pem", "PRIVATE KEY", []byte{1, 2, 3})

	cases := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"RS256 with an EC key", []string{"-alg", "RS256", "-key", p256}, 1, "-alg RS256 needs an RSA private key, but the key is an EC P-256 private key"},
		{"ES384 with a P-256 key", []string{"-alg", "ES384", "-key", p256}, 1, "needs an EC P-384 private key, but the key is an EC P-256"},
		{"EdDSA with an EC key", []string{"-alg", "EdDSA", "-key", p256}, 1, "needs an Ed25519 private key"},
		{"HS256 with a key", []string{"-key", p256}, 1, "-alg HS256 signs with -secret, not -key"},
		{"ES256 with a secret", []string{"-alg", "ES256", "-secret", "s", "-key", p256}, 1, "signs with a private key (-key FILE), not -secret"},
		{"HS256 without secret", nil, 1, "-alg HS256 needs -secret"},
		{"ES256 without key", []string{"-alg", "ES256"}, 1, "-alg ES256 needs -key FILE"},
		{"alg none", []string{"-alg", "none", "-secret", "s"}, 1, `-alg "none" is not supported`},
		{"negative ttl", []string{"-secret", "s", "-ttl", "-1h"}, 1, "-ttl -1h0m0s is negative"},
		{"bad base64 secret", []string{"-secret", "%%%", "-secret-base64"}, 1, "-secret: not valid base64"},
		{"missing key file", []string{"-alg", "ES256", "-key", filepath.Join(dir, "absent.pem")}, 1, "no such file"},
		{"public key as private", []string{"-alg", "ES256", "-key", public}, 1, "no PEM private key block"},
		{"encrypted key", []string{"-alg", "ES256", "-key", encrypted}, 1, "the private key is encrypted"},
		{"garbled key", []string{"-alg", "ES256", "-key", garbled}, 1, "garbled.pem: PRIVATE KEY block: "},
		{"claim without =", []string{"-secret", "s", "-claim", "role"}, 2, `"role" is not k=v`},
		{"claim twice", []string{"-secret", "s", "-claim", "a=1", "-claim", "a=2"}, 2, `claim "a" given twice`},
		{"stray argument", []string{"-secret", "s", "extra"}, 2, "unexpected arguments: extra"},
		{"unknown flag", []string{"-secret", "s", "-exp", "1"}, 2, "flag provided but not defined: -exp"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCommand(t, append([]string{"token"}, tc.args...)...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.wantCode, tc.wantErr)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}
}

func TestParsePrivateKeySkipsECParameters(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// openssl ecparam -genkey writes the curve's parameters before the key.
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}})
	data := append(params, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1(t, key)})...)
	got, err := parsePrivateKeyPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	if !key.Equal(got) {
		t.Errorf("parsed a different key: %T", got)
	}
}
