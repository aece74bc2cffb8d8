package configs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const minimal = `
listeners:
  - bind: "127.0.0.1:1883"
upstream:
  address: "127.0.0.1:1884"
authentication:
  - mechanism: jwt
    algorithm: hmac-based
    secret: "s3cr3t-for-tests"
`

func TestParseMinimalFillsDefaults(t *testing.T) {
	f, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Listeners[0].Name; got != "127.0.0.1:1883" {
		t.Errorf("listener name = %q, want the bind address", got)
	}
	if got := f.Authentication[0].Name; got != "jwt" {
		t.Errorf("authenticator name = %q, want jwt", got)
	}
	if got := f.Upstream.DialTimeout.Or(5 * time.Second); got != 5*time.Second {
		t.Errorf("dial timeout default = %v", got)
	}
}

// TestParseAuthMethod: auth_method and reauth are read as written, and
// left unset they are empty and nil, which authn takes as JWT and true.
func TestParseAuthMethod(t *testing.T) {
	f, err := Parse([]byte(minimal + "  - {name: users, mechanism: jwt, algorithm: hmac-based, secret: other-secret-for-tests, " +
		"auth_method: JWT-users, reauth: {same_subject: false}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	first, second := f.Authentication[0], f.Authentication[1]
	if first.AuthMethod != "" || first.Reauth.SameSubject != nil {
		t.Errorf("unset: auth_method %q, reauth.same_subject %v; want empty and nil", first.AuthMethod, first.Reauth.SameSubject)
	}
	if second.AuthMethod != "JWT-users" || second.Reauth.SameSubject == nil || *second.Reauth.SameSubject {
		t.Errorf("set: auth_method %q, reauth.same_subject %v; want JWT-users and false", second.AuthMethod, second.Reauth.SameSubject)
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []string // every one must appear in the error
	}{
		{"unknown key", minimal + "bogus: 1\n", []string{"bogus: unknown key (line 10)"}},
		{"unknown nested key", strings.Replace(minimal, "bind:", "bindd:", 1), []string{"listeners[0].bindd: unknown key (line 3)"}},
		{"wrong type", minimal + "limits:\n  max_connect_size: lots\n", []string{"limits.max_connect_size: `lots` is not a number (line 11)"}},
		{"bare number duration", minimal + "limits:\n  connect_timeout: 10\n", []string{"limits.connect_timeout: `10` is not a duration", "with a unit", "(line 11)"}},
		{"negative duration", minimal + "shutdown: {drain_timeout: -1s}\n", []string{"shutdown.drain_timeout: `-1s` is negative (line 10)"}},
		{"every decoding problem at once", minimal + "limits: {max_connections: 5, connect_timeout: 3, max_connect_size: [1]}\nlog: {levell: info}\n",
			[]string{"limits.connect_timeout: `3` is not a duration", "limits.max_connect_size: a list is not a number (line 10)", "log.levell: unknown key (line 11)"}},
		{"flow mapping on one line", "listeners: [{bind: ':1883', port: 1}]\n", []string{"listeners[0].port: unknown key (line 1)"}},
		{"secret and other problems", strings.Replace(minimal, `secret: "s3cr3t-for-tests"`, "secret_env: MQTT_JWT_PROXY_TEST_UNSET", 1) + "log: {level: loud}\n",
			[]string{"MQTT_JWT_PROXY_TEST_UNSET is not set", "log.level"}},
		{"empty", "", []string{"empty"}},
		{"nothing required", "log: {level: info}\n", []string{"listeners:", "upstream.address: required", "authentication: at least one"}},
		{"bad enums", strings.Replace(minimal, "mechanism: jwt", "mechanism: jwt\n    from: clientid\n    on_missing_jwt: maybe", 1) + "log: {level: loud, format: xml}\n",
			[]string{"authentication[0].from", "authentication[0].on_missing_jwt", "log.level", "log.format"}},
		{"auth_method not an MQTT string", strings.Replace(minimal, "mechanism: jwt", "mechanism: jwt\n    auth_method: \"JWT\\0\"", 1),
			[]string{`authentication[0].auth_method: "JWT\x00" is not an MQTT string`}},
		{"auth_method too long", strings.Replace(minimal, "mechanism: jwt", "mechanism: jwt\n    auth_method: "+strings.Repeat("m", 65536), 1),
			[]string{"authentication[0].auth_method: 65536 bytes, more than the 65535"}},
		{"two authenticators of one name", minimal + "  - {name: jwt, mechanism: jwt, algorithm: hmac-based, secret: other-secret-for-tests}\n",
			[]string{`authentication[1].name: "jwt" is used by another authenticator`}},
		{"reauth with mechanism certificate", minimal + "  - {mechanism: certificate, auth_method: JWT, reauth: {same_subject: false}}\n",
			[]string{"authentication[1].auth_method: not used with mechanism: certificate", "authentication[1].reauth: not used with mechanism: certificate"}},
		{"hmac without secret", strings.Replace(minimal, `secret: "s3cr3t-for-tests"`, "", 1), []string{"authentication[0].secret: required"}},
		{"public-key without key", strings.Replace(minimal, "hmac-based", "public-key", 1), []string{"authentication[0].public_key: required", "authentication[0].secret: not used"}},
		{"no algorithm", strings.Replace(minimal, "algorithm: hmac-based", "", 1), []string{"authentication[0].algorithm: required"}},
		{"jwks without endpoint", strings.Replace(minimal, `secret: "s3cr3t-for-tests"`, "use_jwks: true", 1), []string{"authentication[0].endpoint: required"}},
		{"bad bind", strings.Replace(minimal, `"127.0.0.1:1883"`, `"1883"`, 1), []string{"listeners[0].bind"}},
		{"bad upstream", strings.Replace(minimal, `"127.0.0.1:1884"`, `"broker"`, 1), []string{"upstream.address"}},
		{"negative client ID rate", minimal + "limits: {per_client_id_connect_rate: -1, per_client_id_connect_burst: -2}\n",
			[]string{"limits.per_client_id_connect_rate: must not be negative", "limits.per_client_id_connect_burst: must not be negative"}},
		{"tiny connect size", minimal + "limits:\n  max_connect_size: 10\n", []string{"limits.max_connect_size"}},
		{"negative packet size", minimal + "limits:\n  max_packet_size: -1\n", []string{"limits.max_packet_size: must not be negative"}},
		{"tiny packet size", minimal + "limits:\n  max_packet_size: 100\n", []string{"limits.max_packet_size: 100 bytes is too small"}},
		{"packet size over MQTT's largest", minimal + "limits:\n  max_packet_size: 268435461\n",
			[]string{"limits.max_packet_size: 268435461 bytes is over MQTT's largest packet, 268435460"}},
		{"negative pending connect bytes", minimal + "limits:\n  max_pending_connect_bytes: -1\n", []string{"limits.max_pending_connect_bytes: must not be negative"}},
		{"pending connect bytes under the default connect size", minimal + "limits:\n  max_pending_connect_bytes: 65536\n",
			[]string{"limits.max_pending_connect_bytes: 65536 bytes cannot hold one CONNECT of max_connect_size (1048576 bytes)"}},
		{"connect size over the default pending connect bytes", minimal + "limits:\n  max_connect_size: 100000000\n",
			[]string{"limits.max_pending_connect_bytes: 67108864 bytes cannot hold one CONNECT of max_connect_size (100000000 bytes)"}},
		{"pending connect bytes of exactly one connect size", minimal + "limits:\n  max_connect_size: 1500\n  max_pending_connect_bytes: 1500\n",
			[]string{"limits.max_pending_connect_bytes: 1500 bytes cannot hold one CONNECT of max_connect_size (1500 bytes), the read past it and its decoded form; use at least 4572"}},
		{"pending connect bytes without a TLS record", strings.Replace(minimal, `bind: "127.0.0.1:1883"`, `bind: "127.0.0.1:1883"`+"\n    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key}", 1) +
			"limits:\n  max_connect_size: 1500\n  max_pending_connect_bytes: 4572\n",
			[]string{"limits.max_pending_connect_bytes: 4572 bytes cannot hold one CONNECT of max_connect_size (1500 bytes), the read past it, its decoded form and a TLS record; use at least 24028"}},
		{"two secrets", strings.Replace(minimal, `secret: "s3cr3t-for-tests"`, "secret: a\n    secret_env: B", 1), []string{"only one of secret"}},
		{"unset env", strings.Replace(minimal, `secret: "s3cr3t-for-tests"`, "secret_env: MQTT_JWT_PROXY_TEST_UNSET", 1), []string{"secret_env", "MQTT_JWT_PROXY_TEST_UNSET is not set"}},
		{"two documents", minimal + "---\n" + minimal, []string{"more than one YAML document"}},
		{"fraction in a whole number", strings.Replace(minimal, `bind: "127.0.0.1:1883"`, `{bind: "127.0.0.1:1883", max_connections: 1.5}`, 1) + "limits: {per_ip_connect_burst: .inf}\n",
			[]string{"listeners[0].max_connections: `1.5` is not a whole number (line 3)", "limits.per_ip_connect_burst: `.inf` is not a number (line 10)"}},
		{"fraction beside a decoding problem", minimal + "limits: {max_connections: 2.5, connect_timeout: 3}\n",
			[]string{"limits.max_connections: `2.5` is not a whole number", "limits.connect_timeout: `3` is not a duration"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatal("Parse accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestParseWholeNumberAsFloat: a whole number written as a float decodes;
// yaml.v3 gives it the !!float tag, which must not read as a fraction.
func TestParseWholeNumberAsFloat(t *testing.T) {
	f, err := Parse([]byte(minimal + "limits: {max_connections: 2e3, max_pending_connects: 100.0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Limits.MaxConnections != 2000 || f.Limits.MaxPendingConnects != 100 {
		t.Errorf("max_connections %d, max_pending_connects %d; want 2000 and 100", f.Limits.MaxConnections, f.Limits.MaxPendingConnects)
	}
}

func TestSecretFromEnvAndFile(t *testing.T) {
	t.Setenv("MQTT_JWT_PROXY_TEST_SECRET", "from-env")
	f, err := Parse([]byte(strings.Replace(minimal, `secret: "s3cr3t-for-tests"`, "secret_env: MQTT_JWT_PROXY_TEST_SECRET", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Authentication[0].Secret; got != "from-env" {
		t.Errorf("secret from env = %q", got)
	}

	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err = Parse([]byte(strings.Replace(minimal, `secret: "s3cr3t-for-tests"`, "secret_file: "+path, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Authentication[0].Secret; got != "from-file" {
		t.Errorf("secret from file = %q, want the trailing newline dropped", got)
	}
}

func TestUsesExampleSecret(t *testing.T) {
	for secret, want := range map[string]bool{"secret": true, "emqxsecret": true, "s3cr3t-for-tests": false} {
		a := Authenticator{Mechanism: "jwt", Algorithm: "hmac-based", Secret: secret}
		if got := a.UsesExampleSecret(); got != want {
			t.Errorf("UsesExampleSecret(%q) = %v, want %v", secret, got, want)
		}
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("listeners: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("Load error = %v, want the path and line", err)
	}
}

func TestUpstreamThatIsAListenerRefused(t *testing.T) {
	for _, tc := range []struct {
		bind, upstream string
		loops          bool
	}{
		{"127.0.0.1:1883", "127.0.0.1:1883", true},
		{"0.0.0.0:8883", "127.0.0.1:8883", true},
		{":1883", "localhost:1883", true},
		{"[::]:1883", "127.0.0.1:1883", true},
		{"[::1]:1883", "localhost:1883", true},
		{"127.0.0.1:1883", "0.0.0.0:1883", true},
		{"127.0.0.1:1883", ":1883", true},
		{"[::ffff:127.0.0.1]:1883", "127.0.0.1:1883", true},
		{"0.0.0.0:8883", "127.0.0.1:8884", false},
		{"127.0.0.1:1883", "127.0.0.2:1883", false},
		{"0.0.0.0:1883", "[::1]:1883", false}, // an IPv4 listener does not take IPv6
		{"0.0.0.0:1883", "10.1.2.3:1883", false},
		{"0.0.0.0:1883", "broker.internal:1883", false},
	} {
		yaml := strings.Replace(strings.Replace(minimal, `"127.0.0.1:1883"`, `"`+tc.bind+`"`, 1), `"127.0.0.1:1884"`, `"`+tc.upstream+`"`, 1)
		_, err := Parse([]byte(yaml))
		if loops := err != nil && strings.Contains(err.Error(), "would connect to itself"); loops != tc.loops {
			t.Errorf("listener %s, upstream %s: error %v; want a refusal: %v", tc.bind, tc.upstream, err, tc.loops)
		}
	}
}

func TestBindsOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1:1883", "127.0.0.1:1883", true},
		{"0.0.0.0:1883", "127.0.0.1:1883", true},
		{":1883", "[::1]:1883", true},
		{"[::]:1883", "0.0.0.0:1883", true},
		{"localhost:1883", "127.0.0.1:1883", true},
		{"broker.example:1883", "broker.example:1883", true},
		{"127.0.0.1:1883", "127.0.0.1:1884", false},
		{"127.0.0.1:1883", "127.0.0.2:1883", false},
		{"127.0.0.1:1883", "[::1]:1883", false},
		{"127.0.0.1:0", "127.0.0.1:0", false}, // each gets a free port
	} {
		if got := bindsOverlap(tc.a, tc.b); got != tc.want {
			t.Errorf("bindsOverlap(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestListenersOnOnePort(t *testing.T) {
	two := strings.Replace(minimal, `  - bind: "127.0.0.1:1883"`, "  - bind: \"127.0.0.1:1883\"\n  - {name: all, bind: \":1883\"}", 1)
	_, err := Parse([]byte(two))
	if err == nil || !strings.Contains(err.Error(), `listeners[1].bind: ":1883" takes the port of listeners[0] ("127.0.0.1:1883")`) {
		t.Errorf("Parse = %v, want the second listener refused", err)
	}
}

// TestDocumentedConfigurations: the configurations the documentation
// shows decode: every key exists and has the type shown. The full one
// under "## The whole file" in docs/configuration.md, and README's minimal
// one under "## Configuration". (Their files, such as certificates, are
// not here, so the checks that open them fail; those are not what this
// test is about.)
func TestDocumentedConfigurations(t *testing.T) {
	for _, tc := range []struct{ file, heading string }{
		{"../docs/configuration.md", "## The whole file"},
		{"../README.md", "## Configuration"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			doc, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			_, section, ok := strings.Cut(string(doc), "\n"+tc.heading+"\n")
			_, block, ok2 := strings.Cut(section, "```yaml\n")
			block, _, ok3 := strings.Cut(block, "```")
			if !ok || !ok2 || !ok3 || !strings.Contains(block, "listeners:") {
				t.Fatalf("%s has no yaml block under %s", tc.file, tc.heading)
			}
			_, err = Parse([]byte(block))
			for _, line := range strings.Split(fmt.Sprint(err), "\n") {
				if strings.Contains(line, "unknown key") || strings.Contains(line, " is not a") {
					t.Errorf("%s: %s", tc.file, line)
				}
			}
		})
	}
}

// TestSetBindHost: every listener and the admin endpoint move to the given
// address, keeping their ports, and the result is validated again.
func TestSetBindHost(t *testing.T) {
	twoListeners := strings.Replace(minimal, `  - bind: "127.0.0.1:1883"`, "  - bind: \"127.0.0.1:1883\"\n  - bind: \":8883\"", 1) +
		"metrics: {bind: \"127.0.0.1:9100\"}\n"
	tests := []struct {
		name, yaml, host string
		wantBinds        []string // the listeners', then metrics.bind
		wantErr          string
	}{
		{"all IPv4 interfaces", twoListeners, "0.0.0.0", []string{"0.0.0.0:1883", "0.0.0.0:8883", "0.0.0.0:9100"}, ""},
		{"all IPv6 interfaces", twoListeners, "::", []string{"[::]:1883", "[::]:8883", "[::]:9100"}, ""},
		{"not an address", twoListeners, "example.com", nil, `bind host "example.com" is not an IP address`},
		{"binds that collide once moved", strings.Replace(minimal, `  - bind: "127.0.0.1:1883"`, "  - bind: \"127.0.0.1:1883\"\n  - bind: \"127.0.0.2:1883\"", 1),
			"0.0.0.0", nil, `listeners[1].bind: "0.0.0.0:1883" takes the port of listeners[0]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			names := []string{}
			for _, l := range f.Listeners {
				names = append(names, l.Name)
			}
			err = f.SetBindHost(tt.host)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("SetBindHost(%q) = %v, want an error with %q", tt.host, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for i, l := range f.Listeners {
				got = append(got, l.Bind)
				if l.Name != names[i] {
					t.Errorf("listeners[%d] renamed %q, want %q", i, l.Name, names[i])
				}
			}
			got = append(got, f.Metrics.Bind)
			if !slices.Equal(got, tt.wantBinds) {
				t.Errorf("binds %q, want %q", got, tt.wantBinds)
			}
		})
	}
}

// TestLeastPendingConnectBytes: the least max_pending_connect_bytes
// accepted holds one CONNECT of max_connect_size with what comes with it,
// a TLS record's buffer too when a listener speaks TLS; a byte less is
// refused.
func TestLeastPendingConnectBytes(t *testing.T) {
	withTLS := strings.Replace(minimal, `bind: "127.0.0.1:1883"`, `bind: "127.0.0.1:1883"`+"\n    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key}", 1)
	for _, tc := range []struct {
		name  string
		yaml  string
		least int
	}{
		{"tcp", minimal, 1500 + pendingReadSlack + decodedConnectSlack},
		{"tls", withTLS, 1500 + pendingReadSlack + decodedConnectSlack + PendingTLSRecordBytes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limits := func(budget int) []byte {
				return []byte(tc.yaml + fmt.Sprintf("limits:\n  max_connect_size: 1500\n  max_pending_connect_bytes: %d\n", budget))
			}
			if _, err := Parse(limits(tc.least)); err != nil {
				t.Errorf("a budget of %d: %v", tc.least, err)
			}
			if _, err := Parse(limits(tc.least - 1)); err == nil || !strings.Contains(err.Error(), "limits.max_pending_connect_bytes") {
				t.Errorf("a budget of %d: %v, want it refused", tc.least-1, err)
			}
		})
	}
}
