package authn

import (
	"fmt"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// BenchmarkVerify measures one accepted CONNECT per algorithm, with the
// claims and checks of a production configuration: a token seen for the
// first time (new), and one verified before (again; see verifiedTokens).
func BenchmarkVerify(b *testing.B) {
	keys := testKeys()
	secret := []byte("a secret of a decent length, 32+")
	claims := fmt.Sprintf(`{"sub":"sensor-0042","iss":"https://idp.example","aud":["mqtt"],"iat":%d,"exp":%d}`,
		testNow.Unix(), testNow.Add(time.Hour).Unix())
	tests := []struct {
		alg     jwa.SignatureAlgorithm
		signKey any
		config  configs.Authenticator
	}{
		{jwa.HS256, secret, hmacAuthenticator(string(secret))},
		{jwa.RS256, keys.rsa, publicKeyAuthenticator(b, keys.rsa.Public())},
		{jwa.PS256, keys.rsa, publicKeyAuthenticator(b, keys.rsa.Public())},
		{jwa.ES256, keys.p256, publicKeyAuthenticator(b, keys.p256.Public())},
		{jwa.EdDSA, keys.ed25519, publicKeyAuthenticator(b, keys.ed25519.Public())},
	}
	for _, tt := range tests {
		b.Run(tt.alg.String(), func(b *testing.B) {
			cfg := tt.config
			cfg.Issuer, cfg.Audience = "https://idp.example", "mqtt"
			cfg.RequiredClaims = []string{"exp"}
			cfg.VerifyClaims = map[string]string{"sub": "${clientid}"}
			chain := newTestChain(b, cfg)
			req := Request{ClientID: "sensor-0042", HasPassword: true,
				Password: []byte(signToken(b, tt.alg, tt.signKey, headerFor(tt.alg), claims))}
			if _, err := chain.Verify(b.Context(), req); err != nil {
				b.Fatalf("Verify: %v", err)
			}
			verified := &chain.links[0].(*authenticator).verified
			b.Run("new", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					verified.forget(req.Password)
					chain.Verify(b.Context(), req)
				}
			})
			b.Run("again", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					chain.Verify(b.Context(), req)
				}
			})
		})
	}
}
