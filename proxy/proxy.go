// Package proxy accepts MQTT clients, authenticates the token in each one's
// first CONNECT and connects the accepted ones through to an upstream
// broker, byte for byte. Refused clients get a CONNACK with the reason code
// for their protocol version and never reach the broker: the upstream is
// dialed only after the token is accepted, and nothing a client sent before
// or after its CONNECT is forwarded unless it was accepted.
//
// Typical usage:
//
//	chain, err := authn.New(cfg.Authentication)
//	if err != nil { ... }
//	p := &proxy.Proxy{Upstream: "127.0.0.1:1884", Verifier: chain, Logger: logger}
//	ln, err := net.Listen("tcp", ":1883")
//	if err != nil { ... }
//	log.Fatal(p.Serve(ln, "tcp"))
//
// After authentication, plain TCP on both sides is copied with io.Copy
// between the two *net.TCPConn values, so Linux moves the bytes with
// splice(2) and they never enter user space.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
)

// Defaults for the zero values of Proxy's fields.
const (
	DefaultDialTimeout      = 5 * time.Second
	DefaultConnectTimeout   = 10 * time.Second
	DefaultHalfCloseTimeout = 10 * time.Second

	// refuseWriteTimeout bounds writing a CONNACK to a client that does not read.
	refuseWriteTimeout = 5 * time.Second
	// lingerTimeout and lingerBytes bound how long and how much a refused
	// client's unread input is drained before the close: closing a socket
	// with unread data makes the kernel send RST, which can destroy the
	// CONNACK before the client reads it.
	lingerTimeout = time.Second
	lingerBytes   = 64 << 10
)

// ErrProxyClosed is returned by Serve after Close or Shutdown.
var ErrProxyClosed = errors.New("proxy: closed")

// Proxy is an authenticating MQTT reverse proxy. Set Upstream (or
// DialUpstream) and Verifier, then call Serve for each listener. Its
// optional fields must not be changed after the first Serve.
type Proxy struct {
	// Upstream is the broker's host:port. Required unless DialUpstream is set.
	Upstream string
	// Verifier decides on each client's CONNECT. Required.
	Verifier authn.Verifier
	// DialUpstream, if set, opens the connection to the broker instead of
	// a net.Dialer dialing Upstream. The context carries DialTimeout.
	// Return a *net.TCPConn to keep the zero-copy path.
	DialUpstream func(ctx context.Context) (net.Conn, error)
	// DialTimeout bounds connecting to the broker. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// ConnectTimeout is how long a client has, from accept, to send its
	// whole CONNECT and be authenticated. Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxConnectSize caps the CONNECT packet in bytes. Zero means
	// packets.DefaultMaxConnectSize.
	MaxConnectSize int
	// HalfCloseTimeout is how long the other direction may go on after one
	// side of a proxied connection has closed its sending half. Zero means
	// DefaultHalfCloseTimeout.
	HalfCloseTimeout time.Duration
	// Logger receives one line per decision and per closed connection.
	// Nil means no logs.
	Logger *zap.Logger

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	wg        sync.WaitGroup
}

// session is one client connection, from accept to close.
type session struct {
	client   net.Conn
	upstream net.Conn // nil until dialed; guarded by Proxy.mu
}

// Serve accepts connections on ln and serves each in its own goroutine
// until Close or Shutdown; then it returns ErrProxyClosed. name labels the
// listener in logs. Serve closes ln when it returns.
func (p *Proxy) Serve(ln net.Listener, name string) error {
	if err := p.check(); err != nil {
		ln.Close()
		return err
	}
	if !p.trackListener(ln, true) {
		ln.Close()
		return ErrProxyClosed
	}
	defer p.trackListener(ln, false)
	defer ln.Close()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if p.isClosed() {
				return ErrProxyClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of file descriptors and the like: wait, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.logger().Warn("accept failed; retrying", zap.String("listener", name), zap.Error(err), zap.Duration("backoff", backoff))
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("proxy: listener %s: %w", name, err)
		}
		backoff = 0
		s := &session{client: c}
		if !p.trackSession(s, true) {
			c.Close()
			return ErrProxyClosed
		}
		go p.serveConn(s, name)
	}
}

// Close stops every listener and closes every connection at once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for ln := range p.listeners {
		ln.Close()
	}
	for s := range p.sessions {
		s.client.Close()
		if s.upstream != nil {
			s.upstream.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// Shutdown stops every listener, then waits for the open connections to
// end by themselves until ctx is done, and then closes the rest.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	for ln := range p.listeners {
		ln.Close()
	}
	p.mu.Unlock()

	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		p.Close()
		return ctx.Err()
	}
}

func (p *Proxy) check() error {
	switch {
	case p.Verifier == nil:
		return errors.New("proxy: Verifier is required")
	case p.Upstream == "" && p.DialUpstream == nil:
		return errors.New("proxy: Upstream or DialUpstream is required")
	}
	return nil
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *Proxy) trackListener(ln net.Listener, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !add {
		delete(p.listeners, ln)
		return true
	}
	if p.closed {
		return false
	}
	if p.listeners == nil {
		p.listeners = make(map[net.Listener]struct{})
	}
	p.listeners[ln] = struct{}{}
	return true
}

func (p *Proxy) trackSession(s *session, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !add {
		delete(p.sessions, s)
		p.wg.Done()
		return true
	}
	if p.closed {
		return false
	}
	if p.sessions == nil {
		p.sessions = make(map[*session]struct{})
	}
	p.sessions[s] = struct{}{}
	p.wg.Add(1)
	return true
}

// setUpstream records the dialed upstream so Close can reach it; it
// reports false (and the caller closes up) when the proxy is closing.
func (p *Proxy) setUpstream(s *session, up net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	s.upstream = up
	return true
}

func (p *Proxy) logger() *zap.Logger {
	if p.Logger == nil {
		return zap.NewNop()
	}
	return p.Logger
}

func (p *Proxy) dialTimeout() time.Duration { return orDefault(p.DialTimeout, DefaultDialTimeout) }
func (p *Proxy) connectTimeout() time.Duration {
	return orDefault(p.ConnectTimeout, DefaultConnectTimeout)
}
func (p *Proxy) halfCloseTimeout() time.Duration {
	return orDefault(p.HalfCloseTimeout, DefaultHalfCloseTimeout)
}

func (p *Proxy) dial() (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.dialTimeout())
	defer cancel()
	if p.DialUpstream != nil {
		return p.DialUpstream(ctx)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", p.Upstream)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}
