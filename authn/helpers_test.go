package authn

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// testNow is the fixed time of every test chain.
var testNow = time.Unix(1_700_000_000, 0)

// testKeySet holds the keys tests sign with, generated once per test
// binary: RSA generation is slow under the race detector.
type testKeySet struct {
	rsa, attackerRSA *rsa.PrivateKey
	p256, p384, p521 *ecdsa.PrivateKey
	ed25519          ed25519.PrivateKey
}

var testKeys = sync.OnceValue(func() *testKeySet {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var k testKeySet
	var err error
	k.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.attackerRSA, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.p256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.p384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	k.p521, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	must(err)
	_, k.ed25519, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return &k
})

func b64(data []byte) string { return base64.RawURLEncoding.EncodeToString(data) }

// signToken builds a compact JWS of the given header and payload JSON,
// taken byte for byte, signed with jwx's signer for alg: an implementation
// independent of the one under test.
func signToken(t testing.TB, alg jwa.SignatureAlgorithm, key any, header, payload string) string {
	t.Helper()
	input := b64([]byte(header)) + "." + b64([]byte(payload))
	signer, err := jws.NewSigner(alg)
	if err != nil {
		t.Fatalf("signer for %s: %v", alg, err)
	}
	sig, err := signer.Sign([]byte(input), key)
	if err != nil {
		t.Fatalf("sign %s: %v", alg, err)
	}
	return input + "." + b64(sig)
}

// headerFor is a plain header naming alg.
func headerFor(alg jwa.SignatureAlgorithm) string {
	return fmt.Sprintf(`{"alg":%q,"typ":"JWT"}`, alg)
}

// validClaims are claims every test chain accepts: exp an hour after testNow.
var validClaims = fmt.Sprintf(`{"sub":"c1","exp":%d}`, testNow.Add(time.Hour).Unix())

// publicKeyPEM encodes pub as a PUBLIC KEY (PKIX) PEM block.
func publicKeyPEM(t testing.TB, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatalf("marshal public key: %v", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func hmacAuthenticator(secret string) configs.Authenticator {
	return configs.Authenticator{Mechanism: "jwt", Algorithm: "hmac-based", Secret: secret}
}

func publicKeyAuthenticator(t testing.TB, pub any) configs.Authenticator {
	return configs.Authenticator{Mechanism: "jwt", Algorithm: "public-key", PublicKey: publicKeyPEM(t, pub)}
}

// newTestChain builds a chain on testNow and closes it after the test.
func newTestChain(t testing.TB, auths ...configs.Authenticator) *Chain {
	t.Helper()
	c, err := New(auths, WithClock(func() time.Time { return testNow }))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// passwordRequest is a client sending token as its password.
func passwordRequest(token string) Request {
	return Request{ClientID: "c1", Password: []byte(token), HasPassword: true}
}
