package fetch

import (
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// server answers each path with a handler a test sets, and records the
// headers of each request by path.
type server struct {
	*httptest.Server
	mu       sync.Mutex
	handlers map[string]http.HandlerFunc
	headers  map[string][]http.Header
}

func newServer(t *testing.T, useTLS bool) *server {
	t.Helper()
	s := &server{handlers: map[string]http.HandlerFunc{}, headers: map[string][]http.Header{}}
	s.Server = httptest.NewUnstartedServer(s)
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // quiet for tests
	if useTLS {
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
	return s
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.headers[r.URL.Path] = append(s.headers[r.URL.Path], r.Header.Clone())
	h := s.handlers[r.URL.Path]
	s.mu.Unlock()
	if h == nil {
		http.NotFound(w, r)
		return
	}
	h(w, r)
}

func (s *server) handle(path string, h http.HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[path] = h
}

func (s *server) requests(path string) []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.headers[path]
}

// caFile writes a CA file that trusts s, an httptest TLS server; they all
// share one certificate.
func caFile(t *testing.T, s *server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newFetcher(t *testing.T, rawURL string, o Options) *Fetcher {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(u, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(f.Close)
	return f
}

func body(s string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, s) }
}

func TestGet(t *testing.T) {
	s := newServer(t, false)
	s.handle("/doc", body(`{"ok": true}`))
	s.handle("/exact", body(strings.Repeat("x", 100)))
	s.handle("/big", body(strings.Repeat("x", 101)))
	s.handle("/chunked", func(w http.ResponseWriter, r *http.Request) {
		for range 101 {
			io.WriteString(w, "x")
			w.(http.Flusher).Flush() // no Content-Length: the cap applies as it reads
		}
	})
	s.handle("/gone", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "gone", http.StatusGone) })
	f := func(path string) *Fetcher { return newFetcher(t, s.URL+path, Options{MaxBody: 100}) }

	got, err := f("/doc").Get(t.Context())
	if err != nil || string(got) != `{"ok": true}` {
		t.Errorf("Get = %q, %v", got, err)
	}
	if h := s.requests("/doc")[0].Get("Accept"); h != "application/json" {
		t.Errorf("Accept = %q, want application/json by default", h)
	}
	if got, err := f("/exact").Get(t.Context()); err != nil || len(got) != 100 {
		t.Errorf("a body of MaxBody bytes: %d bytes, %v", len(got), err)
	}
	for path, want := range map[string]string{
		"/big":     "body of 101 bytes is over the 100-byte limit",
		"/chunked": "body is over the 100-byte limit",
		"/gone":    "unexpected status 410 Gone",
		"/missing": "unexpected status 404 Not Found",
	} {
		if _, err := f(path).Get(t.Context()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: Get = %v, want %q", path, err, want)
		}
	}
}

// TestGetIfModified: the validators of a body go back with the next
// request, and a 304 answer to them is the body unchanged; without them,
// a 304 is an error.
func TestGetIfModified(t *testing.T) {
	s := newServer(t, false)
	modified := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	doc := `{"jti": ["a"]}`
	var mu sync.Mutex
	serve := func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		d := doc
		mu.Unlock()
		w.Header().Set("ETag", fmt.Sprintf("%q", fmt.Sprint(len(d))))
		http.ServeContent(w, r, "", modified, strings.NewReader(d)) // answers If-None-Match and If-Modified-Since
	}
	s.handle("/etag", serve)
	s.handle("/modified", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", modified, strings.NewReader(`{}`))
	})
	s.handle("/304", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotModified) })

	f := newFetcher(t, s.URL+"/etag", Options{MaxBody: 100})
	got, v, err := f.GetIfModified(t.Context(), Validators{})
	want := Validators{ETag: `"14"`, LastModified: modified.Format(http.TimeFormat)}
	if err != nil || string(got) != doc || v != want {
		t.Fatalf("first GetIfModified = %q, %+v, %v; want the document and %+v", got, v, err, want)
	}
	got, again, err := f.GetIfModified(t.Context(), v)
	if err != nil || got != nil || again != v {
		t.Errorf("unchanged: GetIfModified = %q, %+v, %v; want no body and the same validators", got, again, err)
	}
	if h := s.requests("/etag")[1]; h.Get("If-None-Match") != `"14"` || h.Get("If-Modified-Since") != want.LastModified {
		t.Errorf("conditional request headers %v", h)
	}
	mu.Lock()
	doc = `{"jti": ["a", "b"]}`
	mu.Unlock()
	if got, v, err := f.GetIfModified(t.Context(), v); err != nil || string(got) != `{"jti": ["a", "b"]}` || v.ETag != `"19"` {
		t.Errorf("changed: GetIfModified = %q, %+v, %v; want the new document and its ETag", got, v, err)
	}

	f = newFetcher(t, s.URL+"/modified", Options{MaxBody: 100})
	_, v, err = f.GetIfModified(t.Context(), Validators{})
	if err != nil || v.ETag != "" || v.LastModified == "" {
		t.Fatalf("GetIfModified = %+v, %v; want Last-Modified alone", v, err)
	}
	if got, _, err := f.GetIfModified(t.Context(), v); err != nil || got != nil {
		t.Errorf("unchanged by Last-Modified: GetIfModified = %q, %v; want no body", got, err)
	}

	f = newFetcher(t, s.URL+"/304", Options{MaxBody: 100})
	if _, err := f.Get(t.Context()); err == nil || !strings.Contains(err.Error(), "unexpected status 304") {
		t.Errorf("a 304 to an unconditional request: Get = %v, want an error", err)
	}
}

func TestGetHeaders(t *testing.T) {
	s := newServer(t, false)
	s.handle("/doc", body(`{}`))
	f := newFetcher(t, s.URL+"/doc", Options{MaxBody: 100, Headers: map[string]string{"Authorization": "Bearer x", "X-Tenant": "t1"}})
	if _, err := f.Get(t.Context()); err != nil {
		t.Fatal(err)
	}
	h := s.requests("/doc")[0]
	if h.Get("Authorization") != "Bearer x" || h.Get("X-Tenant") != "t1" || h.Get("Accept") != "" {
		t.Errorf("headers %v, want the configured ones instead of the default Accept", h)
	}
}

// TestGetTimeout: a server that never answers costs at most Timeout.
func TestGetTimeout(t *testing.T) {
	s := newServer(t, false)
	release := make(chan struct{})
	defer close(release)
	s.handle("/hang", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	f := newFetcher(t, s.URL+"/hang", Options{MaxBody: 100})
	f.Timeout = 100 * time.Millisecond
	started := time.Now()
	_, err := f.Get(t.Context())
	if err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Errorf("Get = %v, want the deadline", err)
	}
	if elapsed := time.Since(started); elapsed > 10*time.Second {
		t.Errorf("Get took %s with a timeout of %s", elapsed, f.Timeout)
	}
}

// TestRedirects: a redirect from https to http is refused, so nothing
// arrives over plain HTTP and no header goes out in clear; the configured
// headers follow a redirect on the URL's host and port, and no other.
func TestRedirects(t *testing.T) {
	origin := newServer(t, true)
	plain := newServer(t, false)
	otherPort := newServer(t, true)
	for _, s := range []*server{origin, plain, otherPort} {
		s.handle("/doc", body(`{}`))
	}
	ssl := &configs.TLSClient{CAFile: caFile(t, origin)}
	headers := map[string]string{"Authorization": "Bearer s3cret", "X-Api-Key": "k3y"}
	redirect := func(target string) {
		origin.handle("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, target, http.StatusFound) })
	}

	redirect(plain.URL + "/doc")
	_, err := newFetcher(t, origin.URL+"/moved", Options{MaxBody: 100, Headers: headers, SSL: ssl}).Get(t.Context())
	if refused, ok := errors.AsType[*RedirectRefusedError](err); !ok || refused.Target != plain.URL+"/doc" {
		t.Errorf("https to http: Get = %v, want RedirectRefusedError for %s", err, plain.URL+"/doc")
	}
	if n := len(plain.requests("/doc")); n != 0 {
		t.Errorf("https to http: the http URL got %d requests", n)
	}

	// A client given instead of ssl gets the same rules, and its own
	// CheckRedirect still runs.
	given := origin.Client()
	var checked int
	given.CheckRedirect = func(*http.Request, []*http.Request) error { checked++; return nil }
	_, err = newFetcher(t, origin.URL+"/moved", Options{MaxBody: 100, Client: given}).Get(t.Context())
	if _, ok := errors.AsType[*RedirectRefusedError](err); !ok {
		t.Errorf("https to http with a given client: Get = %v, want refused", err)
	}
	redirect(origin.URL + "/doc")
	if _, err := newFetcher(t, origin.URL+"/moved", Options{MaxBody: 100, Client: given}).Get(t.Context()); err != nil || checked != 1 {
		t.Errorf("given client: Get = %v, its CheckRedirect ran %d times, want once", err, checked)
	}

	for _, tc := range []struct {
		name        string
		target      *server
		wantHeaders bool
	}{{"same host and port", origin, true}, {"another port", otherPort, false}} {
		redirect(tc.target.URL + "/doc")
		seen := len(tc.target.requests("/doc"))
		if _, err := newFetcher(t, origin.URL+"/moved", Options{MaxBody: 100, Headers: headers, SSL: ssl}).Get(t.Context()); err != nil {
			t.Fatalf("%s: Get: %v", tc.name, err)
		}
		landed := tc.target.requests("/doc")[seen]
		for name, value := range headers {
			if got := landed.Get(name); (got == value) != tc.wantHeaders {
				t.Errorf("%s: %s = %q at the redirect target", tc.name, name, got)
			}
		}
	}

	origin.handle("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	if _, err := newFetcher(t, origin.URL+"/loop", Options{MaxBody: 100, SSL: ssl}).Get(t.Context()); err == nil || !strings.Contains(err.Error(), "stopped after 10 redirects") {
		t.Errorf("a redirect loop: Get = %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		url  string
		o    Options
		want string
	}{
		{"ftp://idp.example/doc", Options{MaxBody: 1}, `"ftp://idp.example/doc" is not an http or https URL`},
		{"https:///doc", Options{MaxBody: 1}, "not an http or https URL"},
		{"https://user:pw@/doc", Options{MaxBody: 1}, `"https://user:xxxxx@/doc" is not`},
		{"https://idp.example/doc", Options{MaxBody: 1, SSL: &configs.TLSClient{CAFile: "/nonexistent/ca.pem"}}, "ssl.ca_file"},
		{"https://idp.example/doc", Options{}, "MaxBody 0 is not positive"},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := New(u, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%s) = %v, want %q", tc.url, err, tc.want)
		}
	}
}
