package configs

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestMetricsSection(t *testing.T) {
	cases := []struct {
		name    string
		section string
		want    Metrics
		wantErr []string // every one must appear in the error; none means valid
	}{
		{name: "absent", section: "", want: Metrics{}},
		{name: "bind", section: "metrics: {bind: \"127.0.0.1:9100\"}\n", want: Metrics{Bind: "127.0.0.1:9100"}},
		{name: "bind and pprof", section: "metrics: {bind: \":9100\", pprof: true}\n", want: Metrics{Bind: ":9100", Pprof: true}},
		{name: "bad bind", section: "metrics: {bind: \"9100\"}\n", wantErr: []string{"metrics.bind", "not host:port"}},
		{name: "same as a listener", section: "metrics: {bind: \"127.0.0.1:1883\"}\n", wantErr: []string{"metrics.bind: \"127.0.0.1:1883\" takes the port of listeners[0]"}},
		{name: "wildcard over a listener", section: "metrics: {bind: \":1883\"}\n", wantErr: []string{"metrics.bind: \":1883\" takes the port of listeners[0] (\"127.0.0.1:1883\")"}},
		{name: "another address, same port", section: "metrics: {bind: \"127.0.0.2:1883\"}\n", want: Metrics{Bind: "127.0.0.2:1883"}},
		{name: "pprof without bind", section: "metrics: {pprof: true}\n", wantErr: []string{"metrics.pprof: needs metrics.bind"}},
		{name: "unknown key", section: "metrics: {port: 9100}\n", wantErr: []string{"port"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(minimal + tc.section))
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if f.Metrics != tc.want {
					t.Errorf("metrics = %+v, want %+v", f.Metrics, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted %q", tc.section)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestTuningSection(t *testing.T) {
	for _, tc := range []struct {
		section string
		want    Tuning
		wantErr string // in the error; empty means valid
	}{
		{"", Tuning{}, ""},
		{"tuning: {relay: portable}\n", Tuning{Relay: RelayPortable}, ""},
		{"tuning: {relay: epoll}\n", Tuning{Relay: RelayEpoll}, map[bool]string{true: "", false: "tuning.relay: epoll is Linux-only"}[runtime.GOOS == "linux"]},
		{"tuning: {relay: splice}\n", Tuning{}, `tuning.relay: "splice" is not one of epoll, portable`},
		{"tuning: {engine: epoll}\n", Tuning{}, "tuning.engine: unknown key"},
	} {
		f, err := Parse([]byte(minimal + tc.section))
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tc.section, err)
		case tc.wantErr == "" && f.Tuning != tc.want:
			t.Errorf("%q: tuning = %+v, want %+v", tc.section, f.Tuning, tc.want)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: error %v, want one with %q", tc.section, err, tc.wantErr)
		}
	}
}

// TestAdminToken: the sessions API's token comes from a file (one
// trailing newline dropped, the path taken from the configuration's
// directory) or an environment variable, one of them, with metrics.bind;
// a missing, empty, short or unprintable token is refused, naming its key.
func TestAdminToken(t *testing.T) {
	const token = "0123456789abcdef0123456789abcdef"
	dir := t.TempDir()
	write := func(name, contents string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(contents), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("token", token+"\n")
	write("token-crlf", token+"\r\n")
	write("empty", "\n")
	write("short", "0123456789abcde\n")
	write("spaced", "0123456789 abcdef0123456789abcdef\n")
	write("two-lines", token+"\n\n")
	t.Setenv("MQTT_JWT_PROXY_TEST_ADMIN_TOKEN", token)
	t.Setenv("MQTT_JWT_PROXY_TEST_EMPTY", "")

	cases := []struct {
		name    string
		section string
		want    string   // the token read
		wantErr []string // every one must appear in the error; none means valid
	}{
		{name: "none", section: "metrics: {bind: \"127.0.0.1:9100\"}\n", want: ""},
		{name: "file, relative to the configuration", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_file: token}\n", want: token},
		{name: "file with CRLF", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_file: token-crlf}\n", want: token},
		{name: "env", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_env: MQTT_JWT_PROXY_TEST_ADMIN_TOKEN}\n", want: token},
		{name: "both", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_file: token, admin_token_env: MQTT_JWT_PROXY_TEST_ADMIN_TOKEN}\n",
			wantErr: []string{"metrics: give only one of admin_token_file and admin_token_env"}},
		{name: "file without bind", section: "metrics: {admin_token_file: token}\n", wantErr: []string{"metrics.admin_token_file: needs metrics.bind"}},
		{name: "env without bind", section: "metrics: {admin_token_env: MQTT_JWT_PROXY_TEST_ADMIN_TOKEN}\n", wantErr: []string{"metrics.admin_token_env: needs metrics.bind"}},
		{name: "missing file", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_file: missing}\n", wantErr: []string{"metrics.admin_token_file: open ", "no such file"}},
		{name: "empty file", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_file: empty}\n", wantErr: []string{"metrics.admin_token_file: ", "empty is empty"}},
		{name: "unset env", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_env: MQTT_JWT_PROXY_TEST_UNSET}\n",
			wantErr: []string{"metrics.admin_token_env: environment variable MQTT_JWT_PROXY_TEST_UNSET is not set or is empty"}},
		{name: "empty env", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_env: MQTT_JWT_PROXY_TEST_EMPTY}\n",
			wantErr: []string{"metrics.admin_token_env: environment variable MQTT_JWT_PROXY_TEST_EMPTY is not set or is empty"}},
		{name: "short", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_file: short}\n", wantErr: []string{"metrics.admin_token_file: the token is 15 bytes long; use at least 16"}},
		{name: "space inside", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_file: spaced}\n", wantErr: []string{"metrics.admin_token_file: the token holds a character other than printable ASCII (at byte 10)"}},
		{name: "second newline", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_file: two-lines}\n", wantErr: []string{"(at byte 32)"}},
		{name: "reported with the other problems", section: "metrics: {bind: \"127.0.0.1:9100\", admin_token_file: short}\nlog: {level: loud}\n",
			wantErr: []string{"metrics.admin_token_file", "log.level"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "config.yaml")
			if err := os.WriteFile(path, []byte(minimal+tc.section), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := Load(path)
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if got := f.Metrics.AdminToken(); got != tc.want {
					t.Errorf("AdminToken() = %q, want %q", got, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Load accepted %q", tc.section)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			if strings.Contains(err.Error(), token) {
				t.Errorf("error %q shows the token", err)
			}
		})
	}
}

// TestDiffLeavesOutAdminToken: a changed token is no key of Diff's (it is
// read again at every reload), and its value is never in Diff's list.
func TestDiffLeavesOutAdminToken(t *testing.T) {
	a := Metrics{Bind: "127.0.0.1:9100", AdminTokenEnv: "A", adminToken: "first-token-0123456789"}
	b := a
	b.adminToken = "second-token-0123456789"
	if keys := Diff(&File{Metrics: a}, &File{Metrics: b}); len(keys) != 0 {
		t.Errorf("Diff = %q, want nothing for a changed token", keys)
	}
	b.AdminTokenEnv = "B"
	if keys := Diff(&File{Metrics: a}, &File{Metrics: b}); !slices.Equal(keys, []string{"metrics.admin_token_env"}) {
		t.Errorf("Diff = %q, want [metrics.admin_token_env]", keys)
	}
}
