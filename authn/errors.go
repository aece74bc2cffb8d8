package authn

import (
	"errors"
	"strings"
)

// RefuseReason is why a client was refused. It is an error, so that
// errors.Is works against the values below, and a short, bounded string fit
// for logs and metric labels.
type RefuseReason string

// Error returns the reason itself.
func (r RefuseReason) Error() string { return string(r) }

// The reasons Verify refuses a client for. The proxy answers the first five
// with CONNACK 0x86 (bad user name or password) and the others with 0x87
// (not authorized), as EMQX does, but for ErrBadAuthMethod, which MQTT 5
// answers with 0x8C (bad authentication method) [MQTT-4.12.0-1].
const (
	// ErrTokenMissing: the from field is absent or empty.
	ErrTokenMissing RefuseReason = "token_missing"
	// ErrTokenMalformed: not a compact JWS (three dot-separated segments
	// of strict base64url), bad JSON, duplicate JSON keys, over the size
	// cap, or a registered claim of the wrong type.
	ErrTokenMalformed RefuseReason = "token_malformed"
	// ErrTokenExpired: exp is not after now minus the leeway.
	ErrTokenExpired RefuseReason = "token_expired"
	// ErrTokenNotYetValid: nbf, or iat, is after now plus the leeway.
	ErrTokenNotYetValid RefuseReason = "token_not_yet_valid"
	// ErrClaimMismatch: verify_claims, issuer, audience or required_claims
	// do not hold.
	ErrClaimMismatch RefuseReason = "claim_mismatch"
	// ErrBadSignature: the signature does not verify with the key.
	ErrBadSignature RefuseReason = "bad_signature"
	// ErrAlgorithmNotAllowed: the token's alg is not one the configured
	// key allows (none, HS against a public key, RS against a secret), or
	// the token has a crit header.
	ErrAlgorithmNotAllowed RefuseReason = "algorithm_not_allowed"
	// ErrNoKey: no key with the token's kid (JWKS).
	ErrNoKey RefuseReason = "no_key"
	// ErrKeysUnavailable: the JWKS keys are not loaded, or were dropped
	// after failed refreshes.
	ErrKeysUnavailable RefuseReason = "keys_unavailable"
	// ErrRevoked: the token verified, and the revocation list revokes it
	// (by its jti, sub, the client ID, or issued_before).
	ErrRevoked RefuseReason = "revoked"
	// ErrRevocationUnavailable: no revocation list is in force (none
	// loaded yet, or the last good one is older than max_stale) and
	// on_unavailable is deny.
	ErrRevocationUnavailable RefuseReason = "revocation_unavailable"
	// ErrBadAuthMethod: the CONNECT names an Authentication Method that no
	// authenticator takes (auth_method), or a re-authentication names
	// another than its session's.
	ErrBadAuthMethod RefuseReason = "bad_authentication_method"
	// ErrNoAuthenticatorAccepted: every authenticator of the chain passed.
	ErrNoAuthenticatorAccepted RefuseReason = "not_authorized"
)

// RefuseError is the error Verify returns when it refuses a client.
// errors.Is(err, ErrTokenExpired) and the like work through it.
type RefuseError struct {
	// Reason is why the client was refused.
	Reason RefuseReason
	// Authenticator names the authenticator that decided; empty for
	// ErrNoAuthenticatorAccepted.
	Authenticator string
	// Err is the detail, for logs; it may be nil.
	Err error
	// Hint, when not empty, is the likely mistake of the client, for
	// logs: for ErrTokenMissing, a token in the field the authenticator
	// does not read; for ErrNoAuthenticatorAccepted, the first such hint
	// of the authenticators that passed.
	Hint string
}

// Error reads "authenticator: reason: detail", leaving out empty parts.
func (e *RefuseError) Error() string {
	var b strings.Builder
	if e.Authenticator != "" {
		b.WriteString(e.Authenticator)
		b.WriteString(": ")
	}
	b.WriteString(string(e.Reason))
	if e.Err != nil {
		// A detail that wraps the reason itself starts with it: say it once.
		detail := strings.TrimPrefix(e.Err.Error(), string(e.Reason)+": ")
		if detail != string(e.Reason) {
			b.WriteString(": ")
			b.WriteString(detail)
		}
	}
	return b.String()
}

// Unwrap returns the Reason and, when there is one, Err.
func (e *RefuseError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Reason}
	}
	return []error{e.Reason, e.Err}
}

// ReasonOf returns the RefuseReason in err's chain, or "" if none. For a
// *RefuseError it is its Reason, even when its detail wraps another.
func ReasonOf(err error) RefuseReason {
	if refusal, ok := errors.AsType[*RefuseError](err); ok {
		return refusal.Reason
	}
	if reason, ok := errors.AsType[RefuseReason](err); ok {
		return reason
	}
	return ""
}

// HintOf returns the hint of the *RefuseError in err's chain, or "".
func HintOf(err error) string {
	if refusal, ok := errors.AsType[*RefuseError](err); ok {
		return refusal.Hint
	}
	return ""
}

// refuse builds the refusal of authenticator name; err may be nil.
func refuse(name string, reason RefuseReason, err error) *RefuseError {
	return &RefuseError{Reason: reason, Authenticator: name, Err: err}
}
