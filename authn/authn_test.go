package authn

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// The example tokens of EMQX's documentation, signed with HS256.
const (
	emqxDocToken      = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkVNUVggQ2xvdWQiLCJpYXQiOjE1MTYyMzkwMjJ9.wGxZTwkCZtYPzkS854aQ9WCnP8YGIQ_erFh5RIznhYk"                                                       // secret "secret"
	emqx4DocToken     = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJkYXRhIjp7ImF1dGhvciI6IndpdndpdiIsInNpdGUiOiJodHRwczovL3dpdndpdi5jb20ifSwiZXhwIjoxNTgyMjU1MzYwNjQyMDAwMCwiaWF0IjoxNTgyMjU1MzYwfQ.FdyAx2fYahm6h3g47m88ttyINzptzKy_speimyUcma4" // secret "emqxsecret"
	emqx4DocTokenExp  = 15822553606420000
	emqxDocTokenSub   = "1234567890"
	emqx4DocTokenData = `{"author":"wivwiv","site":"https://wivwiv.com"}`
)

func TestSeedTokens(t *testing.T) {
	tests := []struct {
		name, secret, token string
		want                RefuseReason
		wantSubject         string
		wantExpiry          time.Time
	}{
		{"EMQX 5 docs", "secret", emqxDocToken, "", emqxDocTokenSub, time.Time{}},
		{"EMQX 4 docs, huge exp", "emqxsecret", emqx4DocToken, "", "", time.Unix(emqx4DocTokenExp, 0)},
		{"EMQX 5 docs, wrong secret", "emqxsecret", emqxDocToken, ErrBadSignature, "", time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := newTestChain(t, hmacAuthenticator(tt.secret)).Verify(t.Context(), passwordRequest(tt.token))
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("reason = %q (%v), want %q", got, err, tt.want)
			}
			if id.Subject != tt.wantSubject || !id.Expiry.Equal(tt.wantExpiry) {
				t.Errorf("identity sub %q exp %s, want %q %s", id.Subject, id.Expiry, tt.wantSubject, tt.wantExpiry)
			}
		})
	}
	t.Run("claims kept", func(t *testing.T) {
		id, err := newTestChain(t, hmacAuthenticator("emqxsecret")).Verify(t.Context(), passwordRequest(emqx4DocToken))
		if err != nil {
			t.Fatal(err)
		}
		data, err := json.Marshal(id.Claims["data"])
		if err != nil || string(data) != emqx4DocTokenData {
			t.Errorf("claim data = %s (%v), want %s", data, err, emqx4DocTokenData)
		}
		if exp := id.Claims["exp"]; exp != json.Number("15822553606420000") {
			t.Errorf("claim exp = %#v, want the number as written", exp)
		}
	})
}

// TestAlgorithmFamilies signs a token with jwx for every algorithm, with a
// key generated here, and expects it accepted.
func TestAlgorithmFamilies(t *testing.T) {
	keys := testKeys()
	secret := []byte("a secret of a decent length, 32+")
	tests := []struct {
		alg     jwa.SignatureAlgorithm
		signKey any
		config  configs.Authenticator
	}{
		{jwa.HS256, secret, hmacAuthenticator(string(secret))},
		{jwa.HS384, secret, hmacAuthenticator(string(secret))},
		{jwa.HS512, secret, hmacAuthenticator(string(secret))},
		{jwa.RS256, keys.rsa, publicKeyAuthenticator(t, keys.rsa.Public())},
		{jwa.RS384, keys.rsa, publicKeyAuthenticator(t, keys.rsa.Public())},
		{jwa.RS512, keys.rsa, publicKeyAuthenticator(t, keys.rsa.Public())},
		{jwa.PS256, keys.rsa, publicKeyAuthenticator(t, keys.rsa.Public())},
		{jwa.PS384, keys.rsa, publicKeyAuthenticator(t, keys.rsa.Public())},
		{jwa.PS512, keys.rsa, publicKeyAuthenticator(t, keys.rsa.Public())},
		{jwa.ES256, keys.p256, publicKeyAuthenticator(t, keys.p256.Public())},
		{jwa.ES384, keys.p384, publicKeyAuthenticator(t, keys.p384.Public())},
		{jwa.ES512, keys.p521, publicKeyAuthenticator(t, keys.p521.Public())},
		{jwa.EdDSA, keys.ed25519, publicKeyAuthenticator(t, keys.ed25519.Public())},
	}
	exp := testNow.Add(time.Hour).Truncate(time.Second)
	for _, tt := range tests {
		t.Run(tt.alg.String(), func(t *testing.T) {
			tok, err := jwt.NewBuilder().Subject("c1").Expiration(exp).Claim("role", "sensor").Build()
			if err != nil {
				t.Fatal(err)
			}
			signed, err := jwt.Sign(tok, jwt.WithKey(tt.alg, tt.signKey))
			if err != nil {
				t.Fatal(err)
			}
			id, err := newTestChain(t, tt.config).Verify(t.Context(), passwordRequest(string(signed)))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if id.Subject != "c1" || !id.Expiry.Equal(exp) || id.Claims["role"] != "sensor" {
				t.Errorf("identity = %+v, want sub c1, exp %s, role sensor", id, exp)
			}
		})
	}
}

// TestPublicKeyForms loads public_key in each accepted PEM form, as text
// and from a file.
func TestPublicKeyForms(t *testing.T) {
	keys := testKeys()
	pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&keys.rsa.PublicKey)}))
	template := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "issuer"}, NotAfter: testNow.Add(time.Hour)}
	certDER, err := x509.CreateCertificate(rand.Reader, template, template, keys.p256.Public(), keys.p256)
	if err != nil {
		t.Fatal(err)
	}
	cert := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}))
	pkixRSA := publicKeyPEM(t, keys.rsa.Public())
	path := filepath.Join(t.TempDir(), "issuer.pem")
	if err := os.WriteFile(path, []byte(pkixRSA), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		publicKey string
		alg       jwa.SignatureAlgorithm
		signKey   any
	}{
		{"PKIX RSA", pkixRSA, jwa.RS256, keys.rsa},
		{"PKCS1 RSA", pkcs1, jwa.PS256, keys.rsa},
		{"certificate", cert, jwa.ES256, keys.p256},
		{"file", path, jwa.RS512, keys.rsa},
		{"text around the PEM block", "issuer key:\n" + pkixRSA + "\n", jwa.RS256, keys.rsa},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := configs.Authenticator{Mechanism: "jwt", Algorithm: "public-key", PublicKey: tt.publicKey}
			token := signToken(t, tt.alg, tt.signKey, headerFor(tt.alg), validClaims)
			if _, err := newTestChain(t, cfg).Verify(t.Context(), passwordRequest(token)); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

func TestSecretBase64(t *testing.T) {
	// Bytes whose encodings hold + and / (or - and _), and need padding.
	six := []byte{0xfb, 0xff, 0xfe, 0x00, 0x3e, 0x3f}
	four := six[:4]
	tests := []struct {
		encoded string
		secret  []byte
	}{
		{"+//+AD4/", six},
		{"-__-AD4_", six},
		{"+//+AA==", four},
		{"+//+AA", four},
		{"-__-AA==", four},
		{"-__-AA", four},
	}
	for _, tt := range tests {
		t.Run(tt.encoded, func(t *testing.T) {
			cfg := hmacAuthenticator(tt.encoded)
			cfg.SecretBase64Encoded = true
			token := signToken(t, jwa.HS256, tt.secret, headerFor(jwa.HS256), validClaims)
			if _, err := newTestChain(t, cfg).Verify(t.Context(), passwordRequest(token)); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

// TestHMACKeyReuse: a MAC taken back after a match or a mismatch starts
// clean, for each hash and from several goroutines at once, so that no
// token's bytes leak into the next one's check.
func TestHMACKeyReuse(t *testing.T) {
	secret := []byte("a secret of a decent length, 32+")
	for _, alg := range []jwa.SignatureAlgorithm{jwa.HS256, jwa.HS384, jwa.HS512} {
		t.Run(alg.String(), func(t *testing.T) {
			k := newHMACKey(hashFor(alg), secret)
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					for i := range 50 {
						data := fmt.Appendf(nil, "header.payload-%d-%d", g, i)
						mac := hmac.New(hashFor(alg).New, secret)
						mac.Write(data)
						sig := mac.Sum(nil)
						if !k.verify(data, sig) {
							t.Errorf("the MAC of %q does not verify", data)
						}
						sig[0] ^= 1
						if k.verify(data, sig) {
							t.Errorf("a changed MAC of %q verifies", data)
						}
						if k.verify(data[:len(data)-1], sig) {
							t.Errorf("the MAC of %q verifies a shorter input", data)
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

func TestConfigErrors(t *testing.T) {
	keys := testKeys()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	privateDER, err := x509.MarshalPKCS8PrivateKey(keys.p256)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := func(pub any) func(*configs.Authenticator) {
		return func(a *configs.Authenticator) { *a = publicKeyAuthenticator(t, pub) }
	}
	withPublicKey := func(value string) func(*configs.Authenticator) {
		return func(a *configs.Authenticator) {
			*a = configs.Authenticator{Mechanism: "jwt", Algorithm: "public-key", PublicKey: value}
		}
	}
	tests := []struct {
		name   string
		change func(*configs.Authenticator)
		want   string
	}{
		{"bad base64", func(a *configs.Authenticator) {
			a.Secret, a.SecretBase64Encoded = "not base64!", true
		}, "authentication[0] (jwt): secret: not valid base64: "},
		{"base64 of nothing", func(a *configs.Authenticator) {
			a.Secret, a.SecretBase64Encoded = "==", true
		}, "authentication[0] (jwt): secret: decodes to no bytes"},
		{"no secret", func(a *configs.Authenticator) { a.Secret = "" }, "authentication[0] (jwt): secret: required"},
		{"bad PEM", withPublicKey("-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n"),
			"authentication[0] (jwt): public_key: no PEM block"},
		{"PEM path that does not exist", withPublicKey(filepath.Join(t.TempDir(), "missing.pem")),
			"authentication[0] (jwt): public_key: not PEM text, and not a readable file: "},
		{"PEM of a private key", withPublicKey(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privateDER}))),
			`authentication[0] (jwt): public_key: PEM block is "PRIVATE KEY"; want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE`},
		{"PEM with garbage DER", withPublicKey(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")}))),
			"authentication[0] (jwt): public_key: PUBLIC KEY block: "},
		{"two PEM blocks", withPublicKey(publicKeyPEM(t, keys.p256.Public()) + publicKeyPEM(t, keys.p384.Public())),
			"authentication[0] (jwt): public_key: more than one PEM block"},
		{"RSA key under 2048 bits", pemKey(small.Public()), "authentication[0] (jwt): public_key: RSA key of 1024 bits is under the minimum of 2048"},
		{"P-224 key", pemKey(p224.Public()), "authentication[0] (jwt): public_key: EC curve P-224"},
		{"unknown placeholder", func(a *configs.Authenticator) {
			a.VerifyClaims = map[string]string{"sub": "${foo}"}
		}, "authentication[0] (jwt): verify_claims.sub: unknown placeholder ${foo}"},
		{"unterminated placeholder", func(a *configs.Authenticator) {
			a.VerifyClaims = map[string]string{"sub": "${clientid"}
		}, `authentication[0] (jwt): verify_claims.sub: unterminated placeholder in "${clientid"`},
		{"exp in verify_claims", func(a *configs.Authenticator) {
			a.VerifyClaims = map[string]string{"exp": "1"}
		}, "authentication[0] (jwt): verify_claims: exp may not be named here"},
		{"empty required claim", func(a *configs.Authenticator) { a.RequiredClaims = []string{"exp", ""} },
			"authentication[0] (jwt): required_claims: a claim name is empty"},
		{"negative leeway", func(a *configs.Authenticator) { a.Leeway = configs.Duration(-time.Second) },
			"authentication[0] (jwt): leeway: -1s is negative"},
		{"unknown mechanism", func(a *configs.Authenticator) { a.Mechanism = "" },
			`authentication[0] (jwt): mechanism: "" is not one of jwt, certificate`},
		{"unknown algorithm", func(a *configs.Authenticator) { a.Algorithm = "hmac" },
			`authentication[0] (jwt): algorithm: "hmac" is not one of hmac-based, public-key`},
		{"unknown from", func(a *configs.Authenticator) { a.From = "client_id" },
			`authentication[0] (jwt): from: "client_id" is not one of password, username`},
		{"unknown on_missing_jwt", func(a *configs.Authenticator) { a.OnMissingJWT = "allow" },
			`authentication[0] (jwt): on_missing_jwt: "allow" is not one of deny, ignore`},
		{"unknown signature_format", func(a *configs.Authenticator) { a.SignatureFormat = "ber" },
			`authentication[0] (jwt): signature_format: "ber" is not one of raw, der`},
		{"named", func(a *configs.Authenticator) { a.Name, a.Algorithm = "devices", "" },
			`authentication[0] (devices): algorithm: ""`},
		{"JWKS endpoint", func(a *configs.Authenticator) {
			*a = configs.Authenticator{Mechanism: "jwt", UseJWKS: true, Endpoint: "ftp://keys.example"}
		}, "authentication[0] (jwt): endpoint: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := hmacAuthenticator("secret")
			tt.change(&cfg)
			c, err := New([]configs.Authenticator{cfg})
			if err == nil {
				c.Close()
				t.Fatalf("New succeeded, want an error starting %q", tt.want)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error %q\ndoes not start with %q", err, tt.want)
			}
		})
	}
}

// TestNewClosesOnError checks that a config error in a later authenticator
// stops the JWKS refresher New already started for an earlier one.
func TestNewClosesOnError(t *testing.T) {
	verifyNoJWKSLeaks(t)
	server := newJWKSTestServer(t, false)
	server.serveKeys(t, jwksTestKey(t, testKeys().p256.Public(), "k1", nil))
	_, err := New([]configs.Authenticator{
		{Mechanism: "jwt", UseJWKS: true, Endpoint: server.URL},
		{Mechanism: "jwt", Algorithm: "hmac-based", Secret: "%", SecretBase64Encoded: true},
	})
	if want := "authentication[1] (jwt#2): secret: not valid base64"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("New error = %v, want one starting %q", err, want)
	}
}

func TestClaims(t *testing.T) {
	type change = func(*configs.Authenticator)
	verifyClaims := func(claims map[string]string) change {
		return func(a *configs.Authenticator) { a.VerifyClaims = claims }
	}
	exp := testNow.Add(time.Hour).Unix()
	request := Request{ClientID: "c1", Username: "alice", HasUsername: true, HasPassword: true, CertCommonName: "dev-7"}
	tests := []struct {
		name       string
		change     change
		claims     string
		req        func(*Request)
		want       RefuseReason
		wantExpiry time.Time
	}{
		{name: "no rules", claims: `{}`},
		{name: "sub is the client id", change: verifyClaims(map[string]string{"sub": "${clientid}"}), claims: `{"sub":"c1"}`},
		{name: "sub is another client id", change: verifyClaims(map[string]string{"sub": "${clientid}"}), claims: `{"sub":"c2"}`, want: ErrClaimMismatch},
		{name: "sub missing", change: verifyClaims(map[string]string{"sub": "${clientid}"}), claims: `{}`, want: ErrClaimMismatch},
		{name: "empty client id binds to nothing", change: verifyClaims(map[string]string{"sub": "${clientid}"}), claims: `{"sub":""}`,
			req: func(r *Request) { r.ClientID = "" }, want: ErrClaimMismatch},
		{name: "username placeholder", change: verifyClaims(map[string]string{"name": "${username}"}), claims: `{"name":"alice"}`},
		{name: "username placeholder without the username flag", change: verifyClaims(map[string]string{"name": "${username}"}), claims: `{"name":"alice"}`,
			req: func(r *Request) { r.HasUsername = false }, want: ErrClaimMismatch},
		{name: "placeholder inside text", change: verifyClaims(map[string]string{"topic": "devices/${clientid}/${username}"}), claims: `{"topic":"devices/c1/alice"}`},
		{name: "placeholder inside text, mismatch", change: verifyClaims(map[string]string{"topic": "devices/${clientid}/${username}"}), claims: `{"topic":"devices/c1/bob"}`, want: ErrClaimMismatch},
		{name: "certificate CN", change: verifyClaims(map[string]string{"device": "${cert_common_name}"}), claims: `{"device":"dev-7"}`},
		{name: "certificate subject absent", change: verifyClaims(map[string]string{"device": "${cert_subject}"}), claims: `{"device":""}`, want: ErrClaimMismatch},
		{name: "literal with a lone dollar", change: verifyClaims(map[string]string{"price": "$5"}), claims: `{"price":"$5"}`},
		{name: "array contains", change: verifyClaims(map[string]string{"groups": "ops"}), claims: `{"groups":["dev","ops"]}`},
		{name: "array lacks", change: verifyClaims(map[string]string{"groups": "ops"}), claims: `{"groups":["dev"]}`, want: ErrClaimMismatch},
		{name: "nested array does not count", change: verifyClaims(map[string]string{"groups": "ops"}), claims: `{"groups":[["ops"]]}`, want: ErrClaimMismatch},
		{name: "number as written", change: verifyClaims(map[string]string{"level": "3"}), claims: `{"level":3}`},
		{name: "number written otherwise", change: verifyClaims(map[string]string{"level": "3"}), claims: `{"level":3.0}`, want: ErrClaimMismatch},
		{name: "boolean", change: verifyClaims(map[string]string{"admin": "true"}), claims: `{"admin":true}`},
		{name: "object matches nothing", change: verifyClaims(map[string]string{"acl": "{}"}), claims: `{"acl":{}}`, want: ErrClaimMismatch},
		{name: "issuer", change: func(a *configs.Authenticator) { a.Issuer = "https://idp" }, claims: `{"iss":"https://idp"}`},
		{name: "issuer mismatch", change: func(a *configs.Authenticator) { a.Issuer = "https://idp" }, claims: `{"iss":"https://evil"}`, want: ErrClaimMismatch},
		{name: "issuer missing", change: func(a *configs.Authenticator) { a.Issuer = "https://idp" }, claims: `{}`, want: ErrClaimMismatch},
		{name: "iss not a string", claims: `{"iss":1}`, want: ErrTokenMalformed},
		{name: "sub not a string", claims: `{"sub":["c1"]}`, want: ErrTokenMalformed},
		{name: "audience string", change: func(a *configs.Authenticator) { a.Audience = "mqtt" }, claims: `{"aud":"mqtt"}`},
		{name: "audience in array", change: func(a *configs.Authenticator) { a.Audience = "mqtt" }, claims: `{"aud":["web","mqtt"]}`},
		{name: "audience not in array", change: func(a *configs.Authenticator) { a.Audience = "mqtt" }, claims: `{"aud":["web"]}`, want: ErrClaimMismatch},
		{name: "audience missing", change: func(a *configs.Authenticator) { a.Audience = "mqtt" }, claims: `{}`, want: ErrClaimMismatch},
		{name: "aud of numbers", claims: `{"aud":[1]}`, want: ErrTokenMalformed},
		{name: "required exp present", change: func(a *configs.Authenticator) { a.RequiredClaims = []string{"exp"} },
			claims: fmt.Sprintf(`{"exp":%d}`, exp), wantExpiry: time.Unix(exp, 0)},
		{name: "required exp missing", change: func(a *configs.Authenticator) { a.RequiredClaims = []string{"exp"} }, claims: `{"sub":"c1"}`, want: ErrClaimMismatch},
		{name: "required jti missing", change: func(a *configs.Authenticator) { a.RequiredClaims = []string{"jti"} }, claims: `{}`, want: ErrClaimMismatch},
		{name: "exp within leeway", change: func(a *configs.Authenticator) { a.Leeway = configs.Duration(2 * time.Second) },
			claims: fmt.Sprintf(`{"exp":%d}`, testNow.Unix()-1), wantExpiry: time.Unix(testNow.Unix()-1, 0)},
		{name: "exp beyond leeway", change: func(a *configs.Authenticator) { a.Leeway = configs.Duration(2 * time.Second) },
			claims: fmt.Sprintf(`{"exp":%d}`, testNow.Unix()-3), want: ErrTokenExpired},
		{name: "iat within leeway", change: func(a *configs.Authenticator) { a.Leeway = configs.Duration(2 * time.Second) },
			claims: fmt.Sprintf(`{"iat":%d}`, testNow.Unix()+1)},
		{name: "exp as a fraction", claims: fmt.Sprintf(`{"exp":%d.5}`, exp), wantExpiry: time.Unix(exp, 5e8)},
		{name: "exp with an exponent", claims: `{"exp":1.8e9}`, wantExpiry: time.Unix(1_800_000_000, 0)},
		{name: "exp zero", claims: `{"exp":0}`, want: ErrTokenExpired},
		{name: "exp hugely negative", claims: `{"exp":-1e400}`, want: ErrTokenExpired},
		{name: "exp beyond int64", claims: `{"exp":99999999999999999999}`, wantExpiry: time.Unix(maxNumericDateSeconds, 0)},
		{name: "exp a boolean", claims: `{"exp":true}`, want: ErrTokenMalformed},
		{name: "nbf an object", claims: `{"nbf":{}}`, want: ErrTokenMalformed},
		{name: "malformed wins over mismatch", change: verifyClaims(map[string]string{"sub": "${clientid}"}), claims: `{"sub":"c2","exp":"soon"}`, want: ErrTokenMalformed},
		{name: "expiry wins over mismatch", change: verifyClaims(map[string]string{"sub": "${clientid}"}), claims: fmt.Sprintf(`{"sub":"c2","exp":%d}`, testNow.Unix()-1), want: ErrTokenExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := hmacAuthenticator("secret")
			if tt.change != nil {
				tt.change(&cfg)
			}
			req := request
			if tt.req != nil {
				tt.req(&req)
			}
			req.Password = []byte(signToken(t, jwa.HS256, []byte("secret"), headerFor(jwa.HS256), tt.claims))
			id, err := newTestChain(t, cfg).Verify(t.Context(), req)
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("reason = %q (%v), want %q", got, err, tt.want)
			}
			if err == nil && !id.Expiry.Equal(tt.wantExpiry) {
				t.Errorf("expiry = %s, want %s", id.Expiry, tt.wantExpiry)
			}
		})
	}
}

func TestChain(t *testing.T) {
	const secret = "secret"
	token := signToken(t, jwa.HS256, []byte(secret), headerFor(jwa.HS256), validClaims)
	forged := signToken(t, jwa.HS256, []byte("forged"), headerFor(jwa.HS256), validClaims)
	auth := func(name, from, onMissing string) configs.Authenticator {
		a := hmacAuthenticator(secret)
		a.Name, a.From, a.OnMissingJWT = name, from, onMissing
		return a
	}
	cert := configs.Authenticator{Name: "devices", Mechanism: configs.MechanismCertificate}
	type step struct {
		authenticator, outcome string
		reason                 RefuseReason
	}
	tests := []struct {
		name      string
		auths     []configs.Authenticator
		req       Request
		want      RefuseReason
		wantBy    string // authenticator in the identity or the refusal
		wantSteps []step
	}{
		{
			name:      "password accepted",
			auths:     []configs.Authenticator{auth("pw", "", "")},
			req:       passwordRequest(token),
			wantBy:    "pw",
			wantSteps: []step{{"pw", OutcomeAccept, ""}},
		},
		{
			name:      "missing, deny",
			auths:     []configs.Authenticator{auth("pw", "password", "deny"), auth("user", "username", "")},
			req:       Request{ClientID: "c1", Username: token, HasUsername: true},
			want:      ErrTokenMissing,
			wantBy:    "pw",
			wantSteps: []step{{"pw", OutcomeRefuse, ErrTokenMissing}},
		},
		{
			name:      "missing, ignore, next accepts from username",
			auths:     []configs.Authenticator{auth("pw", "password", "ignore"), auth("user", "username", "")},
			req:       Request{ClientID: "c1", Username: token, HasUsername: true},
			wantBy:    "user",
			wantSteps: []step{{"pw", OutcomePass, ErrTokenMissing}, {"user", OutcomeAccept, ""}},
		},
		{
			name:      "empty password with the flag counts as missing",
			auths:     []configs.Authenticator{auth("pw", "password", "ignore"), auth("user", "username", "")},
			req:       Request{ClientID: "c1", Username: token, HasUsername: true, HasPassword: true, Password: []byte{}},
			wantBy:    "user",
			wantSteps: []step{{"pw", OutcomePass, ErrTokenMissing}, {"user", OutcomeAccept, ""}},
		},
		{
			name:      "a refusal stops the chain",
			auths:     []configs.Authenticator{auth("pw", "password", "ignore"), auth("user", "username", "")},
			req:       Request{ClientID: "c1", Username: token, HasUsername: true, Password: []byte(forged), HasPassword: true},
			want:      ErrBadSignature,
			wantBy:    "pw",
			wantSteps: []step{{"pw", OutcomeRefuse, ErrBadSignature}},
		},
		{
			name:      "every authenticator passes",
			auths:     []configs.Authenticator{auth("pw", "password", "ignore"), auth("user", "username", "ignore")},
			req:       Request{ClientID: "c1"},
			want:      ErrNoAuthenticatorAccepted,
			wantSteps: []step{{"pw", OutcomePass, ErrTokenMissing}, {"user", OutcomePass, ErrTokenMissing}},
		},
		{
			name:      "certificate accepted, token not read",
			auths:     []configs.Authenticator{cert, auth("pw", "", "")},
			req:       Request{ClientID: "c1", Password: []byte(forged), HasPassword: true, CertCommonName: "device-1", CertVerified: true},
			wantBy:    "devices",
			wantSteps: []step{{"devices", OutcomeAccept, ""}},
		},
		{
			name:      "no certificate, token accepted",
			auths:     []configs.Authenticator{cert, auth("pw", "", "")},
			req:       passwordRequest(token),
			wantBy:    "pw",
			wantSteps: []step{{"devices", OutcomePass, ""}, {"pw", OutcomeAccept, ""}},
		},
		{
			name:      "certificate names without verification are no certificate",
			auths:     []configs.Authenticator{cert, auth("pw", "", "")},
			req:       Request{ClientID: "c1", CertCommonName: "device-1", CertSubject: "CN=device-1"},
			want:      ErrTokenMissing,
			wantBy:    "pw",
			wantSteps: []step{{"devices", OutcomePass, ""}, {"pw", OutcomeRefuse, ErrTokenMissing}},
		},
		{
			name:      "token missing, certificate after it accepts",
			auths:     []configs.Authenticator{auth("pw", "", "ignore"), cert},
			req:       Request{ClientID: "c1", CertCommonName: "device-1", CertVerified: true},
			wantBy:    "devices",
			wantSteps: []step{{"pw", OutcomePass, ErrTokenMissing}, {"devices", OutcomeAccept, ""}},
		},
		{
			name:      "certificate alone, none given",
			auths:     []configs.Authenticator{cert},
			req:       passwordRequest(token),
			want:      ErrNoAuthenticatorAccepted,
			wantSteps: []step{{"devices", OutcomePass, ""}},
		},
		{
			name:      "no authenticator",
			req:       passwordRequest(token),
			want:      ErrNoAuthenticatorAccepted,
			wantSteps: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain := newTestChain(t, tt.auths...)
			id, err := chain.Verify(t.Context(), tt.req)
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("reason = %q (%v), want %q", got, err, tt.want)
			}
			by := id.Authenticator
			if refusal, ok := errors.AsType[*RefuseError](err); ok {
				by = refusal.Authenticator
			}
			if by != tt.wantBy {
				t.Errorf("decided by %q, want %q", by, tt.wantBy)
			}
			if by == cert.Name && err == nil && (id.Subject != tt.req.CertCommonName || id.Claims != nil || !id.Expiry.IsZero()) {
				t.Errorf("certificate identity = %+v, want the common name %q as subject, no claims, no expiry", id, tt.req.CertCommonName)
			}

			var steps []step
			for _, s := range chain.Explain(t.Context(), tt.req) {
				steps = append(steps, step{s.Authenticator, s.Outcome, ReasonOf(s.Err)})
				if (s.Outcome == OutcomeAccept) != (s.Identity.Authenticator != "") {
					t.Errorf("step %+v: identity and outcome disagree", s)
				}
			}
			if fmt.Sprint(steps) != fmt.Sprint(tt.wantSteps) {
				t.Errorf("Explain = %v, want %v", steps, tt.wantSteps)
			}
		})
	}
	t.Run("zero chain", func(t *testing.T) {
		var chain Chain
		if _, err := chain.Verify(t.Context(), passwordRequest(token)); ReasonOf(err) != ErrNoAuthenticatorAccepted {
			t.Errorf("zero Chain: %v, want %s", err, ErrNoAuthenticatorAccepted)
		}
		chain.Close()
	})
}

func TestRefuseError(t *testing.T) {
	detail := errors.New("exp 2023 is before 2024")
	refusal := &RefuseError{Reason: ErrTokenExpired, Authenticator: "jwt", Err: detail}
	wrapped := fmt.Errorf("client c1: %w", refusal)
	tests := []struct {
		name       string
		err        error
		wantReason RefuseReason
		wantText   string
		is         []error
		isNot      []error
	}{
		{"full", wrapped, ErrTokenExpired, "client c1: jwt: token_expired: exp 2023 is before 2024",
			[]error{ErrTokenExpired, detail}, []error{ErrBadSignature}},
		{"without detail", &RefuseError{Reason: ErrNoAuthenticatorAccepted}, ErrNoAuthenticatorAccepted, "not_authorized",
			[]error{ErrNoAuthenticatorAccepted}, []error{ErrTokenMissing}},
		{"reason wins over a wrapped reason", &RefuseError{Reason: ErrNoKey, Err: fmt.Errorf("%w: kid", ErrKeysUnavailable)},
			ErrNoKey, "no_key: keys_unavailable: kid", []error{ErrNoKey, ErrKeysUnavailable}, nil},
		{"detail that wraps the reason says it once", &RefuseError{Reason: ErrBadSignature, Authenticator: "jwt", Err: fmt.Errorf("%w: HMAC does not match", ErrBadSignature)},
			ErrBadSignature, "jwt: bad_signature: HMAC does not match", []error{ErrBadSignature}, nil},
		{"detail that is the reason", &RefuseError{Reason: ErrNoKey, Err: ErrNoKey}, ErrNoKey, "no_key", []error{ErrNoKey}, nil},
		{"bare reason", fmt.Errorf("x: %w", ErrBadSignature), ErrBadSignature, "x: bad_signature", []error{ErrBadSignature}, nil},
		{"other error", errors.New("boom"), "", "boom", nil, []error{ErrBadSignature}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReasonOf(tt.err); got != tt.wantReason {
				t.Errorf("ReasonOf = %q, want %q", got, tt.wantReason)
			}
			if got := tt.err.Error(); got != tt.wantText {
				t.Errorf("Error() = %q, want %q", got, tt.wantText)
			}
			for _, target := range tt.is {
				if !errors.Is(tt.err, target) {
					t.Errorf("errors.Is(err, %v) = false", target)
				}
			}
			for _, target := range tt.isNot {
				if errors.Is(tt.err, target) {
					t.Errorf("errors.Is(err, %v) = true", target)
				}
			}
		})
	}
	if ReasonOf(nil) != "" {
		t.Errorf("ReasonOf(nil) = %q, want empty", ReasonOf(nil))
	}
}

// TestJWKSChain runs tokens through a chain whose keys come from a JWKS
// endpoint: the chain's part of JWKS (allowlist, kid, reasons), not the
// provider's (tested with it).
func TestJWKSChain(t *testing.T) {
	verifyNoJWKSLeaks(t)
	keys := testKeys()
	otherP256 := newJWKSTestECKey(t, elliptic.P256())
	server := newJWKSTestServer(t, false)
	server.serveKeys(t, jwksTestKey(t, keys.p256.Public(), "k1", nil))
	chain := newTestChain(t, configs.Authenticator{Mechanism: "jwt", UseJWKS: true, Endpoint: server.URL})

	tests := []struct {
		name  string
		token string
		want  RefuseReason
	}{
		{"kid k1", signToken(t, jwa.ES256, keys.p256, `{"alg":"ES256","kid":"k1"}`, validClaims), ""},
		{"no kid, one key", signToken(t, jwa.ES256, keys.p256, `{"alg":"ES256"}`, validClaims), ""},
		{"unknown kid", signToken(t, jwa.ES256, keys.p256, `{"alg":"ES256","kid":"k2"}`, validClaims), ErrNoKey},
		{"kid k1, another key", signToken(t, jwa.ES256, otherP256, `{"alg":"ES256","kid":"k1"}`, validClaims), ErrBadSignature},
		{"HS256 against JWKS", signToken(t, jwa.HS256, []byte("secret"), `{"alg":"HS256","kid":"k1"}`, validClaims), ErrAlgorithmNotAllowed},
		{"RS256 for an EC kid", signToken(t, jwa.RS256, keys.rsa, `{"alg":"RS256","kid":"k1"}`, validClaims), ErrNoKey},
		{"alg none", b64([]byte(`{"alg":"none","kid":"k1"}`)) + "." + b64([]byte(validClaims)) + ".", ErrAlgorithmNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := chain.Verify(t.Context(), passwordRequest(tt.token))
			if got := ReasonOf(err); got != tt.want {
				t.Errorf("reason = %q (%v), want %q", got, err, tt.want)
			}
		})
	}
}

// TestTokenMissingHint: a client refused for want of a token in the field
// the authenticator reads gets a hint when the other field holds a token.
func TestTokenMissingHint(t *testing.T) {
	fromUsername := hmacAuthenticator("secret")
	fromUsername.From = "username"
	token := signToken(t, jwa.HS256, []byte("secret"), headerFor(jwa.HS256), validClaims)
	noAlg := b64([]byte(`{"typ":"JWT"}`)) + "." + b64([]byte(`{}`)) + ".c2ln"
	tests := []struct {
		name     string
		auth     configs.Authenticator
		req      Request
		wantHint string
	}{
		{"token as the user name", hmacAuthenticator("secret"),
			Request{Username: token, HasUsername: true},
			"the user name looks like a JWT; this authenticator reads from: password"},
		{"token as the user name, empty password", hmacAuthenticator("secret"),
			Request{Username: token, HasUsername: true, HasPassword: true},
			"the user name looks like a JWT; this authenticator reads from: password"},
		{"token as the password, read from the user name", fromUsername,
			Request{Password: []byte(token), HasPassword: true},
			"the password looks like a JWT; this authenticator reads from: username"},
		{"a plain user name", hmacAuthenticator("secret"), Request{Username: "alice", HasUsername: true}, ""},
		{"three segments, no JSON header", hmacAuthenticator("secret"), Request{Username: "a.b.c", HasUsername: true}, ""},
		{"a JSON header without alg", hmacAuthenticator("secret"), Request{Username: noAlg, HasUsername: true}, ""},
		{"no user name", hmacAuthenticator("secret"), Request{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newTestChain(t, tt.auth).Verify(t.Context(), tt.req)
			if ReasonOf(err) != ErrTokenMissing {
				t.Fatalf("Verify = %v, want token_missing", err)
			}
			if got := HintOf(err); got != tt.wantHint {
				t.Errorf("hint %q, want %q", got, tt.wantHint)
			}
		})
	}
}

// TestEveryPassedHint: when every authenticator passes, the chain's
// not_authorized refusal carries the first hint of the steps that passed,
// so that the proxy's log line says where the token went, as verify does.
func TestEveryPassedHint(t *testing.T) {
	token := signToken(t, jwa.HS256, []byte("secret"), headerFor(jwa.HS256), validClaims)
	const hint = "the user name looks like a JWT; this authenticator reads from: password"
	devices := hmacAuthenticator("secret")
	devices.Name, devices.OnMissingJWT = "devices", "ignore"
	cert := configs.Authenticator{Name: "certs", Mechanism: configs.MechanismCertificate}
	tests := []struct {
		name     string
		auths    []configs.Authenticator
		req      Request
		wantHint string
	}{
		{"token as the user name", []configs.Authenticator{devices}, Request{Username: token, HasUsername: true}, hint},
		{"after a certificate authenticator", []configs.Authenticator{cert, devices}, Request{Username: token, HasUsername: true}, hint},
		{"a plain user name", []configs.Authenticator{cert, devices}, Request{Username: "alice", HasUsername: true}, ""},
		{"no authenticator", nil, Request{Username: token, HasUsername: true}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newTestChain(t, tt.auths...).Verify(t.Context(), tt.req)
			if ReasonOf(err) != ErrNoAuthenticatorAccepted {
				t.Fatalf("Verify = %v, want not_authorized", err)
			}
			if got := HintOf(err); got != tt.wantHint {
				t.Errorf("hint %q, want %q", got, tt.wantHint)
			}
		})
	}
}
