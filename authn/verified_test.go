package authn

import (
	"crypto"
	"crypto/elliptic"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// TestVerifiedTokenIsCheckedAgain: a token verified once is not verified
// again, yet every later use checks what can change: the key (rotated
// under the same kid), the time (exp), the claims that name the client,
// and the exact bytes of the token.
func TestVerifiedTokenIsCheckedAgain(t *testing.T) {
	t.Run("key rotated under the same kid", func(t *testing.T) {
		verifyNoJWKSLeaks(t)
		s := newJWKSTestServer(t, false)
		old := newJWKSTestECKey(t, elliptic.P256())
		s.serveKeys(t, jwksTestKey(t, &old.PublicKey, "k1", nil))
		clock := newJWKSTestClock()
		cfg := jwksConfig(s.URL)
		cfg.RefreshInterval = configs.Duration(time.Minute)
		c, err := New([]configs.Authenticator{cfg}, WithClock(clock.Now))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		a := c.links[0].(*authenticator)
		p := a.keys.(*jwksProvider)
		waitJWKSFetch(t, p)

		claims := fmt.Sprintf(`{"sub":"c1","exp":%d}`, clock.Now().Add(time.Hour).Unix())
		token := signToken(t, jwa.ES256, old, `{"alg":"ES256","kid":"k1"}`, claims)
		for range 2 {
			if _, err := c.Verify(t.Context(), passwordRequest(token)); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		}
		if _, ok := a.verified.get([]byte(token)); !ok {
			t.Fatal("the verified token is not remembered")
		}

		s.serveKeys(t, jwksTestKey(t, &newJWKSTestECKey(t, elliptic.P256()).PublicKey, "k1", nil))
		clock.Advance(time.Minute)
		p.keysFor(t.Context(), "k1", jwa.ES256) // starts the refresh
		waitJWKSFetch(t, p)
		if _, err := c.Verify(t.Context(), passwordRequest(token)); ReasonOf(err) != ErrBadSignature {
			t.Errorf("Verify after the key changed = %v, want %s", err, ErrBadSignature)
		}
	})

	// What is remembered is used: the marker put in the remembered claims
	// comes back, so the signature was not checked again. An authenticator
	// with another key does not honour it.
	keys := testKeys()
	otherP256 := newJWKSTestECKey(t, elliptic.P256())
	for _, tt := range []struct {
		alg           jwa.SignatureAlgorithm
		signKey       any
		config, other configs.Authenticator
	}{
		{jwa.HS256, []byte("secret"), hmacAuthenticator("secret"), hmacAuthenticator("another secret")},
		{jwa.ES256, keys.p256, publicKeyAuthenticator(t, keys.p256.Public()), publicKeyAuthenticator(t, otherP256.Public())},
	} {
		t.Run("remembered "+tt.alg.String(), func(t *testing.T) {
			c := newTestChain(t, tt.config)
			token := signToken(t, tt.alg, tt.signKey, headerFor(tt.alg), validClaims)
			if _, err := c.Verify(t.Context(), passwordRequest(token)); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			a := c.links[0].(*authenticator)
			v, ok := a.verified.get([]byte(token))
			if !ok {
				t.Fatal("the verified token is not remembered")
			}
			v.claims = maps.Clone(v.claims)
			v.claims["marker"] = "remembered"
			a.verified.put([]byte(token), v)
			id, err := c.Verify(t.Context(), passwordRequest(token))
			if err != nil || id.Claims["marker"] != "remembered" {
				t.Fatalf("Verify again = %v, claims %v: the remembered verification was not used", err, id.Claims)
			}

			other := newTestChain(t, tt.other)
			other.links[0].(*authenticator).verified.put([]byte(token), v)
			if _, err := other.Verify(t.Context(), passwordRequest(token)); ReasonOf(err) != ErrBadSignature {
				t.Errorf("Verify with another key, the token remembered = %v, want %s", err, ErrBadSignature)
			}
		})
	}

	t.Run("expiry", func(t *testing.T) {
		now := testNow
		c, err := New([]configs.Authenticator{hmacAuthenticator("secret")}, WithClock(func() time.Time { return now }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		token := signToken(t, jwa.HS256, []byte("secret"), headerFor(jwa.HS256), validClaims)
		if _, err := c.Verify(t.Context(), passwordRequest(token)); err != nil {
			t.Fatalf("Verify: %v", err)
		}
		now = now.Add(2 * time.Hour)
		if _, err := c.Verify(t.Context(), passwordRequest(token)); ReasonOf(err) != ErrTokenExpired {
			t.Errorf("Verify after exp = %v, want %s", err, ErrTokenExpired)
		}
		if _, ok := c.links[0].(*authenticator).verified.get([]byte(token)); ok {
			t.Error("an expired token is still remembered")
		}
	})

	t.Run("claims that name the client", func(t *testing.T) {
		cfg := hmacAuthenticator("secret")
		cfg.VerifyClaims = map[string]string{"sub": "${clientid}"}
		c := newTestChain(t, cfg)
		token := signToken(t, jwa.HS256, []byte("secret"), headerFor(jwa.HS256), validClaims) // sub c1
		req := passwordRequest(token)
		if _, err := c.Verify(t.Context(), req); err != nil {
			t.Fatalf("Verify as c1: %v", err)
		}
		req.ClientID = "c2"
		if _, err := c.Verify(t.Context(), req); ReasonOf(err) != ErrClaimMismatch {
			t.Errorf("Verify of c1's token as c2 = %v, want %s", err, ErrClaimMismatch)
		}
	})

	t.Run("exact bytes", func(t *testing.T) {
		c := newTestChain(t, hmacAuthenticator("secret"))
		token := signToken(t, jwa.HS256, []byte("secret"), headerFor(jwa.HS256), validClaims)
		if _, err := c.Verify(t.Context(), passwordRequest(token)); err != nil {
			t.Fatalf("Verify: %v", err)
		}
		last := token[len(token)-2] ^ 1 // not the last character, whose low bits base64 may ignore
		tampered := token[:len(token)-2] + string(last) + token[len(token)-1:]
		if _, err := c.Verify(t.Context(), passwordRequest(tampered)); err == nil {
			t.Error("a token that differs from a verified one in its signature was accepted")
		}
	})
}

// TestVerifiedTokensBound: the memory stays bounded however many tokens
// go by, and the newest is remembered.
func TestVerifiedTokensBound(t *testing.T) {
	var v verifiedTokens
	for i := range 3 * maxVerifiedTokens {
		v.put(fmt.Appendf(nil, "token-%d", i), verifiedToken{kid: "k"})
	}
	if n := len(v.m); n != maxVerifiedTokens {
		t.Errorf("%d tokens remembered, want the bound %d", n, maxVerifiedTokens)
	}
	if _, ok := v.get(fmt.Appendf(nil, "token-%d", 3*maxVerifiedTokens-1)); !ok {
		t.Error("the newest token is not remembered")
	}
}

func TestSameKey(t *testing.T) {
	a, b := newJWKSTestECKey(t, elliptic.P256()), newJWKSTestECKey(t, elliptic.P256())
	s := newHMACKey(crypto.SHA256, []byte("s"))
	for _, c := range []struct {
		x, y any
		want bool
	}{
		{s, s, true},
		{s, newHMACKey(crypto.SHA256, []byte("t")), false},
		{&a.PublicKey, &a.PublicKey, true},
		{&a.PublicKey, &b.PublicKey, false},
		{&a.PublicKey, s, false},
		{s, &a.PublicKey, false},
	} {
		if got := sameKey(c.x, c.y); got != c.want {
			t.Errorf("sameKey(%T, %T) = %v, want %v", c.x, c.y, got, c.want)
		}
	}
}
