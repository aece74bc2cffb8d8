package revocation

import (
	"context"
	"crypto/sha256"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// waitTimeout bounds every wait on a signal in these tests, with room for
// -race on a loaded machine.
const waitTimeout = 20 * time.Second

// testClock is a clock that moves only when told to.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock { return &testClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// listServer serves a revocation document that a test changes, or a
// failure status, and records the requests' headers.
type listServer struct {
	*httptest.Server
	mu         sync.Mutex
	doc        string
	status     int // 0: 200 with doc
	lastHeader http.Header
	requests   int
	// etags, when not nil, makes the server send an ETag and answer 304
	// to a request for the document it has, with a signal on etags.
	etags chan struct{}
}

func newListServer(t *testing.T, doc string) *listServer {
	t.Helper()
	s := &listServer{doc: doc}
	s.Server = httptest.NewUnstartedServer(s)
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // quiet for tests
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// newTLSListServer is newListServer over TLS, with the path of a CA file
// that trusts it.
func newTLSListServer(t *testing.T, doc string) (*listServer, string) {
	t.Helper()
	s := &listServer{doc: doc}
	s.Server = httptest.NewUnstartedServer(s)
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.StartTLS()
	t.Cleanup(s.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return s, caFile
}

func (s *listServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	doc, status, etags := s.doc, s.status, s.etags
	s.lastHeader = r.Header.Clone()
	s.requests++
	s.mu.Unlock()
	if status != 0 {
		http.Error(w, "unavailable", status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if etags != nil {
		tag := fmt.Sprintf(`"%x"`, sha256.Sum256([]byte(doc)))
		w.Header().Set("ETag", tag)
		if r.Header.Get("If-None-Match") == tag {
			w.WriteHeader(http.StatusNotModified)
			select {
			case etags <- struct{}{}:
			default:
			}
			return
		}
	}
	io.WriteString(w, doc)
}

func (s *listServer) serve(doc string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doc, s.status = doc, 0
}

func (s *listServer) fail(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = status
}

func (s *listServer) header() http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastHeader
}

// verifyNoLeaks fails t if goroutines started during t outlive its
// cleanups.
func verifyNoLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// newTestList builds the list cfg describes with an observed logger and
// clock, closed at the end of t.
func newTestList(t *testing.T, cfg configs.Revocation, clock *testClock, extra ...Option) (*List, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	opts := append([]Option{WithLogger(zap.New(core)), WithClock(clock.Now)}, extra...)
	l, err := New(cfg, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(l.Close)
	return l, logs
}

// waitVersion waits until versions delivers want, failing on another
// version or a timeout.
func waitVersion(t *testing.T, versions <-chan uint64, want uint64) {
	t.Helper()
	select {
	case v, ok := <-versions:
		if !ok || v != want {
			t.Fatalf("version %d (open %v), want %d", v, ok, want)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("no version %d within %s", want, waitTimeout)
	}
}

// waitFirstRefresh waits until the list's first refresh is over.
func waitFirstRefresh(t *testing.T, l *List) {
	t.Helper()
	select {
	case <-l.FirstRefreshDone():
	case <-time.After(waitTimeout):
		t.Fatalf("no first refresh within %s", waitTimeout)
	}
}

func revoked(l *List, tok Token) Reason {
	r, _ := l.Revoked(tok)
	return r
}

// TestURLRevokedAfterRefresh: every replica reading the URL revokes what
// the server lists after its next refresh, and tells subscribers.
func TestURLRevokedAfterRefresh(t *testing.T) {
	verifyNoLeaks(t)
	srv := newListServer(t, `{}`)
	clock := newTestClock()
	replicas := make([]*List, 2)
	subs := make([]<-chan uint64, 2)
	for i := range replicas {
		replicas[i], _ = newTestList(t, configs.Revocation{URL: srv.URL + "/revoked.json"}, clock)
		var stop func()
		subs[i], stop = replicas[i].Subscribe()
		t.Cleanup(stop)
	}
	stolen := Token{ID: "stolen", Subject: "carol", ClientID: "c1", IssuedAt: clock.Now()}
	for i, l := range replicas {
		waitFirstRefresh(t, l) // the first fetch, in the background
		if r := revoked(l, stolen); r != "" {
			t.Fatalf("replica %d: revoked (%s) by an empty list", i, r)
		}
		if st := l.Status(); !st.InForce || st.Version != 1 || st.Entries != 0 {
			t.Errorf("replica %d: status %+v, want version 1 in force, no entries", i, st)
		}
		waitVersion(t, subs[i], 1)
	}

	srv.serve(`{"jti": ["stolen"]}`)
	for i, l := range replicas {
		if err := l.Refresh(t.Context()); err != nil {
			t.Fatalf("replica %d: Refresh: %v", i, err)
		}
		waitVersion(t, subs[i], 2)
		if r := revoked(l, stolen); r != ReasonJTI {
			t.Errorf("replica %d: Revoked = %q, want jti", i, r)
		}
		if r, ok := l.Matches(stolen); !ok || r != ReasonJTI {
			t.Errorf("replica %d: Matches = %q, %v; want jti", i, r, ok)
		}
		if r := revoked(l, Token{ID: "other", Subject: "carol"}); r != "" {
			t.Errorf("replica %d: another token revoked (%s)", i, r)
		}
	}

	// The same document again: no new version, and its age starts again.
	clock.Advance(time.Minute)
	if err := replicas[0].Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if st := replicas[0].Status(); st.Version != 2 || st.Age != 0 || st.Refreshes != 3 {
		t.Errorf("after an unchanged refresh: %+v, want version 2, age 0, 3 refreshes", st)
	}
	select {
	case v := <-subs[0]:
		t.Errorf("an unchanged list was announced as version %d", v)
	default:
	}
}

// TestURLDownKeepsLastGood: a server that fails keeps the last good list
// in force until max_stale; then deny refuses every new connection while
// sessions are still checked against the last good list, and allow goes
// on with it. A recovered server ends it.
func TestURLDownKeepsLastGood(t *testing.T) {
	verifyNoLeaks(t)
	for _, mode := range []string{configs.RevocationDeny, configs.RevocationAllow} {
		t.Run(mode, func(t *testing.T) {
			srv := newListServer(t, `{"sub": ["mallory"]}`)
			clock := newTestClock()
			cfg := configs.Revocation{URL: srv.URL, OnUnavailable: mode}
			if mode == configs.RevocationDeny {
				cfg.MaxStale = configs.Duration(time.Hour)
			}
			l, logs := newTestList(t, cfg, clock)
			waitFirstRefresh(t, l)
			mallory, alice := Token{Subject: "mallory"}, Token{Subject: "alice"}

			srv.fail(http.StatusBadGateway)
			clock.Advance(59 * time.Minute)
			err := l.Refresh(t.Context())
			if err == nil || !strings.Contains(err.Error(), "502") {
				t.Fatalf("Refresh = %v, want the 502", err)
			}
			if r := revoked(l, mallory); r != ReasonSubject {
				t.Errorf("server down: Revoked(mallory) = %q, want sub from the last good list", r)
			}
			if r := revoked(l, alice); r != "" {
				t.Errorf("server down: Revoked(alice) = %q, want none", r)
			}
			st := l.Status()
			if !st.InForce || st.Failures != 1 || st.ConsecutiveFailures != 1 || st.Age != 59*time.Minute {
				t.Errorf("server down: %+v, want in force, 1 failure, age 59m", st)
			}
			if got := logs.FilterMessageSnippet("revocation list refresh failed; the last good list stays in force").Len(); got != 1 {
				t.Errorf("%d failure lines saying the last good list stays in force, want 1", got)
			}

			clock.Advance(2 * time.Minute) // 61 minutes since the last success
			if mode == configs.RevocationDeny {
				if r := revoked(l, alice); r != ReasonUnavailable {
					t.Errorf("stale, deny: Revoked(alice) = %q, want unavailable", r)
				}
				if st := l.Status(); st.InForce {
					t.Errorf("stale, deny: status %+v, want not in force", st)
				}
			} else if r := revoked(l, alice); r != "" {
				t.Errorf("stale, allow: Revoked(alice) = %q, want none", r)
			}
			if r, ok := l.Matches(mallory); !ok || r != ReasonSubject {
				t.Errorf("stale: Matches(mallory) = %q, %v; want sub, from the last good list", r, ok)
			}
			if _, ok := l.Matches(alice); ok {
				t.Error("stale: Matches(alice): a list that cannot be refreshed ends sessions")
			}

			srv.serve(`{"sub": ["mallory"]}`)
			if err := l.Refresh(t.Context()); err != nil {
				t.Fatal(err)
			}
			if r := revoked(l, alice); r != "" {
				t.Errorf("recovered: Revoked(alice) = %q, want none", r)
			}
			if st := l.Status(); !st.InForce || st.ConsecutiveFailures != 0 || st.Version != 1 {
				t.Errorf("recovered: %+v, want version 1 in force, no consecutive failure", st)
			}
		})
	}
}

// TestURLUnavailableAtStart: until the first fetch succeeds, deny refuses
// every new connection and allow lets every one in.
func TestURLUnavailableAtStart(t *testing.T) {
	verifyNoLeaks(t)
	for _, tc := range []struct {
		mode string
		want Reason
	}{{"", ReasonUnavailable}, {configs.RevocationDeny, ReasonUnavailable}, {configs.RevocationAllow, ""}} {
		t.Run("on_unavailable="+tc.mode, func(t *testing.T) {
			srv := newListServer(t, `{"jti": ["stolen"]}`)
			srv.fail(http.StatusServiceUnavailable)
			l, logs := newTestList(t, configs.Revocation{URL: srv.URL, OnUnavailable: tc.mode}, newTestClock())
			waitFirstRefresh(t, l)
			if r := revoked(l, Token{ID: "fresh"}); r != tc.want {
				t.Errorf("Revoked = %q, want %q", r, tc.want)
			}
			if st := l.Status(); st.InForce || st.Version != 0 || st.Failures != 1 || st.Age != 0 {
				t.Errorf("status %+v, want no list, one failure", st)
			}
			wantLog := map[string]string{"": "new connections are refused", configs.RevocationDeny: "new connections are refused",
				configs.RevocationAllow: "new connections are let in"}[tc.mode]
			if logs.FilterMessageSnippet(wantLog).Len() != 1 {
				t.Errorf("no failure line saying %q: %v", wantLog, logs.All())
			}
			srv.serve(`{"jti": ["stolen"]}`)
			if err := l.Refresh(t.Context()); err != nil {
				t.Fatal(err)
			}
			if r := revoked(l, Token{ID: "fresh"}); r != "" {
				t.Errorf("loaded: Revoked(fresh) = %q", r)
			}
			if r := revoked(l, Token{ID: "stolen"}); r != ReasonJTI {
				t.Errorf("loaded: Revoked(stolen) = %q, want jti", r)
			}
		})
	}
}

// TestURLMalformedKeepsLastGood: a document that does not parse is a
// failed refresh that says why; the last good list stays, and no new
// version is announced.
func TestURLMalformedKeepsLastGood(t *testing.T) {
	verifyNoLeaks(t)
	srv := newListServer(t, `{"client_id": ["sensor-13"]}`)
	l, logs := newTestList(t, configs.Revocation{URL: srv.URL}, newTestClock())
	waitFirstRefresh(t, l)
	versions, stop := l.Subscribe()
	defer stop()
	for _, bad := range []string{`{"client_id": ["sensor-13"], "kid": ["k1"]}`, `<html>502</html>`, `{"client_id": [""]}`, ``} {
		srv.serve(bad)
		err := l.Refresh(t.Context())
		if err == nil {
			t.Fatalf("Refresh took %q", bad)
		}
		if r := revoked(l, Token{ClientID: "sensor-13"}); r != ReasonClientID {
			t.Errorf("after %q: Revoked = %q, want client_id from the last good list", bad, r)
		}
	}
	select {
	case v := <-versions:
		t.Errorf("a refused document was announced as version %d", v)
	default:
	}
	if st := l.Status(); st.Version != 1 || st.ConsecutiveFailures != 4 {
		t.Errorf("status %+v, want version 1 and 4 consecutive failures", st)
	}
	failed := logs.FilterMessageSnippet("revocation list refresh failed").All()
	if len(failed) != 4 || !strings.Contains(failed[0].ContextMap()["error"].(string), `unknown key "kid"`) ||
		failed[0].ContextMap()["url"] != srv.URL {
		t.Errorf("failure lines %v, want 4, the first naming the unknown key and the url", failed)
	}
}

// TestURLHeadersAndTLS: the configured headers go with the request, and a
// list behind TLS is fetched with the configured CA.
func TestURLHeadersAndTLS(t *testing.T) {
	verifyNoLeaks(t)
	srv, caFile := newTLSListServer(t, `{"jti": ["stolen"]}`)
	l, _ := newTestList(t, configs.Revocation{URL: srv.URL, Headers: map[string]string{"Authorization": "Bearer list-reader"},
		SSL: &configs.TLSClient{CAFile: caFile}}, newTestClock())
	if err := l.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := srv.header().Get("Authorization"); got != "Bearer list-reader" {
		t.Errorf("Authorization = %q, want the configured header", got)
	}
	if r := revoked(l, Token{ID: "stolen"}); r != ReasonJTI {
		t.Errorf("Revoked = %q, want jti", r)
	}

	untrusted, _ := newTestList(t, configs.Revocation{URL: srv.URL}, newTestClock())
	if err := untrusted.Refresh(t.Context()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Refresh without the CA = %v, want a certificate error", err)
	}
}

// TestURLDefaultAcceptHeader: without headers, the request asks for JSON.
func TestURLDefaultAcceptHeader(t *testing.T) {
	verifyNoLeaks(t)
	srv := newListServer(t, `{}`)
	l, _ := newTestList(t, configs.Revocation{URL: srv.URL}, newTestClock())
	if err := l.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := srv.header().Get("Accept"); got != "application/json" {
		t.Errorf("Accept = %q, want application/json", got)
	}
}

// TestRefreshLoop: the list is fetched again every refresh_interval
// without being asked.
func TestRefreshLoop(t *testing.T) {
	verifyNoLeaks(t)
	srv := newListServer(t, `{}`)
	l, _ := newTestList(t, configs.Revocation{URL: srv.URL, RefreshInterval: configs.Duration(20 * time.Millisecond)}, newTestClock())
	// The first fetch runs from New on: a subscriber from now on may come
	// after its version 1, so the test subscribes once it is over.
	waitFirstRefresh(t, l)
	if v := l.Status().Version; v != 1 {
		t.Fatalf("version %d after the first refresh, want 1", v)
	}
	versions, stop := l.Subscribe()
	defer stop()
	srv.serve(`{"sub": ["mallory"]}`)
	waitVersion(t, versions, 2)
	if r := revoked(l, Token{Subject: "mallory"}); r != ReasonSubject {
		t.Errorf("Revoked = %q after the loop's refresh, want sub", r)
	}
}

// TestURLNotModified: a server that sends an ETag is asked for the
// document only if it changed, and its 304 is a successful refresh that
// keeps the set; a new document under a new ETag is loaded; Refresh asks
// unconditionally.
func TestURLNotModified(t *testing.T) {
	verifyNoLeaks(t)
	srv := newListServer(t, `{"sub": ["mallory"]}`)
	notModified := make(chan struct{}, 1)
	srv.mu.Lock()
	srv.etags = notModified
	srv.mu.Unlock()
	l, _ := newTestList(t, configs.Revocation{URL: srv.URL, RefreshInterval: configs.Duration(20 * time.Millisecond)}, newTestClock())
	waitFirstRefresh(t, l)
	versions, stop := l.Subscribe()
	defer stop()
	for range 2 { // two 304s: the loop goes on asking
		select {
		case <-notModified:
		case <-time.After(waitTimeout):
			t.Fatalf("no conditional request answered 304 within %s", waitTimeout)
		}
	}
	if st := l.Status(); st.Version != 1 || st.Refreshes < 2 || st.Failures != 0 || !st.InForce {
		t.Errorf("after 304s: %+v, want version 1 in force, refreshed, no failure", st)
	}
	if r := revoked(l, Token{Subject: "mallory"}); r != ReasonSubject {
		t.Errorf("after 304s: Revoked = %q, want sub", r)
	}
	srv.serve(`{"sub": ["mallory", "eve"]}`)
	waitVersion(t, versions, 2)
	if r := revoked(l, Token{Subject: "eve"}); r != ReasonSubject {
		t.Errorf("after the change: Revoked = %q, want sub", r)
	}
	if err := l.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if h := srv.header().Get("If-None-Match"); h != "" {
		t.Errorf("Refresh sent If-None-Match %q, want an unconditional request", h)
	}
}

// writeFile replaces path's content with doc, through a new file renamed
// over it, as editors and Kubernetes volumes do.
func writeFile(t *testing.T, path, doc string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestFileChanges: a file is read at New, read again when a poll finds it
// changed, and at every Refresh; every key type applies.
func TestFileChanges(t *testing.T) {
	verifyNoLeaks(t)
	path := filepath.Join(t.TempDir(), "revoked.json")
	writeFile(t, path, `{"jti": ["j1"]}`)
	l, logs := newTestList(t, configs.Revocation{File: path, RefreshInterval: configs.Duration(20 * time.Millisecond)}, newTestClock())
	versions, stop := l.Subscribe()
	defer stop()
	if r := revoked(l, Token{ID: "j1"}); r != ReasonJTI {
		t.Fatalf("Revoked(j1) = %q right after New, want jti", r)
	}
	if logs.FilterMessage("revocation list loaded").FilterField(zap.String("file", path)).Len() != 1 {
		t.Errorf("no load line naming the file: %v", logs.All())
	}

	cutoff := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	writeFile(t, path, `{"jti": ["j1"], "sub": ["mallory"], "client_id": ["sensor-13"], "issued_before": {"alice": "2025-06-01T12:00:00Z"}}`)
	waitVersion(t, versions, 2) // found by the poll
	for _, tc := range []struct {
		tok  Token
		want Reason
	}{
		{Token{ID: "j1"}, ReasonJTI},
		{Token{Subject: "mallory", IssuedAt: cutoff}, ReasonSubject},
		{Token{ClientID: "sensor-13"}, ReasonClientID},
		{Token{Subject: "alice", IssuedAt: cutoff.Add(-time.Minute)}, ReasonIssuedBefore},
		{Token{Subject: "alice"}, ReasonIssuedBefore},
		{Token{Subject: "alice", IssuedAt: cutoff.Add(time.Minute)}, ""},
	} {
		if r := revoked(l, tc.tok); r != tc.want {
			t.Errorf("Revoked(%+v) = %q, want %q", tc.tok, r, tc.want)
		}
	}

	// The same size and modification time, written in place: a poll
	// cannot tell, a Refresh (SIGHUP) reads it.
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	same := strings.Replace(`{"jti": ["j1"], "sub": ["mallory"], "client_id": ["sensor-13"], "issued_before": {"alice": "2025-06-01T12:00:00Z"}}`, "mallory", "trudy01", 1)
	if err := os.WriteFile(path, []byte(same), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := l.refresh(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if r := revoked(l, Token{Subject: "trudy01"}); r != "" {
		t.Fatalf("a poll read a file that looks unchanged (%s)", r)
	}
	if err := l.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitVersion(t, versions, 3)
	if r := revoked(l, Token{Subject: "trudy01"}); r != ReasonSubject {
		t.Errorf("after Refresh: Revoked(trudy01) = %q, want sub", r)
	}
}

// TestFileBadLaterKeepsLastGood: a file that goes missing or malformed
// fails each refresh, poll or not, and keeps the last good list; fixed,
// it loads.
func TestFileBadLaterKeepsLastGood(t *testing.T) {
	verifyNoLeaks(t)
	path := filepath.Join(t.TempDir(), "revoked.json")
	writeFile(t, path, `{"sub": ["mallory"]}`)
	l, _ := newTestList(t, configs.Revocation{File: path}, newTestClock())
	mallory := Token{Subject: "mallory"}

	writeFile(t, path, `{"sub": "mallory"}`)
	for i := range 3 { // the first read, then polls that find it unchanged
		if err := l.refresh(t.Context(), false); err == nil || !strings.Contains(err.Error(), "sub: a JSON string, not an array of strings") {
			t.Fatalf("poll %d = %v, want the malformed sub", i, err)
		}
	}
	if r := revoked(l, mallory); r != ReasonSubject {
		t.Errorf("malformed: Revoked = %q, want sub from the last good list", r)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := l.refresh(t.Context(), false); err == nil || !os.IsNotExist(err) {
		t.Errorf("missing: poll = %v, want not exist", err)
	}
	if st := l.Status(); st.ConsecutiveFailures != 4 || !st.InForce || st.Version != 1 {
		t.Errorf("status %+v, want 4 consecutive failures, version 1 in force", st)
	}
	writeFile(t, path, `{"sub": ["mallory", "trudy"]}`)
	if err := l.refresh(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if r := revoked(l, Token{Subject: "trudy"}); r != ReasonSubject {
		t.Errorf("fixed: Revoked(trudy) = %q, want sub", r)
	}
}

// TestFileErrorsAtNew: a file that cannot be read or parsed when the list
// is built is an error that names it.
func TestFileErrorsAtNew(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	big := filepath.Join(dir, "big.json")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxDocumentSize + 1); err != nil { // sparse: nothing is written
		t.Fatal(err)
	}
	f.Close()
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, `{"issued_before": {"alice": "last tuesday"}}`)
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.json"), "file: stat " + filepath.Join(dir, "missing.json") + ": no such file or directory"},
		{bad, `file: issued_before."alice": "last tuesday" is not an RFC 3339 time`},
		{big, "over the 67108864-byte limit"},
		{dir, "is not a regular file"},
	} {
		_, err := New(configs.Revocation{File: tc.path})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%s) = %v, want %q", tc.path, err, tc.want)
		}
	}
}

// TestNewErrors: options New cannot use are errors naming them.
func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  configs.Revocation
		want string
	}{
		{configs.Revocation{}, "give file or url"},
		{configs.Revocation{File: "/r.json", URL: "https://idp.example/r"}, "file, url: give one, not both"},
		{configs.Revocation{URL: "ftp://idp.example/r"}, `url: "ftp://idp.example/r" is not an http or https URL`},
		{configs.Revocation{URL: "https://idp.example/r", SSL: &configs.TLSClient{CAFile: "/nonexistent/ca.pem"}}, "ssl.ca_file"},
		{configs.Revocation{URL: "https://idp.example/r", OnUnavailable: "open"}, `on_unavailable: "open" is not one of deny, allow`},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// TestWithPrevious: a list rebuilt by a reload starts with the last good
// set of the list it replaces when the URL is the same, so that a server
// down at the reload does not leave the proxy without a list.
func TestWithPrevious(t *testing.T) {
	verifyNoLeaks(t)
	srv := newListServer(t, `{"jti": ["stolen"]}`)
	clock := newTestClock()
	old, _ := newTestList(t, configs.Revocation{URL: srv.URL}, clock)
	waitFirstRefresh(t, old)
	srv.fail(http.StatusInternalServerError)

	same, _ := newTestList(t, configs.Revocation{URL: srv.URL, RefreshInterval: configs.Duration(time.Minute)}, clock, WithPrevious(old))
	if r := revoked(same, Token{ID: "stolen"}); r != ReasonJTI {
		t.Errorf("same URL: Revoked = %q before any fetch, want jti from the previous list", r)
	}
	waitFirstRefresh(t, same) // failed
	if st := same.Status(); !st.InForce || st.Version != 1 {
		t.Errorf("same URL: %+v, want the previous version 1 in force", st)
	}

	other, _ := newTestList(t, configs.Revocation{URL: srv.URL + "/other"}, clock, WithPrevious(old))
	if r := revoked(other, Token{ID: "stolen"}); r != ReasonUnavailable {
		t.Errorf("another URL: Revoked = %q, want unavailable: nothing carried over", r)
	}
}

// TestSubscribe: a subscriber that lags gets the latest version, cancel
// and Close close the channels, and a subscription after Close is closed.
func TestSubscribe(t *testing.T) {
	verifyNoLeaks(t)
	srv := newListServer(t, `{"jti": ["a"]}`)
	l, err := New(configs.Revocation{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	waitFirstRefresh(t, l)
	lagging, _ := l.Subscribe()
	cancelled, cancel := l.Subscribe()
	for _, doc := range []string{`{"jti": ["b"]}`, `{"jti": ["c"]}`} {
		srv.serve(doc)
		if err := l.Refresh(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	waitVersion(t, lagging, 3) // 2 was replaced
	cancel()
	cancel() // twice is harmless
	if v, ok := <-cancelled; ok && v != 3 {
		t.Errorf("cancelled subscription delivered %d", v)
	}
	if _, ok := <-cancelled; ok {
		t.Error("cancelled subscription still open")
	}
	l.Close()
	if _, ok := <-lagging; ok {
		t.Error("subscription open after Close")
	}
	if _, ok := <-func() <-chan uint64 { ch, _ := l.Subscribe(); return ch }(); ok {
		t.Error("a subscription after Close is open")
	}
	if r := revoked(l, Token{ID: "x"}); r != ReasonUnavailable {
		t.Errorf("closed, deny: Revoked = %q, want unavailable", r)
	}
	if err := l.Refresh(t.Context()); err == nil {
		t.Error("Refresh after Close succeeded")
	}
	l.Close() // twice is harmless
}

// TestRevokedAllocatesNothing: the check at CONNECT allocates nothing,
// hit or miss, with a list in force and with none.
func TestRevokedAllocatesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revoked.json")
	writeFile(t, path, everyKey)
	l, err := New(configs.Revocation{File: path, MaxStale: configs.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	toks := []Token{{ID: "4f1c-stolen"}, {ID: "fresh", Subject: "alice", ClientID: "c", IssuedAt: cutoff.Add(time.Hour)}, {Subject: "alice"}}
	if n := testing.AllocsPerRun(100, func() {
		for _, tok := range toks {
			l.Revoked(tok)
			l.Matches(tok)
		}
	}); n != 0 {
		t.Errorf("%v allocations per run, want 0", n)
	}
}

// TestLookupsDuringRefresh: lookups from many goroutines while the list
// is swapped always see a whole set, the old or the new (run with -race).
func TestLookupsDuringRefresh(t *testing.T) {
	verifyNoLeaks(t)
	srv := newListServer(t, `{"jti": ["a", "b"]}`)
	l, _ := newTestList(t, configs.Revocation{URL: srv.URL}, newTestClock())
	waitFirstRefresh(t, l)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	failures := make(chan string, 4)
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				// Every document revokes a, and none revokes z.
				if _, ok := l.Revoked(Token{ID: "a"}); !ok {
					failures <- "a is not revoked during a refresh"
					return
				}
				if r, ok := l.Matches(Token{ID: "z"}); ok {
					failures <- "z is revoked during a refresh, by " + string(r)
					return
				}
			}
		})
	}
	for i := range 50 {
		srv.serve([]string{`{"jti": ["a", "c"]}`, `{"jti": ["a", "b"]}`}[i%2])
		if err := l.Refresh(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
	if st := l.Status(); st.Version != 51 {
		t.Errorf("version %d after 50 changes, want 51", st.Version)
	}
}
