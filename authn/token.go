package authn

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/lestrrat-go/jwx/v2/jwa"
)

// maxTokenSize is the longest token read, in bytes: the most an MQTT
// string or binary field holds. It bounds the base64 and JSON work one
// CONNECT can cause.
const maxTokenSize = 65535

// compactJWS is a token split into its parts, before its signature is
// checked.
type compactJWS struct {
	signingInput []byte // "header.payload" as sent, what the signature covers
	alg          jwa.SignatureAlgorithm
	kid          string // empty when the header has none
	payload      []byte // decoded, not yet parsed
	signature    []byte // decoded
}

// parseCompactJWS splits a token in the JWS compact serialization: exactly
// three segments of unpadded base64url, the first a JSON header naming alg.
// Nothing is trimmed or skipped: a token with whitespace, padding or the
// JSON serialization is malformed. A crit header is refused as an
// algorithm not allowed, since no extension is understood here.
func parseCompactJWS(token []byte) (*compactJWS, error) {
	if len(token) > maxTokenSize {
		return nil, fmt.Errorf("%w: %d bytes, over the %d-byte limit", ErrTokenMalformed, len(token), maxTokenSize)
	}
	// The base64 decoder skips CR and LF even in strict mode, so the
	// alphabet is checked here first.
	for i, c := range token {
		if !isBase64URL(c) && c != '.' {
			return nil, fmt.Errorf("%w: byte %d is %q, not base64url or a dot", ErrTokenMalformed, i, c)
		}
	}
	headerB64, rest, _ := bytes.Cut(token, []byte{'.'})
	payloadB64, signatureB64, found := bytes.Cut(rest, []byte{'.'})
	if !found || bytes.IndexByte(signatureB64, '.') >= 0 {
		return nil, fmt.Errorf("%w: %d segments, want 3 (compact serialization)", ErrTokenMalformed, bytes.Count(token, []byte{'.'})+1)
	}
	headerJSON, err := decodeSegment("header", headerB64)
	if err != nil {
		return nil, err
	}
	payload, err := decodeSegment("payload", payloadB64)
	if err != nil {
		return nil, err
	}
	signature, err := decodeSegment("signature", signatureB64)
	if err != nil {
		return nil, err
	}
	jws := &compactJWS{signingInput: token[:len(headerB64)+1+len(payloadB64)], payload: payload, signature: signature}
	if err := jws.readHeader(headerJSON); err != nil {
		return nil, err
	}
	return jws, nil
}

// readHeader takes alg and kid from the header. Other members (typ, cty,
// and the key-locating jwk, jku, x5u, x5c) are ignored: keys come from the
// configuration only.
func (t *compactJWS) readHeader(headerJSON []byte) error {
	// Read member by member rather than into a map: a header is read for
	// every token, refused ones too. Every member is read whole, so the
	// header is as strictly checked as the claims.
	var algOK, kidNotString, crit bool
	err := readJSONObject(headerJSON, func(name string, dec *jsontext.Decoder) error {
		isString := dec.PeekKind() == '"'
		switch {
		case name == "alg" && isString:
			alg, err := readString(dec)
			t.alg, algOK = jwa.SignatureAlgorithm(alg), err == nil
			return err
		case name == "kid" && isString:
			var err error
			t.kid, err = readString(dec)
			return err
		case name == "kid":
			kidNotString = true
		case name == "crit":
			crit = true
		}
		_, err := decodeJSONValue(dec)
		return err
	})
	switch {
	case err != nil:
		return fmt.Errorf("%w: header: %w", ErrTokenMalformed, err)
	case !algOK:
		return fmt.Errorf("%w: header: alg is missing or not a string", ErrTokenMalformed)
	case kidNotString:
		return fmt.Errorf("%w: header: kid is not a string", ErrTokenMalformed)
	case crit:
		return fmt.Errorf("%w: header: crit names extensions this verifier does not implement", ErrAlgorithmNotAllowed)
	}
	return nil
}

// readString reads the string dec is at.
func readString(dec *jsontext.Decoder) (string, error) {
	tok, err := dec.ReadToken()
	if err != nil {
		return "", err
	}
	return tok.String(), nil
}

func isBase64URL(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// decodeSegment decodes one segment. Strict decoding refuses non-zero
// trailing bits, so each token has one spelling and a signature cannot be
// altered without breaking it.
func decodeSegment(name string, segment []byte) ([]byte, error) {
	decoded := make([]byte, base64.RawURLEncoding.DecodedLen(len(segment)))
	n, err := base64.RawURLEncoding.Strict().Decode(decoded, segment)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrTokenMalformed, name, err)
	}
	return decoded[:n], nil
}

// verifyWithAny checks t's signature with each of keys until one verifies,
// and returns that one.
func (t *compactJWS) verifyWithAny(keys []verifyKey, derSignatures bool) (verifyKey, error) {
	if len(keys) == 0 {
		return verifyKey{}, fmt.Errorf("%w: no key for %s", ErrNoKey, t.alg)
	}
	var errs []error
	for _, key := range keys {
		err := t.verifySignature(key, derSignatures)
		if err == nil {
			return key, nil
		}
		errs = append(errs, err)
	}
	err := errs[0]
	if len(errs) > 1 {
		err = errors.Join(errs...)
	}
	return verifyKey{}, fmt.Errorf("%w: %w", ErrBadSignature, err)
}

var errHMACMismatch = errors.New("HMAC does not match")

// verifySignature checks t's signature with key. derSignatures also
// accepts ECDSA signatures in ASN.1 DER, as EMQX 4 produced them.
func (t *compactJWS) verifySignature(key verifyKey, derSignatures bool) error {
	switch key.alg {
	case jwa.HS256, jwa.HS384, jwa.HS512:
		mac, ok := key.key.(*hmacKey)
		if !ok {
			return fmt.Errorf("%s needs a secret, the key is %T", key.alg, key.key)
		}
		if !mac.verify(t.signingInput, t.signature) {
			return errHMACMismatch
		}
		return nil
	case jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512:
		pub, ok := key.key.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("%s needs an RSA key, the key is %T", key.alg, key.key)
		}
		hash := hashFor(key.alg)
		digest := digestOf(hash, t.signingInput)
		if key.alg == jwa.PS256 || key.alg == jwa.PS384 || key.alg == jwa.PS512 {
			// RFC 7518 has the salt as long as the hash; auto also accepts
			// signers that use the longest salt (Go's default), as jwx does.
			return rsa.VerifyPSS(pub, hash, digest, t.signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		}
		return rsa.VerifyPKCS1v15(pub, hash, digest, t.signature)
	case jwa.ES256, jwa.ES384, jwa.ES512:
		pub, ok := key.key.(*ecdsa.PublicKey)
		if !ok {
			return fmt.Errorf("%s needs an ECDSA key, the key is %T", key.alg, key.key)
		}
		return verifyECDSA(pub, digestOf(hashFor(key.alg), t.signingInput), t.signature, derSignatures)
	case jwa.EdDSA:
		pub, ok := key.key.(ed25519.PublicKey)
		if !ok {
			return fmt.Errorf("EdDSA needs an Ed25519 key, the key is %T", key.key)
		}
		if !ed25519.Verify(pub, t.signingInput, t.signature) {
			return errors.New("Ed25519 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("algorithm %s is not implemented", key.alg)
}

// hashFor returns the hash of a SHA-2 based algorithm, by its size suffix.
func hashFor(alg jwa.SignatureAlgorithm) crypto.Hash {
	switch alg {
	case jwa.HS384, jwa.RS384, jwa.PS384, jwa.ES384:
		return crypto.SHA384
	case jwa.HS512, jwa.RS512, jwa.PS512, jwa.ES512:
		return crypto.SHA512
	}
	return crypto.SHA256
}

// digestOf hashes data without the allocations of a hash.Hash.
func digestOf(hash crypto.Hash, data []byte) []byte {
	switch hash {
	case crypto.SHA384:
		sum := sha512.Sum384(data)
		return sum[:]
	case crypto.SHA512:
		sum := sha512.Sum512(data)
		return sum[:]
	}
	sum := sha256.Sum256(data)
	return sum[:]
}

// verifyECDSA checks a JWS ECDSA signature: r||s, each exactly the curve's
// size. With derSignatures an ASN.1 DER signature is also tried, after
// conversion to r||s under the same checks.
func verifyECDSA(pub *ecdsa.PublicKey, digest, signature []byte, derSignatures bool) error {
	size := (pub.Curve.Params().BitSize + 7) / 8
	isRaw := len(signature) == 2*size
	if isRaw && verifyRS(pub, digest, signature, size) {
		return nil
	}
	if derSignatures {
		rs, err := derToRS(pub, signature, size)
		switch {
		case err == nil && verifyRS(pub, digest, rs, size):
			return nil
		case err == nil:
			return errors.New("ECDSA signature (DER) does not verify")
		case !isRaw:
			return err
		}
	}
	if !isRaw {
		return fmt.Errorf("ECDSA signature is %d bytes, want %d (r||s)", len(signature), 2*size)
	}
	return errors.New("ECDSA signature does not verify")
}

// verifyRS verifies r||s; ecdsa.Verify refuses r or s outside [1, N-1].
func verifyRS(pub *ecdsa.PublicKey, digest, rs []byte, size int) bool {
	r := new(big.Int).SetBytes(rs[:size])
	s := new(big.Int).SetBytes(rs[size:])
	return ecdsa.Verify(pub, digest, r, s)
}

// derToRS converts an ASN.1 DER ECDSA signature to r||s. It refuses
// anything but one DER SEQUENCE of two INTEGERs in [1, N-1], so that DER is
// only another spelling of a valid r||s, never a way around its checks.
func derToRS(pub *ecdsa.PublicKey, signature []byte, size int) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(signature, &sig)
	if err != nil {
		return nil, fmt.Errorf("ECDSA signature is neither r||s nor DER: %w", err)
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("DER ECDSA signature has %d trailing bytes", len(rest))
	}
	n := pub.Curve.Params().N
	for _, v := range []*big.Int{sig.R, sig.S} {
		if v.Sign() <= 0 || v.Cmp(n) >= 0 {
			return nil, errors.New("DER ECDSA signature has r or s out of range")
		}
	}
	rs := make([]byte, 2*size)
	sig.R.FillBytes(rs[:size])
	sig.S.FillBytes(rs[size:])
	return rs, nil
}
