package configs

import (
	"fmt"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// File is the whole configuration file.
type File struct {
	// Listeners are the sockets clients connect to. At least one is required.
	Listeners []Listener `yaml:"listeners"`
	// Upstream is the broker, or the pool of brokers, that authenticated
	// clients are connected to: the default pool, which takes the clients
	// no route sends elsewhere. It may be left out when Upstreams and
	// Routes place every client; a client no route matches is then
	// refused.
	Upstream Upstream `yaml:"upstream"`
	// Upstreams are named pools of brokers that Routes send clients to.
	// Zero means none: every client goes to Upstream.
	Upstreams map[string]Upstream `yaml:"upstreams"`
	// Routes choose a client's pool by its listener, subject or claims,
	// in order: the first that matches decides. Zero means none.
	Routes []Route `yaml:"routes"`
	// Authentication is the chain of authenticators, tried in order.
	// At least one is required: the proxy never runs open.
	Authentication []Authenticator `yaml:"authentication"`
	// Forward rewrites the CONNECT sent upstream; the zero value keeps it.
	Forward Forward `yaml:"forward"`
	// Limits bound what one client may cost before it is authenticated.
	Limits Limits `yaml:"limits"`
	// Log selects the log level and encoding.
	Log Log `yaml:"log"`
	// Shutdown sets how SIGTERM and SIGINT stop the proxy.
	Shutdown Shutdown `yaml:"shutdown"`
	// Metrics configures the admin endpoint (metrics, health, pprof);
	// the zero value serves none.
	Metrics Metrics `yaml:"metrics"`
	// Tuning picks how the proxy does its work; the zero value is what
	// suits the platform.
	Tuning Tuning `yaml:"tuning"`
	// Authorization is what authenticated clients may publish and
	// subscribe to, after their token's rules; the zero value has no
	// rules and allows what a token does not decide.
	Authorization Authorization `yaml:"authorization"`
	// Revocation, when set, is the list of revoked tokens that new
	// connections are checked against; nil means none.
	Revocation *Revocation `yaml:"revocation"`
}

// DefaultDrainTimeout is Shutdown.DrainTimeout's zero value.
const DefaultDrainTimeout = 30 * time.Second

// Shutdown sets how the proxy stops.
type Shutdown struct {
	// DrainTimeout is how long established connections may go on after
	// SIGTERM (listeners close at once); then they are closed. Zero means
	// DefaultDrainTimeout.
	DrainTimeout Duration `yaml:"drain_timeout"`
}

// Listener is one socket the proxy accepts MQTT clients on.
type Listener struct {
	// Name labels the listener in logs; defaults to the bind address.
	Name string `yaml:"name"`
	// Bind is the host:port to listen on. Required.
	Bind string `yaml:"bind"`
	// MaxConnections caps this listener's open connections; over it, new
	// ones are closed at accept. Zero means no cap of its own.
	MaxConnections int `yaml:"max_connections"`
	// TLS, when set, makes clients connect over TLS; nil means plain TCP.
	TLS *ListenerTLS `yaml:"tls"`
	// WebSocket, when set, serves MQTT over WebSocket; nil means MQTT
	// straight over the connection.
	WebSocket *WebSocket `yaml:"websocket"`
	// ProxyProtocol, when set and enabled, reads a PROXY protocol header
	// from trusted load balancers; nil means none is read.
	ProxyProtocol *ProxyProtocol `yaml:"proxy_protocol"`
}

// Values of Authenticator.Mechanism.
const (
	// MechanismJWT verifies a JSON Web Token in the CONNECT.
	MechanismJWT = "jwt"
	// MechanismCertificate accepts a client whose TLS client certificate
	// the listener verified (tls.client_auth optional or required), and
	// passes a client without one to the next authenticator: put it
	// before a jwt authenticator for "a certificate or a token".
	MechanismCertificate = "certificate"
)

// Authenticator configures one link of the authentication chain. Option
// names are EMQX 5's, so an EMQX JWT authenticator's settings carry over.
type Authenticator struct {
	// Name labels the authenticator in logs and decisions; see DefaultName
	// for the name it gets without one.
	Name string `yaml:"name"`
	// Mechanism is the kind of authenticator, MechanismJWT or
	// MechanismCertificate. Required. The options below are the JWT
	// authenticator's; a certificate authenticator takes none of them.
	Mechanism string `yaml:"mechanism"`
	// From is the CONNECT field carrying the token: "password" (default)
	// or "username".
	From string `yaml:"from"`
	// Algorithm is "hmac-based" (HS256/384/512 with Secret) or
	// "public-key" (RS/PS/ES/EdDSA with PublicKey). Required unless UseJWKS.
	Algorithm string `yaml:"algorithm"`

	// Secret is the HMAC key. Exactly one of Secret, SecretEnv and
	// SecretFile is required in hmac-based mode; Load resolves the other
	// two into Secret. A key shorter than 64 bytes, the hash output of
	// HS512 (48 for HS384, 32 for HS256), works with a warning (RFC 7518
	// section 3.2), as does one published in documentation.
	Secret string `yaml:"secret"`
	// SecretEnv names an environment variable holding the HMAC key.
	SecretEnv string `yaml:"secret_env"`
	// SecretFile is a file holding the HMAC key (one trailing newline is dropped).
	SecretFile string `yaml:"secret_file"`
	// SecretBase64Encoded decodes Secret as base64 first.
	SecretBase64Encoded bool `yaml:"secret_base64_encoded"`

	// PublicKey is a PEM public key or certificate, or a path to a PEM
	// file (see PublicKeyIsPEM).
	PublicKey string `yaml:"public_key"`
	// SignatureFormat is how ECDSA signatures are encoded: "raw" (JWS r||s,
	// the default) or "der" (ASN.1, as EMQX 4 produced by default).
	SignatureFormat string `yaml:"signature_format"`

	// UseJWKS fetches keys from Endpoint instead of Secret/PublicKey.
	UseJWKS bool `yaml:"use_jwks"`
	// Endpoint is the JWKS URL (HTTP GET). Redirects are followed, but
	// never from an https endpoint to an http URL.
	Endpoint string `yaml:"endpoint"`
	// RefreshInterval is the JWKS refresh period. Zero means 300s; values
	// under 10s are raised to 10s, as EMQX does, with a warning.
	RefreshInterval Duration `yaml:"refresh_interval"`
	// MinRefreshInterval bounds refetches triggered by an unknown kid.
	// Zero means 10s.
	MinRefreshInterval Duration `yaml:"min_refresh_interval"`
	// MaxFailCount is how many consecutive failed refreshes are tolerated
	// before the last good key set is dropped. Zero means 5.
	MaxFailCount int `yaml:"max_fail_count"`
	// MaxStale is the oldest a key set may be before it is dropped. Zero
	// means no age limit (only MaxFailCount applies).
	MaxStale Duration `yaml:"max_stale"`
	// Headers are sent with the JWKS request, to the endpoint's host and
	// port only: a redirect to another host gets none of them. Zero means
	// Accept: application/json.
	Headers map[string]string `yaml:"headers"`
	// SSL configures TLS for the JWKS fetch only.
	SSL *TLSClient `yaml:"ssl"`

	// VerifyClaims maps claim names to expected values. ${clientid} and
	// ${username} are replaced by the CONNECT's values. exp, iat and nbf
	// may not be named here.
	VerifyClaims map[string]string `yaml:"verify_claims"`
	// RequiredClaims must be present in every token, for example [exp].
	RequiredClaims []string `yaml:"required_claims"`
	// Issuer, when set, must equal the iss claim.
	Issuer string `yaml:"issuer"`
	// Audience, when set, must equal or be contained in the aud claim.
	Audience string `yaml:"audience"`
	// Leeway is the allowed clock skew for exp, nbf and iat. Zero means none.
	Leeway Duration `yaml:"leeway"`
	// OnMissingJWT is "deny" (default) or "ignore": when the From field is
	// absent, refuse, or let the next authenticator decide.
	OnMissingJWT string `yaml:"on_missing_jwt"`
	// DisconnectAfterExpire closes a client's connection when its token's
	// exp passes. Nil (unset) means true, as in EMQX 5.7 and later.
	DisconnectAfterExpire *bool `yaml:"disconnect_after_expire"`
	// ACL says where tokens carry topic rules; the zero value reads them
	// from the claim acl, as EMQX does.
	ACL AuthenticatorACL `yaml:"acl"`
	// AuthMethod is the MQTT 5 Authentication Method under which a client
	// may present its token in the CONNECT's Authentication Data, in
	// place of the From field, and later re-authenticate with a fresh one
	// (AUTH, reason 0x19). Empty means DefaultAuthMethod.
	AuthMethod string `yaml:"auth_method"`
	// Reauth binds the token of a re-authentication to the session's.
	Reauth Reauth `yaml:"reauth"`
}

// DefaultAuthMethod is Authenticator.AuthMethod when it is empty.
const DefaultAuthMethod = "JWT"

// Reauth is what the token of an MQTT 5 re-authentication must share with
// the one the session began with, beyond what always holds: it is
// verified by the same authenticator, against the same CONNECT (client
// identifier, user name, certificate), so verify_claims bind it as they
// bound the first.
type Reauth struct {
	// SameSubject refuses a token whose sub differs from the session's
	// (a token without sub has the empty one). Nil (unset) means true.
	SameSubject *bool `yaml:"same_subject"`
}

// AuthenticatorACL says where an authenticator's tokens carry topic rules.
type AuthenticatorACL struct {
	// Claim names the claim holding the rules, in either of EMQX's
	// formats (a list of rules, or pub/sub/all lists). Empty means "acl",
	// EMQX's acl_claim_name default. A token without it has no rules of
	// its own.
	Claim string `yaml:"claim"`
}

// Values of Authorization.NoMatch and of a rule's Permission.
const (
	PermissionAllow = "allow"
	PermissionDeny  = "deny"
)

// Values of Authorization.DenyAction.
const (
	// DenyActionIgnore drops a denied PUBLISH and refuses a denied
	// subscription, and the session goes on.
	DenyActionIgnore = "ignore"
	// DenyActionDisconnect ends the session at the first denial.
	DenyActionDisconnect = "disconnect"
)

// Authorization is the authorization section: rules in EMQX's format,
// checked after a client's token rules, the first that applies deciding.
type Authorization struct {
	// Rules are checked in order, after the token's rules.
	Rules []AuthorizationRule `yaml:"rules"`
	// NoMatch decides a request that no rule applies to: "allow" (the
	// default, as in EMQX) or "deny".
	NoMatch string `yaml:"no_match"`
	// DenyAction is what a denial does to the session: "ignore" (the
	// default, as in EMQX) or "disconnect".
	DenyAction string `yaml:"deny_action"`
}

// AuthorizationRule is one rule, as an EMQX 5.5 token writes it:
//
//	{permission: allow, action: all, topic: "devices/${claims.sub}/#"}
type AuthorizationRule struct {
	// Permission is "allow" or "deny". Required.
	Permission string `yaml:"permission"`
	// Action is "publish", "subscribe" or "all". Required.
	Action string `yaml:"action"`
	// Topic is the rule's topic filter, a template that may use
	// ${clientid}, ${username}, ${cert_common_name}, ${cert_subject} and
	// ${claims.NAME}; "eq FILTER" is FILTER literally. Give Topic or
	// Topics.
	Topic string `yaml:"topic,omitempty"`
	// Topics are several filters, as Topic.
	Topics []string `yaml:"topics,omitempty"`
	// QoS lists the QoS levels the rule applies to; empty means all.
	QoS []int `yaml:"qos,omitempty"`
	// Retain, when set, limits the rule to publishes with that retain
	// flag; unset means either. Only for publish and all.
	Retain *bool `yaml:"retain"`
}

// TLSClient configures a TLS client connection.
type TLSClient struct {
	// CAFile is a PEM bundle of CAs to trust; zero means the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client certificate, if the server asks.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the server's certificate.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify disables certificate verification. For tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// DefaultMaxPacketSize is limits.max_packet_size when it is zero (1 MiB,
// as EMQX's max_packet_size).
const DefaultMaxPacketSize = 1 << 20

// DefaultMaxPendingConnectBytes is limits.max_pending_connect_bytes when
// it is zero (64 MiB): 64 CONNECTs of the default max_connect_size at once,
// or tens of thousands of typical ones (a token and a client ID, well
// under 1 KiB each) in a reconnect storm.
const DefaultMaxPendingConnectBytes = 64 << 20

// Limits bound what a client may cost, most of them before it is
// authenticated.
type Limits struct {
	// ConnectTimeout is how long a client has to send its CONNECT after
	// the TCP connection is accepted. Zero means 10s.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// MaxConnectSize is the largest CONNECT packet accepted, in bytes,
	// fixed header included. Zero means packets.DefaultMaxConnectSize
	// (1 MiB, as EMQX's max_packet_size).
	MaxConnectSize int `yaml:"max_connect_size"`
	// MaxPacketSize is the largest packet, fixed header included, that a
	// session with topic rules may send or receive after its CONNECT: the
	// proxy frames such sessions, and a larger packet ends the session
	// (MQTT 5: DISCONNECT 0x95 packet too large to a client that sends
	// one). A broker's smaller Maximum Packet Size applies to the client
	// too. Zero means DefaultMaxPacketSize.
	MaxPacketSize int `yaml:"max_packet_size"`
	// MaxConnections caps open client connections over all listeners;
	// over it, new ones are closed at accept, before anything is read.
	// Zero means no cap.
	MaxConnections int `yaml:"max_connections"`
	// MaxPendingConnects caps connections that have not finished their
	// CONNECT; over it the longest-waiting one is closed to make room, so
	// an idle flood cannot starve real clients. Zero means no cap.
	MaxPendingConnects int `yaml:"max_pending_connects"`
	// MaxPendingConnectBytes caps the bytes held by the CONNECTs of all
	// connections not yet authenticated: what each has sent, not what it
	// declared, its decoded form once whole, and for TLS
	// PendingTLSRecordBytes. Over it, the one that has held bytes longest
	// is closed to make room. Zero means DefaultMaxPendingConnectBytes.
	MaxPendingConnectBytes int `yaml:"max_pending_connect_bytes"`
	// PerIPConnectRate is how many new connections per second one client
	// IP may open (token bucket). Zero means no limit.
	PerIPConnectRate float64 `yaml:"per_ip_connect_rate"`
	// PerIPConnectBurst is the bucket size. Zero means the rate rounded
	// up, at least 1.
	PerIPConnectBurst int `yaml:"per_ip_connect_burst"`
	// PerClientIDConnectRate is how many connections per second one
	// client ID may make once authenticated (token bucket); over it the
	// client gets CONNACK 0x9F connection rate exceeded and the broker is
	// not dialed. Zero means no limit.
	PerClientIDConnectRate float64 `yaml:"per_client_id_connect_rate"`
	// PerClientIDConnectBurst is that bucket's size. Zero means the rate
	// rounded up, at least 1.
	PerClientIDConnectBurst int `yaml:"per_client_id_connect_burst"`
}

// Log selects the log output.
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// Format is json (default) or console.
	Format string `yaml:"format"`
}

// Duration is a time.Duration written with a unit in YAML ("5s", "1m30s").
// A bare number is rejected rather than guessed at.
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	// A *yaml.TypeError lets the decoder go on and report the file's
	// other problems with this one.
	problem := func(format string, args ...any) error {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}}
	}
	if n.Kind != yaml.ScalarNode {
		return problem("expected a duration such as \"10s\"")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return problem("`%s` is not a duration: write it with a unit, such as \"10s\" or \"5m\"", n.Value)
	}
	if v < 0 {
		return problem("`%s` is negative", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Or returns d as a time.Duration, or def when d is zero.
func (d Duration) Or(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// connectSize is max_connect_size, its default when zero.
func (l Limits) connectSize() int {
	if l.MaxConnectSize <= 0 {
		return packets.DefaultMaxConnectSize
	}
	return l.MaxConnectSize
}

// pendingReadSlack is how far past its CONNECT a pending client's last
// read may go (a socket read takes what has arrived, up to 1 KiB), bytes
// max_pending_connect_bytes counts too.
const pendingReadSlack = 1024

// PendingTLSRecordBytes is what max_pending_connect_bytes counts for each
// pending connection whose TLS the proxy terminates (a tls listener, wss
// too), from accept until its CONNECT is decided. crypto/tls reads each
// record whole into a buffer of its own before decrypting it, so a client
// that sends all of a large record but its last byte makes the proxy hold
// that buffer, whatever it has sent of its CONNECT. The largest record
// TLS allows is 18,432 bytes (TLS 1.2: 16 KiB of plaintext and 2 KiB of
// expansion); with its 5-byte header and the 512 bytes crypto/tls reads
// ahead, the buffer takes a 19,072-byte allocation. 19 KiB covers it.
const PendingTLSRecordBytes = 19 << 10

// pendingConnectBytes is max_pending_connect_bytes, its default when zero.
func (l Limits) pendingConnectBytes() int {
	if l.MaxPendingConnectBytes <= 0 {
		return DefaultMaxPendingConnectBytes
	}
	return l.MaxPendingConnectBytes
}
