package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
)

const testAdminToken = "admin-token-0123456789abcdef"

// fakeSessions is a sessionStore of fixed sessions; EndSessions removes
// what it ends and records each call.
type fakeSessions struct {
	mu       sync.Mutex
	sessions []proxy.SessionInfo
	ends     []endCall
	listed   int // calls of Sessions
}

type endCall struct {
	filter proxy.SessionFilter
	reason proxy.EndReason
}

func (s *fakeSessions) Sessions(f proxy.SessionFilter) []proxy.SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listed++
	var out []proxy.SessionInfo
	for _, si := range s.sessions {
		if f.Matches(si) {
			out = append(out, si)
		}
	}
	return out
}

func (s *fakeSessions) EndSessions(f proxy.SessionFilter, reason proxy.EndReason) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ends = append(s.ends, endCall{f, reason})
	before := len(s.sessions)
	s.sessions = slices.DeleteFunc(s.sessions, f.Matches)
	return before - len(s.sessions)
}

func (s *fakeSessions) calls() (listed int, ends []endCall) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listed, slices.Clone(s.ends)
}

var sessionsEpoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testSessions are three sessions, given out of order of connection.
func testSessions() []proxy.SessionInfo {
	return []proxy.SessionInfo{
		{ClientID: "dev-2", Username: "bob", Subject: "user-2", TokenID: "jti-2", Listener: "tls", Remote: "[2001:db8::2]:40002",
			ConnectedAt: sessionsEpoch.Add(2 * time.Minute), ExpiresAt: sessionsEpoch.Add(time.Hour), BytesFromClient: 200, BytesToClient: 20},
		{ClientID: "dev-1", Username: "alice", Subject: "user-1", TokenID: "jti-1", Listener: "tcp", Remote: "192.0.2.1:40001",
			ConnectedAt: sessionsEpoch.Add(time.Minute).In(time.FixedZone("CET", 3600)), BytesFromClient: 100, BytesToClient: 10},
		{ClientID: "dev-3", Username: "alice", Subject: "user-1", Listener: "tcp", Remote: "192.0.2.1:40003",
			ConnectedAt: sessionsEpoch.Add(3 * time.Minute), ExpiresAt: sessionsEpoch.Add(2 * time.Hour), BytesFromClient: 300, BytesToClient: 30},
	}
}

// startSessionsAPI serves the sessions API with token over store, and
// returns its URL and the API's log.
func startSessionsAPI(t *testing.T, store sessionStore, token string) (string, *sessionsAPI, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	api := newSessionsAPI(store, token, zap.New(core))
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	return srv.URL + "/sessions", api, logs
}

// adminRequest sends method to url with the bearer token (none when
// empty) and returns the status, the headers and the body.
func adminRequest(t *testing.T, method, url, token string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

// TestSessionsAPIList: GET /sessions answers a JSON array, in order of
// connection, of the sessions every filter given selects, each object
// with exactly the documented keys, times in RFC 3339 UTC and expires_at
// null without exp.
func TestSessionsAPIList(t *testing.T) {
	store := &fakeSessions{sessions: testSessions()}
	base, _, _ := startSessionsAPI(t, store, testAdminToken)

	cases := []struct {
		query   string
		clients []string
	}{
		{"", []string{"dev-1", "dev-2", "dev-3"}},
		{"client_id=dev-2", []string{"dev-2"}},
		{"client_id=dev", nil},
		{"username=alice", []string{"dev-1", "dev-3"}},
		{"sub=user-1&listener=tcp", []string{"dev-1", "dev-3"}},
		{"sub=user-1&listener=tls", nil},
		{"listener=tls", []string{"dev-2"}},
		{"remote=192.0.2.1", []string{"dev-1", "dev-3"}},
		{"remote=192.0.2.1:40003", []string{"dev-3"}},
		{"remote=::ffff:192.0.2.1", []string{"dev-1", "dev-3"}},
		{"remote=2001:DB8::2", []string{"dev-2"}},
		{"remote=" + url.QueryEscape("[2001:db8::2]:40002"), []string{"dev-2"}},
		{"client_id=dev%2D1", []string{"dev-1"}},
	}
	for _, tc := range cases {
		t.Run(tc.query, func(t *testing.T) {
			status, header, body := adminRequest(t, http.MethodGet, base+"?"+tc.query, testAdminToken)
			if status != http.StatusOK || header.Get("Content-Type") != "application/json" || header.Get("Cache-Control") != "no-store" {
				t.Fatalf("GET = %d %v %s", status, header, body)
			}
			var got []sessionJSON
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("%v: %s", err, body)
			}
			if got == nil {
				t.Errorf("body %q: want an array, [] when empty", body)
			}
			var clients []string
			for _, s := range got {
				clients = append(clients, s.ClientID)
			}
			if !slices.Equal(clients, tc.clients) {
				t.Errorf("listed %q, want %q", clients, tc.clients)
			}
		})
	}

	_, _, body := adminRequest(t, http.MethodGet, base+"?client_id=dev-1", testAdminToken)
	var raw []map[string]any
	if err := json.Unmarshal([]byte(body), &raw); err != nil || len(raw) != 1 {
		t.Fatalf("%v: %s", err, body)
	}
	want := map[string]any{
		"client_id": "dev-1", "username": "alice", "sub": "user-1", "jti": "jti-1", "listener": "tcp", "remote": "192.0.2.1:40001",
		"connected_at": "2026-03-01T12:01:00Z", "expires_at": nil, "bytes_from_client": 100.0, "bytes_to_client": 10.0,
	}
	if len(raw[0]) != len(want) {
		t.Errorf("keys %v, want exactly %v", raw[0], want)
	}
	for k, v := range want {
		if got, ok := raw[0][k]; !ok || got != v {
			t.Errorf("%s = %#v, want %#v", k, got, v)
		}
	}
	_, _, body = adminRequest(t, http.MethodGet, base+"?client_id=dev-2", testAdminToken)
	if !strings.Contains(body, `"expires_at":"2026-03-01T13:00:00Z"`) {
		t.Errorf("dev-2 has exp: %s", body)
	}
	if _, ends := store.calls(); len(ends) != 0 {
		t.Errorf("GET ended sessions: %v", ends)
	}
}

// TestSessionsAPIEnd: DELETE ends the sessions its filters select, with
// reason admin, and answers how many; without a filter it ends nothing
// unless all=true, which cannot go with a filter.
func TestSessionsAPIEnd(t *testing.T) {
	store := &fakeSessions{sessions: testSessions()}
	base, _, _ := startSessionsAPI(t, store, testAdminToken)

	for _, query := range []string{"", "all=false", "all=1", "all=true&client_id=dev-1", "all=true&all=true"} {
		status, _, body := adminRequest(t, http.MethodDelete, base+"?"+query, testAdminToken)
		if status != http.StatusBadRequest || !strings.Contains(body, `"error":`) {
			t.Errorf("DELETE ?%s = %d %s, want 400 and an error", query, status, body)
		}
	}
	if _, ends := store.calls(); len(ends) != 0 {
		t.Fatalf("a refused DELETE ended sessions: %v", ends)
	}

	status, _, body := adminRequest(t, http.MethodDelete, base+"?username=alice&remote=192.0.2.1", testAdminToken)
	if status != http.StatusOK || body != "{\"ended\":2}\n" {
		t.Errorf("DELETE ?username=alice = %d %q, want 200 {\"ended\":2}", status, body)
	}
	status, _, body = adminRequest(t, http.MethodDelete, base+"?username=alice", testAdminToken)
	if status != http.StatusOK || body != "{\"ended\":0}\n" {
		t.Errorf("DELETE again = %d %q, want {\"ended\":0}", status, body)
	}
	status, _, body = adminRequest(t, http.MethodDelete, base+"?all=true", testAdminToken)
	if status != http.StatusOK || body != "{\"ended\":1}\n" {
		t.Errorf("DELETE ?all=true = %d %q, want {\"ended\":1}", status, body)
	}
	_, ends := store.calls()
	want := []endCall{
		{proxy.SessionFilter{Username: "alice", Remote: "192.0.2.1"}, proxy.EndedByAdmin},
		{proxy.SessionFilter{Username: "alice"}, proxy.EndedByAdmin},
		{proxy.SessionFilter{}, proxy.EndedByAdmin},
	}
	if !slices.Equal(ends, want) {
		t.Errorf("EndSessions calls %+v, want %+v", ends, want)
	}
}

// TestSessionsAPIBadRequests: a parameter that is unknown, repeated,
// empty or malformed is refused with 400 before the store is asked, since
// read as no filter it would select more sessions than meant.
func TestSessionsAPIBadRequests(t *testing.T) {
	store := &fakeSessions{sessions: testSessions()}
	base, _, _ := startSessionsAPI(t, store, testAdminToken)
	cases := []struct {
		method, query, want string
	}{
		{http.MethodGet, "clientid=dev-1", "clientid: unknown parameter"},
		{http.MethodDelete, "listener=tcp&clientid=dev-1", "clientid: unknown parameter"},
		{http.MethodGet, "client_id=dev-1&client_id=dev-2", "client_id: given 2 times"},
		{http.MethodDelete, "client_id=", "client_id: empty"},
		{http.MethodGet, "remote=device.example", `remote: \"device.example\" is neither an IP address nor IP:port`},
		{http.MethodDelete, "remote=[2001:db8::2]", "remote: "},
		{http.MethodGet, "all=true", "all: only with DELETE"},
		{http.MethodGet, "client_id=%zz", "the query does not parse"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.query, func(t *testing.T) {
			status, _, body := adminRequest(t, tc.method, base+"?"+tc.query, testAdminToken)
			if status != http.StatusBadRequest || !strings.Contains(body, tc.want) {
				t.Errorf("= %d %s, want 400 with %q", status, body, tc.want)
			}
		})
	}
	if listed, ends := store.calls(); listed != 0 || len(ends) != 0 {
		t.Errorf("the store was asked %d times and ended %v", listed, ends)
	}
}

// TestSessionsAPIUnauthorized: without the token, with another or in
// another scheme, every method gets 401 and a Bearer challenge, and the
// store is never asked. Without a token configured the API is off: 404.
func TestSessionsAPIUnauthorized(t *testing.T) {
	store := &fakeSessions{sessions: testSessions()}
	base, api, logs := startSessionsAPI(t, store, testAdminToken)
	for _, header := range []string{
		"",
		"Bearer",
		"Bearer ",
		"Bearer " + testAdminToken[:len(testAdminToken)-1],
		"Bearer " + testAdminToken + "0",
		"Basic " + testAdminToken,
		"Token " + testAdminToken,
		testAdminToken,
	} {
		for _, method := range []string{http.MethodGet, http.MethodDelete, http.MethodPost} {
			req, err := http.NewRequest(method, base+"?all=true", nil)
			if err != nil {
				t.Fatal(err)
			}
			if header != "" {
				req.Header.Set("Authorization", header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer ") {
				t.Errorf("%s with Authorization %q = %d %v %s, want 401 and a Bearer challenge", method, header, resp.StatusCode, resp.Header, body)
			}
			if strings.Contains(string(body), testAdminToken) {
				t.Errorf("the answer shows the token: %s", body)
			}
		}
	}
	if listed, ends := store.calls(); listed != 0 || len(ends) != 0 {
		t.Errorf("the store was asked %d times and ended %v", listed, ends)
	}
	for _, e := range logs.All() {
		if strings.Contains(e.Message, testAdminToken) || strings.Contains(fieldString(e.ContextMap()), testAdminToken) {
			t.Errorf("a log line shows the token: %v", e)
		}
	}

	// The scheme is case-insensitive; the method is checked once the
	// caller is known.
	if status, _, body := adminRequest(t, http.MethodGet, base, ""); status != http.StatusUnauthorized {
		t.Errorf("GET without a token = %d %s", status, body)
	}
	req, _ := http.NewRequest(http.MethodGet, base, nil)
	req.Header.Set("Authorization", "bearer "+testAdminToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("lower-case bearer: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if status, header, _ := adminRequest(t, http.MethodPost, base, testAdminToken); status != http.StatusMethodNotAllowed || header.Get("Allow") != "GET, HEAD, DELETE" {
		t.Errorf("POST = %d %v, want 405 and Allow", status, header)
	}

	// A reload changes the token, or takes it away.
	api.setToken("another-token-0123456789")
	if status, _, _ := adminRequest(t, http.MethodGet, base, testAdminToken); status != http.StatusUnauthorized {
		t.Errorf("the old token after a change = %d, want 401", status)
	}
	if status, _, _ := adminRequest(t, http.MethodGet, base, "another-token-0123456789"); status != http.StatusOK {
		t.Errorf("the new token = %d, want 200", status)
	}
	api.setToken("")
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		if status, _, _ := adminRequest(t, method, base+"?all=true", "another-token-0123456789"); status != http.StatusNotFound {
			t.Errorf("%s without a token configured = %d, want 404", method, status)
		}
	}
	if _, ends := store.calls(); len(ends) != 0 {
		t.Errorf("sessions ended: %v", ends)
	}
}

// fieldString is a log line's fields as text, to search.
func fieldString(fields map[string]any) string {
	b, _ := json.Marshal(fields)
	return string(b)
}

// TestSessionsAPILogs: every call is logged at info, with the caller's
// address, the method, the filters and the count, or why it was refused.
func TestSessionsAPILogs(t *testing.T) {
	store := &fakeSessions{sessions: testSessions()}
	base, _, logs := startSessionsAPI(t, store, testAdminToken)

	adminRequest(t, http.MethodGet, base+"?username=alice&listener=tcp", testAdminToken)
	adminRequest(t, http.MethodDelete, base+"?client_id=dev-2", testAdminToken)
	adminRequest(t, http.MethodDelete, base+"?all=true", testAdminToken)
	adminRequest(t, http.MethodDelete, base+"?client_id=dev-1", "wrong-token-0123456789")
	adminRequest(t, http.MethodDelete, base+"?clientid=dev-1", testAdminToken)

	want := []struct {
		message string
		fields  map[string]any
	}{
		{"sessions listed", map[string]any{"method": "GET", "filter": map[string]any{"username": "alice", "listener": "tcp"}, "sessions": int64(2)}},
		{"sessions ended", map[string]any{"method": "DELETE", "filter": map[string]any{"client_id": "dev-2"}, "all": false, "ended": int64(1)}},
		{"sessions ended", map[string]any{"method": "DELETE", "filter": map[string]any{}, "all": true, "ended": int64(2)}},
		{"admin request refused", map[string]any{"method": "DELETE", "status": int64(401), "reason": "unauthorized", "query": "client_id=dev-1"}},
		{"admin request refused", map[string]any{"method": "DELETE", "status": int64(400), "reason": "bad_request", "query": "clientid=dev-1"}},
	}
	entries := logs.All()
	if len(entries) != len(want) {
		t.Fatalf("%d log lines, want %d: %v", len(entries), len(want), entries)
	}
	for i, w := range want {
		e := entries[i]
		fields := e.ContextMap()
		if e.Level != zap.InfoLevel || e.Message != w.message {
			t.Errorf("line %d: %s %q, want info %q", i, e.Level, e.Message, w.message)
		}
		if remote, _ := fields["remote"].(string); !strings.HasPrefix(remote, "127.0.0.1:") {
			t.Errorf("line %d: remote = %v, want the caller's address", i, fields["remote"])
		}
		for k, v := range w.fields {
			if got := fieldString(map[string]any{k: fields[k]}); got != fieldString(map[string]any{k: v}) {
				t.Errorf("line %d: %s, want %s", i, got, fieldString(map[string]any{k: v}))
			}
		}
	}
}
