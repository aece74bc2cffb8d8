// Package proxy accepts MQTT clients, authenticates the token in each one's
// first CONNECT and connects the accepted ones through to an upstream
// broker, byte for byte. Refused clients get a CONNACK with the reason code
// for their protocol version and never reach the broker: the upstream is
// dialed only after the token is accepted, and nothing a client sent before
// or after its CONNECT is forwarded unless it was accepted. A Forward, when
// set, rewrites the accepted CONNECT on its way (password stripped, client
// identifier from a claim); everything after it goes through unchanged.
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
// A connection's path: Serve accepts it and admits it under the Limits
// (admit.go); serveConn reads its CONNECT (connect.go), decides
// (decide.go), and either refuses it, in one place (refuse.go), or dials
// the broker (dial.go) and hands both connections to the relay
// engine, which owns them from then on (proxy/internal/engine): on Linux
// an epoll engine in which an idle connection holds no goroutine or
// buffer, elsewhere, or with Relay set to RelayPortable, two goroutines
// per connection that copy through pooled buffers.
//
// An MQTT 5 client may present its token under an Authentication Method
// instead, and replace it with a fresh one on the same connection (AUTH,
// reason 0x19): the proxy answers the method for the broker, which never
// sees it (reauth.go).
//
// Transports (TLS, the PROXY protocol, WebSocket) are listeners of
// package transport, stacked in the order they arrive on the wire:
//
//	certs, err := transport.NewCertReloader(transport.TLSFiles{CertFile: "server.pem", KeyFile: "server.key"}, logger)
//	if err != nil { ... }
//	wss := (&transport.WebSocketListener{Listener: transport.NewTLSListener(ln, certs.Config())}).Start()
//	log.Fatal(p.Serve(wss, "wss"))
//
// A PROXY header in front of plain TCP keeps the engine's own sockets
// when the ProxyProtocolListener wraps p.Listener(ln) rather than ln.
//
// Toward the broker, UpstreamProxyHeader and UpstreamTLS add a PROXY
// header and TLS.
//
// Several brokers are pools (package upstream): Upstreams routes each
// accepted client to a pool by its listener and token, and dials the
// pool's servers in the balance's order, each with its own TLS and PROXY
// header, until one takes the connection:
//
//	cfg, err := upstream.FromConfig(file, serverSettings) // or built by hand
//	if err != nil { ... }
//	pools, err := proxy.NewUpstreams(cfg, logger) // starts the health checks
//	if err != nil { ... }
//	p := &proxy.Proxy{Upstreams: pools, Verifier: chain, Logger: logger}
//	...
//	err = p.UpdateUpstreams(next, 30*time.Second) // a reload: removed servers drained
package proxy

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/defaults"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// Defaults for the zero values of Proxy's fields.
const (
	DefaultDialTimeout      = 5 * time.Second
	DefaultConnectTimeout   = 10 * time.Second
	DefaultHalfCloseTimeout = 10 * time.Second
)

// ErrProxyClosed is returned by Serve after Close or Shutdown.
var ErrProxyClosed = errors.New("proxy: closed")

// Proxy is an authenticating MQTT reverse proxy. Set Upstreams, Upstream
// or DialUpstream, and Verifier, then call Serve for each listener. Its
// optional fields must not be changed after the first Serve.
type Proxy struct {
	// Upstreams, if set, are the pools of brokers accepted clients go to
	// (see NewUpstreams): the pool its routes give the client's listener,
	// subject and claims, then that pool's servers in the order its
	// balance ranks them for the client identifier the broker gets (after
	// Forward), each dialed with its ServerSettings until one takes the
	// connection, all within the pool's dial timeout (DialTimeout when it
	// has none). A client no route takes is refused with CONNACK 0x87
	// not authorized (no_route), one whose pool has no server up or none
	// that answers with 0x88 server unavailable (upstream_unavailable).
	// Upstream, DialUpstream, UpstreamTLS and UpstreamProxyHeader are not
	// used. UpdateUpstreams changes them while the proxy runs; Close and
	// Shutdown stop their health checks.
	Upstreams *Upstreams
	// Upstream is the broker's host:port, without Upstreams. Required
	// unless Upstreams or DialUpstream is set.
	Upstream string
	// Verifier decides on each client's CONNECT. Required. One that is
	// an authn.Reauthenticator too (*authn.Chain) decides on the MQTT 5
	// re-authentications of clients accepted under an Authentication
	// Method; with another, each is refused (DISCONNECT 0x87).
	Verifier authn.Verifier
	// Forward, if set, rewrites an accepted client's CONNECT before it
	// goes upstream (see NewForward); Reload replaces it. Nil keeps
	// everything: the broker
	// gets the client's bytes unchanged.
	Forward *Forward
	// DialUpstream, if set, opens the connection to the broker instead of
	// the proxy dialing Upstream. The context carries DialTimeout.
	// Return a *net.TCPConn for the epoll engine to take over.
	DialUpstream func(ctx context.Context) (net.Conn, error)
	// UpstreamProxyHeader is the PROXY protocol header sent to the broker
	// ahead of everything else (and of TLS). Zero sends none.
	UpstreamProxyHeader transport.ProxyHeader
	// UpstreamTLS, if set, speaks TLS to the broker with this client
	// configuration, within DialTimeout. Nil means plain TCP.
	UpstreamTLS *tls.Config
	// DialTimeout bounds connecting to the broker. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// Limits bound what clients may cost before they are authenticated.
	// The zero value applies the default timeouts and sizes and no cap.
	// Reload replaces them while the proxy runs.
	Limits Limits
	// Authorization is what authenticated clients may publish and
	// subscribe to, beside their tokens' rules. The zero value has no
	// rules of its own. Reload replaces it for new connections.
	Authorization Authorization
	// HalfCloseTimeout is how long the other direction may go on after one
	// side of a proxied connection has closed its sending half. Zero means
	// DefaultHalfCloseTimeout.
	HalfCloseTimeout time.Duration
	// Logger receives one line per decision and per closed connection.
	// Nil means no logs.
	Logger *zap.Logger
	// Metrics, if set, records Prometheus metrics (see NewMetrics).
	Metrics *Metrics
	// Relay is the engine that carries accepted connections' bytes. Zero
	// means RelayEpoll on Linux and RelayPortable elsewhere.
	Relay RelayEngine

	policyOnce sync.Once
	policy     atomic.Pointer[policy]

	engineOnce sync.Once
	engine     engine.Engine // nil until first used, or when it could not start

	dials dialOutcomes // for Health

	revocations revocationWatch

	mu          sync.Mutex // guards the fields below, a session's (see session) and pendingConnect's accounts
	closed      bool
	listeners   map[net.Listener]struct{}
	sessions    map[*session]struct{}
	perListener map[string]int // open sessions per listener name
	pending     list.List      // sessions still in CONNECT, oldest first
	holding     list.List      // pending sessions holding CONNECT bytes, longest first
	heldBytes   int            // CONNECT bytes held by pending sessions
	// servers are the linked sessions of each server of Upstreams, and
	// serverDrain how long those of a removed server are left to end
	// (UpdateUpstreams).
	servers     map[*upstream.Backend[ServerSettings]]*serverSessions
	serverDrain time.Duration
	wg          sync.WaitGroup
}

// policy is what Reload replaces: it applies to connections accepted
// after the change, while established ones keep what they started with.
type policy struct {
	verifier      authn.Verifier
	limits        Limits
	forward       *Forward
	authorization Authorization
	ipRates       *keyedRates // per client IP, at accept
	idRates       *keyedRates // per client ID, once authenticated

	// Guarded by Proxy.mu.
	users   int           // sessions that took it and have not had their CONNECT decided
	retired chan struct{} // set by the Reload that replaced it; closed once users is 0
}

// leave says that a session that took pol has had its CONNECT decided.
// Proxy.mu is held.
func (pol *policy) leave() {
	pol.users--
	if pol.users == 0 && pol.retired != nil {
		close(pol.retired)
	}
}

// Serve accepts connections on ln and serves each in its own goroutine
// until Close or Shutdown; then it returns ErrProxyClosed. name labels the
// listener in logs. Serve closes ln when it returns. A *net.TCPListener
// is accepted from as Listener says.
func (p *Proxy) Serve(ln net.Listener, name string) error {
	if err := p.check(); err != nil {
		ln.Close()
		return err
	}
	ln = p.Listener(ln)
	if wl, ok := ln.(interface{ SetAdmitter(transport.Admitter) }); ok {
		wl.SetAdmitter(wsAdmitter{p: p, listener: name})
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
			if errors.As(err, &ne) && ne.Timeout() || transport.IsTemporary(err) {
				// Out of file descriptors and the like: wait, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.logger().Warn("accept failed; retrying", zap.String("listener", name), zap.Error(err), zap.Duration("backoff", backoff))
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("proxy: listener %s: %w", name, err)
		}
		backoff = 0
		if a, ok := transport.AdmissionOf(c).(*wsAdmission); ok {
			if p.upgraded(a.s, c) {
				go p.serveConn(a.s)
			}
			continue
		}
		s, err := p.accepted(c, name)
		if err != nil {
			return err
		}
		if s != nil {
			go p.serveConn(s)
		}
	}
}

// Listener returns the listener Serve accepts from when given ln. With
// the epoll engine, for a *net.TCPListener, that is one whose sockets stay
// out of the net package and the runtime's poller, accepted and read with
// raw system calls: they get TCP_NODELAY, as from the net package, but no
// keep-alive probes, whatever ln was configured with (MQTT's keep-alive
// watches a session), and ln's deadline does not apply. Other listeners
// are returned as they are. Serve calls Listener itself; call it to keep
// that path under a ProxyProtocolListener:
//
//	ln = (&transport.ProxyProtocolListener{Listener: p.Listener(tcp), Trusted: trusted}).Start()
func (p *Proxy) Listener(ln net.Listener) net.Listener {
	if e := p.relayEngine(); e != nil {
		return e.Listener(ln)
	}
	return ln
}

// Reload makes v, l, f and a apply to connections accepted from now on;
// connections accepted before keep what was in force when they were
// accepted, until they are closed: a WebSocket client accepted just
// before the reload but whose CONNECT comes much later is decided as the
// configuration it came under says. Counters (open and pending
// connections) carry over; per-IP rate state starts afresh.
//
// retired is closed once every connection accepted under the replaced
// configuration has had its CONNECT decided, or has ended: from then on
// the previous verifier is no longer used, and may be closed.
func (p *Proxy) Reload(v authn.Verifier, l Limits, f *Forward, a Authorization) (retired <-chan struct{}) {
	p.policyOnce.Do(func() {}) // the Proxy's own fields never apply from now on
	next := newPolicy(v, l, f, a)
	done := make(chan struct{})
	p.mu.Lock()
	defer p.mu.Unlock()
	switch prev := p.policy.Swap(next); {
	case prev == nil || prev.users == 0: // nothing has it, or had it in use
		close(done)
	default:
		prev.retired = done
	}
	return done
}

func newPolicy(v authn.Verifier, l Limits, f *Forward, a Authorization) *policy {
	return &policy{verifier: v, limits: l, forward: f, authorization: a,
		ipRates: newKeyedRates(l.PerIPConnectRate, l.PerIPConnectBurst),
		idRates: newKeyedRates(l.PerClientIDConnectRate, l.PerClientIDConnectBurst),
	}
}

func (p *Proxy) currentPolicy() *policy {
	p.policyOnce.Do(func() {
		p.policy.Store(newPolicy(p.Verifier, p.Limits, p.Forward, p.Authorization))
	})
	return p.policy.Load()
}

// closeListeners marks the proxy closed and closes its listeners, outside
// p.mu: closing a WebSocket listener waits for its handlers, which may
// release sessions. A listener Serve gets from now on is refused.
func (p *Proxy) closeListeners() {
	p.mu.Lock()
	p.closed = true
	listeners := slices.Collect(maps.Keys(p.listeners))
	p.mu.Unlock()
	for _, ln := range listeners {
		ln.Close()
	}
}

// Close stops every listener and closes every connection: at once, but for
// a session with topic rules, which gets what was on its way to it, then
// in MQTT 5 a DISCONNECT 0x8B (server shutting down), and is closed once
// its client has closed, within HalfCloseTimeout. It stops watching the
// revocation list.
func (p *Proxy) Close() error {
	p.closeListeners()
	p.stopWatching()
	p.mu.Lock()
	open := make([]*session, 0, len(p.sessions))
	for s := range p.sessions {
		open = append(open, s)
	}
	p.mu.Unlock()
	for _, s := range open {
		p.terminate(s, "")
	}
	p.wg.Wait()
	p.stop()
	return nil
}

// Shutdown stops every listener, then waits for the open connections to
// Shutdown stops every listener, then waits for the open connections to
// end by themselves until ctx is done, and then closes the rest as Close
// does. The revocation list is watched until it returns.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.closeListeners()
	p.mu.Lock()
	open := len(p.sessions)
	p.mu.Unlock()
	p.logger().Info("listeners closed; draining", zap.Int("connections", open))

	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		p.stopWatching()
		p.stop()
		return nil
	case <-ctx.Done():
		p.Close()
		return ctx.Err()
	}
}

func (p *Proxy) check() error {
	switch {
	case p.currentPolicy().verifier == nil:
		return errors.New("proxy: Verifier is required")
	case p.Upstreams == nil && p.Upstream == "" && p.DialUpstream == nil:
		return errors.New("proxy: Upstreams, Upstream or DialUpstream is required")
	}
	return p.Relay.check()
}

// stop stops what runs besides connections, once none is left: the
// engine and the health checks of Upstreams.
func (p *Proxy) stop() {
	p.stopEngine()
	if p.Upstreams != nil {
		p.Upstreams.Close()
	}
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

func (p *Proxy) logger() *zap.Logger {
	if p.Logger == nil {
		return nopLogger
	}
	return p.Logger
}

var nopLogger = zap.NewNop()

func (p *Proxy) dialTimeout() time.Duration { return defaults.Or(p.DialTimeout, DefaultDialTimeout) }

func (p *Proxy) halfCloseTimeout() time.Duration {
	return defaults.Or(p.HalfCloseTimeout, DefaultHalfCloseTimeout)
}

func (l *Limits) connectTimeout() time.Duration {
	return defaults.Or(l.ConnectTimeout, DefaultConnectTimeout)
}
