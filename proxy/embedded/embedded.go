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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"

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
	if err := s.AddListener(&listener{ln: ln}); err != nil {
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

// listener serves the broker's clients on a net.Listener. It stands in for
// mochi's listeners.Net, which logs the end of every connection, a client
// that simply went away included, as a warning without a message.
type listener struct {
	ln    net.Listener
	log   *slog.Logger
	close sync.Once
}

func (l *listener) ID() string       { return "embedded" }
func (l *listener) Address() string  { return l.ln.Addr().String() }
func (l *listener) Protocol() string { return "tcp" }

func (l *listener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

// Serve accepts until the listener is closed, running each client on its
// own goroutine.
func (l *listener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			err := establish(l.ID(), conn)
			if wentAway(err) {
				l.log.Debug("client connection ended", "remote", conn.RemoteAddr().String(), "error", err)
				return
			}
			l.log.Warn("client connection failed", "remote", conn.RemoteAddr().String(), "error", err)
		}()
	}
}

// Close disconnects the listener's clients and stops accepting.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.close.Do(func() {
		closeClients(l.ID())
		l.ln.Close()
	})
}

// wentAway reports whether a connection ended the ordinary way: a
// DISCONNECT, or the client (here, the proxy relaying for it) closing or
// resetting its side.
func wentAway(err error) bool {
	return err == nil ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, mqtt.ErrConnectionClosed)
}
