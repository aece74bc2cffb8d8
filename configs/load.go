package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v3"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// ExampleSecrets are HMAC secrets published in documentation (EMQX's
// defaults and examples). They are fine for a first try and wrong anywhere
// else; serve and check warn when one is configured.
var ExampleSecrets = []string{"secret", "emqxsecret"}

// Load reads the file at path and returns it decoded and validated.
// Errors name the file, and the key and line where possible.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	f, err := parse(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return f, nil
}

// SetBindHost replaces the host of every listeners[].bind and of
// metrics.bind with host, an IP address, keeping the ports, and validates
// the result. A container uses it to listen on all its interfaces
// (0.0.0.0 or ::) with a file written for one machine's loopback.
// Listener names given by default stay the bind addresses of the file.
func (f *File) SetBindHost(host string) error {
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("bind host %q is not an IP address", host)
	}
	rebind := func(bind string) string {
		_, port, err := net.SplitHostPort(bind)
		if err != nil {
			return bind // Validate reports it
		}
		return net.JoinHostPort(host, port)
	}
	for i := range f.Listeners {
		f.Listeners[i].Bind = rebind(f.Listeners[i].Bind)
	}
	if f.Metrics.Bind != "" {
		f.Metrics.Bind = rebind(f.Metrics.Bind)
	}
	return f.Validate()
}

// Parse decodes YAML strictly (unknown keys and wrong types are errors),
// resolves secret_env and secret_file into secret, password_file into
// password and the admin token, fills in names, and
// validates the result. Relative file paths stay relative to the working
// directory; Load takes them from the file's directory.
func Parse(data []byte) (*File, error) { return parse(data, "") }

func parse(data []byte, dir string) (*File, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f File
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty")
		}
		if te, ok := err.(*yaml.TypeError); ok {
			return nil, errors.Join(keyedErrors(data, te), fractionsInWholeNumbers(data))
		}
		return nil, err
	}
	if err := fractionsInWholeNumbers(data); err != nil {
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("the file holds more than one YAML document")
	}
	f.resolvePaths(dir)
	secretErr := errors.Join(f.resolveSecrets(), f.resolvePasswordFiles(), f.Metrics.resolveAdminToken())
	f.fillNames()
	if err := errors.Join(secretErr, f.Validate()); err != nil {
		return nil, err
	}
	return &f, nil
}

// keyedErrors rewrites the problems a YAML decoder lists by line
// ("line 11: cannot unmarshal !!str `lots` into int") as Validate writes
// them, naming the key ("limits.max_connect_size: `lots` is not a number
// (line 11)"), so that one run reports every problem the decoder found.
func keyedErrors(data []byte, te *yaml.TypeError) error {
	var root yaml.Node
	yaml.Unmarshal(data, &root) // it decoded as far as te's problems
	var errs []error
	for _, msg := range te.Errors {
		var line int
		if _, err := fmt.Sscanf(msg, "line %d: ", &line); err != nil {
			errs = append(errs, errors.New(msg))
			continue
		}
		problem := msg[strings.Index(msg, ": ")+2:]
		// Which key on the line the problem is at, as far as it tells.
		at := func(k, v *yaml.Node) bool { return true }
		if m := unknownField.FindStringSubmatch(problem); m != nil {
			problem = "unknown key"
			at = func(k, v *yaml.Node) bool { return k.Value == m[1] }
		} else if m := wrongType.FindStringSubmatch(problem); m != nil {
			problem = wrongTypeProblem(m[1], m[2], m[3])
			at = func(k, v *yaml.Node) bool {
				switch m[1] {
				case "seq":
					return v.Kind == yaml.SequenceNode
				case "map":
					return v.Kind == yaml.MappingNode
				}
				return v.Kind == yaml.ScalarNode && strings.HasPrefix(v.Value, strings.TrimSuffix(m[2], "..."))
			}
		} else if m := quotedValue.FindStringSubmatch(problem); m != nil {
			at = func(k, v *yaml.Node) bool { return v.Value == m[1] }
		}
		if key := keyAt(&root, line, at); key != "" {
			errs = append(errs, fmt.Errorf("%s: %s (line %d)", key, problem, line))
		} else {
			errs = append(errs, fmt.Errorf("line %d: %s", line, problem))
		}
	}
	return errors.Join(errs...)
}

// fractionsInWholeNumbers reports the numbers with a fraction given for
// whole-number keys (max_connections: 1.5), which yaml.v3 truncates
// without a word; data has already decoded once.
func fractionsInWholeNumbers(data []byte) error {
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil || len(root.Content) == 0 {
		return nil
	}
	var errs []error
	var walk func(n *yaml.Node, t reflect.Type, path string)
	walk = func(n *yaml.Node, t reflect.Type, path string) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if reflect.PointerTo(t).Implements(reflect.TypeFor[yaml.Unmarshaler]()) {
			return // the type checks its own values (Duration)
		}
		switch t.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float" && hasFraction(n) {
				errs = append(errs, fmt.Errorf("%s: `%s` is not a whole number (line %d)", path, n.Value, n.Line))
			}
		case reflect.Struct:
			if n.Kind != yaml.MappingNode {
				return
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				if f, ok := fieldByKey(t, n.Content[i].Value); ok {
					walk(n.Content[i+1], f.Type, joinKey(path, n.Content[i].Value))
				}
			}
		case reflect.Map:
			if n.Kind != yaml.MappingNode {
				return
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				walk(n.Content[i+1], t.Elem(), joinKey(path, n.Content[i].Value))
			}
		case reflect.Slice:
			if n.Kind != yaml.SequenceNode {
				return
			}
			for i, c := range n.Content {
				walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(root.Content[0], reflect.TypeFor[File](), "")
	return errors.Join(errs...)
}

// hasFraction reports whether the YAML float n has a fraction (1.5, not
// 2e3). Infinities and NaN are left to the decoder, which refuses them.
func hasFraction(n *yaml.Node) bool {
	var v float64
	if err := n.Decode(&v); err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return false
	}
	return v != math.Trunc(v)
}

// fieldByKey is the field of struct type t that YAML key decodes into.
func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		if f := t.Field(i); yamlKey(f) == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// The two problems yaml.v3 reports by line, and the value that a
// problem of the schema's own types (Duration) starts with.
var (
	unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	wrongType    = regexp.MustCompile("^cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")
	quotedValue  = regexp.MustCompile("^`([^`]*)` ")
)

// wrongTypeProblem says what was wanted, in YAML's terms rather than Go's.
func wrongTypeProblem(tag, value, goType string) string {
	want := "a " + goType
	switch {
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"), strings.HasPrefix(goType, "float"):
		want = "a number"
	case goType == "bool":
		want = "true or false"
	case goType == "string":
		want = "a string"
	case strings.HasPrefix(goType, "[]"):
		want = "a list"
	case strings.HasPrefix(goType, "map["), strings.HasPrefix(goType, "configs."), strings.HasPrefix(goType, "*configs."):
		want = "a mapping of keys"
	}
	if value != "" {
		return fmt.Sprintf("`%s` is not %s", value, want)
	}
	return fmt.Sprintf("a %s is not %s", map[string]string{"seq": "list", "map": "mapping"}[tag], want)
}

// keyAt is the path ("listeners[0].bind") of the first key on line for
// which at is true of it and its value, else of the first key on line; ""
// when no key is on line.
func keyAt(root *yaml.Node, line int, at func(k, v *yaml.Node) bool) string {
	var found, first string
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := joinKey(path, k.Value)
				if k.Line == line || v.Line == line {
					if first == "" {
						first = p
					}
					if found == "" && at(k, v) {
						found = p
					}
				}
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(root, "")
	if found == "" {
		return first
	}
	return found
}

func (f *File) resolveSecrets() error {
	var errs []error
	for i := range f.Authentication {
		a := &f.Authentication[i]
		at := fmt.Sprintf("authentication[%d]", i)
		set := 0
		for _, v := range []string{a.Secret, a.SecretEnv, a.SecretFile} {
			if v != "" {
				set++
			}
		}
		if set > 1 {
			errs = append(errs, fmt.Errorf("%s: give only one of secret, secret_env and secret_file", at))
			continue
		}
		switch {
		case a.SecretEnv != "":
			v, ok := os.LookupEnv(a.SecretEnv)
			if !ok || v == "" {
				errs = append(errs, fmt.Errorf("%s.secret_env: environment variable %s is not set or is empty", at, a.SecretEnv))
				continue
			}
			a.Secret = v
		case a.SecretFile != "":
			s, err := ReadSecretFile(a.SecretFile)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.secret_file: %w", at, err))
				continue
			}
			a.Secret = s
		}
	}
	return errors.Join(errs...)
}

func (f *File) fillNames() {
	for i := range f.Listeners {
		if f.Listeners[i].Name == "" {
			f.Listeners[i].Name = f.Listeners[i].Bind
		}
	}
	for i := range f.Authentication {
		if f.Authentication[i].Name == "" {
			f.Authentication[i].Name = f.Authentication[i].DefaultName(i)
		}
	}
}

// DefaultName is the name of the i-th authenticator when it has none: its
// mechanism, numbered from the second authenticator on ("jwt",
// "certificate#2", "jwt#3").
func (a Authenticator) DefaultName(i int) string {
	name := MechanismJWT
	if a.Mechanism == MechanismCertificate {
		name = MechanismCertificate
	}
	if i > 0 {
		return fmt.Sprintf("%s#%d", name, i+1)
	}
	return name
}

// Validate reports every problem it finds, each naming its key.
func (f *File) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if len(f.Listeners) == 0 {
		bad("listeners: at least one listener is required")
	}
	names := map[string]bool{}
	for i, l := range f.Listeners {
		at := fmt.Sprintf("listeners[%d]", i)
		if l.Bind == "" {
			bad("%s.bind: required", at)
		} else if _, _, err := net.SplitHostPort(l.Bind); err != nil {
			bad("%s.bind: %q is not host:port: %v", at, l.Bind, err)
		}
		if names[l.Name] {
			bad("%s.name: %q is used by another listener", at, l.Name)
		}
		for j, other := range f.Listeners[:i] {
			if bindsOverlap(l.Bind, other.Bind) {
				bad("%s.bind: %q takes the port of listeners[%d] (%q)", at, l.Bind, j, other.Bind)
			}
		}
		names[l.Name] = true
		errs = append(errs, l.validateTransport(at)...)
	}
	errs = append(errs, f.validateUpstreams()...)

	if len(f.Authentication) == 0 {
		bad("authentication: at least one authenticator is required; the proxy never runs open")
	}
	authenticators := map[string]bool{}
	for i, a := range f.Authentication {
		errs = append(errs, a.validate(fmt.Sprintf("authentication[%d]", i))...)
		if authenticators[a.Name] {
			// A re-authentication goes to the authenticator of the
			// session by its name.
			bad("authentication[%d].name: %q is used by another authenticator", i, a.Name)
		}
		authenticators[a.Name] = true
		if a.Mechanism == MechanismCertificate && !f.verifiesClientCertificates() {
			bad("authentication[%d].mechanism: certificate accepts a client certificate that a listener verified, "+
				"and no listener asks for one (listeners[].tls.client_auth: optional or required, "+
				"or proxy_protocol.client_certificates behind a balancer that verifies them)", i)
		}
	}

	for _, v := range []struct {
		key string
		n   float64
	}{
		{"limits.max_connections", float64(f.Limits.MaxConnections)},
		{"limits.max_pending_connects", float64(f.Limits.MaxPendingConnects)},
		{"limits.max_pending_connect_bytes", float64(f.Limits.MaxPendingConnectBytes)},
		{"limits.per_ip_connect_rate", f.Limits.PerIPConnectRate},
		{"limits.per_ip_connect_burst", float64(f.Limits.PerIPConnectBurst)},
		{"limits.per_client_id_connect_rate", f.Limits.PerClientIDConnectRate},
		{"limits.per_client_id_connect_burst", float64(f.Limits.PerClientIDConnectBurst)},
	} {
		if !(v.n >= 0) { // refuses .nan too, which a rate limiter takes as no limit
			bad("%s: must not be negative", v.key)
		}
	}
	for i, l := range f.Listeners {
		if l.MaxConnections < 0 {
			bad("listeners[%d].max_connections: must not be negative", i)
		}
	}
	if f.Limits.MaxConnectSize < 0 {
		bad("limits.max_connect_size: must not be negative")
	}
	if s := f.Limits.MaxConnectSize; s > 0 && s < 128 {
		bad("limits.max_connect_size: %d bytes cannot hold a CONNECT with a token; use at least 128", s)
	}
	switch s := f.Limits.MaxPacketSize; {
	case s < 0:
		bad("limits.max_packet_size: must not be negative")
	case s > 0 && s < 128:
		bad("limits.max_packet_size: %d bytes is too small for a session's packets; use at least 128", s)
	case s > packets.MaxPacketSize:
		bad("limits.max_packet_size: %d bytes is over MQTT's largest packet, %d", s, packets.MaxPacketSize)
	}
	if s, budget := f.Limits.connectSize(), f.Limits.pendingConnectBytes(); s+f.pendingConnectSlack() > budget {
		// The one pending CONNECT would be closed for the bytes it holds,
		// which include what its last read took past it, its decoded
		// form, and over TLS the record buffer.
		what := "the read past it and its decoded form"
		if f.terminatesTLS() {
			what = "the read past it, its decoded form and a TLS record"
		}
		bad("limits.max_pending_connect_bytes: %d bytes cannot hold one CONNECT of max_connect_size (%d bytes), %s; use at least %d", budget, s, what, s+f.pendingConnectSlack())
	}
	if !oneOf(f.Log.Level, "", "debug", "info", "warn", "error") {
		bad("log.level: %q is not one of debug, info, warn, error", f.Log.Level)
	}
	if !oneOf(f.Log.Format, "", "json", "console") {
		bad("log.format: %q is not one of json, console", f.Log.Format)
	}
	errs = append(errs, f.Metrics.validate(f)...)
	errs = append(errs, f.Tuning.validate()...)
	errs = append(errs, f.Revocation.validate()...)
	errs = append(errs, f.Authorization.validate()...)
	return errors.Join(errs...)
}

func (a Authenticator) validate(at string) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(at+"."+format, args...)) }

	switch a.Mechanism {
	case MechanismJWT:
	case MechanismCertificate:
		// Its only option is its name: anything else set is a JWT option
		// that would silently do nothing.
		v := reflect.ValueOf(a)
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if key := yamlKey(f); key != "name" && key != "mechanism" && !v.Field(i).IsZero() {
				bad("%s: not used with mechanism: certificate", key)
			}
		}
		return errs
	default:
		bad("mechanism: %q is not one of jwt, certificate", a.Mechanism)
	}
	if !oneOf(a.From, "", "password", "username") {
		bad("from: %q is not one of password, username", a.From)
	}
	if !oneOf(a.OnMissingJWT, "", "deny", "ignore") {
		bad("on_missing_jwt: %q is not one of deny, ignore", a.OnMissingJWT)
	}
	if !oneOf(a.SignatureFormat, "", "raw", "der") {
		bad("signature_format: %q is not one of raw, der", a.SignatureFormat)
	}
	if len(a.AuthMethod) > math.MaxUint16 {
		bad("auth_method: %d bytes, more than the %d an MQTT string holds", len(a.AuthMethod), math.MaxUint16)
	} else if !utf8.ValidString(a.AuthMethod) || strings.ContainsRune(a.AuthMethod, 0) {
		bad("auth_method: %q is not an MQTT string: UTF-8 without U+0000", a.AuthMethod)
	}
	if oneOf(a.ACL.Claim, "iss", "sub", "aud", "exp", "nbf", "iat", "jti") {
		bad("acl.claim: %s is a registered claim, never a list of rules", a.ACL.Claim)
	}
	if a.UseJWKS {
		if a.Endpoint == "" {
			bad("endpoint: required with use_jwks: true")
		} else if !strings.HasPrefix(a.Endpoint, "http://") && !strings.HasPrefix(a.Endpoint, "https://") {
			bad("endpoint: %q is not an http or https URL", a.Endpoint)
		}
		if a.Secret != "" || a.PublicKey != "" {
			bad("use_jwks: keys come from the endpoint; remove secret and public_key")
		}
		if a.MaxFailCount < 0 {
			bad("max_fail_count: must not be negative")
		}
		return errs
	}
	if a.Endpoint != "" {
		bad("endpoint: set use_jwks: true to fetch keys from it")
	}
	switch a.Algorithm {
	case "hmac-based":
		if a.Secret == "" && a.SecretEnv == "" && a.SecretFile == "" { // a failed secret_env or secret_file was reported already
			bad("secret: required with algorithm: hmac-based (or secret_env, secret_file)")
		}
		if a.PublicKey != "" {
			bad("public_key: not used with algorithm: hmac-based")
		}
	case "public-key":
		if a.PublicKey == "" {
			bad("public_key: required with algorithm: public-key")
		}
		if a.Secret != "" {
			bad("secret: not used with algorithm: public-key")
		}
	case "":
		bad("algorithm: required: hmac-based or public-key (or use_jwks: true)")
	default:
		bad("algorithm: %q is not one of hmac-based, public-key", a.Algorithm)
	}
	return errs
}

// PublicKeyIsPEM reports whether public_key holds the PEM text itself
// rather than the path of a file.
func (a Authenticator) PublicKeyIsPEM() bool { return strings.Contains(a.PublicKey, "-----BEGIN") }

// UsesExampleSecret reports whether a's secret is one published in
// documentation.
func (a Authenticator) UsesExampleSecret() bool {
	return a.Algorithm == "hmac-based" && !a.SecretBase64Encoded && oneOf(a.Secret, ExampleSecrets...)
}

// dialsListener reports whether connecting to upstream reaches a socket
// bound to bind on this host, as far as the addresses alone tell: the same
// port, and the same address, or an upstream on loopback (or unspecified,
// which connects to loopback) where the listener binds every address.
// Host names other than localhost are not resolved.
func dialsListener(upstream, bind string) bool {
	uhost, uport, err := net.SplitHostPort(upstream)
	if err != nil {
		return false
	}
	lhost, lport, err := net.SplitHostPort(bind)
	if err != nil || uport != lport {
		return false
	}
	uaddrs := hostAddrs(uhost)
	if len(uaddrs) == 1 && uaddrs[0].IsUnspecified() {
		uaddrs = hostAddrs("localhost")
	}
	for _, u := range uaddrs {
		for _, l := range hostAddrs(lhost) {
			switch {
			case l == u,
				l == netip.IPv6Unspecified() && u.IsLoopback(), // "::" takes IPv4 too
				l == netip.IPv4Unspecified() && u.Is4() && u.IsLoopback():
				return true
			}
		}
	}
	return false
}

// bindsOverlap reports whether sockets bound to a and b (host:port) would
// take the same port on a shared address, so that the second bind fails
// with "address already in use": the same port, and the same address or a
// wildcard (empty host, 0.0.0.0, ::) on either side. Port 0 picks a free
// port and overlaps nothing.
func bindsOverlap(a, b string) bool {
	ahost, aport, err := net.SplitHostPort(a)
	if err != nil {
		return false
	}
	bhost, bport, err := net.SplitHostPort(b)
	if err != nil || aport != bport || aport == "0" {
		return false
	}
	if ahost == bhost {
		return true
	}
	for _, x := range hostAddrs(ahost) {
		for _, y := range hostAddrs(bhost) {
			if x == y || x.IsUnspecified() || y.IsUnspecified() {
				return true
			}
		}
	}
	return false
}

// hostAddrs is what a host in a configured address stands for: an empty
// host is every address, localhost is loopback.
func hostAddrs(host string) []netip.Addr {
	switch host {
	case "":
		return []netip.Addr{netip.IPv6Unspecified()}
	case "localhost":
		return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return nil
	}
	return []netip.Addr{a.Unmap()}
}

func oneOf(v string, allowed ...string) bool { return slices.Contains(allowed, v) }

// validate checks the authorization section's shape: the values each key
// takes. The topic filters and their placeholders are checked where the
// rules are compiled (authn/acl), by the check command too.
func (a Authorization) validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("authorization."+format, args...)) }
	if !oneOf(a.NoMatch, "", PermissionAllow, PermissionDeny) {
		bad("no_match: %q is not one of allow, deny", a.NoMatch)
	}
	if !oneOf(a.DenyAction, "", DenyActionIgnore, DenyActionDisconnect) {
		bad("deny_action: %q is not one of ignore, disconnect", a.DenyAction)
	}
	for i, r := range a.Rules {
		at := fmt.Sprintf("rules[%d]", i)
		switch r.Permission {
		case "":
			bad("%s.permission: required: allow or deny", at)
		case PermissionAllow, PermissionDeny:
		default:
			bad("%s.permission: %q is not one of allow, deny", at, r.Permission)
		}
		switch r.Action {
		case "":
			bad("%s.action: required: publish, subscribe or all", at)
		case "publish", "all":
		case "subscribe":
			if r.Retain != nil {
				bad("%s.retain: applies to publishes only, not with action: subscribe", at)
			}
		default:
			bad("%s.action: %q is not one of publish, subscribe, all", at, r.Action)
		}
		switch {
		case r.Topic != "" && len(r.Topics) > 0:
			bad("%s: give topic or topics, not both", at)
		case r.Topic == "" && len(r.Topics) == 0:
			bad("%s.topic: required (or topics)", at)
		}
		for j, t := range r.Topics {
			if t == "" {
				bad("%s.topics[%d]: empty", at, j)
			}
		}
		if r.QoS != nil && len(r.QoS) == 0 {
			bad("%s.qos: an empty list matches nothing; leave qos out for every QoS", at)
		}
		for _, q := range r.QoS {
			if q < 0 || q > 2 {
				bad("%s.qos: %d is not 0, 1 or 2", at, q)
			}
		}
	}
	return errs
}
