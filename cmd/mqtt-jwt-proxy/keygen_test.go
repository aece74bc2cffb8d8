package main

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// readPEMBlock returns the DER of the one PEM block of blockType in path.
func readPEMBlock(t *testing.T, path, blockType string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != blockType || len(rest) != 0 {
		t.Fatalf("%s: want exactly one %s block", path, blockType)
	}
	return block.Bytes
}

// printedValue returns the value keygen printed after label.
func printedValue(t *testing.T, stdout, label string) string {
	t.Helper()
	for _, line := range strings.Split(stdout, "\n") {
		if value, ok := strings.CutPrefix(line, label+":"); ok {
			return strings.TrimSpace(value)
		}
	}
	t.Fatalf("keygen did not print %q: %q", label, stdout)
	return ""
}

// TestKeygen checks each key type's three files parse and belong together,
// and that a token minted from private.pem by the token command verifies
// against jwks.json, the key picked by its kid.
func TestKeygen(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		wantAlg jwa.SignatureAlgorithm
		wantKID string // empty: the RFC 7638 thumbprint
	}{
		{"default ec", nil, jwa.ES256, ""},
		{"ec P-384", []string{"-curve", "P-384"}, jwa.ES384, ""},
		{"ec P-521 with kid", []string{"-type", "ec", "-curve", "P-521", "-kid", "2024-rotation"}, jwa.ES512, "2024-rotation"},
		{"rsa", []string{"-type", "rsa", "-bits", "2048"}, jwa.RS256, ""},
		{"ed25519", []string{"-type", "ed25519"}, jwa.EdDSA, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "keys") // keygen creates it
			code, stdout, stderr := runCommand(t, append([]string{"keygen", "-out", dir}, tc.args...)...)
			if code != 0 {
				t.Fatalf("keygen exited %d: %s", code, stderr)
			}
			privatePath := printedValue(t, stdout, "private key")
			if privatePath != filepath.Join(dir, "private.pem") || printedValue(t, stdout, "alg") != tc.wantAlg.String() {
				t.Errorf("keygen printed %q", stdout)
			}
			if info, err := os.Stat(privatePath); err != nil || info.Mode().Perm() != 0o600 {
				t.Errorf("private.pem mode %v (%v), want 0600", info.Mode(), err)
			}

			private, err := x509.ParsePKCS8PrivateKey(readPEMBlock(t, privatePath, "PRIVATE KEY"))
			if err != nil {
				t.Fatalf("private.pem is not PKCS8: %v", err)
			}
			public, err := x509.ParsePKIXPublicKey(readPEMBlock(t, filepath.Join(dir, "public.pem"), "PUBLIC KEY"))
			if err != nil {
				t.Fatalf("public.pem is not PKIX: %v", err)
			}
			if !private.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(public) {
				t.Error("public.pem is not private.pem's public key")
			}

			jwksData, err := os.ReadFile(filepath.Join(dir, "jwks.json"))
			if err != nil {
				t.Fatal(err)
			}
			set, err := jwk.Parse(jwksData)
			if err != nil {
				t.Fatalf("jwks.json: %v", err)
			}
			if set.Len() != 1 {
				t.Fatalf("jwks.json holds %d keys, want 1", set.Len())
			}
			key, _ := set.Key(0)
			if key.Algorithm() != tc.wantAlg || key.KeyUsage() != "sig" {
				t.Errorf("JWK alg %q use %q, want %q sig", key.Algorithm(), key.KeyUsage(), tc.wantAlg)
			}
			if _, isPrivate := key.(interface{ D() []byte }); isPrivate || strings.Contains(string(jwksData), `"d"`) {
				t.Errorf("jwks.json holds private key material: %s", jwksData)
			}
			wantKID := tc.wantKID
			if wantKID == "" {
				thumbprint, err := key.Thumbprint(crypto.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				wantKID = base64.RawURLEncoding.EncodeToString(thumbprint)
			}
			if key.KeyID() != wantKID || printedValue(t, stdout, "kid") != wantKID {
				t.Errorf("kid %q in JWKS, printed %q, want %q", key.KeyID(), printedValue(t, stdout, "kid"), wantKID)
			}

			code, token, stderr := runCommand(t, "token", "-alg", tc.wantAlg.String(), "-key", privatePath, "-kid", wantKID)
			if code != 0 {
				t.Fatalf("token exited %d: %s", code, stderr)
			}
			if _, err := jws.Verify([]byte(strings.TrimSpace(token)), jws.WithKeySet(set)); err != nil {
				t.Errorf("the JWKS does not verify a token signed with private.pem: %v", err)
			}
		})
	}
}

func TestKeygenOverwrite(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := runCommand(t, "keygen", "-out", dir); code != 0 {
		t.Fatalf("keygen exited %d: %s", code, stderr)
	}
	privatePath := filepath.Join(dir, "private.pem")
	first, err := os.ReadFile(privatePath)
	if err != nil {
		t.Fatal(err)
	}

	// One existing file is enough to refuse, and nothing is written then.
	jwksPath := filepath.Join(dir, "jwks.json")
	for _, path := range []string{privatePath, filepath.Join(dir, "public.pem")} {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
	code, _, stderr := runCommand(t, "keygen", "-out", dir)
	if code != 1 || !strings.Contains(stderr, jwksPath+" exists; use -force to overwrite it") {
		t.Errorf("keygen over jwks.json exited %d: %q", code, stderr)
	}
	if _, err := os.Stat(privatePath); err == nil {
		t.Error("keygen wrote private.pem although it refused")
	}

	if err := os.WriteFile(privatePath, first, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCommand(t, "keygen", "-out", dir, "-force"); code != 0 {
		t.Fatalf("keygen -force exited %d: %s", code, stderr)
	}
	second, err := os.ReadFile(privatePath)
	if err != nil {
		t.Fatal(err)
	}
	if string(second) == string(first) {
		t.Error("keygen -force left the old private key")
	}
	if info, err := os.Stat(privatePath); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("overwritten private.pem mode %v (%v), want 0600", info.Mode(), err)
	}
}

func TestKeygenErrors(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"unknown type", []string{"-type", "dsa"}, 1, `-type "dsa" is not supported`},
		{"short rsa", []string{"-type", "rsa", "-bits", "1024"}, 1, "-bits 1024 is too small; use at least 2048"},
		{"unknown curve", []string{"-curve", "P-224"}, 1, `-curve "P-224" is not supported`},
		{"bits for ec", []string{"-bits", "4096"}, 1, "-bits applies to -type rsa only"},
		{"curve for ed25519", []string{"-type", "ed25519", "-curve", "P-256"}, 1, "-curve applies to -type ec only"},
		{"stray argument", []string{"keys"}, 2, "unexpected arguments: keys"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			code, stdout, stderr := runCommand(t, append([]string{"keygen", "-out", dir}, tc.args...)...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, stdout, stderr, tc.wantCode, tc.wantErr)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("keygen wrote %d files although it failed", len(entries))
			}
		})
	}
}
