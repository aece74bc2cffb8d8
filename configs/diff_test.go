package configs

import (
	"slices"
	"strings"
	"testing"
)

func TestDiff(t *testing.T) {
	base, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, from, to string
		want           []string
	}{
		{"nothing", "", "", nil},
		{"a leaf", `address: "127.0.0.1:1884"`, `address: "127.0.0.1:1885"`, []string{"upstream.address"}},
		{"a new section", "", "log: {level: debug}\n", []string{"log.level"}},
		{"an optional block", `  - bind: "127.0.0.1:1883"`, "  - bind: \"127.0.0.1:1883\"\n    websocket: {path: /ws}", []string{"listeners[0].websocket"}},
		{"a listener more", `  - bind: "127.0.0.1:1883"`, "  - bind: \"127.0.0.1:1883\"\n  - bind: \"127.0.0.1:1886\"", []string{"listeners"}},
		{"a map", "    algorithm: hmac-based", "    algorithm: hmac-based\n    verify_claims: {sub: \"${clientid}\"}", []string{"authentication[0].verify_claims"}},
		{"a revocation list", "", "revocation: {file: /r.json}\n", []string{"revocation"}},
		{"a duration and a secret", `secret: "s3cr3t-for-tests"`, "secret: \"another\"\n    leeway: 5s", []string{"authentication[0].secret", "authentication[0].leeway"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := minimal
			if tc.from == "" {
				doc += tc.to
			} else {
				doc = strings.Replace(minimal, tc.from, tc.to, 1)
			}
			next, err := Parse([]byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			got := Diff(base, next)
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Errorf("Diff = %q, want %q", got, want)
			}
		})
	}
}

// TestDiffRevocation: each revocation key that changed is named, so that a
// reload can tell a new source from a new interval.
func TestDiffRevocation(t *testing.T) {
	base, err := Parse([]byte(minimal + "revocation: {url: https://idp.example/r, headers: {A: b}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		section string
		want    []string
	}{
		{"revocation: {url: https://idp.example/r, headers: {A: b}}\n", nil},
		{"revocation: {url: https://idp.example/other, headers: {A: b}}\n", []string{"revocation.url"}},
		{"revocation: {url: https://idp.example/r, headers: {A: c}, refresh_interval: 1m, on_unavailable: allow}\n",
			[]string{"revocation.headers.A", "revocation.on_unavailable", "revocation.refresh_interval"}},
		{"revocation: {url: https://idp.example/r, headers: {A: b}, ssl: {ca_file: /ca.pem}}\n", []string{"revocation.ssl"}},
		{"", []string{"revocation"}},
	} {
		next, err := Parse([]byte(minimal + tc.section))
		if err != nil {
			t.Fatal(err)
		}
		got := Diff(base, next)
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%q: Diff = %q, want %q", tc.section, got, tc.want)
		}
	}
}
