package authn

import (
	"testing"
	"unicode/utf8"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// FuzzVerify feeds arbitrary tokens to an HMAC chain. Nothing may panic,
// and whatever the chain accepts, jwx must accept too with the same key:
// being stricter than a mature implementation is fine, laxer is a hole.
func FuzzVerify(f *testing.F) {
	const secret = "secret"
	for _, seed := range []string{
		emqxDocToken,
		signToken(f, jwa.HS256, []byte(secret), headerFor(jwa.HS256), validClaims),
		signToken(f, jwa.HS512, []byte(secret), `{"alg":"HS512","kid":"k","crit":["x"]}`, `{"a":{"b":[1,{"c":null}]}}`),
		signToken(f, jwa.HS256, []byte(secret), headerFor(jwa.HS256), `{"sub":"a","sub":"b"}`),
		b64([]byte(`{"alg":"none"}`)) + "." + b64([]byte(validClaims)) + ".",
		"a.b.c", "..", "", "{}",
	} {
		f.Add(seed)
	}
	chain := newTestChain(f, hmacAuthenticator(secret))
	f.Fuzz(func(t *testing.T, token string) {
		id, err := chain.Verify(t.Context(), passwordRequest(token))
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("refusal without a reason: %v", err)
			}
			return
		}
		if len(token) > maxTokenSize || !utf8.ValidString(token) {
			t.Fatalf("accepted a token of %d bytes (valid UTF-8: %t)", len(token), utf8.ValidString(token))
		}
		if _, err := jws.Verify([]byte(token), jws.WithKey(jwa.HS256, []byte(secret))); err != nil {
			if _, err := jws.Verify([]byte(token), jws.WithKey(jwa.HS384, []byte(secret))); err != nil {
				if _, err := jws.Verify([]byte(token), jws.WithKey(jwa.HS512, []byte(secret))); err != nil {
					t.Fatalf("accepted (%+v) what jwx refuses: %v", id, err)
				}
			}
		}
	})
}
