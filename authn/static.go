package authn

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"os"
	"strings"
	"sync"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// minRSABits is the smallest RSA key public_key or a JWKS endpoint may
// give. Smaller keys are factorable with modest means; for public_key a
// config error says so at start instead of every token failing later.
const minRSABits = 2048

var (
	hmacAlgorithms = []jwa.SignatureAlgorithm{jwa.HS256, jwa.HS384, jwa.HS512}
	// publicKeyAlgorithms is what a JWKS endpoint's keys may verify at
	// most; each key narrows it to what fits its type.
	publicKeyAlgorithms = []jwa.SignatureAlgorithm{
		jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512,
		jwa.ES256, jwa.ES384, jwa.ES512, jwa.EdDSA,
	}
)

// staticKeys serves the one key of secret or public_key. A token's kid is
// ignored: there is a single key to try, as in EMQX, and a kid naming
// another key does not make a signature that verifies with this one any
// less valid.
type staticKeys struct {
	byAlg map[jwa.SignatureAlgorithm][]verifyKey // one entry per allowed alg
}

// newStaticKeys serves key for each of algs; an HMAC secret ([]byte)
// becomes one hmacKey per algorithm.
func newStaticKeys(key any, algs []jwa.SignatureAlgorithm) *staticKeys {
	s := &staticKeys{byAlg: make(map[jwa.SignatureAlgorithm][]verifyKey, len(algs))}
	for _, alg := range algs {
		k := key
		if secret, ok := key.([]byte); ok {
			k = newHMACKey(hashFor(alg), secret)
		}
		s.byAlg[alg] = []verifyKey{{alg: alg, key: k}}
	}
	return s
}

// hmacKey is an HMAC secret for one hash, with keyed MACs kept for reuse:
// keying one costs two hash blocks and a few allocations, which every new
// token would pay again (measured in docs/performance.md).
type hmacKey struct {
	macs sync.Pool // of hash.Hash, keyed and reset
}

func newHMACKey(h crypto.Hash, secret []byte) *hmacKey {
	secret = bytes.Clone(secret)
	k := &hmacKey{}
	k.macs.New = func() any { return hmac.New(h.New, secret) }
	return k
}

// verify reports whether signature is the MAC of data, in constant time.
func (k *hmacKey) verify(data, signature []byte) bool {
	mac := k.macs.Get().(hash.Hash)
	mac.Write(data)
	var sum [sha512.Size]byte
	ok := hmac.Equal(mac.Sum(sum[:0]), signature)
	mac.Reset()
	k.macs.Put(mac)
	return ok
}

func (s *staticKeys) keysFor(_ context.Context, _ string, alg jwa.SignatureAlgorithm) ([]verifyKey, error) {
	keys, ok := s.byAlg[alg]
	if !ok {
		return nil, fmt.Errorf("%w: %s does not fit the configured key", ErrAlgorithmNotAllowed, alg)
	}
	return keys, nil
}

func (*staticKeys) close() {}

// hmacSecret returns the HMAC key of cfg: secret, base64-decoded first when
// secret_base64_encoded says so.
func hmacSecret(cfg configs.Authenticator) ([]byte, error) {
	if cfg.Secret == "" {
		return nil, errors.New("secret: required with algorithm: hmac-based")
	}
	if !cfg.SecretBase64Encoded {
		return []byte(cfg.Secret), nil
	}
	secret, err := DecodeSecret(cfg.Secret)
	if err != nil {
		return nil, fmt.Errorf("secret: not valid base64: %w", err)
	}
	if len(secret) == 0 {
		return nil, errors.New("secret: decodes to no bytes")
	}
	return secret, nil
}

// DecodeSecret decodes a base64 HMAC secret as secret_base64_encoded
// does. It accepts the standard and the URL-safe alphabet, padded or not:
// secrets are pasted from many tools, and the alphabets only differ in two
// characters that cannot be confused.
func DecodeSecret(s string) ([]byte, error) {
	unpadded := strings.TrimRight(s, "=")
	secret, err := base64.RawStdEncoding.DecodeString(unpadded)
	if err == nil {
		return secret, nil
	}
	if secret, urlErr := base64.RawURLEncoding.DecodeString(unpadded); urlErr == nil {
		return secret, nil
	}
	return nil, err
}

// loadPublicKey returns the key of cfg's public_key, which is PEM text or
// else the path of a PEM file, together with the algorithms it may verify.
func loadPublicKey(cfg configs.Authenticator) (any, []jwa.SignatureAlgorithm, error) {
	pemBytes := []byte(cfg.PublicKey)
	if !cfg.PublicKeyIsPEM() {
		var err error
		if pemBytes, err = os.ReadFile(cfg.PublicKey); err != nil {
			return nil, nil, fmt.Errorf("public_key: not PEM text, and not a readable file: %w", err)
		}
	}
	key, err := parsePublicKeyPEM(pemBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("public_key: %w", err)
	}
	algs, err := signatureAlgorithmsFor(key)
	if err != nil {
		return nil, nil, fmt.Errorf("public_key: %w", err)
	}
	return key, algs, nil
}

// parsePublicKeyPEM parses the one PEM block of pemBytes: a PKIX public
// key, a PKCS #1 RSA public key or a certificate. More than one block is
// refused rather than guessed at.
func parsePublicKeyPEM(pemBytes []byte) (any, error) {
	block, rest := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, errors.New("more than one PEM block; give exactly one key or certificate")
	}
	switch block.Type {
	case "PUBLIC KEY":
		key, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PUBLIC KEY block: %w", err)
		}
		return key, nil
	case "RSA PUBLIC KEY":
		key, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("RSA PUBLIC KEY block: %w", err)
		}
		return key, nil
	case "CERTIFICATE":
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CERTIFICATE block: %w", err)
		}
		return cert.PublicKey, nil
	}
	return nil, fmt.Errorf("PEM block is %q; want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE", block.Type)
}
