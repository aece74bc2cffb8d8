package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckReportsAuthorizationErrors: check compiles the authorization
// rules too, and lists each faulty topic with the rest.
func TestCheckReportsAuthorizationErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "authorization.yaml")
	config := `listeners: [{bind: ":1883"}]
upstream: {address: "127.0.0.1:1884"}
authentication:
  - {mechanism: jwt, algorithm: hmac-based, secret: s, verify_claims: {sub: "${nope}"}}
authorization:
  rules:
    - {permission: allow, action: all, topics: ["devices/${clientid}/#", "a/#/b"]}
    - {permission: deny, action: subscribe, topic: "t/${claims.}"}
`
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"check", "-config", path}, &out, &errOut); code != 1 {
		t.Errorf("check exited %d, want 1", code)
	}
	for _, want := range []string{
		`authorization.rules[0].topics[1]: "a/#/b" is not a topic filter`,
		"authorization.rules[1].topics[0]: placeholder ${claims.} names no claim",
		"authentication[0] (jwt): verify_claims.sub: unknown placeholder ${nope}",
	} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("check said %q, want it to mention %q", errOut.String(), want)
		}
	}
}
