package authn

import (
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// TestAttackCorpus runs tokens an attacker or a broken issuer would send
// against each kind of configured key. An empty want means accepted.
func TestAttackCorpus(t *testing.T) {
	keys := testKeys()
	const secret = "secret"
	hmacKey := []byte(secret)
	claimsAt := func(format string, offsets ...time.Duration) string {
		args := make([]any, len(offsets))
		for i, d := range offsets {
			args[i] = testNow.Add(d).Unix()
		}
		return fmt.Sprintf(format, args...)
	}
	hs256 := func(payload string) func(*testing.T) string {
		return func(t *testing.T) string { return signToken(t, jwa.HS256, hmacKey, headerFor(jwa.HS256), payload) }
	}
	unsigned := func(alg string) func(*testing.T) string {
		return func(*testing.T) string {
			return b64(fmt.Appendf(nil, `{"alg":%q,"typ":"JWT"}`, alg)) + "." + b64([]byte(validClaims)) + "."
		}
	}
	valid := hs256(validClaims)
	attackerJWK := func(t *testing.T) string {
		raw, err := json.Marshal(jwksTestKey(t, keys.attackerRSA.Public(), "", nil))
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}

	hmacConfig := hmacAuthenticator(secret)
	rsaConfig := publicKeyAuthenticator(t, keys.rsa.Public())
	ecConfig := publicKeyAuthenticator(t, keys.p256.Public())
	ecDERConfig := ecConfig
	ecDERConfig.SignatureFormat = "der"
	leewayConfig := hmacConfig
	leewayConfig.Leeway = configs.Duration(2 * time.Second)

	tests := []struct {
		name   string
		config configs.Authenticator
		token  func(t *testing.T) string
		want   RefuseReason
	}{
		{"control: valid HS256", hmacConfig, valid, ""},
		{"alg none", hmacConfig, unsigned("none"), ErrAlgorithmNotAllowed},
		{"alg None", hmacConfig, unsigned("None"), ErrAlgorithmNotAllowed},
		{"alg NONE", hmacConfig, unsigned("NONE"), ErrAlgorithmNotAllowed},
		{"alg nOnE", hmacConfig, unsigned("nOnE"), ErrAlgorithmNotAllowed},
		{"alg none against a public key", rsaConfig, unsigned("none"), ErrAlgorithmNotAllowed},
		{"alg in lower case", hmacConfig, func(t *testing.T) string {
			tok := segmentsOf(valid(t))
			return b64([]byte(`{"alg":"hs256"}`)) + "." + tok[1] + "." + tok[2]
		}, ErrAlgorithmNotAllowed},
		{"RS256 token against a secret", hmacConfig, func(t *testing.T) string {
			return signToken(t, jwa.RS256, keys.rsa, headerFor(jwa.RS256), validClaims)
		}, ErrAlgorithmNotAllowed},
		{"HS256 token signed with the public key PEM as secret", rsaConfig, func(t *testing.T) string {
			return signToken(t, jwa.HS256, []byte(rsaConfig.PublicKey), headerFor(jwa.HS256), validClaims)
		}, ErrAlgorithmNotAllowed},
		{"HS256 token against an EC key", ecConfig, valid, ErrAlgorithmNotAllowed},
		{"ES384 token against a P-256 key", ecConfig, func(t *testing.T) string {
			return signToken(t, jwa.ES384, keys.p384, headerFor(jwa.ES384), validClaims)
		}, ErrAlgorithmNotAllowed},
		{"stripped signature", hmacConfig, func(t *testing.T) string {
			tok := segmentsOf(valid(t))
			return tok[0] + "." + tok[1] + "."
		}, ErrBadSignature},
		{"stripped signature and its dot", hmacConfig, func(t *testing.T) string {
			tok := segmentsOf(valid(t))
			return tok[0] + "." + tok[1]
		}, ErrTokenMalformed},
		{"HS256 signed with another secret", hmacConfig, func(t *testing.T) string {
			return signToken(t, jwa.HS256, []byte("guessed"), headerFor(jwa.HS256), validClaims)
		}, ErrBadSignature},
		{"RS256 signed with another key", rsaConfig, func(t *testing.T) string {
			return signToken(t, jwa.RS256, keys.attackerRSA, headerFor(jwa.RS256), validClaims)
		}, ErrBadSignature},
		{"payload tampered", hmacConfig, func(t *testing.T) string {
			tok := segmentsOf(valid(t))
			return tok[0] + "." + b64([]byte(strings.Replace(validClaims, "c1", "admin", 1))) + "." + tok[2]
		}, ErrBadSignature},
		{"signature with non-zero padding bits", hmacConfig, func(t *testing.T) string {
			tok := valid(t)
			// 32 bytes take 43 characters; the last one carries 2 unused
			// bits, which strict decoding requires to be zero.
			last := strings.IndexByte(base64URLAlphabet, tok[len(tok)-1])
			return tok[:len(tok)-1] + string(base64URLAlphabet[last|1])
		}, ErrTokenMalformed},
		{"ES256 with r=s=0", ecConfig, func(t *testing.T) string {
			return b64([]byte(headerFor(jwa.ES256))) + "." + b64([]byte(validClaims)) + "." + b64(make([]byte, 64))
		}, ErrBadSignature},
		{"ES256 with r=s=0 in DER", ecDERConfig, func(t *testing.T) string {
			der := []byte{0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00}
			return b64([]byte(headerFor(jwa.ES256))) + "." + b64([]byte(validClaims)) + "." + b64(der)
		}, ErrBadSignature},
		{"ES256 with r=s=N", ecConfig, func(t *testing.T) string {
			n := keys.p256.Curve.Params().N.FillBytes(make([]byte, 32))
			return b64([]byte(headerFor(jwa.ES256))) + "." + b64([]byte(validClaims)) + "." + b64(append(n, n...))
		}, ErrBadSignature},
		{"unknown kid, static key: kid is ignored", hmacConfig, func(t *testing.T) string {
			return signToken(t, jwa.HS256, hmacKey, `{"alg":"HS256","kid":"no-such-key"}`, validClaims)
		}, ""},
		{"kid not a string", hmacConfig, func(t *testing.T) string {
			return signToken(t, jwa.HS256, hmacKey, `{"alg":"HS256","kid":7}`, validClaims)
		}, ErrTokenMalformed},
		{"jwk and jku headers name the attacker's key", rsaConfig, func(t *testing.T) string {
			header := fmt.Sprintf(`{"alg":"RS256","jku":"https://attacker.example/jwks","jwk":%s}`, attackerJWK(t))
			return signToken(t, jwa.RS256, keys.attackerRSA, header, validClaims)
		}, ErrBadSignature},
		{"jwk header with the attacker's secret", hmacConfig, func(t *testing.T) string {
			header := fmt.Sprintf(`{"alg":"HS256","jwk":{"kty":"oct","k":%q}}`, b64([]byte("attacker")))
			return signToken(t, jwa.HS256, []byte("attacker"), header, validClaims)
		}, ErrBadSignature},
		{"expired by 1s", hmacConfig, hs256(claimsAt(`{"exp":%d}`, -time.Second)), ErrTokenExpired},
		{"expires now", hmacConfig, hs256(claimsAt(`{"exp":%d}`, 0)), ErrTokenExpired},
		{"nbf 1s ahead", hmacConfig, hs256(claimsAt(`{"nbf":%d}`, time.Second)), ErrTokenNotYetValid},
		{"nbf 1s ahead within leeway", leewayConfig, hs256(claimsAt(`{"nbf":%d}`, time.Second)), ""},
		{"nbf 3s ahead beyond leeway", leewayConfig, hs256(claimsAt(`{"nbf":%d}`, 3*time.Second)), ErrTokenNotYetValid},
		{"iat 1s ahead", hmacConfig, hs256(claimsAt(`{"iat":%d}`, time.Second)), ErrTokenNotYetValid},
		{"exp as a string", hmacConfig, hs256(claimsAt(`{"exp":"%d"}`, time.Hour)), ErrTokenMalformed},
		{"exp null", hmacConfig, hs256(`{"exp":null}`), ErrTokenMalformed},
		{"huge exp", hmacConfig, hs256(`{"exp":15822553606420000}`), ""},
		{"exp beyond float64", hmacConfig, hs256(`{"exp":1e400}`), ""},
		{"duplicate claim", hmacConfig, hs256(claimsAt(`{"sub":"c1","exp":%d,"sub":"admin"}`, time.Hour)), ErrTokenMalformed},
		{"duplicate claim spelt with an escape", hmacConfig, hs256(claimsAt(`{"exp":%d,"\u0065xp":%d}`, -time.Hour, time.Hour)), ErrTokenMalformed},
		{"duplicate nested key", hmacConfig, hs256(`{"acl":{"pub":["a"],"pub":["#"]}}`), ErrTokenMalformed},
		{"duplicate alg in header", hmacConfig, func(t *testing.T) string {
			return signToken(t, jwa.HS256, hmacKey, `{"alg":"HS256","alg":"none"}`, validClaims)
		}, ErrTokenMalformed},
		{"non-JSON payload", hmacConfig, hs256("hello"), ErrTokenMalformed},
		{"payload a JSON array", hmacConfig, hs256(`["sub","c1"]`), ErrTokenMalformed},
		{"data after the claims", hmacConfig, hs256(validClaims + `{}`), ErrTokenMalformed},
		{"claims nested too deep", hmacConfig, hs256(`{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`), ErrTokenMalformed},
		{"header not JSON", hmacConfig, func(t *testing.T) string {
			return signToken(t, jwa.HS256, hmacKey, `alg=HS256`, validClaims)
		}, ErrTokenMalformed},
		{"header without alg", hmacConfig, func(t *testing.T) string {
			return signToken(t, jwa.HS256, hmacKey, `{"typ":"JWT"}`, validClaims)
		}, ErrTokenMalformed},
		{"70 KB token", hmacConfig, hs256(fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", 70_000))), ErrTokenMalformed},
		{"empty token", hmacConfig, func(*testing.T) string { return "" }, ErrTokenMissing},
		{"leading space", hmacConfig, func(t *testing.T) string { return " " + valid(t) }, ErrTokenMalformed},
		{"trailing newline", hmacConfig, func(t *testing.T) string { return valid(t) + "\n" }, ErrTokenMalformed},
		{"newline inside a segment", hmacConfig, func(t *testing.T) string {
			tok := valid(t)
			return tok[:10] + "\n" + tok[10:]
		}, ErrTokenMalformed},
		{"padded segment", hmacConfig, func(t *testing.T) string { return valid(t) + "=" }, ErrTokenMalformed},
		{"JSON serialization", hmacConfig, func(t *testing.T) string {
			tok := segmentsOf(valid(t))
			return fmt.Sprintf(`{"payload":%q,"protected":%q,"signature":%q}`, tok[1], tok[0], tok[2])
		}, ErrTokenMalformed},
		{"4 segments", hmacConfig, func(t *testing.T) string { return valid(t) + "." + b64([]byte("x")) }, ErrTokenMalformed},
		{"crit header", hmacConfig, func(t *testing.T) string {
			return signToken(t, jwa.HS256, hmacKey, `{"alg":"HS256","crit":["exp"],"exp":1}`, validClaims)
		}, ErrAlgorithmNotAllowed},
		{"crit b64 (unencoded payload)", hmacConfig, func(t *testing.T) string {
			return signToken(t, jwa.HS256, hmacKey, `{"alg":"HS256","b64":false,"crit":["b64"]}`, validClaims)
		}, ErrAlgorithmNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain := newTestChain(t, tt.config)
			id, err := chain.Verify(t.Context(), passwordRequest(tt.token(t)))
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("reason = %q (%v), want %q", got, err, tt.want)
			}
			if tt.want == "" && id.Authenticator != "jwt" {
				t.Errorf("accepted by %q, want jwt", id.Authenticator)
			}
			if tt.want != "" {
				if refusal, ok := errors.AsType[*RefuseError](err); !ok || refusal.Authenticator != "jwt" {
					t.Errorf("error %v is not a *RefuseError from jwt", err)
				}
			}
		})
	}
}

const base64URLAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// TestDERSignatures checks signature_format: der: DER is one more spelling
// of a valid signature, never a way around the range and length checks.
func TestDERSignatures(t *testing.T) {
	key := testKeys().p256
	n := key.Curve.Params().N
	input := b64([]byte(headerFor(jwa.ES256))) + "." + b64([]byte(validClaims))
	digest := digestOf(hashFor(jwa.ES256), []byte(input))
	der, err := ecdsa.SignASN1(nil, key, digest)
	if err != nil {
		t.Fatal(err)
	}
	raw := segmentsOf(signToken(t, jwa.ES256, key, headerFor(jwa.ES256), validClaims))[2]
	// derInts encodes SEQUENCE { INTEGER r, INTEGER s } from raw contents.
	derInts := func(r, s []byte) []byte {
		body := append(append([]byte{0x02, byte(len(r))}, r...), append([]byte{0x02, byte(len(s))}, s...)...)
		return append([]byte{0x30, byte(len(body))}, body...)
	}
	one := []byte{0x01}
	nBytes := append([]byte{0x00}, n.Bytes()...) // positive, minimal: N's top bit is set

	tests := []struct {
		name             string
		signature        string
		wantRaw, wantDER RefuseReason
	}{
		{"raw r||s", raw, "", ""},
		{"DER", b64(der), ErrBadSignature, ""},
		{"DER with a trailing byte", b64(append(der, 0)), ErrBadSignature, ErrBadSignature},
		{"DER r=s=1", b64(derInts(one, one)), ErrBadSignature, ErrBadSignature},
		{"DER r=N", b64(derInts(nBytes, one)), ErrBadSignature, ErrBadSignature},
		{"DER r negative", b64(derInts([]byte{0xff}, one)), ErrBadSignature, ErrBadSignature},
		{"DER r of 40 bytes", b64(derInts(append([]byte{0x01}, make([]byte, 39)...), one)), ErrBadSignature, ErrBadSignature},
		{"DER r not minimally encoded", b64(derInts([]byte{0x00, 0x01}, one)), ErrBadSignature, ErrBadSignature},
	}
	rawConfig := publicKeyAuthenticator(t, key.Public())
	derConfig := rawConfig
	derConfig.SignatureFormat = "der"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := input + "." + tt.signature
			for _, c := range []struct {
				config configs.Authenticator
				want   RefuseReason
			}{{rawConfig, tt.wantRaw}, {derConfig, tt.wantDER}} {
				_, err := newTestChain(t, c.config).Verify(t.Context(), passwordRequest(token))
				if got := ReasonOf(err); got != c.want {
					t.Errorf("signature_format %q: reason = %q (%v), want %q", c.config.SignatureFormat, got, err, c.want)
				}
			}
		})
	}
}

func segmentsOf(token string) []string { return strings.Split(token, ".") }
