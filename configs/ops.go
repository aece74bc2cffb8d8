package configs

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
)

// Metrics configures the admin HTTP endpoint: Prometheus metrics on
// /metrics, the probes /healthz and /readyz, optionally pprof, and, with
// an admin token, the sessions API. It is meant for operators and
// scrapers, not clients: bind it to loopback or a private network.
type Metrics struct {
	// Bind is the host:port the admin endpoint listens on, such as
	// "127.0.0.1:9100". Empty means no admin endpoint (and no metrics).
	Bind string `yaml:"bind"`
	// Pprof also serves Go's profiler on /debug/pprof/. False (the
	// default) leaves it off: profiles reveal memory contents and cost CPU.
	Pprof bool `yaml:"pprof"`
	// AdminTokenFile is a file holding the bearer token of the sessions
	// API (/sessions), read at load and at every reload; one trailing
	// newline is dropped. With it or AdminTokenEnv the API is served;
	// with neither (the default) it is not. Give at most one of the two.
	AdminTokenFile string `yaml:"admin_token_file"`
	// AdminTokenEnv names an environment variable holding that token.
	AdminTokenEnv string `yaml:"admin_token_env"`

	// adminToken is the token read from AdminTokenFile or AdminTokenEnv.
	// It is unexported so that no copy of the file (Diff's key list, a
	// marshalled configuration) carries it.
	adminToken string
}

// MinAdminTokenLength is the shortest admin token accepted, in bytes. The
// token can be guessed at over the network, so it must be long and random:
// `openssl rand -hex 32` writes one of 64.
const MinAdminTokenLength = 16

// AdminToken is the sessions API's bearer token, read from
// admin_token_file or admin_token_env; empty when neither is set, and the
// API is then not served.
func (m Metrics) AdminToken() string { return m.adminToken }

// ReadSecretFile reads a file holding one secret, as secret_file,
// password_file and admin_token_file do: its contents without one
// trailing newline (\n or \r\n). An empty secret is an error.
func ReadSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

// resolveAdminToken reads the admin token from admin_token_file or
// admin_token_env.
func (m *Metrics) resolveAdminToken() error {
	var token, at string
	switch {
	case m.AdminTokenFile != "" && m.AdminTokenEnv != "":
		return errors.New("metrics: give only one of admin_token_file and admin_token_env")
	case m.AdminTokenFile != "":
		at = "metrics.admin_token_file"
		s, err := ReadSecretFile(m.AdminTokenFile)
		if err != nil {
			return fmt.Errorf("%s: %w", at, err)
		}
		token = s
	case m.AdminTokenEnv != "":
		at = "metrics.admin_token_env"
		s, ok := os.LookupEnv(m.AdminTokenEnv)
		if !ok || s == "" {
			return fmt.Errorf("%s: environment variable %s is not set or is empty", at, m.AdminTokenEnv)
		}
		token = s
	default:
		return nil
	}
	// The token travels in an HTTP header, which carries neither control
	// characters nor, at its ends, spaces.
	for i := range len(token) {
		if c := token[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%s: the token holds a character other than printable ASCII (at byte %d); spaces and control characters cannot be sent in an Authorization header", at, i)
		}
	}
	if len(token) < MinAdminTokenLength {
		return fmt.Errorf("%s: the token is %d bytes long; use at least %d (openssl rand -hex 32 makes a good one)", at, len(token), MinAdminTokenLength)
	}
	m.adminToken = token
	return nil
}

// validate checks m against the rest of f: the admin endpoint must not
// share an address with a listener.
func (m Metrics) validate(f *File) []error {
	var errs []error
	if m.Bind == "" {
		if m.Pprof {
			errs = append(errs, errors.New("metrics.pprof: needs metrics.bind"))
		}
		if m.AdminTokenFile != "" {
			errs = append(errs, errors.New("metrics.admin_token_file: needs metrics.bind"))
		}
		if m.AdminTokenEnv != "" {
			errs = append(errs, errors.New("metrics.admin_token_env: needs metrics.bind"))
		}
		return errs
	}
	if _, _, err := net.SplitHostPort(m.Bind); err != nil {
		errs = append(errs, fmt.Errorf("metrics.bind: %q is not host:port: %w", m.Bind, err))
	}
	for i, l := range f.Listeners {
		if bindsOverlap(m.Bind, l.Bind) {
			errs = append(errs, fmt.Errorf("metrics.bind: %q takes the port of listeners[%d] (%q)", m.Bind, i, l.Bind))
		}
	}
	return errs
}

// Values of Tuning.Relay.
const (
	RelayEpoll    = "epoll"
	RelayPortable = "portable"
)

// Tuning picks how the proxy does its work where the default may not
// suit. It is read once, at start.
type Tuning struct {
	// Relay is the engine that carries an authenticated connection's
	// bytes: epoll (Linux only) keeps both sockets of an idle connection
	// in an epoll set, with no goroutine or buffer of its own; portable
	// runs two goroutines per connection that copy through pooled
	// buffers, on every platform. Empty means epoll on Linux, portable
	// elsewhere.
	Relay string `yaml:"relay"`
}

func (t Tuning) validate() []error {
	switch t.Relay {
	case "", RelayPortable:
	case RelayEpoll:
		if runtime.GOOS != "linux" {
			return []error{fmt.Errorf("tuning.relay: %s is Linux-only; use %s", RelayEpoll, RelayPortable)}
		}
	default:
		return []error{fmt.Errorf("tuning.relay: %q is not one of %s, %s", t.Relay, RelayEpoll, RelayPortable)}
	}
	return nil
}
