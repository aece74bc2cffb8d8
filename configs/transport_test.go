package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// withTransport is a valid file with the listener and upstream given.
func withTransport(listener, upstream string) string {
	return "listeners:\n  - bind: \"127.0.0.1:8883\"\n" + listener +
		"upstream:\n  address: \"127.0.0.1:1883\"\n" + upstream +
		"authentication:\n  - {mechanism: jwt, algorithm: hmac-based, secret: s3cr3t-for-tests}\n"
}

func TestTransportOptions(t *testing.T) {
	// Parse leaves relative paths to the working directory: testdata/.
	for _, tc := range []struct {
		name, listener, upstream string
		want                     string // in the error; "" when valid
	}{
		{"tls", "    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key}\n", "", ""},
		{"mutual tls", "    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key, client_ca_file: testdata/ca.pem, client_auth: required, min_version: \"1.3\"}\n", "", ""},
		{"tls without key", "    tls: {cert_file: testdata/server.pem}\n", "", "listeners[0].tls: cert_file and key_file are required"},
		{"missing certificate file", "    tls: {cert_file: testdata/nope.pem, key_file: testdata/server.key}\n", "", "listeners[0].tls.cert_file, tls.key_file: open testdata/nope.pem"},
		{"key of another certificate", "    tls: {cert_file: testdata/server.pem, key_file: testdata/device-1.key}\n", "", "private key does not match public key"},
		{"client auth without CA", "    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key, client_auth: optional}\n", "", "tls.client_ca_file: required with client_auth: optional"},
		{"CA without client auth", "    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key, client_ca_file: testdata/ca.pem}\n", "", "tls.client_ca_file: only used with client_auth"},
		{"CA file without certificates", "    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key, client_ca_file: testdata/server.key, client_auth: required}\n", "", "holds no PEM certificate"},
		{"bad client auth", "    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key, client_auth: maybe}\n", "", "tls.client_auth: \"maybe\" is not one of"},
		{"bad min version", "    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key, min_version: \"1.0\"}\n", "", "tls.min_version"},
		{"websocket", "    websocket: {path: /mqtt, allowed_origins: [\"*\"], token_from: query, token_query_param: access_token}\n", "", ""},
		{"websocket path", "    websocket: {path: mqtt}\n", "", "websocket.path: \"mqtt\" must start with /"},
		{"websocket token_from", "    websocket: {token_from: cookie}\n", "", "websocket.token_from"},
		{"query param without query", "    websocket: {token_from: authorization, token_query_param: t}\n", "", "token_query_param: only used with token_from: query"},
		{"proxy protocol", "    proxy_protocol: {enabled: true, trusted_cidrs: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\"], timeout: 3s}\n", "", ""},
		{"proxy protocol without trusted peers", "    proxy_protocol: {enabled: true}\n", "", "proxy_protocol.trusted_cidrs: required with enabled: true"},
		{"trusted peers while disabled", "    proxy_protocol: {trusted_cidrs: [10.0.0.0/8]}\n", "", "proxy_protocol.enabled: set it to true"},
		{"proxy protocol client certificates", "    proxy_protocol: {enabled: true, trusted_cidrs: [10.0.0.0/8], client_certificates: true}\n", "", ""},
		{"client certificates while disabled", "    proxy_protocol: {client_certificates: true}\n", "", "proxy_protocol.enabled: set it to true to use client_certificates"},
		{"client certificates under the listener's TLS", "    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key}\n    proxy_protocol: {enabled: true, trusted_cidrs: [10.0.0.0/8], client_certificates: true}\n", "",
			"proxy_protocol.client_certificates: the listener does TLS itself"},
		{"bad CIDR", "    proxy_protocol: {enabled: true, trusted_cidrs: [10.0.0.0/33]}\n", "", "\"10.0.0.0/33\" is not a CIDR"},
		{"upstream proxy protocol off", "", "  proxy_protocol: off\n", ""},
		{"upstream proxy protocol v2", "", "  proxy_protocol: v2\n", ""},
		{"upstream proxy protocol v3", "", "  proxy_protocol: v3\n", "upstream.proxy_protocol: \"v3\" is not one of off, v1, v2"},
		{"upstream tls", "", "  tls: {ca_file: testdata/ca.pem, cert_file: testdata/device-1.pem, key_file: testdata/device-1.key, server_name: localhost}\n", ""},
		{"upstream tls key without certificate", "", "  tls: {key_file: testdata/device-1.key}\n", "upstream.tls.cert_file, key_file: give both or neither"},
		{"upstream tls missing CA", "", "  tls: {ca_file: testdata/nope.pem}\n", "upstream.tls.ca_file: open testdata/nope.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(withTransport(tc.listener, tc.upstream)))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestLoadResolvesCertificatePaths: Load takes relative certificate paths
// from the configuration file's directory, wherever it runs from.
func TestLoadResolvesCertificatePaths(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"server.pem", "server.key", "ca.pem"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "certs", name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "edge.yaml")
	config := withTransport("    tls: {cert_file: certs/server.pem, key_file: certs/server.key}\n", "  tls: {ca_file: certs/ca.pem}\n")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := f.Listeners[0].TLS.CertFile, filepath.Join(dir, "certs", "server.pem"); got != want {
		t.Errorf("cert_file = %q, want %q", got, want)
	}
	if got, want := f.Upstream.TLS.CAFile, filepath.Join(dir, "certs", "ca.pem"); got != want {
		t.Errorf("upstream ca_file = %q, want %q", got, want)
	}
	if _, err := Parse([]byte(config)); err == nil {
		t.Error("Parse found certs/ relative to the working directory, where there is none")
	}
}

// TestLoadResolvesKeyPaths: secret_file, a public_key path and the JWKS
// fetch's ssl files are taken from the configuration file's directory too;
// a public_key of PEM text is left as it is.
func TestLoadResolvesKeyPaths(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", "secret"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const pemText = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
	config := `
listeners: [{bind: "127.0.0.1:1883"}]
upstream: {address: "127.0.0.1:1884"}
authentication:
  - {mechanism: jwt, algorithm: hmac-based, secret_file: keys/secret}
  - {mechanism: jwt, algorithm: public-key, public_key: keys/public.pem}
  - {mechanism: jwt, algorithm: public-key, public_key: "` + strings.ReplaceAll(pemText, "\n", `\n`) + `"}
  - {mechanism: jwt, use_jwks: true, endpoint: "https://idp.example/jwks", ssl: {ca_file: keys/ca.pem}}
`
	path := filepath.Join(dir, "proxy.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a := f.Authentication
	if a[0].Secret != "from-file" {
		t.Errorf("secret from keys/secret = %q, want from-file", a[0].Secret)
	}
	if got, want := a[1].PublicKey, filepath.Join(dir, "keys", "public.pem"); got != want {
		t.Errorf("public_key = %q, want %q", got, want)
	}
	if a[2].PublicKey != pemText {
		t.Errorf("public_key PEM text became %q", a[2].PublicKey)
	}
	if got, want := a[3].SSL.CAFile, filepath.Join(dir, "keys", "ca.pem"); got != want {
		t.Errorf("ssl.ca_file = %q, want %q", got, want)
	}
}

// TestCertificateAuthenticator: mechanism: certificate takes no JWT option
// and needs a listener that verifies client certificates, or takes those
// its balancer verified; it is named
// after its mechanism.
func TestCertificateAuthenticator(t *testing.T) {
	const mtls = "    tls: {cert_file: testdata/server.pem, key_file: testdata/server.key, client_ca_file: testdata/ca.pem, client_auth: optional}\n"
	file := func(listener, auths string) string {
		return "listeners:\n  - bind: \"127.0.0.1:8883\"\n" + listener +
			"upstream:\n  address: \"127.0.0.1:1883\"\nauthentication:\n" + auths
	}
	const jwt = "  - {mechanism: jwt, algorithm: hmac-based, secret: s3cr3t-for-tests}\n"
	for _, tc := range []struct {
		name, listener, auths string
		want                  []string // in the error; none when valid
		wantNames             []string
	}{
		{"certificate or token", mtls, "  - mechanism: certificate\n" + jwt, nil, []string{"certificate", "jwt#2"}},
		{"token, then certificate", mtls, jwt + "  - {mechanism: certificate}\n", nil, []string{"jwt", "certificate#2"}},
		{"certificate alone, named", mtls, "  - {mechanism: certificate, name: devices}\n", nil, []string{"devices"}},
		{"behind a balancer that verifies them", "    proxy_protocol: {enabled: true, trusted_cidrs: [10.0.0.0/8], client_certificates: true}\n",
			"  - mechanism: certificate\n" + jwt, nil, []string{"certificate", "jwt#2"}},
		{"no listener verifies certificates", "", "  - mechanism: certificate\n" + jwt,
			[]string{"authentication[0].mechanism: certificate accepts a client certificate that a listener verified, and no listener asks for one"}, nil},
		{"JWT options", mtls, "  - {mechanism: certificate, secret: s, verify_claims: {sub: x}, disconnect_after_expire: false}\n",
			[]string{"authentication[0].secret: not used with mechanism: certificate", "authentication[0].verify_claims: not used", "authentication[0].disconnect_after_expire: not used"}, nil},
		{"unknown mechanism", "", "  - {mechanism: password}\n", []string{`authentication[0].mechanism: "password" is not one of jwt, certificate`}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(file(tc.listener, tc.auths)))
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				var names []string
				for _, a := range f.Authentication {
					names = append(names, a.Name)
				}
				if strings.Join(names, " ") != strings.Join(tc.wantNames, " ") {
					t.Errorf("names = %v, want %v", names, tc.wantNames)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestEmbeddedUpstreamTransport: the embedded broker speaks plain MQTT
// over TCP: neither TLS nor a PROXY header can be sent to it.
func TestEmbeddedUpstreamTransport(t *testing.T) {
	for _, tc := range []struct{ upstream, want string }{
		{"{address: embedded}", ""},
		{"{address: embedded, proxy_protocol: off}", ""},
		{"{address: embedded, proxy_protocol: v2}", "upstream.proxy_protocol: the embedded broker reads no PROXY header"},
		{"{address: embedded, proxy_protocol: v1}", "upstream.proxy_protocol: the embedded broker reads no PROXY header"},
		{"{address: embedded, tls: {}}", "upstream.tls: the embedded broker speaks plain TCP only"},
	} {
		_, err := Parse([]byte("listeners:\n  - bind: \"127.0.0.1:8883\"\nupstream: " + tc.upstream +
			"\nauthentication:\n  - {mechanism: jwt, algorithm: hmac-based, secret: s3cr3t-for-tests}\n"))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want valid", tc.upstream, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.upstream, err, tc.want)
		}
	}
}
