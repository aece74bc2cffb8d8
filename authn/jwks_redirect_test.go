package authn

import (
	"context"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// TestJWKSRedirects: a redirect from an https endpoint to http is not
// followed, so no key arrives over plain HTTP and no header goes out in
// clear; the configured headers follow a redirect on the endpoint's host
// and port, and no other.
func TestJWKSRedirects(t *testing.T) {
	headers := map[string]string{"Authorization": "Bearer s3cret", "X-Api-Key": "k3y"}
	key := jwksTestECJWK(t, "k")
	origin := newJWKSTestServer(t, true)
	plain := newJWKSTestServer(t, false)
	otherPort := newJWKSTestServer(t, true)
	for _, s := range []*jwksTestServer{origin, plain, otherPort} {
		s.serveKeys(t, key)
	}
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
		landing     *jwksTestServer
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
			origin.redirect("/moved", tt.target)
			seenBefore := map[*jwksTestServer]int{}
			for _, s := range []*jwksTestServer{origin, plain, otherPort} {
				seenBefore[s] = len(s.headersAt("/jwks"))
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
				if n := len(plain.headersAt("/jwks")) - seenBefore[plain]; n != 0 {
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
			landed := tt.landing.headersAt("/jwks")[seenBefore[tt.landing]:]
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
