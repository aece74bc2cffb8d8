package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
)

// writeTokenFile writes token, with a newline, to a file and returns its
// path.
func writeTokenFile(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSessionsCommandList runs "sessions list" against the sessions API
// served over HTTP: the table in order of connection, the filters sent,
// -json as the API wrote it, values that would break the table quoted.
func TestSessionsCommandList(t *testing.T) {
	sessions := append(testSessions(), proxy.SessionInfo{ClientID: "evil\x1b[2J id", Listener: "tcp", Remote: "192.0.2.9:4000",
		ConnectedAt: sessionsEpoch.Add(4 * time.Minute)})
	store := &fakeSessions{sessions: sessions}
	url, _, _ := startSessionsAPI(t, store, testAdminToken)
	admin := strings.TrimSuffix(url, "/sessions")
	tokenFile := writeTokenFile(t, testAdminToken)

	code, stdout, stderr := runCommand(t, "sessions", "list", "-admin", admin, "-token-file", tokenFile)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := `CLIENT_ID         USERNAME  SUB     JTI    LISTENER  REMOTE               CONNECTED_AT          EXPIRES_AT            BYTES_FROM_CLIENT  BYTES_TO_CLIENT
dev-1             alice     user-1  jti-1  tcp       192.0.2.1:40001      2026-03-01T12:01:00Z  -                     100                10
dev-2             bob       user-2  jti-2  tls       [2001:db8::2]:40002  2026-03-01T12:02:00Z  2026-03-01T13:00:00Z  200                20
dev-3             alice     user-1  -      tcp       192.0.2.1:40003      2026-03-01T12:03:00Z  2026-03-01T14:00:00Z  300                30
"evil\x1b[2J id"  -         -       -      tcp       192.0.2.9:4000       2026-03-01T12:04:00Z  -                     0                  0
`
	if stdout != want {
		t.Errorf("list printed\n%s\nwant\n%s", stdout, want)
	}

	code, stdout, stderr = runCommand(t, "sessions", "list", "-admin", admin+"/", "-token-file", tokenFile,
		"-username", "alice", "-listener", "tcp", "-remote", "192.0.2.1", "-json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var listed []sessionJSON
	if err := json.Unmarshal([]byte(stdout), &listed); err != nil {
		t.Fatalf("-json printed %q: %v", stdout, err)
	}
	var clients []string
	for _, s := range listed {
		clients = append(clients, s.ClientID)
	}
	if !slices.Equal(clients, []string{"dev-1", "dev-3"}) {
		t.Errorf("-json listed %q, want dev-1 and dev-3", clients)
	}

	code, stdout, _ = runCommand(t, "sessions", "list", "-admin", admin, "-token-file", tokenFile, "-client-id", "nobody")
	if code != 0 || stdout != "no sessions\n" {
		t.Errorf("an empty list: exit %d, %q", code, stdout)
	}
	code, stdout, _ = runCommand(t, "sessions", "list", "-admin", admin, "-token-file", tokenFile, "-client-id", "nobody", "-json")
	if code != 0 || stdout != "[]\n" {
		t.Errorf("an empty list as JSON: exit %d, %q", code, stdout)
	}
	if _, ends := store.calls(); len(ends) != 0 {
		t.Errorf("list ended sessions: %v", ends)
	}
}

// TestSessionsCommandKick runs "sessions kick": the filters reach
// EndSessions as given, with reason admin, and the count is printed.
func TestSessionsCommandKick(t *testing.T) {
	store := &fakeSessions{sessions: testSessions()}
	url, _, _ := startSessionsAPI(t, store, testAdminToken)
	admin := strings.TrimSuffix(url, "/sessions")
	tokenFile := writeTokenFile(t, testAdminToken)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-client-id", "dev-2"}, "ended 1 session\n"},
		{[]string{"-sub", "user-1", "-remote", "192.0.2.1:40003"}, "ended 1 session\n"},
		{[]string{"-client-id", "dev-2"}, "ended 0 sessions\n"},
		{[]string{"-all"}, "ended 1 session\n"},
	} {
		args := append([]string{"sessions", "kick", "-admin", admin, "-token-file", tokenFile}, tc.args...)
		code, stdout, stderr := runCommand(t, args...)
		if code != 0 || stdout != tc.want {
			t.Errorf("kick %q: exit %d, %q %q; want %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
	_, ends := store.calls()
	want := []endCall{
		{proxy.SessionFilter{ClientID: "dev-2"}, proxy.EndedByAdmin},
		{proxy.SessionFilter{Subject: "user-1", Remote: "192.0.2.1:40003"}, proxy.EndedByAdmin},
		{proxy.SessionFilter{ClientID: "dev-2"}, proxy.EndedByAdmin},
		{proxy.SessionFilter{}, proxy.EndedByAdmin},
	}
	if !slices.Equal(ends, want) {
		t.Errorf("EndSessions calls %+v, want %+v", ends, want)
	}
}

// TestSessionsCommandErrors: a refusal by the API, an API that is off,
// an endpoint that does not answer and a token file that cannot be read
// exit 1 with what went wrong; wrong flags exit 2 before any request.
// Every error starts "mqtt-jwt-proxy sessions: ".
func TestSessionsCommandErrors(t *testing.T) {
	store := &fakeSessions{sessions: testSessions()}
	url, _, _ := startSessionsAPI(t, store, testAdminToken)
	admin := strings.TrimSuffix(url, "/sessions")
	offURL, _, _ := startSessionsAPI(t, store, "")
	off := strings.TrimSuffix(offURL, "/sessions")
	tokenFile := writeTokenFile(t, testAdminToken)
	wrongToken := writeTokenFile(t, "wrong-token-0123456789")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()

	cases := []struct {
		args     []string
		wantCode int
		want     string
	}{
		{[]string{"list", "-admin", admin, "-token-file", wrongToken}, 1, "401 Unauthorized: the admin token is missing or wrong"},
		{[]string{"kick", "-admin", admin, "-token-file", wrongToken, "-all"}, 1, "401 Unauthorized"},
		{[]string{"list", "-admin", off, "-token-file", tokenFile}, 1, "404 Not Found: the sessions API is off"},
		{[]string{"list", "-admin", closed, "-token-file", tokenFile}, 1, "connection refused"},
		{[]string{"list", "-admin", admin, "-token-file", filepath.Join(t.TempDir(), "missing")}, 1, "-token-file: open "},
		{[]string{}, 2, "list or kick is required"},
		{[]string{"show"}, 2, `unknown subcommand "show"`},
		{[]string{"list", "-token-file", tokenFile}, 2, "-admin URL and -token-file FILE are required"},
		{[]string{"list", "-admin", admin}, 2, "-admin URL and -token-file FILE are required"},
		{[]string{"list", "-admin", "127.0.0.1:9100", "-token-file", tokenFile}, 2, "is not an http or https URL"},
		{[]string{"list", "-admin", admin + "?x=1", "-token-file", tokenFile}, 2, "without a query"},
		{[]string{"kick", "-admin", admin, "-token-file", tokenFile}, 2, "give a filter"},
		{[]string{"kick", "-admin", admin, "-token-file", tokenFile, "-all", "-listener", "tcp"}, 2, "-all ends every session: give it without filters"},
		{[]string{"kick", "-admin", admin, "-token-file", tokenFile, "-client-id", ""}, 2, "empty: leave the filter out"},
		{[]string{"kick", "-admin", admin, "-token-file", tokenFile, "-json", "-all"}, 2, "-json"},
		{[]string{"list", "-admin", admin, "-token-file", tokenFile, "-all"}, 2, "-all"},
		{[]string{"list", "-admin", admin, "-token-file", tokenFile, "extra"}, 2, "unexpected arguments: extra"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCommand(t, append([]string{"sessions"}, tc.args...)...)
			if code != tc.wantCode || !strings.HasPrefix(stderr, "mqtt-jwt-proxy sessions: ") || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and an error with %q", code, stderr, tc.wantCode, tc.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if strings.Contains(stderr, testAdminToken) {
				t.Errorf("stderr shows the token: %q", stderr)
			}
		})
	}
	if _, ends := store.calls(); len(ends) != 0 {
		t.Errorf("sessions ended: %v", ends)
	}
}
