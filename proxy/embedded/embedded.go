// Package embedded runs an in-process MQTT broker on a loopback port, so the
// proxy can be tried with nothing else installed (upstream.address:
// embedded) and tests have a broker at hand. The proxy dials it like any
// other upstream; the broker itself allows every client, because the proxy
// in front of it has already authenticated them.
//
// It is a convenience, not a production broker: it keeps no sessions across
// restarts and listens on 127.0.0.1 only.
//
//	b, err := embedded.Start(nil)
//	if err != nil { ... }
//	defer b.Close()
//	p := &proxy.Proxy{Upstream: b.Addr(), Verifier: v}
package embedded

import (
	"fmt"
	"io"
	"log/slog"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Broker is a running in-process broker.
type Broker struct {
	server *mqtt.Server
	addr   string
}

// Start starts a broker on a free port of 127.0.0.1. log receives the
// broker's own log; nil discards it.
func Start(log *slog.Logger) (*Broker, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("embedded broker: listen: %w", err)
	}
	s := mqtt.New(&mqtt.Options{Logger: log, InlineClient: false})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		ln.Close()
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := s.AddListener(listeners.NewNet("embedded", ln)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := s.Serve(); err != nil {
		s.Close()
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	return &Broker{server: s, addr: ln.Addr().String()}, nil
}

// Addr is the broker's host:port.
func (b *Broker) Addr() string { return b.addr }

// Close stops the broker and disconnects its clients.
func (b *Broker) Close() error { return b.server.Close() }
