package authn

import (
	"crypto"
	"sync"
)

// maxVerifiedTokens bounds what one authenticator remembers: a few
// megabytes at most, with tokens of a kilobyte and their claims.
const maxVerifiedTokens = 2048

// verifiedTokens remembers tokens whose signature held, so that a client
// that connects again with the same token (devices keep a token until it
// expires, and reconnect after every network change) costs a map lookup
// instead of a signature check, which with RS256 or ES256 costs more than
// the rest of a connection. What is remembered is the claims and the key
// that verified them. The claims are checked again at every use (exp,
// nbf, claims that name the client), and an entry counts only while the
// key provider still gives that key for the token: a rotated key, a JWKS
// that dropped it or a new secret ends it. The zero value is empty and
// ready; it is safe for concurrent use.
type verifiedTokens struct {
	mu sync.Mutex
	m  map[string]verifiedToken
}

// verifiedToken is what a token's verification gave.
type verifiedToken struct {
	kid    string
	key    verifyKey
	claims map[string]any
}

// get returns what verifying token gave, if it is remembered.
func (v *verifiedTokens) get(token []byte) (verifiedToken, bool) {
	v.mu.Lock()
	t, ok := v.m[string(token)] // no copy of token for the lookup
	v.mu.Unlock()
	return t, ok
}

// put remembers t for token. When full, it forgets a token at random
// (map order), which keeps the tokens in use most often likely to stay.
func (v *verifiedTokens) put(token []byte, t verifiedToken) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = make(map[string]verifiedToken)
	}
	if len(v.m) >= maxVerifiedTokens {
		for k := range v.m {
			delete(v.m, k)
			break
		}
	}
	v.m[string(token)] = t
}

// forget drops token, once its claims no longer hold (it expired).
func (v *verifiedTokens) forget(token []byte) {
	v.mu.Lock()
	delete(v.m, string(token))
	v.mu.Unlock()
}

// containsKey reports whether keys holds key: the same algorithm, key ID
// and key material.
func containsKey(keys []verifyKey, key verifyKey) bool {
	for _, k := range keys {
		if k.alg == key.alg && k.kid == key.kid && sameKey(k.key, key.key) {
			return true
		}
	}
	return false
}

func sameKey(a, b any) bool {
	switch a := a.(type) {
	case *hmacKey: // made once per configured secret and algorithm
		return a == b
	case interface{ Equal(crypto.PublicKey) bool }: // RSA, ECDSA, Ed25519
		return a.Equal(b)
	}
	return false
}
