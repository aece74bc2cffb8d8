package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// writePrivateKey writes key as a PKCS8 PEM file, as mqtt-jwt-proxy keygen
// does, and returns its path.
func writePrivateKey(t *testing.T, key any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "private.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestMintedTokensVerify(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		alg       jwa.SignatureAlgorithm
		opts      tokenOptions
		verifyKey any
	}{
		{jwa.HS256, tokenOptions{Secret: "bench-secret"}, []byte("bench-secret")},
		{jwa.RS256, tokenOptions{KeyFile: writePrivateKey(t, rsaKey)}, &rsaKey.PublicKey},
		{jwa.ES256, tokenOptions{KeyFile: writePrivateKey(t, ecKey)}, &ecKey.PublicKey},
	} {
		for _, invalid := range []bool{false, true} {
			name := tc.alg.String()
			if invalid {
				name += " invalid"
			}
			t.Run(name, func(t *testing.T) {
				o := tc.opts
				o.Alg, o.TTL, o.Pool, o.Invalid = tc.alg.String(), time.Hour, 2, invalid
				source, err := newTokenSource(o)
				if err != nil {
					t.Fatal(err)
				}
				token, err := source.token()
				if err != nil {
					t.Fatal(err)
				}
				// An invalid token still parses; only its signature fails.
				if _, err := jwt.ParseInsecure(token); err != nil {
					t.Fatalf("token does not parse: %v", err)
				}
				parsed, err := jwt.Parse(token, jwt.WithKey(tc.alg, tc.verifyKey))
				if invalid {
					if err == nil {
						t.Error("the broken token verifies")
					}
					return
				}
				if err != nil {
					t.Fatalf("the token does not verify: %v", err)
				}
				if parsed.Subject() != "bench" || time.Until(parsed.Expiration()) < 59*time.Minute {
					t.Errorf("sub %q exp %v: want bench and an hour from now", parsed.Subject(), parsed.Expiration())
				}
			})
		}
	}
}

func TestTokenSources(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("aaa.bbb.ccc\n\n  ddd.eee.fff  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts tokenOptions
		want []string // the tokens handed out, in order; nil for no source
	}{
		{"none", tokenOptions{Alg: "HS256"}, nil},
		{"file in turn", tokenOptions{File: file}, []string{"aaa.bbb.ccc", "ddd.eee.fff", "aaa.bbb.ccc"}},
		{"file broken", tokenOptions{File: file, Invalid: true}, []string{"aaa.bbb.Acc", "ddd.eee.Aff"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			source, err := newTokenSource(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if token, err := source.token(); token != nil || err != nil {
					t.Errorf("no source handed out %q, %v", token, err)
				}
				return
			}
			for i, want := range tc.want {
				if got, _ := source.token(); string(got) != want {
					t.Errorf("token %d = %q, want %q", i, got, want)
				}
			}
		})
	}
}

// TestTokensFlag reads tokens from a file as a user asks for them on the
// command line, where -alg has its default.
func TestTokensFlag(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("aaa.bbb.ccc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    []string
		wantErr string // "" when the file's token must be handed out
	}{
		{[]string{"-tokens", file}, ""},
		{[]string{"-tokens", file, "-alg", "RS256"}, ""},
		{[]string{"-tokens", file, "-secret", "s"}, "does not go with -secret or -key"},
		{[]string{"-tokens", file, "-key", "k.pem"}, "does not go with -secret or -key"},
	} {
		var o options
		if err := o.parse(newFlagSet("connect", &o, io.Discard, time.Second), tc.args); err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		source, err := newTokenSource(o.Tokens)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: got %v, want an error containing %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if got, err := source.token(); string(got) != "aaa.bbb.ccc" || err != nil {
			t.Errorf("%q: token %q, %v; want the file's", tc.args, got, err)
		}
	}
}

func TestMintingPerConnection(t *testing.T) {
	source, err := newTokenSource(tokenOptions{Alg: "HS256", Secret: "s", Pool: 0})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := source.token()
	second, err := source.token()
	if err != nil || len(source.pool) != 0 || len(first) == 0 || len(second) == 0 {
		t.Fatalf("tokens %q and %q, %v, pool of %d: want two minted tokens and no pool", first, second, err, len(source.pool))
	}
	if _, err := jws.Verify(second, jws.WithKey(jwa.HS256, []byte("s"))); err != nil {
		t.Errorf("a token minted during the run does not verify: %v", err)
	}
}

func TestTokenOptionsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts tokenOptions
		want string
	}{
		{"file and secret", tokenOptions{File: "x", Secret: "s"}, "does not go with"},
		{"invalid without tokens", tokenOptions{Invalid: true}, "-invalid needs tokens"},
		{"unknown algorithm", tokenOptions{Alg: "HS999", Secret: "s"}, "-alg"},
		{"secret and key", tokenOptions{Alg: "HS256", Secret: "s", KeyFile: "k"}, "not both"},
		{"secret for RS256", tokenOptions{Alg: "RS256", Secret: "s"}, "sign with RS256"},
		{"missing key file", tokenOptions{Alg: "ES256", KeyFile: "/nonexistent/key.pem"}, "-key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newTokenSource(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
