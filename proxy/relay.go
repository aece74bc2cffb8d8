package proxy

import (
	"fmt"
	"runtime"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
)

// RelayEngine names the engine that carries an accepted connection's
// bytes (the configuration's tuning.relay).
type RelayEngine string

// Relay engines.
const (
	// RelayEpoll keeps both sockets of an idle connection in an epoll set:
	// no goroutine, buffer or pipe per connection, and an MQTT packet
	// moved with one read(2) and one write(2). Linux only.
	RelayEpoll RelayEngine = "epoll"
	// RelayPortable runs two goroutines per connection that wait until
	// their side is readable and copy through pooled buffers: no buffer
	// or pipe per idle connection where the platform can wait for
	// readability (Unix), on every platform.
	RelayPortable RelayEngine = "portable"
)

// defaultRelay is what a zero Proxy.Relay means: epoll on Linux, portable
// elsewhere. The tests set it to run every test with either engine.
var defaultRelay = RelayEngine(engine.DefaultKind)

func (r RelayEngine) check() error {
	switch r {
	case "", RelayPortable:
		return nil
	case RelayEpoll:
		if runtime.GOOS != "linux" {
			return fmt.Errorf("proxy: relay engine %q is Linux-only; use %q", r, RelayPortable)
		}
		return nil
	}
	return fmt.Errorf("proxy: unknown relay engine %q (%q or %q)", r, RelayEpoll, RelayPortable)
}

// relayKind is the engine p runs.
func (p *Proxy) relayKind() RelayEngine {
	if p.Relay == "" {
		return defaultRelay
	}
	return p.Relay
}

// relayEngine returns the proxy's engine, starting it on first use; nil
// after stopEngine. An epoll engine that cannot start (out of
// descriptors) gives way to the portable one.
func (p *Proxy) relayEngine() engine.Engine {
	p.engineOnce.Do(func() {
		kind := engine.Kind(p.relayKind())
		e, err := engine.New(kind)
		if err != nil {
			p.logger().Warn("relay engine unavailable; connections are copied by goroutines", zap.String("relay", string(kind)), zap.Error(err))
			e, _ = engine.New(engine.Portable)
		}
		p.engine = e
	})
	return p.engine
}

// stopEngine stops the engine once no link is left.
func (p *Proxy) stopEngine() {
	p.engineOnce.Do(func() {}) // none may start after this
	if p.engine != nil {
		p.engine.Close()
	}
}
