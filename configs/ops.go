package configs

import (
	"errors"
	"fmt"
	"net"
	"runtime"
)

// Metrics configures the admin HTTP endpoint: Prometheus metrics on
// /metrics, the probes /healthz and /readyz, and optionally pprof. It is
// meant for operators and scrapers, not clients: bind it to loopback or a
// private network.
type Metrics struct {
	// Bind is the host:port the admin endpoint listens on, such as
	// "127.0.0.1:9100". Empty means no admin endpoint (and no metrics).
	Bind string `yaml:"bind"`
	// Pprof also serves Go's profiler on /debug/pprof/. False (the
	// default) leaves it off: profiles reveal memory contents and cost CPU.
	Pprof bool `yaml:"pprof"`
}

// validate checks m against the rest of f: the admin endpoint must not
// share an address with a listener.
func (m Metrics) validate(f *File) []error {
	var errs []error
	if m.Bind == "" {
		if m.Pprof {
			errs = append(errs, errors.New("metrics.pprof: needs metrics.bind"))
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
