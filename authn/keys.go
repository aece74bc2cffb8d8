package authn

import (
	"context"
	"net/http"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
)

// verifyKey is one key a token may be verified with, and the algorithm it
// is allowed to verify. The algorithm is decided by the configured key,
// never by the token's header alone.
type verifyKey struct {
	alg jwa.SignatureAlgorithm
	key any // *hmacKey for HMAC; crypto public key otherwise
	kid string
}

// keyProvider gives the keys to try for a token. Static keys (secret,
// public_key) and JWKS endpoints both implement it.
type keyProvider interface {
	// keysFor returns the keys that may verify a token whose header names
	// kid (possibly empty) and alg. It returns ErrNoKey when none fits and
	// ErrKeysUnavailable when the keys are not loaded (JWKS down).
	keysFor(ctx context.Context, kid string, alg jwa.SignatureAlgorithm) ([]verifyKey, error)
	// close releases background work (refresh loops); it may be called twice.
	close()
}

// Option changes how New builds a Chain.
type Option func(*options)

type options struct {
	now        func() time.Time
	client     *http.Client
	logger     *zap.Logger
	previous   *Chain
	revocation *revocation.List
}

func newOptions(opts []Option) *options {
	o := &options{now: time.Now, logger: zap.NewNop()}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

// WithClock replaces time.Now for token time checks and JWKS refresh
// scheduling. Tests use it to move time without sleeping.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithHTTPClient sets the client used to fetch JWKS. Without it, each
// JWKS authenticator builds its own client from its ssl settings. Either
// way, redirects are refused when they leave https and get no configured
// header when they leave the endpoint's host; c's own CheckRedirect, if
// any, runs after that.
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.client = c } }

// WithPrevious gives each JWKS authenticator the last good key set of the
// authenticator of c with the same name and endpoint, as a reload needs: the
// new one fetches at once, as always, but serves those keys until then and
// through failed fetches, as the old one would have, rather than refusing
// every token while the endpoint is down.
func WithPrevious(c *Chain) Option { return func(o *options) { o.previous = c } }

// WithRevocation checks every token a jwt authenticator accepts against
// list: a revoked token is refused with ErrRevoked, and while list has none
// in force and its on_unavailable is deny, every token is refused with
// ErrRevocationUnavailable. Clients a certificate authenticator accepts
// carry no token and are not checked. The chain does not close list.
func WithRevocation(list *revocation.List) Option { return func(o *options) { o.revocation = list } }

// WithLogger sets the logger for key loading and refresh events.
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.logger = l } }
