package authn

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/internal/fetch"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// jwksServeMode is how a jwksTestServer answers.
type jwksServeMode int

const (
	jwksServeKeys         jwksServeMode = iota // the current key set
	jwksServeError                             // 500
	jwksServeHang                              // nothing, until the request's context ends
	jwksServeGarbage                           // a body that is not JSON
	jwksServeHuge                              // 10 MB streamed without Content-Length
	jwksServeHugeDeclared                      // 10 MB announced by Content-Length
)

// jwksTestServer is a JWKS endpoint that tests switch between behaviours
// and that counts requests. It answers every path the same, except those
// it is told to redirect.
type jwksTestServer struct {
	*httptest.Server
	requests atomic.Int64
	arrived  chan struct{} // one value per request; dropped when full

	mu        sync.Mutex
	mode      jwksServeMode
	body      []byte            // served in jwksServeKeys mode
	gate      chan struct{}     // when set, jwksServeKeys answers once it is closed
	redirects map[string]string // path to the URL it redirects to (302)
	received  []receivedRequest // every request, in order
}

// receivedRequest is what a jwksTestServer keeps of a request.
type receivedRequest struct {
	path   string
	header http.Header
}

func newJWKSTestServer(t testing.TB, useTLS bool) *jwksTestServer {
	t.Helper()
	s := &jwksTestServer{arrived: make(chan struct{}, 64)}
	s.Server = httptest.NewUnstartedServer(s)
	// Refused handshakes are what some tests are about; keep them quiet.
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	if useTLS {
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
	return s
}

func (s *jwksTestServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	select {
	case s.arrived <- struct{}{}:
	default:
	}
	s.mu.Lock()
	mode, body, gate := s.mode, s.body, s.gate
	target, redirected := s.redirects[r.URL.Path]
	s.received = append(s.received, receivedRequest{path: r.URL.Path, header: r.Header.Clone()})
	s.mu.Unlock()

	if redirected {
		http.Redirect(w, r, target, http.StatusFound)
		return
	}
	switch mode {
	case jwksServeKeys:
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	case jwksServeError:
		http.Error(w, "unavailable", http.StatusInternalServerError)
	case jwksServeHang:
		<-r.Context().Done()
	case jwksServeGarbage:
		_, _ = w.Write([]byte("<html>not a key set</html>"))
	case jwksServeHuge, jwksServeHugeDeclared:
		const size, chunk = 10 << 20, 64 << 10
		if mode == jwksServeHugeDeclared {
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		block := bytes.Repeat([]byte(" "), chunk)
		for range size / chunk {
			if _, err := w.Write(block); err != nil {
				return // the client gave up, as it should
			}
		}
	}
}

// serveKeys makes the server answer with a set of keys.
func (s *jwksTestServer) serveKeys(t testing.TB, keys ...jwk.Key) {
	t.Helper()
	set := jwk.NewSet()
	for _, k := range keys {
		if err := set.AddKey(k); err != nil {
			t.Fatalf("add key to set: %v", err)
		}
	}
	body, err := json.Marshal(set)
	if err != nil {
		t.Fatalf("marshal set: %v", err)
	}
	s.serveBody(jwksServeKeys, body)
}

func (s *jwksTestServer) serve(mode jwksServeMode) { s.serveBody(mode, nil) }

func (s *jwksTestServer) serveBody(mode jwksServeMode, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mode, s.body = mode, body
}

// holdResponses makes key set answers wait until release is called.
func (s *jwksTestServer) holdResponses() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gate := make(chan struct{})
	s.gate = gate
	return sync.OnceFunc(func() { close(gate) })
}

// redirect makes requests for path answer with a redirect to target.
func (s *jwksTestServer) redirect(path, target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.redirects == nil {
		s.redirects = map[string]string{}
	}
	s.redirects[path] = target
}

// header returns the headers of the last request; nil before any.
func (s *jwksTestServer) header() http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.received) == 0 {
		return nil
	}
	return s.received[len(s.received)-1].header
}

// headersAt returns the headers of the requests for path so far, in order.
func (s *jwksTestServer) headersAt(path string) []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	var headers []http.Header
	for _, r := range s.received {
		if r.path == path {
			headers = append(headers, r.header)
		}
	}
	return headers
}

// jwksTestClock is a clock that moves only when told to.
type jwksTestClock struct {
	mu  sync.Mutex
	now time.Time
}

func newJWKSTestClock() *jwksTestClock {
	return &jwksTestClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *jwksTestClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *jwksTestClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// verifyNoJWKSLeaks fails t if goroutines started during t outlive its
// cleanups. Goroutines from other tests are ignored.
func verifyNoJWKSLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// jwksTestOptions returns options with clock (nil: the real one), an
// observed logger, and extra.
func jwksTestOptions(clock *jwksTestClock, extra ...Option) (*options, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	opts := append([]Option{WithLogger(zap.New(core))}, extra...)
	if clock != nil {
		opts = append(opts, WithClock(clock.Now))
	}
	return newOptions(opts), logs
}

// startJWKSTestProvider builds a provider for cfg, lets tune change it
// before it starts, and waits for its first fetch.
func startJWKSTestProvider(t *testing.T, cfg configs.Authenticator, o *options, tune func(*jwksProvider)) *jwksProvider {
	t.Helper()
	p, err := buildJWKSProvider("jwt", cfg, o)
	if err != nil {
		t.Fatalf("buildJWKSProvider: %v", err)
	}
	if tune != nil {
		tune(p)
	}
	p.start()
	t.Cleanup(p.close)
	waitJWKSFetch(t, p)
	return p
}

// waitJWKSFetch waits until the fetch under way, if any, is stored.
func waitJWKSFetch(t testing.TB, p *jwksProvider) {
	t.Helper()
	p.mu.Lock()
	call := p.inflight
	p.mu.Unlock()
	if call == nil {
		return
	}
	select {
	case <-call.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the JWKS fetch did not finish")
	}
}

func jwksConfig(endpoint string) configs.Authenticator {
	return configs.Authenticator{Mechanism: "jwt", UseJWKS: true, Endpoint: endpoint}
}

// jwksTestKey converts a raw key (public or private) to a JWK with kid and
// extra fields.
func jwksTestKey(t testing.TB, raw any, kid string, fields map[string]any) jwk.Key {
	t.Helper()
	k, err := jwk.FromRaw(raw)
	if err != nil {
		t.Fatalf("jwk.FromRaw(%T): %v", raw, err)
	}
	if kid != "" {
		if err := k.Set(jwk.KeyIDKey, kid); err != nil {
			t.Fatalf("set kid: %v", err)
		}
	}
	for name, value := range fields {
		if err := k.Set(name, value); err != nil {
			t.Fatalf("set %s: %v", name, err)
		}
	}
	return k
}

func jwksParseKey(t testing.TB, src string) jwk.Key {
	t.Helper()
	k, err := jwk.ParseKey([]byte(src))
	if err != nil {
		t.Fatalf("jwk.ParseKey(%s): %v", src, err)
	}
	return k
}

func newJWKSTestECKey(t testing.TB, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatalf("generate EC key: %v", err)
	}
	return k
}

// jwksTestECJWK is a fresh P-256 public JWK named kid.
func jwksTestECJWK(t testing.TB, kid string) jwk.Key {
	t.Helper()
	return jwksTestKey(t, &newJWKSTestECKey(t, elliptic.P256()).PublicKey, kid, nil)
}

// jwksKids lists the kids of keys, with the algorithm each was returned for.
func jwksKids(keys []verifyKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.kid+"/"+string(k.alg))
	}
	return out
}

func TestJWKSKeySelection(t *testing.T) {
	verifyNoJWKSLeaks(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("generate RSA key: %v", err)
	}
	ec256 := newJWKSTestECKey(t, elliptic.P256())
	ec384 := newJWKSTestECKey(t, elliptic.P384())
	ec521 := newJWKSTestECKey(t, elliptic.P521())
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("generate Ed25519 key: %v", err)
	}
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatalf("generate RSA key: %v", err)
	}

	s := newJWKSTestServer(t, false)
	s.serveKeys(t,
		jwksTestKey(t, &rsaKey.PublicKey, "rsa", nil),
		jwksTestKey(t, &ec256.PublicKey, "ec256", map[string]any{jwk.KeyUsageKey: jwk.ForSignature}),
		jwksTestKey(t, &ec384.PublicKey, "ec384", map[string]any{jwk.AlgorithmKey: jwa.ES384}),
		jwksTestKey(t, &ec521.PublicKey, "ec521", nil),
		jwksTestKey(t, edPub, "ed", nil),
		jwksTestKey(t, edPriv, "private", nil),
		jwksTestKey(t, &rsaKey.PublicKey, "rs256-only", map[string]any{jwk.AlgorithmKey: jwa.RS256}),
		jwksTestKey(t, &rsaKey.PublicKey, "twin", nil),
		jwksTestKey(t, &ec256.PublicKey, "twin", nil),
		jwksTestKey(t, &ec256.PublicKey, "verify-op", map[string]any{jwk.KeyOpsKey: jwk.KeyOperationList{jwk.KeyOpVerify}}),
		// Keys that must never be used:
		jwksParseKey(t, `{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}`),
		jwksTestKey(t, &rsaKey.PublicKey, "enc", map[string]any{jwk.KeyUsageKey: jwk.ForEncryption}),
		jwksTestKey(t, &ec256.PublicKey, "sign-op", map[string]any{jwk.KeyOpsKey: jwk.KeyOperationList{jwk.KeyOpSign}}),
		jwksTestKey(t, &ec256.PublicKey, "ec-as-rsa", map[string]any{jwk.AlgorithmKey: jwa.RS256}),
		jwksTestKey(t, &ec256.PublicKey, "ec-as-hmac", map[string]any{jwk.AlgorithmKey: jwa.HS256}),
		jwksParseKey(t, `{"kty":"OKP","crv":"X25519","kid":"x25519","x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}`),
		// jwx parses these; ed25519.Verify panics on the first two.
		jwksParseKey(t, `{"kty":"OKP","crv":"Ed25519","kid":"ed-short","x":"AAAA"}`),
		jwksParseKey(t, `{"kty":"OKP","crv":"Ed25519","kid":"ed-empty","x":""}`),
		jwksTestKey(t, &smallRSA.PublicKey, "rsa-1024", nil),
	)
	clock := newJWKSTestClock()
	o, logs := jwksTestOptions(clock)
	p := startJWKSTestProvider(t, jwksConfig(s.URL), o, nil)

	tests := []struct {
		name          string
		kid           string
		alg           jwa.SignatureAlgorithm
		want          []string // kid/alg of the returned keys
		wantKey       any      // the key returned, when checked
		wantAlgDenied bool     // ErrNoKey for a known kid with a wrong alg
	}{
		{name: "RSA key, RS256", kid: "rsa", alg: jwa.RS256, want: []string{"rsa/RS256"}, wantKey: &rsaKey.PublicKey},
		{name: "RSA key, PS512", kid: "rsa", alg: jwa.PS512, want: []string{"rsa/PS512"}},
		{name: "RSA key refuses ES256", kid: "rsa", alg: jwa.ES256, wantAlgDenied: true},
		{name: "RSA key refuses HS256", kid: "rsa", alg: jwa.HS256, wantAlgDenied: true},
		{name: "P-256 key with use sig, ES256", kid: "ec256", alg: jwa.ES256, want: []string{"ec256/ES256"}, wantKey: &ec256.PublicKey},
		{name: "P-256 key refuses ES384", kid: "ec256", alg: jwa.ES384, wantAlgDenied: true},
		{name: "P-384 key with alg ES384", kid: "ec384", alg: jwa.ES384, want: []string{"ec384/ES384"}},
		{name: "P-521 key, ES512", kid: "ec521", alg: jwa.ES512, want: []string{"ec521/ES512"}},
		{name: "Ed25519 key, EdDSA", kid: "ed", alg: jwa.EdDSA, want: []string{"ed/EdDSA"}, wantKey: edPub},
		{name: "Ed25519 key refuses ES256", kid: "ed", alg: jwa.ES256, wantAlgDenied: true},
		{name: "private key gives its public part", kid: "private", alg: jwa.EdDSA, want: []string{"private/EdDSA"}, wantKey: edPub},
		{name: "key alg RS256 allows RS256", kid: "rs256-only", alg: jwa.RS256, want: []string{"rs256-only/RS256"}},
		{name: "key alg RS256 refuses PS256", kid: "rs256-only", alg: jwa.PS256, wantAlgDenied: true},
		{name: "kid naming two keys, ES256 picks the EC one", kid: "twin", alg: jwa.ES256, want: []string{"twin/ES256"}, wantKey: &ec256.PublicKey},
		{name: "kid naming two keys, RS256 picks the RSA one", kid: "twin", alg: jwa.RS256, want: []string{"twin/RS256"}, wantKey: &rsaKey.PublicKey},
		{name: "key_ops with verify", kid: "verify-op", alg: jwa.ES256, want: []string{"verify-op/ES256"}},
		{name: "oct key ignored", kid: "hmac", alg: jwa.HS256},
		{name: "use enc ignored", kid: "enc", alg: jwa.RS256},
		{name: "key_ops without verify ignored", kid: "sign-op", alg: jwa.ES256},
		{name: "EC key with alg RS256 ignored", kid: "ec-as-rsa", alg: jwa.RS256},
		{name: "EC key with alg HS256 ignored", kid: "ec-as-hmac", alg: jwa.HS256},
		{name: "X25519 key ignored", kid: "x25519", alg: jwa.EdDSA},
		{name: "Ed25519 key of 3 bytes ignored", kid: "ed-short", alg: jwa.EdDSA},
		{name: "Ed25519 key of 0 bytes ignored", kid: "ed-empty", alg: jwa.EdDSA},
		{name: "RSA key of 1024 bits ignored", kid: "rsa-1024", alg: jwa.RS256},
		{name: "unknown kid", kid: "nobody", alg: jwa.RS256},
		{name: "no kid with many keys", kid: "", alg: jwa.RS256},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := p.keysFor(t.Context(), tt.kid, tt.alg)
			if tt.want == nil {
				if !errors.Is(err, ErrNoKey) {
					t.Fatalf("keysFor(%q, %s) = %v, %v; want ErrNoKey", tt.kid, tt.alg, jwksKids(keys), err)
				}
				if got := errors.Is(err, errAlgNotAllowedForKey); got != tt.wantAlgDenied {
					t.Errorf("errors.Is(%v, errAlgNotAllowedForKey) = %t, want %t", err, got, tt.wantAlgDenied)
				}
				return
			}
			if err != nil {
				t.Fatalf("keysFor(%q, %s): %v", tt.kid, tt.alg, err)
			}
			if got := jwksKids(keys); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("keys = %v, want %v", got, tt.want)
			}
			if tt.wantKey != nil && !reflect.DeepEqual(keys[0].key, tt.wantKey) {
				t.Errorf("key = %T %v, want %T %v", keys[0].key, keys[0].key, tt.wantKey, tt.wantKey)
			}
		})
	}

	// Misses at an unchanged time are within min_refresh_interval of the
	// first fetch, so none of them fetched again.
	if n := s.requests.Load(); n != 1 {
		t.Errorf("server saw %d requests, want 1", n)
	}
	loaded := logs.FilterMessage("jwks key set loaded").All()
	if len(loaded) != 1 {
		t.Fatalf("logged %d 'loaded' entries, want 1", len(loaded))
	}
	fields := loaded[0].ContextMap()
	if fields["keys"] != int64(10) || fields["authenticator"] != "jwt" || fields["endpoint"] != s.URL {
		t.Errorf("loaded log fields = %v, want keys 10, authenticator jwt, endpoint %s", fields, s.URL)
	}
	if skipped, _ := fields["skipped"].([]any); len(skipped) != 9 {
		t.Errorf("loaded log lists %d skipped keys, want 9: %v", len(skipped), fields["skipped"])
	}
}

func TestJWKSTokenWithoutKid(t *testing.T) {
	verifyNoJWKSLeaks(t)
	tests := []struct {
		name    string
		keys    func(t *testing.T) []jwk.Key
		wantKid string // kid of the key chosen; "-" for ErrNoKey
	}{
		{
			name:    "one key with a kid",
			keys:    func(t *testing.T) []jwk.Key { return []jwk.Key{jwksTestECJWK(t, "only")} },
			wantKid: "only",
		},
		{
			name:    "one key without a kid",
			keys:    func(t *testing.T) []jwk.Key { return []jwk.Key{jwksTestECJWK(t, "")} },
			wantKid: "",
		},
		{
			name: "one usable key among ignored ones",
			keys: func(t *testing.T) []jwk.Key {
				return []jwk.Key{jwksParseKey(t, `{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}`), jwksTestECJWK(t, "usable")}
			},
			wantKid: "usable",
		},
		{
			name:    "two keys",
			keys:    func(t *testing.T) []jwk.Key { return []jwk.Key{jwksTestECJWK(t, "a"), jwksTestECJWK(t, "b")} },
			wantKid: "-",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newJWKSTestServer(t, false)
			s.serveKeys(t, tt.keys(t)...)
			o, _ := jwksTestOptions(newJWKSTestClock())
			p := startJWKSTestProvider(t, jwksConfig(s.URL), o, nil)

			keys, err := p.keysFor(t.Context(), "", jwa.ES256)
			if tt.wantKid == "-" {
				if !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "no kid") {
					t.Fatalf("keysFor without kid = %v, %v; want ErrNoKey naming the missing kid", jwksKids(keys), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("keysFor without kid: %v", err)
			}
			if len(keys) != 1 || keys[0].kid != tt.wantKid || keys[0].alg != jwa.ES256 {
				t.Errorf("keys = %v, want %s/ES256", jwksKids(keys), tt.wantKid)
			}
		})
	}
}

func TestJWKSRotation(t *testing.T) {
	t.Run("unknown kid refetches once min_refresh_interval has passed", func(t *testing.T) {
		verifyNoJWKSLeaks(t)
		s := newJWKSTestServer(t, false)
		s.serveKeys(t, jwksTestECJWK(t, "old"))
		clock := newJWKSTestClock()
		o, _ := jwksTestOptions(clock)
		p := startJWKSTestProvider(t, jwksConfig(s.URL), o, nil)
		if _, err := p.keysFor(t.Context(), "old", jwa.ES256); err != nil {
			t.Fatalf("keysFor(old): %v", err)
		}

		s.serveKeys(t, jwksTestECJWK(t, "new"))
		if _, err := p.keysFor(t.Context(), "new", jwa.ES256); !errors.Is(err, ErrNoKey) {
			t.Fatalf("keysFor(new) right after the first fetch = %v, want ErrNoKey (rate-limited)", err)
		}
		if n := s.requests.Load(); n != 1 {
			t.Fatalf("server saw %d requests, want 1: the refetch is not rate-limited", n)
		}

		clock.Advance(defaultJWKSMinRefreshInterval)
		if _, err := p.keysFor(t.Context(), "new", jwa.ES256); err != nil {
			t.Fatalf("keysFor(new) after min_refresh_interval: %v", err)
		}
		if _, err := p.keysFor(t.Context(), "old", jwa.ES256); !errors.Is(err, ErrNoKey) {
			t.Fatalf("keysFor(old) after rotation = %v, want ErrNoKey", err)
		}
		if n := s.requests.Load(); n != 2 {
			t.Errorf("server saw %d requests, want 2", n)
		}
	})

	t.Run("refresh_interval refetches in the background", func(t *testing.T) {
		verifyNoJWKSLeaks(t)
		s := newJWKSTestServer(t, false)
		s.serveKeys(t, jwksTestECJWK(t, "old"), jwksTestECJWK(t, "current"))
		clock := newJWKSTestClock()
		o, _ := jwksTestOptions(clock)
		cfg := jwksConfig(s.URL)
		cfg.RefreshInterval = configs.Duration(time.Minute)
		p := startJWKSTestProvider(t, cfg, o, nil)

		s.serveKeys(t, jwksTestECJWK(t, "current"), jwksTestECJWK(t, "next"))
		clock.Advance(time.Minute)
		// Due for a refresh: this call still gets the set it has, and
		// starts the refresh without waiting for it.
		if _, err := p.keysFor(t.Context(), "old", jwa.ES256); err != nil {
			t.Fatalf("keysFor(old) while the refresh starts: %v", err)
		}
		waitJWKSFetch(t, p)
		if n := s.requests.Load(); n != 2 {
			t.Fatalf("server saw %d requests, want 2", n)
		}
		if _, err := p.keysFor(t.Context(), "next", jwa.ES256); err != nil {
			t.Errorf("keysFor(next) after the refresh: %v", err)
		}
		if _, err := p.keysFor(t.Context(), "old", jwa.ES256); !errors.Is(err, ErrNoKey) {
			t.Errorf("keysFor(old) after the refresh = %v, want ErrNoKey", err)
		}
		if n := s.requests.Load(); n != 2 {
			t.Errorf("server saw %d requests, want 2", n)
		}
	})

	t.Run("refresh loop picks up rotations without traffic", func(t *testing.T) {
		verifyNoJWKSLeaks(t)
		s := newJWKSTestServer(t, false)
		s.serveKeys(t, jwksTestECJWK(t, "old"))
		o, _ := jwksTestOptions(nil) // the real clock: the loop's timer is real
		p := startJWKSTestProvider(t, jwksConfig(s.URL), o, func(p *jwksProvider) {
			p.refreshInterval = 20 * time.Millisecond // under the floor, for speed
		})

		s.serveKeys(t, jwksTestECJWK(t, "new"))
		timeout := time.After(20 * time.Second)
		for {
			select {
			case <-s.arrived:
			case <-timeout:
				t.Fatal("the refresh loop never fetched the rotated set")
			}
			waitJWKSFetch(t, p)
			p.mu.Lock()
			_, rotated := p.set.byKid["new"]
			p.mu.Unlock()
			if rotated {
				break
			}
		}
		if _, err := p.keysFor(t.Context(), "new", jwa.ES256); err != nil {
			t.Errorf("keysFor(new): %v", err)
		}
	})
}

func TestJWKSEndpointDownAtStart(t *testing.T) {
	verifyNoJWKSLeaks(t)
	s := newJWKSTestServer(t, false)
	s.serve(jwksServeError)
	clock := newJWKSTestClock()
	o, logs := jwksTestOptions(clock)
	p := startJWKSTestProvider(t, jwksConfig(s.URL), o, nil)

	_, err := p.keysFor(t.Context(), "k", jwa.ES256)
	if !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), "500") {
		t.Fatalf("keysFor with the endpoint down = %v, want ErrKeysUnavailable naming the status", err)
	}
	if st := p.status(); st != (jwksStatus{consecutiveFailures: 1}) {
		t.Errorf("status = %+v, want not loaded with 1 failure", st)
	}
	warns := logs.FilterMessage("jwks fetch failed; refusing tokens until a fetch succeeds").All()
	if len(warns) != 1 || warns[0].Level != zapcore.WarnLevel {
		t.Fatalf("got %d warnings (%v), want 1", len(warns), logs.All())
	}
	if f := warns[0].ContextMap(); f["consecutive_failures"] != int64(1) || f["authenticator"] != "jwt" || f["endpoint"] != s.URL {
		t.Errorf("warning fields = %v", f)
	}

	s.serveKeys(t, jwksTestECJWK(t, "k"))
	if _, err := p.keysFor(t.Context(), "k", jwa.ES256); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("keysFor within min_refresh_interval = %v, want ErrKeysUnavailable", err)
	}
	if n := s.requests.Load(); n != 1 {
		t.Fatalf("server saw %d requests within min_refresh_interval, want 1", n)
	}

	clock.Advance(defaultJWKSMinRefreshInterval)
	if _, err := p.keysFor(t.Context(), "k", jwa.ES256); err != nil {
		t.Fatalf("keysFor once the endpoint is back: %v", err)
	}
	if n := s.requests.Load(); n != 2 {
		t.Errorf("server saw %d requests, want 2", n)
	}
	if st := p.status(); st != (jwksStatus{loaded: true}) {
		t.Errorf("status = %+v, want loaded, age 0, no failures", st)
	}
	if n := logs.FilterMessage("jwks key set loaded").Len(); n != 1 {
		t.Errorf("logged 'loaded' %d times, want 1", n)
	}
}

// startFailingJWKSProvider starts a provider with max_fail_count 3 whose
// endpoint gave it key "k", then fails every fetch.
func startFailingJWKSProvider(t *testing.T) (*jwksTestServer, *jwksTestClock, *observer.ObservedLogs, configs.Authenticator, *jwksProvider) {
	verifyNoJWKSLeaks(t)
	s := newJWKSTestServer(t, false)
	s.serveKeys(t, jwksTestECJWK(t, "k"))
	clock := newJWKSTestClock()
	o, logs := jwksTestOptions(clock)
	cfg := jwksConfig(s.URL)
	cfg.MaxFailCount = 3
	p := startJWKSTestProvider(t, cfg, o, nil)
	s.serve(jwksServeError)
	return s, clock, logs, cfg, p
}

func TestJWKSFailClosed(t *testing.T) {
	t.Run("after max_fail_count consecutive failures", func(t *testing.T) {
		s, clock, logs, cfg, p := startFailingJWKSProvider(t)
		for failures := 1; failures <= cfg.MaxFailCount; failures++ {
			clock.Advance(defaultJWKSRefreshInterval)
			// The last good set is served while the refresh fails.
			if _, err := p.keysFor(t.Context(), "k", jwa.ES256); err != nil {
				t.Fatalf("keysFor before failure %d: %v", failures, err)
			}
			waitJWKSFetch(t, p)
			want := jwksStatus{loaded: failures < cfg.MaxFailCount, age: time.Duration(failures) * defaultJWKSRefreshInterval, consecutiveFailures: failures}
			if st := p.status(); st != want {
				t.Fatalf("status after failure %d = %+v, want %+v", failures, st, want)
			}
		}
		_, err := p.keysFor(t.Context(), "k", jwa.ES256)
		if !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), "3 consecutive failed fetches") {
			t.Fatalf("keysFor after max_fail_count failures = %v, want ErrKeysUnavailable", err)
		}
		if n := s.requests.Load(); n != 4 {
			t.Fatalf("server saw %d requests, want 4", n)
		}
		if n := logs.FilterMessage("jwks fetch failed; serving the last good key set").Len(); n != 2 {
			t.Errorf("logged %d 'serving the last good key set' warnings, want 2", n)
		}
		if n := logs.FilterMessage("jwks fetch failed; refusing tokens until a fetch succeeds").Len(); n != 1 {
			t.Errorf("logged %d 'refusing tokens' warnings, want 1", n)
		}

		s.serveKeys(t, jwksTestECJWK(t, "k"))
		clock.Advance(defaultJWKSMinRefreshInterval)
		if _, err := p.keysFor(t.Context(), "k", jwa.ES256); err != nil {
			t.Fatalf("keysFor once the endpoint is back: %v", err)
		}
		if st := p.status(); st != (jwksStatus{loaded: true}) {
			t.Errorf("status after recovery = %+v, want loaded with no failures", st)
		}
	})

	// Any client can trigger a fetch every min_refresh_interval with a
	// made-up kid. During an outage those fetches fail too, but they must
	// not count faster than the scheduled refreshes would: else one client
	// drops every client's keys within max_fail_count x 10 s.
	t.Run("not sooner for fetches of unknown kids", func(t *testing.T) {
		s, clock, _, _, p := startFailingJWKSProvider(t)
		misses := int(defaultJWKSRefreshInterval/defaultJWKSMinRefreshInterval) + 1 // 31: the first and last a refresh_interval apart
		for i := range misses {
			clock.Advance(defaultJWKSMinRefreshInterval)
			if _, err := p.keysFor(t.Context(), fmt.Sprintf("made-up-%d", i), jwa.ES256); !errors.Is(err, ErrNoKey) {
				t.Fatalf("keysFor a made-up kid, miss %d: %v, want ErrNoKey", i, err)
			}
		}
		if n := s.requests.Load(); n != int64(misses)+1 {
			t.Fatalf("server saw %d requests, want %d: one per miss", n, misses+1)
		}
		// 31 failed fetches count as 2: the first and the one a full
		// refresh_interval after it.
		if _, err := p.keysFor(t.Context(), "k", jwa.ES256); err != nil {
			t.Fatalf("keysFor a real kid after %d failed fetches of unknown kids: %v", misses, err)
		}
		if st := p.status(); st.consecutiveFailures != 2 || !st.loaded {
			t.Errorf("status = %+v, want loaded with 2 failures counted", st)
		}
		// The next refresh a full interval later is the third, as it would
		// be without the misses.
		clock.Advance(defaultJWKSRefreshInterval)
		p.keysFor(t.Context(), "k", jwa.ES256)
		waitJWKSFetch(t, p)
		if _, err := p.keysFor(t.Context(), "k", jwa.ES256); !errors.Is(err, ErrKeysUnavailable) {
			t.Fatalf("keysFor after max_fail_count scheduled failures = %v, want ErrKeysUnavailable", err)
		}
	})

	t.Run("when older than max_stale", func(t *testing.T) {
		verifyNoJWKSLeaks(t)
		s := newJWKSTestServer(t, false)
		s.serveKeys(t, jwksTestECJWK(t, "k"))
		clock := newJWKSTestClock()
		o, _ := jwksTestOptions(clock)
		cfg := jwksConfig(s.URL)
		cfg.MaxStale = configs.Duration(time.Minute)
		p := startJWKSTestProvider(t, cfg, o, nil)

		s.serve(jwksServeError)
		clock.Advance(time.Minute)
		if _, err := p.keysFor(t.Context(), "k", jwa.ES256); err != nil {
			t.Fatalf("keysFor at exactly max_stale: %v", err)
		}
		clock.Advance(time.Second)
		// Unusable: waits for a fetch, which fails.
		_, err := p.keysFor(t.Context(), "k", jwa.ES256)
		if !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), "max_stale") {
			t.Fatalf("keysFor past max_stale = %v, want ErrKeysUnavailable naming max_stale", err)
		}
		want := jwksStatus{age: time.Minute + time.Second, consecutiveFailures: 1}
		if st := p.status(); st != want {
			t.Errorf("status = %+v, want %+v", st, want)
		}
		if n := s.requests.Load(); n != 2 {
			t.Errorf("server saw %d requests, want 2", n)
		}

		s.serveKeys(t, jwksTestECJWK(t, "k"))
		clock.Advance(defaultJWKSMinRefreshInterval)
		if _, err := p.keysFor(t.Context(), "k", jwa.ES256); err != nil {
			t.Fatalf("keysFor once the endpoint is back: %v", err)
		}
	})
}

func TestJWKSUnknownKidFlood(t *testing.T) {
	verifyNoJWKSLeaks(t)
	s := newJWKSTestServer(t, false)
	s.serveKeys(t, jwksTestECJWK(t, "real"))
	clock := newJWKSTestClock()
	o, _ := jwksTestOptions(clock)
	p := startJWKSTestProvider(t, jwksConfig(s.URL), o, nil)

	const goroutines, kidsEach = 50, 20
	for round, wantRequests := range []int64{2, 3} {
		clock.Advance(defaultJWKSMinRefreshInterval)
		var wrong atomic.Int64 // results other than ErrNoKey
		var wg sync.WaitGroup
		for range goroutines {
			wg.Go(func() {
				for range kidsEach {
					if _, err := p.keysFor(context.Background(), rand.Text(), jwa.ES256); !errors.Is(err, ErrNoKey) {
						wrong.Add(1)
					}
				}
			})
		}
		wg.Wait()
		if n := wrong.Load(); n != 0 {
			t.Errorf("round %d: %d lookups of unknown kids did not give ErrNoKey", round, n)
		}
		if n := s.requests.Load(); n != wantRequests {
			t.Errorf("round %d: server saw %d requests after %d unknown kids, want %d", round, n, goroutines*kidsEach, wantRequests)
		}
	}
	if _, err := p.keysFor(t.Context(), "real", jwa.ES256); err != nil {
		t.Errorf("keysFor(real) after the flood: %v", err)
	}
}

func TestJWKSConcurrentMissesShareOneFetch(t *testing.T) {
	verifyNoJWKSLeaks(t)
	s := newJWKSTestServer(t, false)
	s.serveKeys(t, jwksTestECJWK(t, "old"))
	clock := newJWKSTestClock()
	o, _ := jwksTestOptions(clock)
	p := startJWKSTestProvider(t, jwksConfig(s.URL), o, nil)

	s.serveKeys(t, jwksTestECJWK(t, "new"))
	release := s.holdResponses()
	t.Cleanup(release)
	clock.Advance(defaultJWKSMinRefreshInterval)
	<-s.arrived // the start-up fetch's
	const goroutines = 50
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := p.keysFor(context.Background(), "new", jwa.ES256)
		errs <- err
	})
	select {
	case <-s.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the unknown kid did not trigger a fetch")
	}

	// While that fetch is held, a miss waits for it rather than failing at
	// once: with a cancelled context, the wait is all it can report.
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.keysFor(cancelled, "new", jwa.ES256); !errors.Is(err, context.Canceled) {
		t.Fatalf("keysFor during the refetch = %v, want it to wait for the fetch", err)
	}
	for range goroutines - 1 {
		wg.Go(func() {
			_, err := p.keysFor(context.Background(), "new", jwa.ES256)
			errs <- err
		})
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("keysFor(new) sharing the refetch: %v", err)
		}
	}
	if n := s.requests.Load(); n != 2 {
		t.Errorf("server saw %d requests, want 2", n)
	}
}

func TestJWKSFetchFailures(t *testing.T) {
	tests := []struct {
		name       string
		mode       jwksServeMode
		keys       func(t *testing.T) []jwk.Key // served in jwksServeKeys mode
		wantDetail string
	}{
		{name: "status 500", mode: jwksServeError, wantDetail: "500 Internal Server Error"},
		{name: "garbage", mode: jwksServeGarbage, wantDetail: "parse JWKS"},
		{name: "10 MB streamed", mode: jwksServeHuge, wantDetail: "body is over the 1048576-byte limit"},
		{name: "10 MB declared", mode: jwksServeHugeDeclared, wantDetail: "body of 10485760 bytes is over the 1048576-byte limit"},
		{name: "hang", mode: jwksServeHang, wantDetail: "context deadline exceeded"},
		{
			name:       "empty set",
			mode:       jwksServeKeys,
			keys:       func(*testing.T) []jwk.Key { return nil },
			wantDetail: "no usable verification key among 0",
		},
		{
			name: "only oct keys",
			mode: jwksServeKeys,
			keys: func(t *testing.T) []jwk.Key {
				return []jwk.Key{jwksParseKey(t, `{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}`)}
			},
			wantDetail: "symmetric (oct) keys are never taken",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verifyNoJWKSLeaks(t)
			s := newJWKSTestServer(t, false)
			if tt.keys != nil {
				s.serveKeys(t, tt.keys(t)...)
			} else {
				s.serve(tt.mode)
			}
			o, _ := jwksTestOptions(newJWKSTestClock())
			const fetchTimeout = 200 * time.Millisecond
			started := time.Now()
			p := startJWKSTestProvider(t, jwksConfig(s.URL), o, func(p *jwksProvider) { p.fetcher.Timeout = fetchTimeout })
			if elapsed := time.Since(started); elapsed > 5*time.Second {
				t.Errorf("the failing fetch took %s; the fetch timeout is %s", elapsed, fetchTimeout)
			}

			_, err := p.keysFor(t.Context(), "k", jwa.ES256)
			if !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), tt.wantDetail) {
				t.Errorf("keysFor = %v, want ErrKeysUnavailable with %q", err, tt.wantDetail)
			}
			if st := p.status(); st != (jwksStatus{consecutiveFailures: 1}) {
				t.Errorf("status = %+v, want not loaded with 1 failure", st)
			}
			if n := s.requests.Load(); n != 1 {
				t.Errorf("server saw %d requests, want 1", n)
			}
		})
	}
}

func TestJWKSTLS(t *testing.T) {
	s := newJWKSTestServer(t, true)
	s.serveKeys(t, jwksTestECJWK(t, "k"))
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		ssl        *configs.TLSClient
		client     *http.Client
		wantDetail string // of the fetch error; empty when the fetch must succeed
	}{
		{name: "ca_file trusts the server", ssl: &configs.TLSClient{CAFile: caFile}},
		{name: "ca_file and matching server_name", ssl: &configs.TLSClient{CAFile: caFile, ServerName: "example.com"}},
		{name: "ca_file and other server_name", ssl: &configs.TLSClient{CAFile: caFile, ServerName: "other.example"}, wantDetail: "certificate"},
		{name: "system roots do not trust the server", wantDetail: "certificate"},
		{name: "ssl without ca_file uses system roots", ssl: &configs.TLSClient{}, wantDetail: "certificate"},
		{name: "insecure_skip_verify", ssl: &configs.TLSClient{InsecureSkipVerify: true}},
		{name: "a client from WithHTTPClient is used as is", client: s.Client()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verifyNoJWKSLeaks(t)
			cfg := jwksConfig(s.URL)
			cfg.SSL = tt.ssl
			var extra []Option
			if tt.client != nil {
				extra = append(extra, WithHTTPClient(tt.client))
			}
			o, _ := jwksTestOptions(newJWKSTestClock(), extra...)
			if tt.client != nil {
				// The given client's connections are the test's to close,
				// after the provider's (cleanups run last in, first out).
				t.Cleanup(tt.client.CloseIdleConnections)
			}
			p := startJWKSTestProvider(t, cfg, o, nil)

			_, err := p.keysFor(t.Context(), "k", jwa.ES256)
			if tt.wantDetail == "" {
				if err != nil {
					t.Errorf("keysFor: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), tt.wantDetail) {
				t.Errorf("keysFor = %v, want ErrKeysUnavailable with %q", err, tt.wantDetail)
			}
		})
	}
}

func TestJWKSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name      string
		endpoint  string
		ssl       *configs.TLSClient
		wantField string
	}{
		{name: "unparsable endpoint", endpoint: "http://%zz", wantField: "endpoint: "},
		{name: "endpoint not http", endpoint: "ftp://keys.example/jwks", wantField: "endpoint: "},
		{name: "endpoint without host", endpoint: "https:///jwks", wantField: "endpoint: "},
		{name: "missing ca_file", ssl: &configs.TLSClient{CAFile: missing}, wantField: "ssl.ca_file: "},
		{name: "ca_file without PEM", ssl: &configs.TLSClient{CAFile: notPEM}, wantField: "ssl.ca_file: "},
		{name: "cert_file without key_file", ssl: &configs.TLSClient{CertFile: notPEM}, wantField: "ssl.cert_file, key_file: give both"},
		{name: "unloadable cert_file", ssl: &configs.TLSClient{CertFile: missing, KeyFile: missing}, wantField: "ssl.cert_file, key_file: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := jwksConfig(tt.endpoint)
			if tt.endpoint == "" {
				cfg.Endpoint = "https://keys.example/jwks"
			}
			cfg.SSL = tt.ssl
			p, err := newJWKSProvider("jwt", cfg, newOptions(nil))
			if err == nil {
				p.close()
				t.Fatalf("newJWKSProvider succeeded, want an error naming %q", tt.wantField)
			}
			if !strings.HasPrefix(err.Error(), tt.wantField) {
				t.Errorf("error %q does not start with %q", err, tt.wantField)
			}
		})
	}
}

func TestJWKSSettings(t *testing.T) {
	tests := []struct {
		name             string
		change           func(*configs.Authenticator)
		wantRefresh      time.Duration
		wantMinRefresh   time.Duration
		wantMaxFailCount int
		wantMaxStale     time.Duration
		wantHeader       http.Header // sent with the request, among others
		wantHeaderAbsent string
	}{
		{
			name:        "defaults",
			change:      func(*configs.Authenticator) {},
			wantRefresh: 300 * time.Second, wantMinRefresh: 10 * time.Second, wantMaxFailCount: 5,
			wantHeader: http.Header{"Accept": {"application/json"}},
		},
		{
			name: "refresh_interval under 10s is raised",
			change: func(a *configs.Authenticator) {
				a.RefreshInterval = configs.Duration(2 * time.Second)
			},
			wantRefresh: 10 * time.Second, wantMinRefresh: 10 * time.Second, wantMaxFailCount: 5,
			wantHeader: http.Header{"Accept": {"application/json"}},
		},
		{
			name: "everything set",
			change: func(a *configs.Authenticator) {
				a.RefreshInterval = configs.Duration(time.Minute)
				a.MinRefreshInterval = configs.Duration(30 * time.Second)
				a.MaxFailCount = 2
				a.MaxStale = configs.Duration(time.Hour)
				a.Headers = map[string]string{"Authorization": "Bearer abc", "X-Tenant": "t1"}
			},
			wantRefresh: time.Minute, wantMinRefresh: 30 * time.Second, wantMaxFailCount: 2, wantMaxStale: time.Hour,
			wantHeader:       http.Header{"Authorization": {"Bearer abc"}, "X-Tenant": {"t1"}},
			wantHeaderAbsent: "Accept",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verifyNoJWKSLeaks(t)
			s := newJWKSTestServer(t, false)
			s.serveKeys(t, jwksTestECJWK(t, "k"))
			cfg := jwksConfig(s.URL)
			tt.change(&cfg)
			o, _ := jwksTestOptions(newJWKSTestClock())
			p, err := newJWKSProvider("jwt", cfg, o)
			if err != nil {
				t.Fatalf("newJWKSProvider: %v", err)
			}
			t.Cleanup(p.close)
			waitJWKSFetch(t, p)

			if p.refreshInterval != tt.wantRefresh || p.minRefreshInterval != tt.wantMinRefresh ||
				p.maxFailCount != tt.wantMaxFailCount || p.maxStale != tt.wantMaxStale {
				t.Errorf("refresh %s, min refresh %s, max fail count %d, max stale %s; want %s, %s, %d, %s",
					p.refreshInterval, p.minRefreshInterval, p.maxFailCount, p.maxStale,
					tt.wantRefresh, tt.wantMinRefresh, tt.wantMaxFailCount, tt.wantMaxStale)
			}
			got := s.header()
			for name, want := range tt.wantHeader {
				if !reflect.DeepEqual(got.Values(name), want) {
					t.Errorf("request header %s = %q, want %q", name, got.Values(name), want)
				}
			}
			if tt.wantHeaderAbsent != "" && got.Get(tt.wantHeaderAbsent) != "" {
				t.Errorf("request header %s = %q, want none", tt.wantHeaderAbsent, got.Get(tt.wantHeaderAbsent))
			}
			if !p.status().loaded {
				t.Errorf("status().loaded = false after a successful fetch")
			}
		})
	}
}

func TestJWKSStartAndClose(t *testing.T) {
	verifyNoJWKSLeaks(t)
	s := newJWKSTestServer(t, false)
	s.serve(jwksServeHang)
	clock := newJWKSTestClock()
	o, logs := jwksTestOptions(clock)

	// The fetch hangs for fetch.DefaultTimeout; newJWKSProvider must not wait.
	p, err := newJWKSProvider("jwt", jwksConfig(s.URL), o)
	if err != nil {
		t.Fatalf("newJWKSProvider: %v", err)
	}
	select {
	case <-s.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the first fetch never reached the server")
	}
	if st := p.status(); st.loaded {
		t.Errorf("status = %+v while the first fetch hangs, want not loaded", st)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.keysFor(ctx, "k", jwa.ES256); !errors.Is(err, ErrKeysUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("keysFor while the first fetch hangs = %v, want ErrKeysUnavailable after the caller's deadline", err)
	}

	started := time.Now()
	p.close()
	if elapsed := time.Since(started); elapsed >= fetch.DefaultTimeout {
		t.Errorf("close took %s: it did not cut the hung fetch short", elapsed)
	}
	p.close() // a second close is harmless

	clock.Advance(time.Hour)
	if _, err := p.keysFor(t.Context(), "k", jwa.ES256); !errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("keysFor after close = %v, want ErrKeysUnavailable", err)
	}
	if n := s.requests.Load(); n != 1 {
		t.Errorf("server saw %d requests, want 1: nothing may fetch after close", n)
	}
	if st := p.status(); st != (jwksStatus{}) {
		t.Errorf("status after close = %+v, want zero: a fetch cut short by close is no failure", st)
	}
	if n := logs.FilterMessageSnippet("jwks fetch failed").Len(); n != 0 {
		t.Errorf("logged %d fetch failures for a fetch cut short by close, want 0", n)
	}
}

// TestJWKSRefusesAfterClose: a closed authenticator refreshes its set no
// more, so it does not serve it either, as Chain.Close says.
func TestJWKSRefusesAfterClose(t *testing.T) {
	verifyNoJWKSLeaks(t)
	s := newJWKSTestServer(t, false)
	s.serveKeys(t, jwksTestECJWK(t, "k"))
	o, _ := jwksTestOptions(newJWKSTestClock())
	p := startJWKSTestProvider(t, jwksConfig(s.URL), o, nil)
	if _, err := p.keysFor(t.Context(), "k", jwa.ES256); err != nil {
		t.Fatalf("keysFor before close: %v", err)
	}
	p.close()
	if _, err := p.keysFor(t.Context(), "k", jwa.ES256); !errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("keysFor after close = %v, want ErrKeysUnavailable", err)
	}
}

func BenchmarkJWKSKeysFor(b *testing.B) {
	s := newJWKSTestServer(b, false)
	// Five keys, as an identity provider in rotation publishes.
	var keys []jwk.Key
	for i := range 5 {
		keys = append(keys, jwksTestECJWK(b, "k"+strconv.Itoa(i)))
	}
	s.serveKeys(b, keys...)
	o, _ := jwksTestOptions(newJWKSTestClock())
	p, err := newJWKSProvider("jwt", jwksConfig(s.URL), o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.close)
	waitJWKSFetch(b, p)

	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.keysFor(b.Context(), "k3", jwa.ES256); err != nil {
			b.Fatal(err)
		}
	}
}

// TestJWKSThroughChain verifies real tokens through New with use_jwks:
// selection by kid, rotation, and the reasons the chain reports.
func TestJWKSThroughChain(t *testing.T) {
	verifyNoJWKSLeaks(t)
	first := newJWKSTestECKey(t, elliptic.P256())
	second := newJWKSTestECKey(t, elliptic.P256())
	s := newJWKSTestServer(t, false)
	s.serveKeys(t, jwksTestKey(t, &first.PublicKey, "first", nil))
	clock := newJWKSTestClock()
	chain, err := New([]configs.Authenticator{jwksConfig(s.URL)}, WithClock(clock.Now))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(chain.Close)

	sign := func(t *testing.T, key *ecdsa.PrivateKey, kid string) string {
		t.Helper()
		headers := jws.NewHeaders()
		if err := headers.Set(jws.KeyIDKey, kid); err != nil {
			t.Fatal(err)
		}
		claims := `{"sub":"c1","exp":` + strconv.FormatInt(clock.Now().Add(time.Hour).Unix(), 10) + `}`
		token, err := jws.Sign([]byte(claims), jws.WithKey(jwa.ES256, key, jws.WithProtectedHeaders(headers)))
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		return string(token)
	}
	rotate := func(t *testing.T) {
		s.serveKeys(t, jwksTestKey(t, &second.PublicKey, "second", nil))
		clock.Advance(defaultJWKSMinRefreshInterval)
	}

	steps := []struct {
		name       string
		before     func(t *testing.T)
		key        *ecdsa.PrivateKey
		kid        string
		wantReason RefuseReason // empty: accepted
	}{
		{name: "first key accepted", key: first, kid: "first"},
		{name: "kid of the first key, signed by another", key: second, kid: "first", wantReason: ErrBadSignature},
		{name: "second key before rotation", key: second, kid: "second", wantReason: ErrNoKey},
		{name: "second key after rotation", before: rotate, key: second, kid: "second"},
		{name: "first key after rotation", key: first, kid: "first", wantReason: ErrNoKey},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			if step.before != nil {
				step.before(t)
			}
			id, err := chain.Verify(t.Context(), Request{ClientID: "c1", Password: []byte(sign(t, step.key, step.kid)), HasPassword: true})
			if got := ReasonOf(err); got != step.wantReason {
				t.Fatalf("Verify: reason %q (%v), want %q", got, err, step.wantReason)
			}
			if step.wantReason == "" && (id.Subject != "c1" || id.Authenticator != "jwt") {
				t.Errorf("identity = %+v, want subject c1 from authenticator jwt", id)
			}
		})
	}
	if n := s.requests.Load(); n != 2 {
		t.Errorf("server saw %d requests, want 2", n)
	}
}

// TestJWKSKeysKeptAcrossReload: a chain built WithPrevious serves the keys
// the running chain's JWKS authenticator holds, while its own first fetch
// fails; an authenticator whose endpoint changed starts without them.
func TestJWKSKeysKeptAcrossReload(t *testing.T) {
	verifyNoJWKSLeaks(t)
	s := newJWKSTestServer(t, false)
	s.serveKeys(t, jwksTestKey(t, &testKeys().p256.PublicKey, "k", nil))
	running := newTestChain(t, jwksConfig(s.URL))
	waitJWKSFetch(t, running.jwksProvider("jwt"))
	tok := signToken(t, jwa.ES256, testKeys().p256, `{"alg":"ES256","kid":"k"}`,
		fmt.Sprintf(`{"sub":"c1","exp":%d}`, time.Now().Add(time.Hour).Unix()))

	s.serve(jwksServeError) // the identity provider goes down, then the proxy reloads
	reloaded, err := New([]configs.Authenticator{jwksConfig(s.URL)}, WithPrevious(running))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reloaded.Close)
	waitJWKSFetch(t, reloaded.jwksProvider("jwt"))
	if _, err := reloaded.Verify(t.Context(), passwordRequest(tok)); err != nil {
		t.Errorf("Verify after a reload while the endpoint is down: %v, want the running keys", err)
	}

	moved := jwksConfig(s.URL + "/elsewhere")
	other, err := New([]configs.Authenticator{moved}, WithPrevious(running))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	waitJWKSFetch(t, other.jwksProvider("jwt"))
	if _, err := other.Verify(t.Context(), passwordRequest(tok)); ReasonOf(err) != ErrKeysUnavailable {
		t.Errorf("Verify with a changed endpoint = %v, want %s: keys of another endpoint are not carried over", err, ErrKeysUnavailable)
	}
}
