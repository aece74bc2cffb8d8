package authn

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// redirectTestServer serves a key set at /jwks and redirects /moved to
// its target, recording the headers of each request by path.
type redirectTestServer struct {
	*httptest.Server
	body []byte

	mu      sync.Mutex
	target  string
	headers map[string][]http.Header
}

func newRedirectTestServer(t *testing.T, useTLS bool, body []byte) *redirectTestServer {
	t.Helper()
	s := &redirectTestServer{body: body, headers: map[string][]http.Header{}}
	s.Server = httptest.NewUnstartedServer(s)
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	if useTLS {
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
	return s
}

func (s *redirectTestServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.headers[r.URL.Path] = append(s.headers[r.URL.Path], r.Header.Clone())
	target := s.target
	s.mu.Unlock()
	switch r.URL.Path {
	case "/jwks":
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(s.body)
	case "/moved":
		http.Redirect(w, r, target, http.StatusFound)
	default:
		http.NotFound(w, r)
	}
}

func (s *redirectTestServer) redirectTo(target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.target = target
}

// requests returns the headers of the requests for path so far.
func (s *redirectTestServer) requests(path string) []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.headers[path]
}

// TestJWKSRedirects: a redirect from an https endpoint to http is not
// followed, so no key arrives over plain HTTP and no header goes out in
// clear; the configured headers follow a redirect on the endpoint's host
// and port, and no other.
func TestJWKSRedirects(t *testing.T) {
	set := jwk.NewSet()
	if err := set.AddKey(jwksTestECJWK(t, "k")); err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	headers := map[string]string{"Authorization": "Bearer s3cret", "X-Api-Key": "k3y"}

	origin := newRedirectTestServer(t, true, body)
	plain := newRedirectTestServer(t, false, body)
	otherPort := newRedirectTestServer(t, true, body)
	// Every httptest TLS server has the same certificate, for 127.0.0.1
	// and *.example.com.
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: origin.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	// namedClient reaches every *.example.com name on 127.0.0.1, so that
	// a redirect can go to another host name.
	namedClient := origin.Client()
	namedTransport := namedClient.Transport.(*http.Transport).Clone()
	namedTransport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
	}
	namedClient = &http.Client{Transport: namedTransport}
	named := func(host string, u string) string {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		parsed.Host = net.JoinHostPort(host, parsed.Port())
		return parsed.String()
	}

	tests := []struct {
		name     string
		endpoint string
		target   string // where origin's /moved redirects
		client   *http.Client
		// landing is the server the redirect reaches; nil when it must
		// not be reached.
		landing     *redirectTestServer
		wantHeaders bool // the landing request carries the configured headers
	}{
		{name: "https to http is refused", endpoint: origin.URL + "/moved", target: plain.URL + "/jwks"},
		{name: "https to http is refused with a given client", endpoint: origin.URL + "/moved", target: plain.URL + "/jwks", client: origin.Client()},
		{name: "same host keeps the headers", endpoint: origin.URL + "/moved", target: origin.URL + "/jwks", landing: origin, wantHeaders: true},
		{name: "another port gets no header", endpoint: origin.URL + "/moved", target: otherPort.URL + "/jwks", landing: otherPort},
		{name: "another host name gets no header", endpoint: named("keys.example.com", origin.URL) + "/moved",
			target: named("other.example.com", otherPort.URL) + "/jwks", client: namedClient, landing: otherPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verifyNoJWKSLeaks(t)
			origin.redirectTo(tt.target)
			seenBefore := map[*redirectTestServer]int{}
			for _, s := range []*redirectTestServer{origin, plain, otherPort} {
				seenBefore[s] = len(s.requests("/jwks"))
			}
			cfg := jwksConfig(tt.endpoint)
			cfg.Headers = headers
			var extra []Option
			if tt.client != nil {
				extra = append(extra, WithHTTPClient(tt.client))
				t.Cleanup(tt.client.CloseIdleConnections)
			} else {
				cfg.SSL = &configs.TLSClient{CAFile: caFile}
			}
			o, logs := jwksTestOptions(newJWKSTestClock(), extra...)
			p := startJWKSTestProvider(t, cfg, o, nil)
			_, keysErr := p.keysFor(t.Context(), "k", jwa.ES256)

			if tt.landing == nil {
				if !errors.Is(keysErr, ErrKeysUnavailable) || !strings.Contains(keysErr.Error(), "refused") {
					t.Errorf("keysFor = %v, want ErrKeysUnavailable naming the refused redirect", keysErr)
				}
				if n := len(plain.requests("/jwks")) - seenBefore[plain]; n != 0 {
					t.Errorf("the http URL got %d requests, want none", n)
				}
				failed := logs.FilterMessageSnippet("jwks fetch failed").All()
				if len(failed) == 0 {
					t.Fatal("no log line for the refused fetch")
				}
				fields := failed[0].ContextMap()
				if fields["redirect"] != tt.target || fields["endpoint"] != tt.endpoint {
					t.Errorf("refused fetch logged redirect %v, endpoint %v; want %s, %s", fields["redirect"], fields["endpoint"], tt.target, tt.endpoint)
				}
				return
			}
			if keysErr != nil {
				t.Fatalf("keysFor: %v", keysErr)
			}
			landed := tt.landing.requests("/jwks")[seenBefore[tt.landing]:]
			if len(landed) == 0 {
				t.Fatal("the redirect target got no request")
			}
			for name, value := range headers {
				got := landed[0].Get(name)
				if tt.wantHeaders && got != value {
					t.Errorf("%s = %q at the redirect target, want %q", name, got, value)
				}
				if !tt.wantHeaders && got != "" {
					t.Errorf("%s = %q at the redirect target on another host, want none", name, got)
				}
			}
		})
	}
}
