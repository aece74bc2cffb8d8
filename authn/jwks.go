package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/internal/fetch"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// Keys come from a small fetcher built on jwk.Parse, not from jwx's
// jwk.Cache: the cache never refetches when a token names an unknown kid,
// schedules refreshes on the wall clock (tests could not drive it through
// WithClock), and has no notion of consecutive failures or max_stale, all of
// which the EMQX semantics below need.

const (
	// maxJWKSBody is the largest JWKS document accepted. Real sets are a
	// few KiB; the cap keeps a broken or hostile endpoint from exhausting
	// memory.
	maxJWKSBody = 1 << 20

	defaultJWKSRefreshInterval = 300 * time.Second
	// minJWKSRefreshInterval is the floor EMQX raises refresh_interval to.
	minJWKSRefreshInterval        = 10 * time.Second
	defaultJWKSMinRefreshInterval = 10 * time.Second
	defaultJWKSMaxFailCount       = 5
)

// errAlgNotAllowedForKey is wrapped, together with ErrNoKey, when the
// token's kid names a key that may not verify the token's alg.
var errAlgNotAllowedForKey = errors.New("alg not allowed for key")

// jwksProvider serves the keys of one JWKS endpoint. A background loop
// refetches the set every refreshInterval, and so does the first keysFor
// call that finds it older than that. A token naming an unknown kid
// triggers a refetch at most once per minRefreshInterval, shared by all
// callers. Failed fetches keep the last good set until maxFailCount
// consecutive failures or an age over maxStale; then keysFor fails closed
// with ErrKeysUnavailable until a fetch succeeds. Failures count at most
// once per refreshInterval: fetches for unknown kids, which any client can
// trigger every minRefreshInterval, must not drop the set sooner than the
// scheduled refreshes would.
type jwksProvider struct {
	name     string
	endpoint string         // the URL fetcher gets, to tell a reload that keeps it
	fetcher  *fetch.Fetcher // gets the set with the fetch rules (size cap, timeout, redirects)
	now      func() time.Time
	logger   *zap.Logger // carries the authenticator and endpoint fields

	refreshInterval    time.Duration
	minRefreshInterval time.Duration
	maxFailCount       int
	maxStale           time.Duration // zero: no age limit

	// ctx is the parent of every fetch; close cancels it. It lives in the
	// struct because fetches outlive the keysFor call that starts them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the refresh loop and the fetch under way

	mu        sync.Mutex  // guards the fields below
	set       *jwksKeySet // last good set; nil until a fetch succeeds
	loadedAt  time.Time   // when set was fetched
	failures  int         // consecutive failed fetches, at most one per refreshInterval
	counted   time.Time   // when the last failed fetch that counted started
	lastErr   error       // why the last fetch failed; nil after a success
	lastFetch time.Time   // when the last fetch started; spaces fetches out
	inflight  *jwksFetch  // the fetch under way, shared by every waiter
	// refreshes and refreshFailures count fetch outcomes, for metrics.
	refreshes, refreshFailures uint64
}

// jwksFetch is one fetch that concurrent callers share.
type jwksFetch struct {
	done    chan struct{} // closed once the result is stored in the provider
	started time.Time
}

// jwksStatus is a provider's health, for readiness probes and metrics.
// The zero value is a provider that never loaded keys.
type jwksStatus struct {
	loaded              bool          // keysFor serves a key set
	age                 time.Duration // since the last successful fetch; zero before one
	consecutiveFailures int           // failed fetches since the last success, as counted for maxFailCount
}

// newJWKSProvider builds the provider for one authenticator with
// use_jwks: true. It starts the background refresh and returns at once: the
// proxy must start even when the endpoint is down, and tokens are refused
// with ErrKeysUnavailable until keys arrive. Errors name the faulty option
// (endpoint, ssl.ca_file, ...).
func newJWKSProvider(name string, cfg configs.Authenticator, o *options) (*jwksProvider, error) {
	p, err := buildJWKSProvider(name, cfg, o)
	if err != nil {
		return nil, err
	}
	if prev := o.previous.jwksProvider(name); prev != nil && prev.endpoint == p.endpoint {
		prev.mu.Lock()
		p.set, p.loadedAt = prev.set, prev.loadedAt
		prev.mu.Unlock()
	}
	p.start()
	return p, nil
}

// jwksProvider returns the key provider of c's JWKS authenticator called
// name, or nil.
func (c *Chain) jwksProvider(name string) *jwksProvider {
	if c == nil {
		return nil
	}
	for _, l := range c.links {
		if a, ok := l.(*authenticator); ok && a.name == name {
			p, _ := a.keys.(*jwksProvider)
			return p
		}
	}
	return nil
}

// buildJWKSProvider is newJWKSProvider without the start, so that tests can
// shorten timings before the first fetch.
func buildJWKSProvider(name string, cfg configs.Authenticator, o *options) (*jwksProvider, error) {
	endpoint, err := url.Parse(cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint: %w", err)
	}
	maxFailCount := cfg.MaxFailCount
	if maxFailCount <= 0 {
		maxFailCount = defaultJWKSMaxFailCount
	}
	// Redacted: an endpoint URL may carry credentials.
	logger := o.logger.With(zap.String("authenticator", name), zap.String("endpoint", endpoint.Redacted()))
	fetcher, err := fetch.New(endpoint, fetch.Options{Headers: cfg.Headers, SSL: cfg.SSL, Client: o.client, MaxBody: maxJWKSBody, Logger: logger})
	if errors.Is(err, fetch.ErrNotHTTP) {
		return nil, fmt.Errorf("endpoint: %w", err)
	}
	if err != nil {
		return nil, err // "ssl.ca_file: ..."
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &jwksProvider{
		name:     name,
		endpoint: endpoint.String(),
		fetcher:  fetcher,
		now:      o.now,
		logger:   logger,

		refreshInterval:    jwksRefreshInterval(cfg),
		minRefreshInterval: cfg.MinRefreshInterval.Or(defaultJWKSMinRefreshInterval),
		maxFailCount:       maxFailCount,
		maxStale:           time.Duration(cfg.MaxStale),

		ctx:    ctx,
		cancel: cancel,
	}, nil
}

// jwksRefreshInterval is cfg's refresh_interval as it applies: the default
// when not set, and never under minJWKSRefreshInterval (Warnings says so).
func jwksRefreshInterval(cfg configs.Authenticator) time.Duration {
	return max(cfg.RefreshInterval.Or(defaultJWKSRefreshInterval), minJWKSRefreshInterval)
}

// start begins the first fetch and the refresh loop.
func (p *jwksProvider) start() {
	p.mu.Lock()
	p.startFetchLocked(p.now())
	p.mu.Unlock()
	p.wg.Add(1)
	go p.refreshLoop()
}

// refreshLoop starts a fetch whenever refreshInterval has passed since the
// last one began, by the provider's clock, until close.
func (p *jwksProvider) refreshLoop() {
	defer p.wg.Done()
	timer := time.NewTimer(p.refreshInterval)
	defer timer.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-timer.C:
		}
		p.mu.Lock()
		now := p.now()
		wait := p.lastFetch.Add(p.refreshInterval).Sub(now)
		if wait <= 0 {
			p.startFetchLocked(now)
			wait = p.refreshInterval
		}
		p.mu.Unlock()
		timer.Reset(wait)
	}
}

// keysFor returns the keys of the set that the token's kid selects and that
// may verify alg. A token without kid selects the set's only key. An
// unknown kid triggers one rate-limited refetch before ErrNoKey; a kid whose
// keys do not allow alg gives ErrNoKey wrapping errAlgNotAllowedForKey.
func (p *jwksProvider) keysFor(ctx context.Context, kid string, alg jwa.SignatureAlgorithm) ([]verifyKey, error) {
	set, err := p.currentSet(ctx)
	if err != nil {
		return nil, err
	}
	keys, found := set.find(kid)
	if !found && kid != "" {
		// The issuer may have rotated its keys since the last fetch.
		if set, err = p.refetch(ctx); err != nil {
			return nil, err
		}
		keys, found = set.find(kid)
	}
	if !found {
		if kid == "" {
			return nil, fmt.Errorf("%w: the token has no kid and the key set holds %d keys", ErrNoKey, len(set.keys))
		}
		return nil, fmt.Errorf("%w: kid %s is not in the key set", ErrNoKey, quoteKid(kid))
	}
	var verify []verifyKey
	for _, k := range keys {
		if slices.Contains(k.algs, alg) {
			verify = append(verify, verifyKey{alg: alg, key: k.key, kid: k.kid})
		}
	}
	if len(verify) == 0 {
		return nil, fmt.Errorf("%w: %w: %s for kid %s", ErrNoKey, errAlgNotAllowedForKey, alg, quoteKid(kid))
	}
	return verify, nil
}

// currentSet returns the key set to select from, starting a background
// refresh when the set is due for one. When no set is usable it waits for a
// fetch (rate-limited like an unknown kid), so that a recovered endpoint is
// noticed by the next client.
func (p *jwksProvider) currentSet(ctx context.Context) (*jwksKeySet, error) {
	p.mu.Lock()
	now := p.now()
	if now.Sub(p.lastFetch) >= p.refreshInterval {
		p.startFetchLocked(now)
	}
	set, err := p.usableLocked(now)
	p.mu.Unlock()
	if err != nil {
		return p.refetch(ctx)
	}
	return set, nil
}

// refetch waits for the fetch under way, or for a new one unless one
// started within minRefreshInterval, and returns the usable set after it.
func (p *jwksProvider) refetch(ctx context.Context) (*jwksKeySet, error) {
	p.mu.Lock()
	call := p.inflight
	if now := p.now(); call == nil && now.Sub(p.lastFetch) >= p.minRefreshInterval {
		call = p.startFetchLocked(now)
	}
	p.mu.Unlock()
	if call != nil {
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for the key set: %w", ErrKeysUnavailable, ctx.Err())
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.usableLocked(p.now())
}

// usableLocked returns the set keysFor may serve, or why there is none.
func (p *jwksProvider) usableLocked(now time.Time) (*jwksKeySet, error) {
	var reason string
	switch {
	case p.ctx.Err() != nil: // closed: the set is refreshed no more
		reason = "authenticator closed"
	case p.set == nil:
		reason = "no key set loaded yet"
	case p.failures >= p.maxFailCount:
		reason = fmt.Sprintf("key set dropped after %d consecutive failed fetches", p.failures)
	case p.maxStale > 0 && now.Sub(p.loadedAt) > p.maxStale:
		reason = fmt.Sprintf("key set is %s old, over max_stale %s", now.Sub(p.loadedAt), p.maxStale)
	default:
		return p.set, nil
	}
	if p.lastErr == nil {
		return nil, fmt.Errorf("%w: %s", ErrKeysUnavailable, reason)
	}
	return nil, fmt.Errorf("%w: %s; last fetch: %w", ErrKeysUnavailable, reason, p.lastErr)
}

// startFetchLocked returns the fetch under way, starting one if there is
// none. After close it returns nil.
func (p *jwksProvider) startFetchLocked(now time.Time) *jwksFetch {
	if p.inflight != nil {
		return p.inflight
	}
	if p.ctx.Err() != nil {
		return nil
	}
	call := &jwksFetch{done: make(chan struct{}), started: now}
	p.inflight = call
	p.lastFetch = now
	p.wg.Add(1)
	go p.fetch(call)
	return call
}

// fetch downloads the set, stores the outcome and logs it. The fetch stays
// under way until it is logged, so that whoever waits for it sees the log.
func (p *jwksProvider) fetch(call *jwksFetch) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		p.inflight = nil
		close(call.done)
		p.mu.Unlock()
	}()
	set, err := p.download()

	p.mu.Lock()
	now := p.now()
	closing := p.ctx.Err() != nil
	previous, previousFailures := p.set, p.failures
	switch {
	case err == nil:
		p.set, p.loadedAt, p.failures, p.lastErr = set, now, 0, nil
		p.refreshes++
	case !closing: // a fetch cut short by close says nothing about the endpoint
		if p.failures == 0 || call.started.Sub(p.counted) >= p.refreshInterval {
			p.failures++
			p.counted = call.started
		}
		p.refreshFailures++
		p.lastErr = err
	}
	failures := p.failures
	_, unusable := p.usableLocked(now)
	p.mu.Unlock()

	failed := []zap.Field{zap.Error(err), zap.Int("consecutive_failures", failures)}
	if refused, ok := errors.AsType[*fetch.RedirectRefusedError](err); ok {
		failed = append(failed, zap.String("redirect", refused.Target))
	}
	switch {
	case err != nil && closing:
	case err != nil && unusable != nil:
		p.logger.Warn("jwks fetch failed; refusing tokens until a fetch succeeds", failed...)
	case err != nil:
		p.logger.Warn("jwks fetch failed; serving the last good key set", failed...)
	case previous == nil || previousFailures > 0 || !slices.Equal(previous.kids, set.kids):
		p.logger.Info("jwks key set loaded",
			zap.Int("keys", len(set.keys)), zap.Strings("kids", set.kids), zap.Errors("skipped", set.skipped))
	default:
		p.logger.Debug("jwks key set unchanged", zap.Int("keys", len(set.keys)))
	}
}

// download fetches and converts the set.
func (p *jwksProvider) download() (*jwksKeySet, error) {
	body, err := p.fetcher.Get(p.ctx)
	if err != nil {
		return nil, err
	}
	// One key we cannot parse (a new key type, say) must not take the
	// others down; newJWKSKeySet still fails a set with no usable key.
	parsed, err := jwk.Parse(body, jwk.WithIgnoreParseError(true))
	if err != nil {
		return nil, fmt.Errorf("parse JWKS: %w", err)
	}
	return newJWKSKeySet(parsed)
}

// close stops the refresh loop and any fetch under way and waits for them.
// It may be called more than once.
func (p *jwksProvider) close() {
	p.mu.Lock()
	p.cancel() // under mu, so that no fetch starts after wg.Wait begins
	p.mu.Unlock()
	p.wg.Wait()
	p.fetcher.Close()
}

// status reports the provider's health.
func (p *jwksProvider) status() jwksStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	_, unusable := p.usableLocked(now)
	st := jwksStatus{loaded: unusable == nil, consecutiveFailures: p.failures}
	if p.set != nil {
		st.age = now.Sub(p.loadedAt)
	}
	return st
}

// jwksKeySet is a fetched set, converted to raw keys once per fetch.
type jwksKeySet struct {
	keys    []jwksKey            // every usable key, in document order
	byKid   map[string][]jwksKey // usable keys that have a kid; a kid may name several (of different types)
	kids    []string             // sorted keys of byKid, to log and to notice rotations
	skipped []error              // why other keys are not used, for the log
}

// jwksKey is one usable key of a set.
type jwksKey struct {
	kid  string
	algs []jwa.SignatureAlgorithm // what it may verify: its alg, or all its type allows
	key  any                      // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// newJWKSKeySet keeps the set's public verification keys and fails when
// there is none, so that an endpoint serving an empty or foreign document
// counts as failing rather than wiping the keys.
func newJWKSKeySet(parsed jwk.Set) (*jwksKeySet, error) {
	set := &jwksKeySet{byKid: map[string][]jwksKey{}}
	for i := range parsed.Len() {
		k, _ := parsed.Key(i)
		key, err := newJWKSKey(k)
		if err != nil {
			set.skipped = append(set.skipped, fmt.Errorf("key #%d (kid %s): %w", i, quoteKid(k.KeyID()), err))
			continue
		}
		set.keys = append(set.keys, key)
		if key.kid != "" {
			set.byKid[key.kid] = append(set.byKid[key.kid], key)
		}
	}
	if len(set.keys) == 0 {
		err := fmt.Errorf("no usable verification key among %d", parsed.Len())
		if len(set.skipped) > 0 {
			err = fmt.Errorf("%w: %w", err, errors.Join(set.skipped...))
		}
		return nil, err
	}
	set.kids = slices.Sorted(maps.Keys(set.byKid))
	return set, nil
}

// newJWKSKey converts k when it is a public verification key, or the
// private key of one, and says why not otherwise.
func newJWKSKey(k jwk.Key) (jwksKey, error) {
	if k.KeyType() == jwa.OctetSeq {
		// An HMAC secret published at a URL is no secret.
		return jwksKey{}, errors.New("symmetric (oct) keys are never taken from a JWKS endpoint")
	}
	if use := k.KeyUsage(); use != "" && use != string(jwk.ForSignature) {
		return jwksKey{}, fmt.Errorf("use is %q, not sig", use)
	}
	if ops := k.KeyOps(); len(ops) > 0 && !slices.Contains(ops, jwk.KeyOpVerify) {
		return jwksKey{}, fmt.Errorf("key_ops %v lack verify", ops)
	}
	raw, err := jwk.PublicRawKeyOf(k)
	if err != nil {
		return jwksKey{}, fmt.Errorf("public key: %w", err)
	}
	algs, err := signatureAlgorithmsFor(raw)
	if err != nil {
		return jwksKey{}, err
	}
	if alg := jwa.SignatureAlgorithm(k.Algorithm().String()); alg != "" {
		if !slices.Contains(algs, alg) {
			return jwksKey{}, fmt.Errorf("alg %s does not fit this %s key", alg, k.KeyType())
		}
		algs = []jwa.SignatureAlgorithm{alg}
	}
	return jwksKey{kid: k.KeyID(), algs: algs, key: raw}, nil
}

// signatureAlgorithmsFor lists the algorithms a public key of this type may
// verify: EMQX's JWKS allowlist, narrowed to what fits the key.
// A key that could not verify safely is refused here, for public_key and
// JWKS alike: an RSA key under minRSABits, and an Ed25519 key of the wrong
// length, which jwx parses and ed25519.Verify panics on.
func signatureAlgorithmsFor(key any) ([]jwa.SignatureAlgorithm, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits is under the minimum of %d", bits, minRSABits)
		}
		return []jwa.SignatureAlgorithm{jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []jwa.SignatureAlgorithm{jwa.ES256}, nil
		case elliptic.P384():
			return []jwa.SignatureAlgorithm{jwa.ES384}, nil
		case elliptic.P521():
			return []jwa.SignatureAlgorithm{jwa.ES512}, nil
		}
		return nil, fmt.Errorf("EC curve %s is not one of P-256, P-384, P-521", k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("Ed25519 key of %d bytes, not %d", len(k), ed25519.PublicKeySize)
		}
		return []jwa.SignatureAlgorithm{jwa.EdDSA}, nil
	}
	return nil, fmt.Errorf("%T is not a signature verification key", key)
}

// find returns the keys a token's kid selects: those with that kid, or for
// a token without kid the set's only key.
func (s *jwksKeySet) find(kid string) ([]jwksKey, bool) {
	if kid == "" {
		return s.keys, len(s.keys) == 1
	}
	keys, ok := s.byKid[kid]
	return keys, ok
}

// quoteKid quotes a kid for errors and logs, cut short: it comes from the
// token or the endpoint, and either may be hostile.
func quoteKid(kid string) string {
	const maxLen = 64
	if len(kid) > maxLen {
		return fmt.Sprintf("%q...", kid[:maxLen])
	}
	return fmt.Sprintf("%q", kid)
}
