package main

import (
	"strings"
	"testing"
)

// TestCheckForward: check parses the forward templates, and its errors
// name the key.
func TestCheckForward(t *testing.T) {
	cases := []struct {
		name     string
		forward  string
		wantCode int
		want     string
	}{
		{"valid", "forward: {password: strip, client_id: \"${claims.sub}\"}\n", 0, "OK"},
		{"unknown placeholder", "forward: {username: \"${claim.tenant}\"}\n", 1, "forward.username: unknown placeholder ${claim.tenant}"},
		{"unterminated", "forward: {client_id: \"dev-${claims.sub\"}\n", 1, `forward.client_id: unterminated placeholder in "dev-${claims.sub"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The authentication section is the file's last: forward follows it.
			path := writeConfig(t, "  - {mechanism: jwt, algorithm: hmac-based, secret: secret}\n"+tc.forward)
			code, stdout, stderr := runCommand(t, "check", "-config", path)
			if code != tc.wantCode || !strings.Contains(stdout+stderr, tc.want) {
				t.Errorf("check exited %d, stdout %q, stderr %q; want %d and %q", code, stdout, stderr, tc.wantCode, tc.want)
			}
		})
	}
}
