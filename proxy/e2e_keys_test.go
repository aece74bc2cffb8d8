package proxy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// The CONNACK codes of a token whose signature does not verify or whose
// kid is unknown: not authorized.
const (
	notAuthorizedV3 = 5
	notAuthorizedV5 = 0x87
)

// signJWT signs claims for sub, valid for an hour, with key under alg;
// kid, when not empty, goes in the header.
func signJWT(t *testing.T, alg jwa.SignatureAlgorithm, key crypto.Signer, kid, sub string) string {
	t.Helper()
	payload, err := json.Marshal(map[string]any{"sub": sub, "exp": time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	headers := jws.NewHeaders()
	if kid != "" {
		headers.Set(jws.KeyIDKey, kid)
	}
	signed, err := jws.Sign(payload, jws.WithKey(alg, key, jws.WithProtectedHeaders(headers)))
	if err != nil {
		t.Fatalf("signing %s: %v", alg, err)
	}
	return string(signed)
}

// publicPEM encodes key's public half as a PUBLIC KEY PEM block.
func publicPEM(t *testing.T, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// keyPair generates a key of a kind: "rsa", "p256" or "ed25519".
func keyPair(t *testing.T, kind string) crypto.Signer {
	t.Helper()
	var key crypto.Signer
	var err error
	switch kind {
	case "rsa":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "p256":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ed25519":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// keysE2E is a mosquitto broker, a subscriber connected to it directly,
// and the mosquitto_pub runs the tests of this file make through proxies
// in front of it.
type keysE2E struct {
	broker *proxytest.Mosquitto
	sub    *proxytest.Sub
}

func startKeysE2E(t *testing.T) *keysE2E {
	t.Helper()
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	sub := proxytest.StartSub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", "keys/#", "-v")...)
	return &keysE2E{broker: broker, sub: sub}
}

// proxyFor starts a proxy in front of the broker with the chain auths
// build, closed at cleanup, and returns its address.
func (e *keysE2E) proxyFor(t *testing.T, auths ...configs.Authenticator) string {
	t.Helper()
	chain, err := authn.New(auths)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	return startProxy(t, &Proxy{Upstream: e.broker.Addr, Verifier: chain})
}

// accepted publishes through the proxy at addr with token and checks the
// message reached the broker's subscriber.
func (e *keysE2E) accepted(t *testing.T, addr, version, token, topic string) {
	t.Helper()
	pub := proxytest.Pub(t, append(proxytest.AddrArgs(t, addr), "-V", version, "-u", "device", "-P", token, "-t", topic, "-m", "signed")...)
	if pub.Err != nil || pub.Connack != 0 {
		t.Errorf("%s: CONNACK %d, %v; want accepted\n%s", version, pub.Connack, pub.Err, pub.Output)
		return
	}
	if msg, ok := e.sub.Next(proxytest.DefaultTimeout); msg != topic+" signed" {
		t.Errorf("%s: subscriber got %q, %v; want the message on %s", version, msg, ok, topic)
	}
}

// refused runs mosquitto_pub through the proxy at addr with token and
// checks the exact CONNACK, and that the broker saw no connection.
func (e *keysE2E) refused(t *testing.T, addr, version, token string, want int) {
	t.Helper()
	e.broker.SyncLog(t)
	before := e.broker.Connections()
	pub := proxytest.Pub(t, append(proxytest.AddrArgs(t, addr), "-V", version, "-u", "device", "-P", token, "-t", "keys/denied", "-m", "never")...)
	if pub.Connack != want {
		t.Errorf("%s: CONNACK %d, want %d\n%s", version, pub.Connack, want, pub.Output)
	}
	e.broker.SyncLog(t)
	if after := e.broker.Connections(); after != before {
		t.Errorf("%s: the broker saw %d connections for a refused client, want 0", version, after-before)
	}
}

// TestMosquittoPublicKeys runs mosquitto_pub through the proxy for each
// public-key algorithm family, with the key given as PEM text and as a
// file: a token signed with the configured key is accepted, one signed
// with another key of the same type is refused as not authorized.
func TestMosquittoPublicKeys(t *testing.T) {
	e := startKeysE2E(t)
	keyDir := t.TempDir()
	rsaKey, rsaOther := keyPair(t, "rsa"), keyPair(t, "rsa")
	for _, family := range []struct {
		alg        jwa.SignatureAlgorithm
		key, other crypto.Signer
	}{
		{jwa.RS256, rsaKey, rsaOther},
		{jwa.PS256, rsaKey, rsaOther},
		{jwa.ES256, keyPair(t, "p256"), keyPair(t, "p256")},
		{jwa.EdDSA, keyPair(t, "ed25519"), keyPair(t, "ed25519")},
	} {
		keyFile := filepath.Join(keyDir, family.alg.String()+".pem")
		if err := os.WriteFile(keyFile, []byte(publicPEM(t, family.key)), 0o600); err != nil {
			t.Fatal(err)
		}
		// Each form is tried with one protocol version, so that both
		// forms and both CONNACK flavours are covered per family.
		for _, form := range []struct {
			name, publicKey, version string
			notAuthorized            int
		}{
			{"pem text", publicPEM(t, family.key), "mqttv311", notAuthorizedV3},
			{"pem file", keyFile, "mqttv5", notAuthorizedV5},
		} {
			t.Run(family.alg.String()+"/"+form.name, func(t *testing.T) {
				addr := e.proxyFor(t, configs.Authenticator{Mechanism: "jwt", Algorithm: "public-key", PublicKey: form.publicKey})
				e.accepted(t, addr, form.version, signJWT(t, family.alg, family.key, "", "device"), "keys/"+family.alg.String())
				e.refused(t, addr, form.version, signJWT(t, family.alg, family.other, "", "device"), form.notAuthorized)
			})
		}
	}
}

// jwksServer serves a JWK Set that the test replaces at will, and counts
// the requests.
type jwksServer struct {
	*httptest.Server
	mu       sync.Mutex
	document []byte
	requests int
}

func startJWKSServer(t *testing.T) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		document := s.document
		s.requests++
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(document)
	}))
	t.Cleanup(s.Close)
	return s
}

// publish makes the set hold the public halves of keys, each under its kid.
func (s *jwksServer) publish(t *testing.T, keys map[string]crypto.Signer) {
	t.Helper()
	set := jwk.NewSet()
	for kid, key := range keys {
		k, err := jwk.FromRaw(key.Public())
		if err != nil {
			t.Fatal(err)
		}
		k.Set(jwk.KeyIDKey, kid)
		k.Set(jwk.KeyUsageKey, jwk.ForSignature)
		set.AddKey(k)
	}
	document, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.document = document
	s.mu.Unlock()
}

func (s *jwksServer) requestCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// TestMosquittoJWKSRotation runs mosquitto_pub through a proxy whose keys
// come from a JWKS endpoint that rotates its keys while the proxy runs: the
// new kid is accepted without a restart, the removed kid is refused, and
// so are an unknown kid and a known kid's token signed by another key.
func TestMosquittoJWKSRotation(t *testing.T) {
	e := startKeysE2E(t)
	oldKey, newKey, attacker := keyPair(t, "p256"), keyPair(t, "ed25519"), keyPair(t, "ed25519")
	jwks := startJWKSServer(t)
	jwks.publish(t, map[string]crypto.Signer{"old": oldKey})
	addr := e.proxyFor(t, configs.Authenticator{
		Mechanism: "jwt",
		UseJWKS:   true,
		Endpoint:  jwks.URL,
		// An unknown kid refetches at once, so rotation is seen without
		// waiting for the refresh interval.
		MinRefreshInterval: configs.Duration(time.Millisecond),
	})

	oldToken := signJWT(t, jwa.ES256, oldKey, "old", "device")
	newToken := signJWT(t, jwa.EdDSA, newKey, "new", "device")
	e.accepted(t, addr, "mqttv311", oldToken, "keys/jwks/old")
	e.refused(t, addr, "mqttv311", newToken, notAuthorizedV3) // not published yet

	jwks.publish(t, map[string]crypto.Signer{"new": newKey})
	fetches := jwks.requestCount()
	e.accepted(t, addr, "mqttv5", newToken, "keys/jwks/new")
	e.accepted(t, addr, "mqttv311", newToken, "keys/jwks/new")
	if jwks.requestCount() == fetches {
		t.Errorf("the new kid was accepted without a fetch of the key set")
	}
	for _, tc := range []struct {
		name, token string
	}{
		{"removed kid", oldToken},
		{"unknown kid", signJWT(t, jwa.EdDSA, attacker, "elsewhere", "device")},
		{"known kid, another key", signJWT(t, jwa.EdDSA, attacker, "new", "device")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.refused(t, addr, "mqttv311", tc.token, notAuthorizedV3)
			e.refused(t, addr, "mqttv5", tc.token, notAuthorizedV5)
		})
	}
}
