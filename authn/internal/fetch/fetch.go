// Package fetch downloads the documents authentication depends on, a JWKS
// and the revocation list, over HTTP with one set of rules: a size cap, a
// timeout, the configured TLS settings and headers, and redirects that
// neither leave https nor carry the configured headers to another host.
// Keeping the last good document, and when to fetch, are its callers'.
//
// Typical usage:
//
//	f, err := fetch.New(endpoint, fetch.Options{Headers: cfg.Headers, SSL: cfg.SSL, MaxBody: 1 << 20})
//	if err != nil {
//		return err // "ssl.ca_file: ..."
//	}
//	defer f.Close()
//	body, err := f.Get(ctx) // within f.Timeout and MaxBody
package fetch

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

const (
	// DefaultTimeout bounds one request, body included, so that a hung
	// server cannot hold a refresh, or whoever waits on it, for long.
	DefaultTimeout = 10 * time.Second
	// maxRedirects is how many redirects one request follows: as many as
	// Go's client follows by default.
	maxRedirects = 10
)

// ErrNotHTTP is why New refuses a URL of another scheme, or without a
// host.
var ErrNotHTTP = errors.New("not an http or https URL")

// Options are how a Fetcher requests its URL.
type Options struct {
	// Headers are sent with every request. Nil or empty means
	// Accept: application/json.
	Headers map[string]string
	// SSL configures TLS for a client the Fetcher builds; nil means the
	// system's roots.
	SSL *configs.TLSClient
	// Client, when not nil, is used instead of a client built from SSL;
	// the redirect rules apply to it all the same.
	Client *http.Client
	// MaxBody is the largest body accepted, in bytes. Required.
	MaxBody int64
	// Logger gets a debug line when a redirect goes to another host;
	// nil means none.
	Logger *zap.Logger
}

// Fetcher gets one URL. It is safe for concurrent use.
type Fetcher struct {
	// Timeout bounds one Get, body included. New sets it to
	// DefaultTimeout; change it, if at all, before the first Get.
	Timeout time.Duration

	url     string
	headers map[string]string
	client  *http.Client
	// transport is client's transport when New built it, so that Close
	// can drop its idle connections; nil for Options.Client.
	transport *http.Transport
	maxBody   int64
}

// New returns the fetcher of u, an http or https URL. Errors name the
// faulty option: "ssl.ca_file: ...".
func New(u *url.URL, o Options) (*Fetcher, error) {
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is %w", u.Redacted(), ErrNotHTTP)
	}
	if o.MaxBody <= 0 {
		return nil, fmt.Errorf("MaxBody %d is not positive", o.MaxBody)
	}
	f := &Fetcher{Timeout: DefaultTimeout, url: u.String(), maxBody: o.MaxBody, client: o.Client}
	if f.client == nil {
		var err error
		if f.client, f.transport, err = newClient(o.SSL); err != nil {
			return nil, err
		}
	}
	f.headers = map[string]string{"Accept": "application/json"}
	if len(o.Headers) > 0 {
		f.headers = maps.Clone(o.Headers)
	}
	logger := o.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	f.client = withRedirectPolicy(f.client, u, slices.Sorted(maps.Keys(o.Headers)), logger)
	return f, nil
}

// newClient builds a client with the ssl settings, and returns it with
// its transport.
func newClient(ssl *configs.TLSClient) (*http.Client, *http.Transport, error) {
	var tlsConfig *tls.Config
	if ssl != nil {
		var err error
		if tlsConfig, err = ssl.ClientConfig(""); err != nil {
			return nil, nil, fmt.Errorf("ssl.%w", err) // "ssl.ca_file: ..."
		}
	}
	// Settings as in http.DefaultTransport, which cannot be shared: its
	// TLS configuration is global.
	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     tlsConfig,
		ForceAttemptHTTP2:   true,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &http.Client{Transport: transport}, transport, nil
}

// RedirectRefusedError is a redirect a Get did not follow because it
// leaves https.
type RedirectRefusedError struct {
	// Target is the redirect's URL, redacted.
	Target string
}

func (e *RedirectRefusedError) Error() string {
	return fmt.Sprintf("redirect to %s refused: the URL is https and the redirect is not", e.Target)
}

// withRedirectPolicy returns a copy of client that follows redirects only
// while they keep to https, when u is https, and that sends the headers
// named in configured to u's host and port only. Go's client alone
// follows https to http, keeps custom headers (X-Api-Key) on a redirect to
// any host, and Authorization on a redirect to another port of the same
// host. A policy client already has runs after this one.
func withRedirectPolicy(client *http.Client, u *url.URL, configured []string, logger *zap.Logger) *http.Client {
	given := client.CheckRedirect
	policy := *client
	policy.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("stopped after %d redirects", maxRedirects)
		}
		if u.Scheme == "https" && req.URL.Scheme != "https" {
			return &RedirectRefusedError{Target: req.URL.Redacted()}
		}
		if len(configured) > 0 && hostPort(req.URL) != hostPort(u) {
			for _, name := range configured {
				req.Header.Del(name)
			}
			logger.Debug("redirect to another host; the configured headers are not sent there",
				zap.String("redirect", req.URL.Redacted()), zap.Strings("headers", configured))
		}
		if given != nil {
			return given(req, via)
		}
		return nil
	}
	return &policy
}

// hostPort is u's host, lower-cased, and port, the scheme's default when u
// names none: what tells whether a redirect stays on the URL's host.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// Get fetches the URL and returns the body of a 2xx answer, within
// f.Timeout and MaxBody. A context's cancellation ends it.
func (f *Fetcher) Get(ctx context.Context) ([]byte, error) {
	body, _, err := f.GetIfModified(ctx, Validators{})
	return body, err
}

// Validators are what a server said identifies the body it sent, its
// ETag and Last-Modified headers; empty when it said nothing.
type Validators struct {
	ETag, LastModified string
}

// GetIfModified is Get, asking the server (If-None-Match,
// If-Modified-Since) to send the body only when it is not the one v
// describes: an unchanged document then costs an answer without a body
// rather than the whole of it. It returns the body with its validators,
// or, when the server answers 304 Not Modified to a conditional request,
// a nil body and v. With empty v it is Get.
func (f *Fetcher) GetIfModified(ctx context.Context, v Validators) ([]byte, Validators, error) {
	ctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url, nil)
	if err != nil {
		return nil, v, fmt.Errorf("build request: %w", err)
	}
	for name, value := range f.headers {
		req.Header.Set(name, value)
	}
	if v.ETag != "" {
		req.Header.Set("If-None-Match", v.ETag)
	}
	if v.LastModified != "" {
		req.Header.Set("If-Modified-Since", v.LastModified)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, v, err // already names the method and URL
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified && v != (Validators{}) {
		return nil, v, nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, v, fmt.Errorf("unexpected status %s", resp.Status)
	}
	if resp.ContentLength > f.maxBody {
		return nil, v, fmt.Errorf("body of %d bytes is over the %d-byte limit", resp.ContentLength, f.maxBody)
	}
	var body bytes.Buffer
	if resp.ContentLength > 0 {
		// Room for the body and the last read, which finds its end, so
		// that a large body is not copied as the buffer grows.
		body.Grow(int(resp.ContentLength) + bytes.MinRead)
	}
	if _, err := body.ReadFrom(io.LimitReader(resp.Body, f.maxBody+1)); err != nil {
		return nil, v, fmt.Errorf("read body: %w", err)
	}
	if int64(body.Len()) > f.maxBody {
		return nil, v, fmt.Errorf("body is over the %d-byte limit", f.maxBody)
	}
	return body.Bytes(), Validators{ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}, nil
}

// URL is the URL fetched, credentials included: not for logs.
func (f *Fetcher) URL() string { return f.url }

// Close drops the idle connections of a client New built. The Fetcher
// may still be used.
func (f *Fetcher) Close() {
	if f.transport != nil {
		f.transport.CloseIdleConnections()
	}
}
