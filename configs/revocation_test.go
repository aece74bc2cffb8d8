package configs

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRevocationSection(t *testing.T) {
	cases := []struct {
		name    string
		section string
		want    *Revocation
		wantErr []string // every one must appear in the error; none means valid
	}{
		{name: "absent", section: "", want: nil},
		{name: "null", section: "revocation:\n", want: nil},
		{name: "file", section: "revocation: {file: /etc/mqtt-jwt-proxy/revoked.json}\n",
			want: &Revocation{File: "/etc/mqtt-jwt-proxy/revoked.json"}},
		{name: "url with every option",
			section: "revocation:\n  url: https://idp.example/revoked.json\n  refresh_interval: 30s\n  headers: {Authorization: Bearer x}\n" +
				"  ssl: {ca_file: /ca.pem}\n  on_unavailable: deny\n  max_stale: 10m\n",
			want: &Revocation{URL: "https://idp.example/revoked.json", RefreshInterval: Duration(30 * time.Second),
				Headers: map[string]string{"Authorization": "Bearer x"}, SSL: &TLSClient{CAFile: "/ca.pem"},
				OnUnavailable: RevocationDeny, MaxStale: Duration(10 * time.Minute)}},
		{name: "allow", section: "revocation: {url: http://lists:8080/revoked, on_unavailable: allow}\n",
			want: &Revocation{URL: "http://lists:8080/revoked", OnUnavailable: RevocationAllow}},
		{name: "a file polled every second", section: "revocation: {file: /r.json, refresh_interval: 1s}\n",
			want: &Revocation{File: "/r.json", RefreshInterval: Duration(time.Second)}},

		{name: "empty", section: "revocation: {}\n", wantErr: []string{"revocation: give file or url"}},
		{name: "both", section: "revocation: {file: /r.json, url: https://idp.example/r}\n", wantErr: []string{"revocation.file, url: give one, not both"}},
		{name: "not http", section: "revocation: {url: ftp://idp.example/r}\n", wantErr: []string{`revocation.url: "ftp://idp.example/r" is not an http or https URL`}},
		{name: "no host", section: "revocation: {url: \"https:///r\"}\n", wantErr: []string{"revocation.url:", "not an http or https URL"}},
		{name: "credentials redacted", section: "revocation: {url: \"ftp://user:hunter2@idp.example/r\"}\n", wantErr: []string{"revocation.url: \"ftp://user:xxxxx@idp.example/r\""}},
		{name: "headers with a file", section: "revocation: {file: /r.json, headers: {A: b}}\n", wantErr: []string{"revocation.headers: only used with url"}},
		{name: "ssl with a file", section: "revocation: {file: /r.json, ssl: {insecure_skip_verify: true}}\n", wantErr: []string{"revocation.ssl: only used with url"}},
		{name: "empty header name", section: "revocation: {url: https://idp.example/r, headers: {\"\": b}}\n", wantErr: []string{"revocation.headers: a header name is empty"}},
		{name: "url refreshed too often", section: "revocation: {url: https://idp.example/r, refresh_interval: 5s}\n", wantErr: []string{"revocation.refresh_interval: 5s is under the minimum of 10s"}},
		{name: "file checked too often", section: "revocation: {file: /r.json, refresh_interval: 100ms}\n", wantErr: []string{"revocation.refresh_interval: 100ms is under the minimum of 1s"}},
		{name: "bad mode", section: "revocation: {file: /r.json, on_unavailable: open}\n", wantErr: []string{`revocation.on_unavailable: "open" is not one of deny, allow`}},
		{name: "stale before the next refresh", section: "revocation: {url: https://idp.example/r, max_stale: 5m}\n",
			wantErr: []string{"revocation.max_stale: 5m0s is not longer than refresh_interval (5m0s)"}},
		{name: "max_stale with allow", section: "revocation: {url: https://idp.example/r, on_unavailable: allow, max_stale: 1h}\n",
			wantErr: []string{"revocation.max_stale: only used with on_unavailable: deny"}},
		{name: "unknown key", section: "revocation: {file: /r.json, path: /x}\n", wantErr: []string{"revocation.path: unknown key"}},
		{name: "bare number", section: "revocation: {file: /r.json, refresh_interval: 30}\n", wantErr: []string{"revocation.refresh_interval: `30` is not a duration"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(minimal + tc.section))
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if !reflect.DeepEqual(f.Revocation, tc.want) {
					t.Errorf("revocation = %+v, want %+v", f.Revocation, tc.want)
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

func TestRevocationDefaults(t *testing.T) {
	r := &Revocation{File: "/r.json"}
	if got := r.RefreshEvery(); got != DefaultRevocationRefreshInterval {
		t.Errorf("RefreshEvery = %s, want %s", got, DefaultRevocationRefreshInterval)
	}
	if !r.Deny() {
		t.Error("on_unavailable unset does not deny")
	}
	r.OnUnavailable = RevocationAllow
	if r.Deny() {
		t.Error("on_unavailable: allow denies")
	}
}

// TestLoadResolvesRevocationPaths: the revocation file and the fetch's ssl
// files are taken from the configuration file's directory.
func TestLoadResolvesRevocationPaths(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		section string
		got     func(*Revocation) string
		want    string
	}{
		{"revocation: {file: lists/revoked.json}\n", func(r *Revocation) string { return r.File }, filepath.Join(dir, "lists", "revoked.json")},
		{"revocation: {file: /abs/revoked.json}\n", func(r *Revocation) string { return r.File }, "/abs/revoked.json"},
		{"revocation: {url: https://idp.example/r, ssl: {ca_file: certs/ca.pem}}\n", func(r *Revocation) string { return r.SSL.CAFile }, filepath.Join(dir, "certs", "ca.pem")},
	} {
		path := filepath.Join(dir, "proxy.yaml")
		if err := os.WriteFile(path, []byte(minimal+tc.section), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := tc.got(f.Revocation); got != tc.want {
			t.Errorf("%s: path = %q, want %q", strings.TrimSpace(tc.section), got, tc.want)
		}
	}
}

// TestExampleRevocation: production.yaml shows a revocation list fetched
// from a URL, and it loads as written.
func TestExampleRevocation(t *testing.T) {
	t.Setenv("JWT_SECRET", "c2VjcmV0LWZvci10ZXN0cw==")
	f, err := Load("production.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := f.Revocation
	if r == nil || r.URL == "" || r.File != "" || !r.Deny() || r.MaxStale == 0 || len(r.Headers) == 0 {
		t.Fatalf("production.yaml's revocation = %+v, want a URL with headers, on_unavailable deny and max_stale", r)
	}
}
