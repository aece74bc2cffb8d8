package configs

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"
)

// EmbeddedAddress is the upstream address that starts the in-process broker.
const EmbeddedAddress = "embedded"

// Values of Upstream.Balance.
const (
	BalanceRoundRobin       = "round_robin"
	BalanceLeastConnections = "least_connections"
	BalanceClientID         = "client_id"
)

// DefaultPoolName is the name routes and metrics give the pool of the
// upstream section.
const DefaultPoolName = "default"

// MinCheckInterval is the shortest health_check.interval accepted.
const MinCheckInterval = 100 * time.Millisecond

// Upstream is a pool of brokers behind the proxy: one broker (Address),
// or several (Servers) balanced as Balance says.
type Upstream struct {
	// Address is the broker's host:port, or "embedded" for an in-process
	// broker on a loopback port (for trying things out and tests; in the
	// upstream section only). Exactly one of Address and Servers is
	// required.
	Address string `yaml:"address"`
	// Servers are the brokers of a pool of several: a cluster's nodes, or
	// independent brokers that devices are shared out over.
	Servers []UpstreamServer `yaml:"servers"`
	// Balance is how a client's server is chosen among those up:
	// round_robin (the default: in turn, by weight), least_connections
	// (the fewest connections from this proxy, by weight) or client_id
	// (the client identifier the broker sees, after forward, hashed, so
	// that a device always lands on the same server, from every proxy
	// replica; an empty one is balanced as least_connections).
	Balance string `yaml:"balance"`
	// HealthCheck, when set, checks every server and stops sending clients
	// to those that fail; nil means no checks: a server is tried by every
	// client it is picked for, and a failed dial moves the client on to
	// the next server.
	HealthCheck *HealthCheck `yaml:"health_check"`
	// DialTimeout bounds connecting a client to a broker, the tries of the
	// next servers after a failed one included. Zero means 5s.
	DialTimeout Duration `yaml:"dial_timeout"`
	// ProxyProtocol is the PROXY protocol header sent to the broker ahead
	// of each connection: off (the default), v1 or v2 (v2 also carries
	// the client certificate's common name). With Servers, set it on each
	// server instead.
	ProxyProtocol string `yaml:"proxy_protocol"`
	// TLS, when set, connects to the broker over TLS; nil means plain TCP.
	// With Servers, set it on each server instead.
	TLS *TLSClient `yaml:"tls"`
}

// UpstreamServer is one broker of a pool.
type UpstreamServer struct {
	// Address is the broker's host:port. Required, and unique in its
	// pool. client_id balancing hashes it: write it the same way in every
	// proxy replica.
	Address string `yaml:"address"`
	// Weight is the server's share of clients relative to the pool's
	// other servers. Nil (unset) means 1; at least 1.
	Weight *int `yaml:"weight"`
	// TLS, when set, connects to this broker over TLS; nil means plain TCP.
	TLS *TLSClient `yaml:"tls"`
	// ProxyProtocol is the PROXY protocol header sent to this broker: off
	// (the default), v1 or v2.
	ProxyProtocol string `yaml:"proxy_protocol"`
}

// HealthCheck configures the checks of a pool's servers. A server starts
// up; the first check, made at once, marks it down if it fails; after
// that Fall failures in a row mark it down and Rise successes in a row
// mark it up again. A client's failed dial counts as a failed check.
type HealthCheck struct {
	// Interval is the time between two checks of a server. Zero means 2s;
	// at least MinCheckInterval.
	Interval Duration `yaml:"interval"`
	// Timeout bounds one check. Zero means 1s, or Interval when that is
	// shorter; at most Interval.
	Timeout Duration `yaml:"timeout"`
	// Fall is how many failed checks in a row mark a server down. Zero
	// means 3.
	Fall int `yaml:"fall"`
	// Rise is how many successful checks in a row mark a server up. Zero
	// means 2.
	Rise int `yaml:"rise"`
	// Connect, when set, makes each check an MQTT session that the broker
	// must accept (CONNECT, CONNACK 0, DISCONNECT), so that a broker that
	// accepts TCP but not clients is down; nil means the connection alone
	// (TCP, and the server's TLS and PROXY header).
	Connect *HealthCheckConnect `yaml:"connect"`
}

// HealthCheckConnect is the MQTT 3.1.1 CONNECT of a health check, with a
// clean session.
type HealthCheckConnect struct {
	// ClientID is the client identifier. Zero lets the broker assign one,
	// so that the checks of several proxies never take over each other's
	// session.
	ClientID string `yaml:"client_id"`
	// Username is the user name; zero sends none.
	Username string `yaml:"username"`
	// Password is the password; it needs Username. At most one of
	// Password and PasswordFile; Load resolves PasswordFile into Password.
	Password string `yaml:"password"`
	// PasswordFile is a file holding the password (one trailing newline
	// is dropped).
	PasswordFile string `yaml:"password_file"`
}

// Route sends the clients it matches to a pool.
type Route struct {
	// Match is the conditions a client must meet, all of them: listener
	// (the name of the listener it came in on), sub (an RE2 regular
	// expression the whole sub claim must match) and claims.NAME (the
	// top-level claim NAME must have this value, compared as text: a
	// number as written in the token, a boolean as true or false). At
	// least one.
	Match map[string]string `yaml:"match"`
	// Upstream names the pool: a key of upstreams, or "default" for the
	// upstream section. Required.
	Upstream string `yaml:"upstream"`
}

// Keys of Route.Match.
const (
	MatchListener     = "listener"
	MatchSubject      = "sub"
	MatchClaimsPrefix = "claims."
)

// PoolServers returns u's servers: Servers, or for Address a pool of one
// server with u's tls and proxy_protocol.
func (u Upstream) PoolServers() []UpstreamServer {
	if u.Address != "" {
		return []UpstreamServer{{Address: u.Address, TLS: u.TLS, ProxyProtocol: u.ProxyProtocol}}
	}
	return u.Servers
}

// IsZero reports whether the section is absent (or empty).
func (u Upstream) IsZero() bool {
	return u.Address == "" && len(u.Servers) == 0 && u.Balance == "" && u.HealthCheck == nil &&
		u.DialTimeout == 0 && u.ProxyProtocol == "" && u.TLS == nil
}

// poolNamePattern is what a key of upstreams may be: it labels metrics
// and logs.
var poolNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// validateUpstreams checks upstream, upstreams and routes.
func (f *File) validateUpstreams() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	hasDefault := !f.Upstream.IsZero()
	if hasDefault || len(f.Upstreams) == 0 {
		errs = append(errs, f.Upstream.validate("upstream", f)...)
	}
	for _, name := range slices.Sorted(maps.Keys(f.Upstreams)) {
		at := "upstreams." + name
		u := f.Upstreams[name]
		switch {
		case name == DefaultPoolName:
			bad("%s: %q names the upstream section in routes; give this pool another name", at, name)
		case !poolNamePattern.MatchString(name):
			bad("%s: a pool name is letters, digits, '_', '.' and '-', starting with a letter or digit", at)
		}
		if u.Address == EmbeddedAddress {
			bad("%s.address: the embedded broker can only be the upstream section's", at)
			continue
		}
		errs = append(errs, u.validate(at, f)...)
	}

	listeners := map[string]bool{}
	for _, l := range f.Listeners {
		listeners[l.Name] = true
	}
	routed := map[string]bool{}
	for i, r := range f.Routes {
		at := fmt.Sprintf("routes[%d]", i)
		switch _, named := f.Upstreams[r.Upstream]; {
		case r.Upstream == "":
			bad("%s.upstream: required: a key of upstreams, or %q", at, DefaultPoolName)
		case r.Upstream == DefaultPoolName && !hasDefault:
			bad("%s.upstream: %q is the upstream section, which is not set", at, DefaultPoolName)
		case r.Upstream != DefaultPoolName && !named:
			bad("%s.upstream: no pool %q in upstreams", at, r.Upstream)
		}
		routed[r.Upstream] = true
		if len(r.Match) == 0 {
			bad("%s.match: at least one condition (listener, sub, claims.NAME); clients no route matches go to upstream", at)
		}
		for _, key := range slices.Sorted(maps.Keys(r.Match)) {
			value := r.Match[key]
			switch {
			case key == MatchListener:
				if !listeners[value] {
					bad("%s.match.listener: no listener is named %q", at, value)
				}
			case key == MatchSubject:
				if _, err := regexp.Compile(value); err != nil {
					bad("%s.match.sub: %v", at, err)
				}
			case strings.HasPrefix(key, MatchClaimsPrefix) && len(key) > len(MatchClaimsPrefix):
				if value == "" {
					bad("%s.match.%s: empty; a claim matches a value", at, key)
				}
			default:
				bad("%s.match.%s: unknown condition; the conditions are listener, sub and claims.NAME", at, key)
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(f.Upstreams)) {
		if !routed[name] {
			bad("upstreams.%s: no route sends clients to it", name)
		}
	}
	return errs
}

// validate checks the pool at key at.
func (u Upstream) validate(at string, f *File) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(at+"."+format, args...)) }

	switch {
	case u.Address == "" && len(u.Servers) == 0:
		bad("address: required (host:port, or %q for the in-process broker), or servers", EmbeddedAddress)
	case u.Address != "" && len(u.Servers) > 0:
		bad("servers: give address or servers, not both")
	case len(u.Servers) > 0:
		if u.TLS != nil {
			bad("tls: with servers, set tls on each server")
		}
		if u.ProxyProtocol != "" {
			bad("proxy_protocol: with servers, set proxy_protocol on each server")
		}
	}
	seen := map[string]int{}
	for i, s := range u.PoolServers() {
		key := "address"
		if len(u.Servers) > 0 {
			key = fmt.Sprintf("servers[%d].address", i)
		}
		errs = append(errs, s.validate(at, key, len(u.Servers) > 0, f)...)
		if j, ok := seen[s.Address]; ok && s.Address != "" {
			bad("%s: %q is servers[%d] already", key, s.Address, j)
		}
		seen[s.Address] = i
	}
	if !oneOf(u.Balance, "", BalanceRoundRobin, BalanceLeastConnections, BalanceClientID) {
		bad("balance: %q is not one of %s, %s, %s", u.Balance, BalanceRoundRobin, BalanceLeastConnections, BalanceClientID)
	}
	if h := u.HealthCheck; h != nil {
		if h.Interval != 0 && time.Duration(h.Interval) < MinCheckInterval {
			bad("health_check.interval: %v is under %v", time.Duration(h.Interval), MinCheckInterval)
		}
		if h.Timeout != 0 && time.Duration(h.Timeout) > h.Interval.Or(2*time.Second) {
			bad("health_check.timeout: %v is longer than the interval, %v", time.Duration(h.Timeout), h.Interval.Or(2*time.Second))
		}
		if h.Fall < 0 {
			bad("health_check.fall: must not be negative")
		}
		if h.Rise < 0 {
			bad("health_check.rise: must not be negative")
		}
		if c := h.Connect; c != nil {
			if (c.Password != "" || c.PasswordFile != "") && c.Username == "" {
				bad("health_check.connect.username: required with a password (MQTT 3.1.1 sends no password without a user name)")
			}
		}
	}
	return errs
}

// validate checks a server of the pool at key at; key is its address's
// key (address, or servers[i].address).
func (s UpstreamServer) validate(at, key string, listed bool, f *File) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(at+"."+format, args...)) }
	serverAt := strings.TrimSuffix(key, "address")

	switch {
	case s.Address == "":
		bad("%s: required (host:port)", key)
	case s.Address == EmbeddedAddress && listed:
		bad("%s: the embedded broker is the only broker of its pool: give it as address, without servers", key)
	case s.Address == EmbeddedAddress:
		if oneOf(s.ProxyProtocol, ProxyProtocolV1, ProxyProtocolV2) {
			bad("%sproxy_protocol: the embedded broker reads no PROXY header", serverAt)
		}
		if s.TLS != nil {
			bad("%stls: the embedded broker speaks plain TCP only", serverAt)
		}
	default:
		if _, _, err := net.SplitHostPort(s.Address); err != nil {
			bad("%s: %q is not host:port: %v", key, s.Address, err)
		}
		for i, l := range f.Listeners {
			if dialsListener(s.Address, l.Bind) {
				// Each accepted client would dial the proxy again, with
				// the same token, until descriptors run out.
				bad("%s: %q is listeners[%d] (%q): the proxy would connect to itself", key, s.Address, i, l.Bind)
			}
		}
	}
	if s.Weight != nil && *s.Weight < 1 {
		bad("%sweight: %d is under 1", serverAt, *s.Weight)
	}
	if !oneOf(s.ProxyProtocol, "", ProxyProtocolOff, ProxyProtocolV1, ProxyProtocolV2) {
		bad("%sproxy_protocol: %q is not one of off, v1, v2", serverAt, s.ProxyProtocol)
	}
	if s.TLS != nil {
		if _, err := s.TLS.ClientConfig(""); err != nil {
			bad("%stls.%v", serverAt, err)
		}
	}
	return errs
}

// eachUpstream calls do with each pool and its key, the upstream section
// first. A pool is a copy; what do changes through its pointers (tls,
// health_check) stays.
func (f *File) eachUpstream(do func(at string, u Upstream)) {
	do("upstream", f.Upstream)
	for _, name := range slices.Sorted(maps.Keys(f.Upstreams)) {
		do("upstreams."+name, f.Upstreams[name])
	}
}

// resolvePasswordFiles reads each health check's password_file into its
// password.
func (f *File) resolvePasswordFiles() error {
	var errs []error
	f.eachUpstream(func(at string, u Upstream) {
		if u.HealthCheck == nil || u.HealthCheck.Connect == nil || u.HealthCheck.Connect.PasswordFile == "" {
			return
		}
		c := u.HealthCheck.Connect
		at += ".health_check.connect"
		if c.Password != "" {
			errs = append(errs, fmt.Errorf("%s: give only one of password and password_file", at))
			return
		}
		password, err := ReadSecretFile(c.PasswordFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.password_file: %w", at, err))
			return
		}
		c.Password = password
	})
	return errors.Join(errs...)
}
