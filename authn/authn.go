// Package authn decides whether an MQTT client may connect, from the JWT it
// carries in its CONNECT's password (or username): configuration in,
// decision out, no sockets.
//
// Typical usage:
//
//	chain, err := authn.New(cfg.Authentication, authn.WithLogger(logger))
//	if err != nil {
//		return err // names the faulty option, e.g. authentication[0] (jwt): public_key: no PEM block
//	}
//	defer chain.Close()
//	id, err := chain.Verify(ctx, authn.Request{ClientID: "c1", Password: token, HasPassword: true})
//	if err != nil {
//		reason := authn.ReasonOf(err) // token_expired, bad_signature, ...
//	}
//
// The options are EMQX 5's, and so are the outcomes. The chain tries its
// authenticators in order. Each accepts, refuses, or passes to the next.
// A jwt authenticator passes only when its token field is absent or empty
// and on_missing_jwt is ignore; a certificate authenticator accepts a
// client whose TLS certificate the listener verified (Request.CertVerified)
// and passes every other one. Any other failure (a bad signature, an unknown
// kid) refuses at once, without asking later authenticators. When every
// authenticator passes, the client is refused with
// ErrNoAuthenticatorAccepted.
//
// A token is checked strictly. It must be the compact serialization (three
// dot-separated segments of unpadded base64url, nothing trimmed) of at
// most 65,535 bytes. Its alg must be one the configured key allows:
// HS256/384/512 for a secret; for a public key or JWKS, RS and PS for RSA,
// the one ES matching an ECDSA key's curve, EdDSA for Ed25519. alg none is
// never allowed. Keys come only from the configuration: the jwk, jku, x5u
// and x5c headers are ignored, and a crit header is refused. A static key
// ignores the token's kid; JWKS selects by it. JSON with a key given twice
// is refused as malformed. exp, nbf and iat are checked when present,
// within the leeway, and required when listed in required_claims.
//
// An MQTT 5 client may present its token under an Authentication Method
// instead (Request.AuthMethod and AuthData): it is then judged only by the
// authenticators whose auth_method (JWT unless configured) it names, which
// read the token from the Authentication Data whatever their from field,
// and the others pass it on; a method that no authenticator names is
// refused with ErrBadAuthMethod. Such a session may later re-authenticate
// with a fresh token (Chain.Reauthenticate), which the authenticator that
// accepted it must accept with the same sub.
//
// WithRevocation adds the revocation list (package revocation) to the
// chain: a token that verifies is then refused with ErrRevoked when the
// list names its jti, its sub, the client ID, or its sub with a time
// after its iat.
//
// Template is the placeholder engine of verify_claims, exported for what
// the proxy forwards upstream, such as a client identifier taken from the
// token's sub claim:
//
//	clientID, err := authn.ParseTemplate("${claims.sub}")
//	upstreamID, ok := clientID.Render(&req, id.Claims) // false: sub absent, empty or not a scalar
package authn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// Request is what the proxy knows of a client when it asks for a decision.
type Request struct {
	// ClientID is the CONNECT's client identifier; it may be empty.
	ClientID string
	// Username is the CONNECT's user name, valid when HasUsername.
	Username string
	// HasUsername is the CONNECT's username flag.
	HasUsername bool
	// Password is the CONNECT's password, valid when HasPassword.
	Password []byte
	// HasPassword is the CONNECT's password flag.
	HasPassword bool
	// CertCommonName is the TLS client certificate's CN; empty without one.
	CertCommonName string
	// CertSubject is the TLS client certificate's subject; empty without one.
	CertSubject string
	// CertVerified says the client presented a TLS certificate that the
	// listener verified against its client CA, or that a trusted load
	// balancer verified and named: what a certificate authenticator
	// accepts.
	CertVerified bool
	// AuthMethod is the MQTT 5 CONNECT's Authentication Method; empty when
	// the client named none. A client that names one is judged only by
	// the authenticators whose auth_method it is, which read its token
	// from AuthData rather than from their from field.
	AuthMethod string
	// AuthData is the CONNECT's Authentication Data, read when AuthMethod
	// is set.
	AuthData []byte
}

// Identity is an accepted client.
type Identity struct {
	// Authenticator names the authenticator that accepted.
	Authenticator string
	// Subject is the sub claim; empty when the token has none.
	Subject string
	// Expiry is the exp claim; zero when the token has none.
	Expiry time.Time
	// IssuedAt is the iat claim; zero when the token has none.
	IssuedAt time.Time
	// TokenID is the jti claim; empty when the token has none.
	TokenID string
	// AuthMethod is the Authentication Method the token came under (the
	// request's); empty when it came in the password or the user name.
	// Only a session accepted under a method may re-authenticate (see
	// Chain.Reauthenticate), and the proxy's successful CONNACK must name
	// the method [MQTT-4.12.0-5].
	AuthMethod string
	// DisconnectAt, when not zero, is when the session must end: Expiry
	// plus the leeway that let the token in, for an authenticator with
	// disconnect_after_expire (on by default, as in EMQX) and a token with
	// exp. Without the leeway, a token accepted just past its exp would be
	// cut off as soon as it was let in.
	DisconnectAt time.Time
	// ACLClaim names the claim that carries the token's topic rules: the
	// acl.claim of the authenticator that accepted; empty means acl.
	ACLClaim string
	// Claims holds every claim; nil for a client that a certificate
	// authenticator accepted, which carries no token. Numbers are
	// json.Number, so that large integers keep their precision; objects
	// are map[string]any and arrays []any. The map is shared by every
	// connection with the same token: read it, never change it.
	Claims map[string]any
}

// RevocationToken is what a revocation list checks of the client that
// presented the token id stands for, with clientID the CONNECT's client
// identifier: the proxy checks its sessions with it when a new list
// arrives (revocation.List.Matches). It reports false for a client that
// a certificate authenticator accepted: it carries no token, and no list
// applies to it, as none applied when it connected.
func (id Identity) RevocationToken(clientID string) (revocation.Token, bool) {
	return revocation.Token{ID: id.TokenID, Subject: id.Subject, ClientID: clientID, IssuedAt: id.IssuedAt}, id.Claims != nil
}

// Verifier decides on one client. *Chain implements it.
type Verifier interface {
	// Verify returns the accepted client's identity, or an error that
	// ReasonOf maps to a RefuseReason.
	Verify(ctx context.Context, req Request) (Identity, error)
}

var _ Verifier = (*Chain)(nil)

// Reauthenticator is a Verifier that also decides on the MQTT 5
// re-authentications of the sessions it accepted under an Authentication
// Method (see Chain.Reauthenticate). *Chain implements it.
type Reauthenticator interface {
	Verifier
	Reauthenticate(ctx context.Context, first Identity, req Request) (Identity, error)
}

var _ Reauthenticator = (*Chain)(nil)

// The outcomes of one Step.
const (
	OutcomeAccept = "accept"
	OutcomeRefuse = "refuse"
	OutcomePass   = "pass"
)

// Step is what one authenticator decided, as Explain reports it.
type Step struct {
	// Authenticator names the authenticator.
	Authenticator string
	// Outcome is OutcomeAccept, OutcomeRefuse or OutcomePass.
	Outcome string
	// Identity is the accepted client; zero unless Outcome is OutcomeAccept.
	Identity Identity
	// Err is why the authenticator refused or passed; nil on accept.
	Err error
}

// Chain is the authentication chain built from the configuration. Its zero
// value has no authenticator and refuses every client with
// ErrNoAuthenticatorAccepted. It is safe for concurrent use.
type Chain struct {
	links []link
}

// link is one authenticator of the chain.
type link interface {
	// label is the authenticator's name.
	label() string
	// method is the Authentication Method the authenticator takes tokens
	// under; empty when it takes none.
	method() string
	// verify returns the accepted client's identity, or why it was not
	// accepted.
	verify(ctx context.Context, req *Request) (Identity, error)
	// passes reports whether err, from verify, leaves the client to the
	// next authenticator rather than refusing it.
	passes(err error) bool
	// close stops what the link runs in the background.
	close()
}

// New builds the chain from auths, parsing every key and template once.
// Errors name the authenticator and the option, such as
// "authentication[0] (jwt): secret: not valid base64: ...". configs.Validate
// is expected to have run; odd values it would reject are errors here too.
// Close stops the JWKS refreshers New starts.
func New(auths []configs.Authenticator, opts ...Option) (*Chain, error) {
	o := newOptions(opts)
	c := &Chain{}
	var errs []error // every authenticator's problems, so that check lists them all
	for i, cfg := range auths {
		if cfg.Name == "" {
			cfg.Name = cfg.DefaultName(i)
		}
		if cfg.Mechanism == configs.MechanismCertificate {
			o.logger.Info("authenticator ready", zap.String("authenticator", cfg.Name), zap.String("mechanism", cfg.Mechanism))
			c.links = append(c.links, certificateLink{name: cfg.Name})
			continue
		}
		a, err := newAuthenticator(cfg, o)
		if err != nil {
			for _, err := range unjoin(err) {
				errs = append(errs, fmt.Errorf("authentication[%d] (%s): %w", i, cfg.Name, err))
			}
			continue
		}
		o.logger.Info("authenticator ready",
			zap.String("authenticator", a.name), zap.String("from", a.from), zap.String("auth_method", a.authMethod),
			zap.Stringers("algorithms", a.algorithms))
		c.links = append(c.links, a)
	}
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// unjoin lists the errors errors.Join joined in err, however nested, so
// that each can be given its context; any other error is a list of one.
func unjoin(err error) []error {
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var errs []error
	for _, e := range joined.Unwrap() {
		errs = append(errs, unjoin(e)...)
	}
	return errs
}

// Verify runs the chain on req: the first authenticator to accept gives the
// identity, the first to refuse gives a *RefuseError.
func (c *Chain) Verify(ctx context.Context, req Request) (Identity, error) {
	return c.run(ctx, &req, nil)
}

// Explain runs the chain on req like Verify and reports each
// authenticator's decision, up to the one that decided, for the verify
// command.
func (c *Chain) Explain(ctx context.Context, req Request) []Step {
	var steps []Step
	c.run(ctx, &req, func(s Step) { steps = append(steps, s) })
	return steps
}

// run is Verify, telling record (when not nil) each authenticator's step.
func (c *Chain) run(ctx context.Context, req *Request, record func(Step)) (Identity, error) {
	if req.AuthMethod != "" && !c.takes(req.AuthMethod) {
		// %.64q: the method comes from the client and goes to the log.
		return Identity{}, &RefuseError{Reason: ErrBadAuthMethod,
			Err: fmt.Errorf("no authenticator takes the Authentication Method %.64q", req.AuthMethod)}
	}
	var passed []string
	hint := "" // the first of the passed steps', for the refusal below
	for _, l := range c.links {
		id, err := l.verify(ctx, req)
		step := Step{Authenticator: l.label(), Identity: id, Err: err}
		switch {
		case err == nil:
			step.Outcome = OutcomeAccept
		case l.passes(err):
			step.Outcome = OutcomePass
		default:
			step.Outcome = OutcomeRefuse
		}
		if record != nil {
			record(step)
		}
		if step.Outcome != OutcomePass {
			return id, err
		}
		passed = append(passed, l.label())
		if hint == "" {
			hint = HintOf(err)
		}
	}
	detail := errors.New("no authenticator is configured")
	if len(passed) > 0 {
		detail = fmt.Errorf("every authenticator passed for want of a credential: %s", strings.Join(passed, ", "))
	}
	// A token in the field a passing authenticator does not read is as
	// likely the mistake here as when that authenticator refuses.
	return Identity{}, &RefuseError{Reason: ErrNoAuthenticatorAccepted, Err: detail, Hint: hint}
}

// takes reports whether an authenticator of the chain takes tokens under
// method.
func (c *Chain) takes(method string) bool {
	for _, l := range c.links {
		if l.method() == method {
			return true
		}
	}
	return false
}

// Reauthenticate decides on the token of an MQTT 5 re-authentication (an
// AUTH with reason 0x19) of a session that Verify accepted as first, under
// its Authentication Method. req is the session's request as Verify got
// it, with AuthData the new token: the client identifier, user name and
// certificate stay the session's, so verify_claims bind the new token as
// they bound the first. Only the authenticator that accepted first, found
// by its name, is asked; it must accept the token under the same method
// and, unless its reauth.same_subject is false, with first's sub.
//
// It returns the new identity, whose Expiry, DisconnectAt and Claims
// replace the session's, or a *RefuseError: ErrBadAuthMethod when req's
// method is not the session's, or the session took none;
// ErrNoAuthenticatorAccepted when the session's authenticator is gone (a
// reload removed or renamed it) or takes no token; ErrClaimMismatch for
// another sub; else the authenticator's own reason, as Verify gives it
// (token_expired, bad_signature, revoked, ...).
func (c *Chain) Reauthenticate(ctx context.Context, first Identity, req Request) (Identity, error) {
	if first.AuthMethod == "" || req.AuthMethod != first.AuthMethod {
		return Identity{}, refuse(first.Authenticator, ErrBadAuthMethod, fmt.Errorf(
			"re-authentication under the Authentication Method %.64q; the session's is %.64q", req.AuthMethod, first.AuthMethod))
	}
	var a *authenticator
	for _, l := range c.links {
		if l.label() == first.Authenticator {
			a, _ = l.(*authenticator)
			break
		}
	}
	if a == nil {
		return Identity{}, refuse(first.Authenticator, ErrNoAuthenticatorAccepted,
			errors.New("the session's authenticator is not configured, or takes no token"))
	}
	id, err := a.verify(ctx, &req)
	if errors.Is(err, errOtherMethod) {
		return Identity{}, refuse(a.name, ErrBadAuthMethod, err) // a reload changed its auth_method
	}
	if err != nil {
		return Identity{}, err
	}
	if a.sameSubject && id.Subject != first.Subject {
		return Identity{}, refuse(a.name, ErrClaimMismatch, fmt.Errorf(
			"sub %.64q, the session's is %.64q (reauth.same_subject)", id.Subject, first.Subject))
	}
	return id, nil
}

// Close stops the chain's JWKS refreshers. After it, JWKS authenticators
// refuse with ErrKeysUnavailable.
func (c *Chain) Close() {
	for _, l := range c.links {
		l.close()
	}
}

// authenticator is one link of the chain.
type authenticator struct {
	name               string
	aclClaim           string // acl.claim
	from               string // "password" or "username"
	authMethod         string // the Authentication Method it takes tokens under
	sameSubject        bool   // reauth.same_subject
	ignoreMissing      bool   // on_missing_jwt: ignore
	algorithms         []jwa.SignatureAlgorithm
	keys               keyProvider
	derSignatures      bool // signature_format: der
	disconnectAtExpiry bool // disconnect_after_expire
	claims             claimRules
	now                func() time.Time
	verified           verifiedTokens
	revocation         *revocation.List // nil: no token is revoked
}

func (a *authenticator) label() string { return a.name }

func (a *authenticator) method() string { return a.authMethod }

func (a *authenticator) passes(err error) bool {
	return errors.Is(err, errOtherMethod) || a.ignoreMissing && ReasonOf(err) == ErrTokenMissing
}

// errOtherMethod is why an authenticator passes a client that presents its
// token under another Authentication Method than its own.
var errOtherMethod = errors.New("the token comes under another Authentication Method")

func (a *authenticator) close() { a.keys.close() }

// newAuthenticator builds one authenticator from cfg. Errors name the
// option; all of cfg's problems are reported at once, joined.
func newAuthenticator(cfg configs.Authenticator, o *options) (*authenticator, error) {
	if cfg.Mechanism != "jwt" {
		return nil, fmt.Errorf("mechanism: %q is not one of jwt, certificate", cfg.Mechanism)
	}
	a := &authenticator{name: cfg.Name, aclClaim: cfg.ACL.Claim, from: cfg.From, authMethod: cfg.AuthMethod, now: o.now, revocation: o.revocation,
		sameSubject:        cfg.Reauth.SameSubject == nil || *cfg.Reauth.SameSubject,
		disconnectAtExpiry: cfg.DisconnectAfterExpire == nil || *cfg.DisconnectAfterExpire}
	if a.authMethod == "" {
		a.authMethod = configs.DefaultAuthMethod
	}
	var errs []error
	switch cfg.From {
	case "":
		a.from = "password"
	case "password", "username":
	default:
		errs = append(errs, fmt.Errorf("from: %q is not one of password, username", cfg.From))
	}
	switch cfg.OnMissingJWT {
	case "", "deny":
	case "ignore":
		a.ignoreMissing = true
	default:
		errs = append(errs, fmt.Errorf("on_missing_jwt: %q is not one of deny, ignore", cfg.OnMissingJWT))
	}
	switch cfg.SignatureFormat {
	case "", "raw":
	case "der":
		a.derSignatures = true
	default:
		errs = append(errs, fmt.Errorf("signature_format: %q is not one of raw, der", cfg.SignatureFormat))
	}
	var err error
	if a.claims, err = newClaimRules(cfg); err != nil {
		errs = append(errs, err)
	}
	if a.keys, a.algorithms, err = newKeyProvider(cfg, o); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		if a.keys != nil {
			a.keys.close() // a JWKS provider has begun fetching
		}
		return nil, err
	}
	return a, nil
}

// newKeyProvider returns the keys of cfg and the algorithms they allow.
func newKeyProvider(cfg configs.Authenticator, o *options) (keyProvider, []jwa.SignatureAlgorithm, error) {
	switch {
	case cfg.UseJWKS:
		p, err := newJWKSProvider(cfg.Name, cfg, o)
		if err != nil {
			return nil, nil, err
		}
		return p, publicKeyAlgorithms, nil
	case cfg.Algorithm == "hmac-based":
		secret, err := hmacSecret(cfg)
		if err != nil {
			return nil, nil, err
		}
		return newStaticKeys(secret, hmacAlgorithms), hmacAlgorithms, nil
	case cfg.Algorithm == "public-key":
		key, algs, err := loadPublicKey(cfg)
		if err != nil {
			return nil, nil, err
		}
		return newStaticKeys(key, algs), algs, nil
	}
	return nil, nil, fmt.Errorf("algorithm: %q is not one of hmac-based, public-key (or use_jwks: true)", cfg.Algorithm)
}

// verify decides on req: an identity, a *RefuseError, or errOtherMethod
// (wrapped), a pass.
func (a *authenticator) verify(ctx context.Context, req *Request) (Identity, error) {
	token, present := req.Password, req.HasPassword
	switch {
	case req.AuthMethod != "" && req.AuthMethod != a.authMethod:
		return Identity{}, fmt.Errorf("%w: the CONNECT's is %.64q, this authenticator's %q", errOtherMethod, req.AuthMethod, a.authMethod)
	case req.AuthMethod != "":
		token, present = req.AuthData, req.AuthData != nil
	case a.from == "username":
		token, present = []byte(req.Username), req.HasUsername
	}
	if !present || len(token) == 0 {
		return Identity{}, a.tokenMissing(req)
	}
	id, err := a.verifyToken(ctx, token, req)
	if err != nil {
		reason := ReasonOf(err)
		if reason == "" {
			// Only key providers return errors without a reason: a
			// failure to get keys.
			reason = ErrKeysUnavailable
		}
		return Identity{}, refuse(a.name, reason, err)
	}
	if a.revocation != nil {
		token, _ := id.RevocationToken(req.ClientID)
		if why, revoked := a.revocation.Revoked(token); revoked {
			return Identity{}, refuseRevoked(a.name, why)
		}
	}
	id.Authenticator, id.AuthMethod, id.ACLClaim = a.name, req.AuthMethod, a.aclClaim
	return id, nil
}

// refuseRevoked is the refusal of a token the revocation list revokes for
// why.
func refuseRevoked(name string, why revocation.Reason) *RefuseError {
	switch why {
	case revocation.ReasonUnavailable:
		return refuse(name, ErrRevocationUnavailable, errors.New("no revocation list in force, and on_unavailable is deny"))
	case revocation.ReasonIssuedBefore:
		return refuse(name, ErrRevoked, errors.New("issued before the time issued_before gives its sub, or without iat"))
	case revocation.ReasonClientID:
		return refuse(name, ErrRevoked, errors.New("the client ID is listed under client_id"))
	}
	return refuse(name, ErrRevoked, fmt.Errorf("its %s is listed", why))
}

// tokenMissing is the refusal of req, which has no token where a reads
// it. When the other field holds what parses as a token, the refusal's
// hint says so: a client configured with the token in the wrong field is
// the likely cause. Only this path parses the other field.
func (a *authenticator) tokenMissing(req *Request) *RefuseError {
	if req.AuthMethod != "" {
		return refuse(a.name, ErrTokenMissing, fmt.Errorf("no token in the Authentication Data of the method %.64q", req.AuthMethod))
	}
	err := refuse(a.name, ErrTokenMissing, fmt.Errorf("no token in the %s", a.from))
	other, otherName := []byte(req.Username), "user name"
	if a.from == "username" {
		other, otherName = req.Password, "password"
	}
	if _, parseErr := parseCompactJWS(other); parseErr == nil {
		err.Hint = fmt.Sprintf("the %s looks like a JWT; this authenticator reads from: %s", otherName, a.from)
	}
	return err
}

// verifyToken checks the token's form, alg, signature and claims, in that
// order: nothing of the payload is read before the signature holds.
func (a *authenticator) verifyToken(ctx context.Context, token []byte, req *Request) (Identity, error) {
	claims, err := a.verifiedClaims(ctx, token)
	if err != nil {
		return Identity{}, err
	}
	checked, err := a.claims.check(claims, req, a.now())
	if err != nil {
		if r := ReasonOf(err); r == ErrTokenExpired {
			a.verified.forget(token)
		}
		return Identity{}, err
	}
	id := Identity{Subject: checked.subject, Expiry: checked.expiry, IssuedAt: checked.issuedAt, TokenID: checked.id, Claims: claims}
	if a.disconnectAtExpiry && !checked.expiry.IsZero() {
		id.DisconnectAt = checked.expiry.Add(a.claims.leeway)
	}
	return id, nil
}

// verifiedClaims returns token's claims once its form, alg and signature
// hold. A token verified before by a key the provider still gives for it
// is not verified again (see verifiedTokens).
func (a *authenticator) verifiedClaims(ctx context.Context, token []byte) (map[string]any, error) {
	if v, ok := a.verified.get(token); ok {
		if keys, err := a.keys.keysFor(ctx, v.kid, v.key.alg); err == nil && containsKey(keys, v.key) {
			return v.claims, nil
		}
	}
	jws, err := parseCompactJWS(token)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(a.algorithms, jws.alg) {
		// %.32q: the alg comes from the token and goes to the log.
		return nil, fmt.Errorf("%w: %.32q; the configured key allows %s", ErrAlgorithmNotAllowed, jws.alg, a.algorithms)
	}
	keys, err := a.keys.keysFor(ctx, jws.kid, jws.alg)
	if err != nil {
		return nil, err
	}
	key, err := jws.verifyWithAny(keys, a.derSignatures)
	if err != nil {
		return nil, err
	}
	claims, err := decodeJSONObject(jws.payload)
	if err != nil {
		return nil, fmt.Errorf("%w: claims: %w", ErrTokenMalformed, err)
	}
	a.verified.put(token, verifiedToken{kid: jws.kid, key: key, claims: claims})
	return claims, nil
}
