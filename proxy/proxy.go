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
// After authentication, plain TCP on both sides waits in an epoll set on
// Linux, holding no goroutine or buffer while idle: an MQTT packet is
// moved with one read(2) and one write(2), and bulk traffic with splice(2),
// kernel to kernel (relay_linux.go). For a plain TCP client of a plain TCP
// broker, the relay also dials the broker itself, and Serve accepts the
// client itself from a *net.TCPListener: both sockets stay out of the net
// package and the runtime's poller (fdconn_linux.go).
//
// Edge transports wrap the listener, in the order they arrive on the
// wire: a ProxyProtocolListener reads a load balancer's PROXY header, a
// NewTLSListener speaks TLS (certificates from a CertReloader), and a
// WebSocketListener carries MQTT over WebSocket:
//
//	certs, err := proxy.NewCertReloader(proxy.TLSFiles{CertFile: "server.pem", KeyFile: "server.key"}, logger)
//	if err != nil { ... }
//	wss := (&proxy.WebSocketListener{Listener: proxy.NewTLSListener(ln, certs.Config())}).Start()
//	log.Fatal(p.Serve(wss, "wss"))
//
// A PROXY header in front of plain TCP keeps the raw path when the
// ProxyProtocolListener wraps p.Listener(ln) rather than ln.
//
// Toward the broker, UpstreamProxyHeader and UpstreamTLS add a PROXY
// header and TLS.
package proxy

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
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
	// Forward, if set, rewrites an accepted client's CONNECT before it
	// goes upstream (see NewForward); Reload replaces it. Nil keeps
	// everything: the broker
	// gets the client's bytes unchanged.
	Forward *Forward
	// DialUpstream, if set, opens the connection to the broker instead of
	// the proxy dialing Upstream. The context carries DialTimeout.
	// Return a *net.TCPConn to keep the zero-copy path.
	DialUpstream func(ctx context.Context) (net.Conn, error)
	// UpstreamProxyHeader is the PROXY protocol header sent to the broker
	// ahead of everything else (and of TLS). Zero sends none.
	UpstreamProxyHeader ProxyHeader
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
	// HalfCloseTimeout is how long the other direction may go on after one
	// side of a proxied connection has closed its sending half. Zero means
	// DefaultHalfCloseTimeout.
	HalfCloseTimeout time.Duration
	// Logger receives one line per decision and per closed connection.
	// Nil means no logs.
	Logger *zap.Logger
	// Metrics, if set, records Prometheus metrics (see NewMetrics).
	Metrics *Metrics

	policyOnce sync.Once
	policy     atomic.Pointer[policy]

	watcherOnce sync.Once
	watchers    *watchers // nil when epoll is not available: goroutines copy

	dials dialOutcomes // for Health

	mu          sync.Mutex // guards the fields below and session.upstream, session.pending, pendingConnect's accounts
	closed      bool
	listeners   map[net.Listener]struct{}
	sessions    map[*session]struct{}
	perListener map[string]int // open sessions per listener name
	pending     list.List      // sessions still in CONNECT, oldest first
	holding     list.List      // pending sessions holding CONNECT bytes, longest first
	heldBytes   int            // CONNECT bytes held by pending sessions
	wg          sync.WaitGroup
}

// policy is what Reload replaces: it applies to connections accepted
// after the change, while established ones keep what they started with.
type policy struct {
	verifier authn.Verifier
	limits   Limits
	forward  *Forward
	ipRates  *keyedRates // per client IP, at accept
	idRates  *keyedRates // per client ID, once authenticated

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

// session is one client connection, from accept to close.
type session struct {
	client   net.Conn // for a WebSocket, its TCP connection until the upgrade (see Proxy.upgraded)
	listener string
	policy   *policy
	connect  *pendingConnect // until the CONNECT is decided; set to nil under Proxy.mu
	upstream net.Conn        // nil until dialed
	pending  *list.Element   // in Proxy.pending until the CONNECT is decided
	relay    *relay          // set once the connection is handed to the watcher
	aborted  bool            // abort or eviction has begun; no relay may start after it
	// evicted is set when the session was closed to keep within a limit
	// of pending connections (aborted too); evictedBy, written before,
	// names the limit.
	evicted   atomic.Bool
	evictedBy string
	// holdsPolicy: counted among policy's users until the CONNECT is
	// decided (Proxy.mu).
	holdsPolicy bool
}

// pendingConnect is what a session keeps while its CONNECT is read and
// decided: what the serving goroutine would keep on its stack, kept here
// so that a bare socket can wait for the rest of its CONNECT without one.
type pendingConnect struct {
	connectReader
	p      *Proxy
	s      *session
	start  time.Time // accept
	remote string
	log    *connLog
	// Under Proxy.mu: the bytes of held counted in Proxy.heldBytes, and
	// the session's place in Proxy.holding while there are any.
	charged int
	holding *list.Element
	// stopVerify, under Proxy.mu, ends the check of the token while it
	// runs (see Proxy.verify).
	stopVerify context.CancelFunc
}

// stopVerifyLocked ends the check of s's token, if one runs: s has been
// evicted or aborted. Proxy.mu is held.
func (s *session) stopVerifyLocked() {
	if pc := s.connect; pc != nil && pc.stopVerify != nil {
		pc.stopVerify()
	}
}

// hold counts n more bytes of the CONNECT's buffer (holdConnectBytes).
func (pc *pendingConnect) hold(n int) bool { return pc.p.holdConnectBytes(pc.s, n) }

// resume goes on with the CONNECT once a bare socket may have more.
func (pc *pendingConnect) resume() { pc.p.serveConnect(pc.s) }

// abort ends s at once from outside its own goroutine (Close, token
// expiry). Closing happens outside Proxy.mu, as closeTransport does it.
func (p *Proxy) abort(s *session) {
	p.mu.Lock()
	s.aborted = true
	s.stopVerifyLocked()
	r, up, client := s.relay, s.upstream, s.client
	p.mu.Unlock()
	if r != nil {
		r.abort() // it closes both sockets, after leaving the epoll set
		return
	}
	closeTransport(client)
	if up != nil {
		up.Close()
	}
}

// wrapper is a connection carried over another, which NetConn returns,
// as tls.Conn's does: TLS, a WebSocket, a PROXY header, TLS record
// framing. Each wrapper in this package implements it, so that
// closeTransport reaches the socket under any stack of them.
type wrapper interface{ NetConn() net.Conn }

var (
	_ wrapper = (*tls.Conn)(nil)
	_ wrapper = (*recordConn)(nil)
	_ wrapper = (*proxiedConn)(nil)
	_ wrapper = (*untrustedConn)(nil)
	_ wrapper = (*wsConn)(nil)
)

// closeTransport closes c from outside the goroutine serving it: the
// socket at the bottom of c's wrappers first, then c. A wrapper's own
// close writes to a client that may not read (TLS close_notify, which
// crypto/tls gives 5 s; a WebSocket close frame, whose write waits for
// one under way), and a client that makes the server's Read write (TLS
// 1.3 KeyUpdate requests) and never reads keeps such a write blocked for
// good. With the socket closed, every write fails at once. The caller
// holds no lock: closing is never done under Proxy.mu.
func closeTransport(c net.Conn) {
	bottom := c
	for {
		w, ok := bottom.(wrapper)
		if !ok {
			break
		}
		bottom = w.NetConn()
	}
	bottom.Close()
	c.Close()
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
	if !p.trackListener(ln, true) {
		ln.Close()
		return ErrProxyClosed
	}
	defer p.trackListener(ln, false)
	defer ln.Close()
	if wl, ok := ln.(*WebSocketListener); ok {
		wl.setGate(&wsGate{p: p, listener: name})
	}

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
		if s := admittedAtAccept(c); s != nil {
			if p.upgraded(s, c) {
				go p.serveConn(s)
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

// accepted admits c, just accepted on the listener called name, under
// the limits: it returns its session, or nil when a limit refused c, which
// is then closed; ErrProxyClosed when the proxy is closing.
func (p *Proxy) accepted(c net.Conn, name string) (*session, error) {
	p.Metrics.connAccepted(name)
	s := &session{client: c, listener: name, policy: p.currentPolicy()}
	s.connect = &pendingConnect{connectReader: connectReader{maxSize: s.policy.limits.MaxConnectSize}, p: p, s: s}
	s.connect.owner = s.connect
	kind, ok, evicted := p.admit(s)
	if evicted != nil {
		closeTransport(evicted)
	}
	switch {
	case !ok && kind == "":
		c.Close()
		return nil, ErrProxyClosed
	case !ok:
		p.Metrics.limitHit(kind)
		p.logger().Info("connection refused by limit", zap.String("listener", name),
			zap.String("remote", c.RemoteAddr().String()), zap.String("outcome", "refused"), zap.String("reason", kind))
		c.Close()
		return nil, nil
	}
	return s, nil
}

// upgraded gives s, admitted with its TCP connection, the connection c
// that an upgrade made of it; false (c closed, s released) when s was
// evicted or aborted meanwhile.
func (p *Proxy) upgraded(s *session, c net.Conn) bool {
	p.mu.Lock()
	if !s.aborted {
		s.client = c
		p.mu.Unlock()
		return true
	}
	p.mu.Unlock()
	closeTransport(c)
	p.releaseUnserved(s)
	return false
}

// releaseUnserved releases s, admitted with a WebSocket's TCP connection
// and never served: its upgrade failed or it was ended before Serve took
// it. An eviction among those is logged and counted as one of a served
// connection is.
func (p *Proxy) releaseUnserved(s *session) {
	if s.evicted.Load() {
		p.mu.Lock()
		remote := s.client.RemoteAddr().String()
		p.mu.Unlock()
		p.logEvicted(newConnLog(p.logger(), zap.String("listener", s.listener), zap.String("remote", remote)), s)
	}
	p.release(s)
}

// Listener returns the listener Serve accepts from when given ln. For a
// *net.TCPListener on Linux, that is one whose sockets stay out of the net
// package and the runtime's poller, accepted and read with raw system
// calls (see fdConn): they get TCP_NODELAY, as from the net package, but
// no keep-alive probes, whatever ln was configured with (MQTT's keep-alive
// watches a session), and ln's deadline does not apply. Other listeners
// are returned as they are. Serve calls Listener itself; call it to keep
// that path under a ProxyProtocolListener:
//
//	ln = &proxy.ProxyProtocolListener{Listener: p.Listener(tcp), Trusted: trusted}
func (p *Proxy) Listener(ln net.Listener) net.Listener {
	if tl, ok := ln.(*net.TCPListener); ok && p.relays() != nil {
		if rl := p.relays().newRawListener(tl); rl != nil {
			return rl
		}
	}
	return ln
}

// Reload makes v, l and f apply to connections accepted from now on;
// connections accepted before keep what was in force when they were
// accepted, until they are closed: a WebSocket client accepted just
// before the reload but whose CONNECT comes much later is decided as the
// configuration it came under says. Counters (open and pending
// connections) carry over; per-IP rate state starts afresh.
//
// retired is closed once every connection accepted under the replaced
// configuration has had its CONNECT decided, or has ended: from then on
// the previous verifier is no longer used, and may be closed.
func (p *Proxy) Reload(v authn.Verifier, l Limits, f *Forward) (retired <-chan struct{}) {
	p.policyOnce.Do(func() {}) // the Proxy's own fields never apply from now on
	next := newPolicy(v, l, f)
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

func newPolicy(v authn.Verifier, l Limits, f *Forward) *policy {
	return &policy{verifier: v, limits: l, forward: f,
		ipRates: newKeyedRates(l.PerIPConnectRate, l.PerIPConnectBurst),
		idRates: newKeyedRates(l.PerClientIDConnectRate, l.PerClientIDConnectBurst),
	}
}

func (p *Proxy) currentPolicy() *policy {
	p.policyOnce.Do(func() {
		p.policy.Store(newPolicy(p.Verifier, p.Limits, p.Forward))
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

// Close stops every listener and closes every connection at once.
func (p *Proxy) Close() error {
	p.closeListeners()
	p.mu.Lock()
	open := make([]*session, 0, len(p.sessions))
	for s := range p.sessions {
		open = append(open, s)
	}
	p.mu.Unlock()
	for _, s := range open {
		p.abort(s)
	}
	p.wg.Wait()
	p.stopWatcher()
	return nil
}

// Shutdown stops every listener, then waits for the open connections to
// end by themselves until ctx is done, and then closes the rest.
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
		p.stopWatcher()
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

// admit registers a newly accepted session if the limits allow it. It
// returns the kind of limit that refused it, or ok; "" and !ok when the
// proxy is closing. Over MaxPendingConnects, the oldest pending session is
// evicted instead of refusing the new one: its connection is returned,
// for the caller to close once p.mu is released.
func (p *Proxy) admit(s *session) (kind string, ok bool, evicted net.Conn) {
	if !s.policy.ipRates.allow(hostOf(s.client.RemoteAddr()), time.Now()) {
		return limitRate, false, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Taken again under p.mu, where Reload retires the policy it
	// replaces: s is counted among its policy's users before that can
	// be retired, whatever Reload came since the rate check.
	s.policy = p.policy.Load()
	l := &s.policy.limits
	switch {
	case p.closed:
		return "", false, nil
	case l.MaxConnections > 0 && len(p.sessions) >= l.MaxConnections:
		return limitMaxConnections, false, nil
	case l.MaxListenerConnections[s.listener] > 0 && p.perListener[s.listener] >= l.MaxListenerConnections[s.listener]:
		return limitListenerConnections, false, nil
	}
	if l.MaxPendingConnects > 0 && p.pending.Len() >= l.MaxPendingConnects {
		evicted = p.evictLocked(p.pending.Front().Value.(*session), limitPending)
	}
	if p.sessions == nil {
		p.sessions = make(map[*session]struct{})
		p.perListener = make(map[string]int)
	}
	p.sessions[s] = struct{}{}
	p.perListener[s.listener]++
	s.pending = p.pending.PushBack(s)
	s.policy.users++
	s.holdsPolicy = true
	p.wg.Add(1)
	p.Metrics.connOpened(s.listener)
	return "", true, evicted
}

// evictLocked ends s, a pending session, to keep within the limit kind
// of pending connections, and returns its connection, for the caller to
// close with closeTransport once p.mu is released. p.mu is held.
func (p *Proxy) evictLocked(s *session, kind string) net.Conn {
	if s.pending != nil {
		p.pending.Remove(s.pending)
		s.pending = nil
	}
	p.unholdLocked(s)
	s.stopVerifyLocked()
	s.evictedBy = kind
	s.evicted.Store(true)
	// Aborted too: a session whose CONNECT is being verified must not go
	// on to the broker, nor hand on a descriptor closed by the caller,
	// whose number the next accepted socket may get.
	s.aborted = true
	p.Metrics.limitHit(kind)
	return s.client
}

// holdConnectBytes counts n more bytes held by s's CONNECT, before they
// are allocated. Over MaxPendingConnectBytes, the pending sessions that
// have held CONNECT bytes longest are evicted until the rest fit, s too
// if it comes to that. It reports false when s has been evicted or
// aborted: its read ends.
func (p *Proxy) holdConnectBytes(s *session, n int) bool {
	budget := s.policy.limits.maxPendingConnectBytes()
	var evicted []net.Conn
	defer func() {
		for _, c := range evicted {
			closeTransport(c)
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock() // runs first: the closes come after it
	pc := s.connect
	if s.aborted || pc == nil {
		return false
	}
	if pc.holding == nil {
		pc.holding = p.holding.PushBack(s)
	}
	pc.charged += n
	p.heldBytes += n
	for p.heldBytes > budget {
		evicted = append(evicted, p.evictLocked(p.holding.Front().Value.(*session), limitPendingBytes))
	}
	return !s.aborted
}

// unholdLocked stops counting the bytes s's CONNECT holds. p.mu is held.
func (p *Proxy) unholdLocked(s *session) {
	if pc := s.connect; pc != nil && pc.holding != nil {
		p.holding.Remove(pc.holding)
		pc.holding = nil
		p.heldBytes -= pc.charged
		pc.charged = 0
	}
}

// decided takes s off the pending list and its policy's users: its
// CONNECT has been answered, and what it held is no longer counted (nor
// kept by s). It reports false when s was ended from outside meanwhile
// (evicted, Close), so that nothing more is done for it.
func (p *Proxy) decided(s *session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.pending != nil {
		p.pending.Remove(s.pending)
		s.pending = nil
	}
	p.unholdLocked(s)
	s.connect = nil
	if s.holdsPolicy {
		s.holdsPolicy = false
		s.policy.leave()
	}
	return !s.aborted
}

// release forgets s; it is the last thing serveConn does.
func (p *Proxy) release(s *session) {
	p.decided(s)
	p.mu.Lock()
	delete(p.sessions, s)
	p.perListener[s.listener]--
	p.mu.Unlock()
	p.Metrics.connClosed(s.listener)
	p.wg.Done()
}

// relays returns the proxy's epoll watchers, starting them on first use.
func (p *Proxy) relays() *watchers {
	p.watcherOnce.Do(func() {
		w, err := newWatchers()
		if err != nil {
			p.logger().Warn("idle connections will each hold two goroutines", zap.Error(err))
			return
		}
		p.watchers = w
	})
	return p.watchers
}

// stopWatcher stops the epoll watchers once no relay is left.
func (p *Proxy) stopWatcher() {
	p.watcherOnce.Do(func() {}) // none may start after this
	if p.watchers != nil {
		p.watchers.stop()
	}
}

// setUpstream records the dialed upstream so Close can reach it; it
// reports false (and the caller closes up) when s was aborted meanwhile.
// A Shutdown that began meanwhile does not count: a client already
// accepted is drained, not dropped.
func (p *Proxy) setUpstream(s *session, up net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.aborted {
		return false
	}
	s.upstream = up
	return true
}

func (p *Proxy) logger() *zap.Logger {
	if p.Logger == nil {
		return nopLogger
	}
	return p.Logger
}

var nopLogger = zap.NewNop()

func (p *Proxy) dialTimeout() time.Duration { return orDefault(p.DialTimeout, DefaultDialTimeout) }

func (p *Proxy) halfCloseTimeout() time.Duration {
	return orDefault(p.HalfCloseTimeout, DefaultHalfCloseTimeout)
}

func (l *Limits) connectTimeout() time.Duration {
	return orDefault(l.ConnectTimeout, DefaultConnectTimeout)
}

func (p *Proxy) dial() (net.Conn, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), p.dialTimeout())
	defer cancel()
	var c net.Conn
	var err error
	if p.DialUpstream != nil {
		c, err = p.DialUpstream(ctx)
	} else {
		d := net.Dialer{KeepAlive: -1} // the broker's MQTT keep-alive watches the session
		c, err = d.DialContext(ctx, "tcp", p.Upstream)
	}
	p.dialed(start, err)
	return c, err
}

// dialed records how a dial that began at start ended, for metrics and
// Health.
func (p *Proxy) dialed(start time.Time, err error) {
	p.Metrics.dialed(time.Since(start), err)
	p.dials.record(err)
}

// dialRelay connects to the broker with a socket of the relay's own (see
// watchers.dialRelay), sends first, calls through, and starts relaying,
// unless the session was aborted meanwhile.
func (p *Proxy) dialRelay(ws *watchers, s *session, first []byte, through func(), done func(fromClient, toClient int64)) error {
	start := time.Now()
	deadline := start.Add(p.dialTimeout())
	addrs, err := p.upstreamAddrs(deadline)
	var r *relay
	if err == nil {
		r, err = ws.dialRelay(addrs, first, deadline, p.halfCloseTimeout(), done)
	}
	p.dialed(start, err)
	if err != nil {
		return err
	}
	through()
	// Under p.mu, so that abort either finds the relay or has marked the
	// session first; a socket must never close while it is in the epoll
	// set without the relay knowing. Close aborts every session it finds,
	// and eviction marks it too, so s.aborted covers them; a Shutdown
	// under way lets s go on. The client's descriptor is taken only here:
	// once the session was aborted, its number may be another socket's.
	p.mu.Lock()
	defer p.mu.Unlock()
	cfd, ok := int32(-1), false
	if !s.aborted {
		cfd, ok = socketOf(s.client)
	}
	if !ok {
		r.cancel()
		return errSessionEnded
	}
	r.setClient(cfd)
	if err := r.start(); err != nil {
		return err
	}
	s.relay = r
	return nil
}

// upstreamAddrs resolves Upstream as the net package's dialer does, at
// every dial (a broker behind a DNS name may move): an IP address as it
// is, a name through the resolver, a service name to its port.
func (p *Proxy) upstreamAddrs(deadline time.Time) ([]netip.AddrPort, error) {
	host, service, err := net.SplitHostPort(p.Upstream)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", p.Upstream, err)
	}
	port, err := strconv.ParseUint(service, 10, 16)
	addr, addrErr := netip.ParseAddr(host)
	if err == nil && addrErr == nil {
		return []netip.AddrPort{netip.AddrPortFrom(addr, uint16(port))}, nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err != nil {
		n, err := net.DefaultResolver.LookupPort(ctx, "tcp", service)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: %w", p.Upstream, err)
		}
		port = uint64(n)
	}
	var addrs []netip.Addr
	if addrErr == nil {
		addrs = []netip.Addr{addr}
	} else if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, fmt.Errorf("upstream %q: %w", p.Upstream, err)
	}
	out := make([]netip.AddrPort, len(addrs))
	for i, a := range addrs {
		out[i] = netip.AddrPortFrom(a.Unmap(), uint16(port))
	}
	return out, nil
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
