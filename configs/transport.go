package configs

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// DefaultTokenQueryParam is WebSocket.TokenQueryParam's zero value.
const DefaultTokenQueryParam = "token"

// Values of ListenerTLS.ClientAuth.
const (
	ClientAuthNone     = "none"
	ClientAuthOptional = "optional"
	ClientAuthRequired = "required"
)

// Values of WebSocket.TokenFrom.
const (
	TokenFromNone          = "none"
	TokenFromAuthorization = "authorization"
	TokenFromQuery         = "query"
)

// Values of Upstream.ProxyProtocol.
const (
	ProxyProtocolOff = "off"
	ProxyProtocolV1  = "v1"
	ProxyProtocolV2  = "v2"
)

// ListenerTLS makes a listener accept TLS (and, with a client CA, mutual
// TLS) instead of plain TCP. Relative file paths are taken from the
// configuration file's directory. The files are read again when they
// change, so renewed certificates apply to new connections without a
// restart; established connections keep theirs.
type ListenerTLS struct {
	// CertFile is the PEM certificate chain the proxy presents. Required.
	CertFile string `yaml:"cert_file"`
	// KeyFile is CertFile's PEM private key. Required.
	KeyFile string `yaml:"key_file"`
	// ClientCAFile is a PEM bundle of the CAs that sign client
	// certificates. Required with ClientAuth optional or required.
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuth is none (the default: no client certificate is asked
	// for), optional (one is asked for and verified if given) or required
	// (the handshake fails without a valid one).
	ClientAuth string `yaml:"client_auth"`
	// MinVersion is the oldest TLS version accepted: "1.2" (the default)
	// or "1.3".
	MinVersion string `yaml:"min_version"`
}

// WebSocket serves MQTT over WebSocket on a listener (over TLS when the
// listener has tls: wss). Clients send binary messages; the broker behind
// the proxy gets plain MQTT and needs no WebSocket support.
type WebSocket struct {
	// Path is the HTTP path of the upgrade. Zero means /mqtt.
	Path string `yaml:"path"`
	// AllowedOrigins lists the Origin header values accepted, such as
	// "https://app.example.com", or "*" for any. Requests without an
	// Origin header (clients other than browsers) are always accepted.
	// Zero means only the upgrade request's own host.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// TokenFrom lets a client whose CONNECT has no password carry its
	// token in the upgrade request instead, for browsers: none (the
	// default), authorization (an "Authorization: Bearer" header) or
	// query (the query parameter TokenQueryParam). The token then stands
	// in for the CONNECT's password.
	TokenFrom string `yaml:"token_from"`
	// TokenQueryParam names the query parameter with TokenFrom: query.
	// Zero means DefaultTokenQueryParam.
	TokenQueryParam string `yaml:"token_query_param"`
	// FailIfNoSubprotocol refuses, with 400 Bad Request, an upgrade that
	// offers neither "mqtt" nor "mqttv3.1" (EMQX's option of the same
	// name). False, the default, serves it without a subprotocol.
	FailIfNoSubprotocol bool `yaml:"fail_if_no_subprotocol"`
}

// ProxyProtocol makes a listener read a PROXY protocol header (v1 or v2)
// from the load balancer in front of the proxy, so that logs, limits and
// the upstream's PROXY header carry the real client address.
type ProxyProtocol struct {
	// Enabled turns PROXY protocol on for the listener.
	Enabled bool `yaml:"enabled"`
	// TrustedCIDRs are the peers (load balancers) that must send a header,
	// as CIDRs or single IPs. Required when Enabled. A peer outside them
	// is served as a direct client, and refused if it sends a header.
	TrustedCIDRs []string `yaml:"trusted_cidrs"`
	// Timeout bounds reading the header. Zero means 5s.
	Timeout Duration `yaml:"timeout"`
	// ClientCertificates takes, from a v2 header's PP2_TYPE_SSL TLV, the
	// common name of a client certificate the balancer verified, as if
	// the listener had verified it: for ${cert_common_name} and
	// certificate authenticators, behind a balancer that terminates TLS
	// (HAProxy: send-proxy-v2-ssl-cn); a v2 header sent upstream passes
	// the TLV on. Not with the listener's own tls.
	ClientCertificates bool `yaml:"client_certificates"`
}

// TLSVersion returns the crypto/tls version constant for MinVersion.
func (t *ListenerTLS) TLSVersion() uint16 {
	if t.MinVersion == "1.3" {
		return tls.VersionTLS13
	}
	return tls.VersionTLS12
}

// TrustedPrefixes returns TrustedCIDRs parsed; a single IP is a prefix of
// its full length.
func (p *ProxyProtocol) TrustedPrefixes() ([]netip.Prefix, error) {
	prefixes := make([]netip.Prefix, 0, len(p.TrustedCIDRs))
	for _, s := range p.TrustedCIDRs {
		prefix, err := parsePrefix(s)
		if err != nil {
			return nil, err
		}
		prefixes = append(prefixes, prefix)
	}
	return prefixes, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR nor an IP address", s)
		}
		return netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen()), nil
	}
	prefix, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR: %w", s, err)
	}
	return prefix.Masked(), nil
}

// resolvePaths makes the file paths that are relative absolute, taking
// them from dir (the configuration file's directory), so that a
// configuration and its keys and certificates can move together and the
// proxy finds them whatever directory it runs from: TLS files, secret_file,
// password_file, public_key (when it is a path rather than PEM text), the
// revocation file and admin_token_file.
func (f *File) resolvePaths(dir string) {
	if dir == "" {
		return
	}
	resolve := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	resolveTLS := func(t *TLSClient) {
		if t != nil {
			resolve(&t.CAFile)
			resolve(&t.CertFile)
			resolve(&t.KeyFile)
		}
	}
	for i := range f.Listeners {
		if t := f.Listeners[i].TLS; t != nil {
			resolve(&t.CertFile)
			resolve(&t.KeyFile)
			resolve(&t.ClientCAFile)
		}
	}
	f.eachUpstream(func(_ string, u Upstream) {
		resolveTLS(u.TLS)
		for _, s := range u.Servers {
			resolveTLS(s.TLS)
		}
		if u.HealthCheck != nil && u.HealthCheck.Connect != nil {
			resolve(&u.HealthCheck.Connect.PasswordFile)
		}
	})
	for i := range f.Authentication {
		a := &f.Authentication[i]
		resolveTLS(a.SSL)
		resolve(&a.SecretFile)
		if !a.PublicKeyIsPEM() {
			resolve(&a.PublicKey)
		}
	}
	if r := f.Revocation; r != nil {
		resolve(&r.File)
		resolveTLS(r.SSL)
	}
	resolve(&f.Metrics.AdminTokenFile)
}

// validateTransport checks a listener's tls, websocket and proxy_protocol
// sections. It reads the certificate files, so a missing or broken one
// is reported by check, not at the first handshake.
func (l Listener) validateTransport(at string) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(at+"."+format, args...)) }

	if t := l.TLS; t != nil {
		if t.CertFile == "" || t.KeyFile == "" {
			bad("tls: cert_file and key_file are required")
		} else if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
			bad("tls.cert_file, tls.key_file: %v", err)
		}
		switch t.ClientAuth {
		case "", ClientAuthNone:
			if t.ClientCAFile != "" {
				bad("tls.client_ca_file: only used with client_auth: optional or required")
			}
		case ClientAuthOptional, ClientAuthRequired:
			if t.ClientCAFile == "" {
				bad("tls.client_ca_file: required with client_auth: %s", t.ClientAuth)
			} else if _, err := LoadCertPool(t.ClientCAFile); err != nil {
				bad("tls.client_ca_file: %v", err)
			}
		default:
			bad("tls.client_auth: %q is not one of none, optional, required", t.ClientAuth)
		}
		if !oneOf(t.MinVersion, "", "1.2", "1.3") {
			bad("tls.min_version: %q is not one of 1.2, 1.3", t.MinVersion)
		}
	}
	if w := l.WebSocket; w != nil {
		if w.Path != "" && !strings.HasPrefix(w.Path, "/") {
			bad("websocket.path: %q must start with /", w.Path)
		}
		if !oneOf(w.TokenFrom, "", TokenFromNone, TokenFromAuthorization, TokenFromQuery) {
			bad("websocket.token_from: %q is not one of none, authorization, query", w.TokenFrom)
		}
		if w.TokenQueryParam != "" && w.TokenFrom != TokenFromQuery {
			bad("websocket.token_query_param: only used with token_from: query")
		}
	}
	if p := l.ProxyProtocol; p != nil {
		switch {
		case p.Enabled && len(p.TrustedCIDRs) == 0:
			bad("proxy_protocol.trusted_cidrs: required with enabled: true (the load balancers allowed to send a header)")
		case !p.Enabled && len(p.TrustedCIDRs) > 0:
			bad("proxy_protocol.enabled: set it to true to use trusted_cidrs")
		case !p.Enabled && p.ClientCertificates:
			bad("proxy_protocol.enabled: set it to true to use client_certificates")
		}
		if p.ClientCertificates && l.TLS != nil {
			bad("proxy_protocol.client_certificates: the listener does TLS itself and verifies client certificates with tls.client_auth; " +
				"a balancer in front of it passes TCP and has no certificate to report")
		}
		for _, s := range p.TrustedCIDRs {
			if _, err := parsePrefix(s); err != nil {
				bad("proxy_protocol.trusted_cidrs: %v", err)
			}
		}
	}
	return errs
}

// LoadCertPool reads a PEM bundle of CA certificates. A file without a
// single certificate is an error, not an empty pool that trusts nothing.
func LoadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// ClientConfig builds the TLS client configuration t describes, for TLS
// 1.2 and later. defaultServerName (the host dialed) is the name checked
// in the server's certificate unless t.ServerName overrides it.
func (t *TLSClient) ClientConfig(defaultServerName string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: cmp.Or(t.ServerName, defaultServerName),
		// The operator's explicit choice, documented as for tests only.
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec
	}
	if t.CAFile != "" {
		pool, err := LoadCertPool(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		cfg.RootCAs = pool
	}
	switch {
	case t.CertFile == "" && t.KeyFile == "":
	case t.CertFile == "" || t.KeyFile == "":
		return nil, errors.New("cert_file, key_file: give both or neither")
	default:
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file, key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// verifiesClientCertificates reports whether some listener asks clients
// for a TLS certificate and verifies it, or takes one its balancer
// verified, which a certificate authenticator needs to ever accept.
func (f *File) verifiesClientCertificates() bool {
	for _, l := range f.Listeners {
		if l.TLS != nil && oneOf(l.TLS.ClientAuth, ClientAuthOptional, ClientAuthRequired) ||
			l.ProxyProtocol != nil && l.ProxyProtocol.Enabled && l.ProxyProtocol.ClientCertificates {
			return true
		}
	}
	return false
}

// terminatesTLS reports whether a listener speaks TLS (tls, or wss).
func (f *File) terminatesTLS() bool {
	for _, l := range f.Listeners {
		if l.TLS != nil {
			return true
		}
	}
	return false
}

// pendingConnectSlack is what one pending client may hold besides its
// CONNECT's bytes, which max_pending_connect_bytes must leave room for:
// what its last read took past the CONNECT, its decoded structures, and a
// TLS record when a listener speaks TLS. The copies of its strings and
// its user properties, which the decoded CONNECT counts too, are not: a
// CONNECT of max_connect_size that is mostly strings or user properties
// needs more than the least budget allowed (docs/configuration.md).
func (f *File) pendingConnectSlack() int {
	slack := pendingReadSlack + decodedConnectSlack
	if f.terminatesTLS() {
		slack += PendingTLSRecordBytes
	}
	return slack
}

// decodedConnectSlack bounds a decoded CONNECT's structures, its strings
// and user properties aside (packets.Connect.DecodedSize): the Connect
// and two paho.Properties with their numeric properties take under
// 2 KiB.
const decodedConnectSlack = 2 << 10
