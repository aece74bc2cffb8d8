package main

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
)

// hmacChain is an authentication section the forward tests share; the
// forward section goes after it, at the end of the file.
const hmacChain = "  - {mechanism: jwt, algorithm: hmac-based, secret: secret}\n"

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
			path := writeConfig(t, hmacChain+tc.forward)
			code, stdout, stderr := runCommand(t, "check", "-config", path)
			if code != tc.wantCode || !strings.Contains(stdout+stderr, tc.want) {
				t.Errorf("check exited %d, stdout %q, stderr %q; want %d and %q", code, stdout, stderr, tc.wantCode, tc.want)
			}
		})
	}
}

// TestReloadForward: a reload applies a new forward section; a broken one
// rejects the reload.
func TestReloadForward(t *testing.T) {
	running, err := configs.Load(writeConfig(t, hmacChain+"forward: {password: strip}\n"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		forward string
		want    configs.Forward
		wantErr string
	}{
		{"unchanged", "forward: {password: strip}\n", configs.Forward{Password: "strip"}, ""},
		{"changed", "forward: {password: strip, client_id: \"${claims.sub}\"}\n", configs.Forward{Password: "strip", ClientID: "${claims.sub}"}, ""},
		{"broken", "forward: {client_id: \"${claims}\"}\n", configs.Forward{}, "forward.client_id: unknown placeholder ${claims}"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			next, chain, _, _, err := reload(configSource{path: writeConfig(t, hmacChain+tc.forward)}, running, nil, nil, "", servingProxy(t, running), zap.NewNop())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || next != nil {
					t.Fatalf("reload = %v, %v; want an error containing %q", next, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			chain.Close()
			if next.Forward != tc.want {
				t.Errorf("forward after reload = %+v, want %+v", next.Forward, tc.want)
			}
		})
	}
}

// servingProxy is a proxy with the pools of cfg, as serve makes it, for a
// reload to update; the pools' checks stop at cleanup.
func servingProxy(t *testing.T, cfg *configs.File) *proxy.Proxy {
	t.Helper()
	pools, err := upstreamsConfig(cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	upstreams, err := proxy.NewUpstreams(pools, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(upstreams.Close)
	return &proxy.Proxy{Upstreams: upstreams}
}

// TestReloadKeepsBindHost: a reload applies -bind-host again, so that the
// listeners it reads equal the running ones and no restart is asked for.
func TestReloadKeepsBindHost(t *testing.T) {
	src := configSource{path: writeConfig(t, hmacChain), bindHost: "0.0.0.0"}
	running, err := src.load()
	if err != nil {
		t.Fatal(err)
	}
	if got := running.Listeners[0].Bind; got != "0.0.0.0:1883" {
		t.Fatalf("listener bind %q with -bind-host 0.0.0.0, want 0.0.0.0:1883", got)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	next, chain, _, _, err := reload(src, running, nil, nil, "", servingProxy(t, running), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	chain.Close()
	if got := next.Listeners[0].Bind; got != "0.0.0.0:1883" {
		t.Errorf("listener bind after reload %q, want 0.0.0.0:1883", got)
	}
	if restart := logs.FilterMessageSnippet("next restart").All(); len(restart) > 0 {
		t.Errorf("reload asked for a restart: %v", restart[0].ContextMap())
	}
}
