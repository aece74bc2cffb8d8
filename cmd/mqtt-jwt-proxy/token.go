package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
)

// tokenAlgorithms are the algorithms the token command signs with: the
// ones the proxy verifies.
var tokenAlgorithms = []jwa.SignatureAlgorithm{
	jwa.HS256, jwa.HS384, jwa.HS512,
	jwa.RS256, jwa.RS384, jwa.RS512,
	jwa.PS256, jwa.PS384, jwa.PS512,
	jwa.ES256, jwa.ES384, jwa.ES512,
	jwa.EdDSA,
}

// tokenRequest is what the token command's flags ask for. Its zero value
// is not usable: Alg and a matching Key are required.
type tokenRequest struct {
	Alg jwa.SignatureAlgorithm
	// Key is a []byte secret for HS*, else a private key that
	// checkSigningKey accepts for Alg.
	Key any
	// KeyID, when set, is the kid header.
	KeyID string
	// Subject, Issuer and Audience set sub, iss and aud when not empty.
	Subject, Issuer, Audience string
	// TTL sets exp to the signing time plus TTL; zero means no exp.
	TTL time.Duration
	// NotBefore, when not nil, sets nbf to the signing time plus *NotBefore.
	NotBefore *time.Duration
	// Claims are added last, so they replace the claims set above.
	Claims map[string]any
}

func tokenCommand(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token", "[-alg HS256] (-secret S [-secret-base64] | -key FILE) [flags]",
		"Prints a signed JWT for testing.", stderr)
	algName := fs.String("alg", "HS256", "signing algorithm: "+algorithmList())
	secret := fs.String("secret", "", "HMAC secret (HS256/384/512)")
	secretBase64 := fs.Bool("secret-base64", false, "decode -secret as base64 first")
	keyPath := fs.String("key", "", "PEM private key `FILE` (PKCS8, PKCS1 RSA or SEC1 EC) for the other algorithms")
	req := tokenRequest{Claims: map[string]any{}}
	fs.StringVar(&req.Subject, "sub", "", "sub claim")
	fs.StringVar(&req.Issuer, "iss", "", "iss claim")
	fs.StringVar(&req.Audience, "aud", "", "aud claim")
	fs.DurationVar(&req.TTL, "ttl", time.Hour, "lifetime: exp is now plus this; 0 means no exp")
	notBefore := fs.Duration("nbf", 0, "set nbf to now plus this offset (negative for the past)")
	fs.Var(claimFlag(req.Claims), "claim", "extra claim `k=v`, repeatable; v is JSON when it parses as JSON, else a string")
	fs.StringVar(&req.KeyID, "kid", "", "kid header")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if flagWasSet(fs, "nbf") {
		req.NotBefore = notBefore
	}
	if req.TTL < 0 {
		return fmt.Errorf("-ttl %s is negative; use -claim exp=SECONDS for an expired token", req.TTL)
	}

	alg, err := parseAlgorithm(*algName)
	if err != nil {
		return err
	}
	req.Alg = alg
	if req.Key, err = signingKey(alg, *secret, *secretBase64, *keyPath); err != nil {
		return err
	}
	token, err := mintToken(req, time.Now())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, token)
	return err
}

// mintToken signs the claims req describes, timed from now, as a compact
// JWS with typ JWT.
func mintToken(req tokenRequest, now time.Time) (string, error) {
	if err := checkSigningKey(req.Alg, req.Key); err != nil {
		return "", err
	}
	claims := map[string]any{"iat": now.Unix()}
	if req.TTL > 0 {
		claims["exp"] = now.Add(req.TTL).Unix()
	}
	if req.NotBefore != nil {
		claims["nbf"] = now.Add(*req.NotBefore).Unix()
	}
	for name, value := range map[string]string{"sub": req.Subject, "iss": req.Issuer, "aud": req.Audience} {
		if value != "" {
			claims[name] = value
		}
	}
	for name, value := range req.Claims {
		claims[name] = value
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encode claims: %w", err)
	}

	headers := jws.NewHeaders()
	if err := headers.Set(jws.TypeKey, "JWT"); err != nil {
		return "", fmt.Errorf("set typ header: %w", err)
	}
	if req.KeyID != "" {
		if err := headers.Set(jws.KeyIDKey, req.KeyID); err != nil {
			return "", fmt.Errorf("set kid header: %w", err)
		}
	}
	signed, err := jws.Sign(payload, jws.WithKey(req.Alg, req.Key, jws.WithProtectedHeaders(headers)))
	if err != nil {
		return "", fmt.Errorf("sign with %s: %w", req.Alg, err)
	}
	return string(signed), nil
}

// parseAlgorithm finds name among tokenAlgorithms, ignoring case.
func parseAlgorithm(name string) (jwa.SignatureAlgorithm, error) {
	for _, alg := range tokenAlgorithms {
		if strings.EqualFold(name, alg.String()) {
			return alg, nil
		}
	}
	return "", fmt.Errorf("-alg %q is not supported; use one of %s", name, algorithmList())
}

func algorithmList() string {
	names := make([]string, len(tokenAlgorithms))
	for i, alg := range tokenAlgorithms {
		names[i] = alg.String()
	}
	return strings.Join(names, ", ")
}

// ecdsaCurves is the one curve each ES algorithm signs with (RFC 7518 §3.4).
var ecdsaCurves = map[jwa.SignatureAlgorithm]elliptic.Curve{
	jwa.ES256: elliptic.P256(),
	jwa.ES384: elliptic.P384(),
	jwa.ES512: elliptic.P521(),
}

func isHMAC(alg jwa.SignatureAlgorithm) bool {
	return alg == jwa.HS256 || alg == jwa.HS384 || alg == jwa.HS512
}

// signingKey reads the key the flags name: the secret for HS*, the PEM file
// for the rest. Giving the wrong one of the two is an error, not ignored.
func signingKey(alg jwa.SignatureAlgorithm, secret string, secretBase64 bool, keyPath string) (any, error) {
	if isHMAC(alg) {
		if keyPath != "" {
			return nil, fmt.Errorf("-alg %s signs with -secret, not -key", alg)
		}
		if secret == "" {
			return nil, fmt.Errorf("-alg %s needs -secret", alg)
		}
		if !secretBase64 {
			return []byte(secret), nil
		}
		decoded, err := authn.DecodeSecret(secret)
		if err != nil {
			return nil, fmt.Errorf("-secret: not valid base64: %w", err)
		}
		return decoded, nil
	}
	if secret != "" || secretBase64 {
		return nil, fmt.Errorf("-alg %s signs with a private key (-key FILE), not -secret", alg)
	}
	if keyPath == "" {
		return nil, fmt.Errorf("-alg %s needs -key FILE", alg)
	}
	data, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("-key: %w", err)
	}
	key, err := parsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("-key %s: %w", keyPath, err)
	}
	return key, nil
}

// parsePrivateKeyPEM returns the first private key in data: PKCS8 ("PRIVATE
// KEY"), PKCS1 ("RSA PRIVATE KEY") or SEC1 ("EC PRIVATE KEY"). Other blocks,
// such as the "EC PARAMETERS" openssl writes first, are skipped.
func parsePrivateKeyPEM(data []byte) (any, error) {
	for {
		block, rest := pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key block (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")
		}
		data = rest
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the private key is encrypted; decrypt it first (openssl pkey -in FILE)")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s block: %w", block.Type, err)
		}
		return key, nil
	}
}

// checkSigningKey says, in the flags' terms, why key cannot sign alg.
func checkSigningKey(alg jwa.SignatureAlgorithm, key any) error {
	have := keyKind(key)
	var want string
	switch alg {
	case jwa.HS256, jwa.HS384, jwa.HS512:
		if secret, ok := key.([]byte); ok && len(secret) > 0 {
			return nil
		}
		want = "a non-empty secret"
	case jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512:
		if _, ok := key.(*rsa.PrivateKey); ok {
			return nil
		}
		want = "an RSA private key"
	case jwa.ES256, jwa.ES384, jwa.ES512:
		curve := ecdsaCurves[alg]
		if k, ok := key.(*ecdsa.PrivateKey); ok && k.Curve == curve {
			return nil
		}
		want = "an EC " + curve.Params().Name + " private key"
	case jwa.EdDSA:
		if _, ok := key.(ed25519.PrivateKey); ok {
			return nil
		}
		want = "an Ed25519 private key"
	default:
		return fmt.Errorf("-alg %s is not supported", alg)
	}
	return fmt.Errorf("-alg %s needs %s, but the key is %s", alg, want, have)
}

// keyKind names a key for error messages.
func keyKind(key any) string {
	switch k := key.(type) {
	case []byte:
		return "a secret"
	case *rsa.PrivateKey:
		return fmt.Sprintf("an RSA %d-bit private key", k.N.BitLen())
	case *ecdsa.PrivateKey:
		return "an EC " + k.Curve.Params().Name + " private key"
	case ed25519.PrivateKey:
		return "an Ed25519 private key"
	default:
		return fmt.Sprintf("of type %T", key)
	}
}

// claimFlag collects repeated -claim k=v flags into the map.
type claimFlag map[string]any

func (c claimFlag) String() string { return "" }

// Set parses one k=v. v becomes JSON (number, array, true, "quoted") when it
// is valid JSON and a string otherwise, so -claim role=admin needs no quotes.
func (c claimFlag) Set(kv string) error {
	name, value, ok := strings.Cut(kv, "=")
	if !ok || name == "" {
		return fmt.Errorf("%q is not k=v", kv)
	}
	if _, dup := c[name]; dup {
		return fmt.Errorf("claim %q given twice", name)
	}
	if json.Valid([]byte(value)) {
		c[name] = json.RawMessage(value)
	} else {
		c[name] = value
	}
	return nil
}

// flagWasSet reports whether name was given on the command line, which a
// default value alone cannot tell.
func flagWasSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}
