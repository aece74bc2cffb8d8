package proxy

import (
	"container/list"
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/filter"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// session is one client connection, from accept to close. Its fields but
// listener are guarded by Proxy.mu where they are written after admit.
type session struct {
	client   net.Conn // for a WebSocket, its TCP connection until the upgrade (see Proxy.upgraded); nil once joined
	listener string
	policy   *policy
	connect  *pendingConnect // until the CONNECT is decided; set to nil under Proxy.mu
	pending  *list.Element   // in Proxy.pending until the CONNECT is decided
	link     engine.Link     // set once the connection is handed to the engine, which then owns client and upstream
	version  byte            // the client's protocol version, set with link
	// conn is set once the CONNECT is accepted, before the broker is
	// dialed: from then on the session is listed and may be ended by
	// EndSessions and the revocation list.
	conn    *openConn
	aborted bool // terminate or eviction has begun; no link may start after it
	// server is the pool's server the link holds, until it ends; nil
	// for a broker of no pool.
	server *upstream.Backend[ServerSettings]
	// endReason is why terminate ended the session, for its closing line
	// and its refusal; empty for Close, eviction and a session that ended
	// by itself.
	endReason EndReason
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
// so that a socket of the epoll engine can wait for the rest of its
// CONNECT without one.
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
// evicted or terminated. Proxy.mu is held.
func (s *session) stopVerifyLocked() {
	if pc := s.connect; pc != nil && pc.stopVerify != nil {
		pc.stopVerify()
	}
}

// hold counts n more bytes of the CONNECT's buffer (holdConnectBytes).
func (pc *pendingConnect) hold(n int) bool { return pc.p.holdConnectBytes(pc.s, n) }

// Resume goes on with the CONNECT once a socket may have more.
func (pc *pendingConnect) Resume() { pc.p.serveConnect(pc.s) }

// terminate ends s from outside its own goroutine, for reason (Close
// gives none): its link, once it has one, as an MQTT 5 server ends a
// session, with a DISCONNECT of reason's code between two whole packets
// to a client whose session is framed, then the close (see
// engine.Link.End), and at once for the others; else its client's
// connection, which makes serveConn give up. Closing happens outside
// Proxy.mu: a WebSocket close frame may take a while, and accepting must
// not wait for it. It reports false when s was being ended already, whose
// first reason stays. An accepted session's expiry is disarmed and its
// re-authentication under way, if any, ended at once: the client may take
// HalfCloseTimeout to close, and no new token is accepted meanwhile.
func (p *Proxy) terminate(s *session, reason EndReason) bool {
	p.mu.Lock()
	first := !s.aborted
	s.aborted = true
	if first {
		s.endReason = reason
	}
	s.stopVerifyLocked()
	link, client, version, conn := s.link, s.client, s.version, s.conn
	p.mu.Unlock()
	if conn != nil {
		conn.stop()
	}
	if link != nil {
		link.End(filter.Disconnect(version, reason.code()))
		return first
	}
	engine.CloseNow(client)
	return first
}

// identified records that s's CONNECT was accepted as conn says: the
// session is listed, and may be ended by reason, from now on.
func (p *Proxy) identified(s *session, conn *openConn) {
	p.mu.Lock()
	s.conn = conn
	p.mu.Unlock()
}

// isAborted reports whether s is being ended from outside.
func (p *Proxy) isAborted(s *session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return s.aborted
}

// endedFor is why s was ended from outside: its reason, or "" (Close).
func (p *Proxy) endedFor(s *session) EndReason {
	p.mu.Lock()
	defer p.mu.Unlock()
	return s.endReason
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
	for _, c := range evicted {
		engine.CloseNow(c)
	}
	switch {
	case !ok && kind == "":
		c.Close()
		return nil, ErrProxyClosed
	case !ok:
		log := newConnLog(p.logger(), zap.String("listener", name), zap.String("remote", c.RemoteAddr().String()))
		p.refuse(nil, c, refusedAtAccept(kind), log)
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
	engine.CloseNow(c)
	p.releaseUnserved(s)
	return false
}

// releaseUnserved releases s, admitted with a WebSocket's TCP connection
// and never served: its upgrade failed or it was ended before Serve took
// it. An eviction among those is refused as one of a served connection
// is: logged and counted.
func (p *Proxy) releaseUnserved(s *session) {
	if !s.evicted.Load() {
		p.release(s)
		return
	}
	p.mu.Lock()
	c := s.client
	p.mu.Unlock()
	p.refuse(s, c, evicted(s.evictedBy), newConnLog(p.logger(), zap.String("listener", s.listener), zap.String("remote", c.RemoteAddr().String())))
}

// admit registers a newly accepted session if the limits allow it. It
// returns the kind of limit that refused it, or ok; "" and !ok when the
// proxy is closing. Over MaxPendingConnects, the oldest pending session is
// evicted instead of refusing the new one; a TLS session holds
// configs.PendingTLSRecordBytes from now on, which may evict others (see
// holdConnectBytes). The connections evicted are returned, for the caller
// to close once p.mu is released.
func (p *Proxy) admit(s *session) (kind string, ok bool, evicted []net.Conn) {
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
		evicted = append(evicted, p.evictLocked(p.pending.Front().Value.(*session), limitPending))
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
	if terminatesTLS(s.client) {
		evicted = append(evicted, p.holdLocked(s, configs.PendingTLSRecordBytes)...)
	}
	return "", true, evicted
}

// terminatesTLS reports whether the proxy speaks TLS with c's client, and
// so whether crypto/tls buffers c's records.
func terminatesTLS(c net.Conn) bool {
	for layer := range transport.Layers(c) {
		if _, ok := layer.(*tls.Conn); ok {
			return true
		}
	}
	return false
}

// evictLocked ends s, a pending session, to keep within the limit kind
// of pending connections, and returns its connection, for the caller to
// close with engine.CloseNow once p.mu is released. p.mu is held.
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
	// on to the broker.
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
	var evicted []net.Conn
	defer func() {
		for _, c := range evicted {
			engine.CloseNow(c)
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock() // runs first: the closes come after it
	if s.aborted || s.connect == nil {
		return false
	}
	evicted = p.holdLocked(s, n)
	return !s.aborted
}

// holdLocked counts n more bytes held by s, pending, and evicts the
// sessions that have held bytes longest while the total is over the
// budget, s too if it comes to that. It returns their connections, for
// the caller to close once p.mu is released. p.mu is held.
func (p *Proxy) holdLocked(s *session, n int) (evicted []net.Conn) {
	pc := s.connect
	if pc.holding == nil {
		pc.holding = p.holding.PushBack(s)
	}
	pc.charged += n
	p.heldBytes += n
	for budget := s.policy.limits.maxPendingConnectBytes(); p.heldBytes > budget; {
		evicted = append(evicted, p.evictLocked(p.holding.Front().Value.(*session), limitPendingBytes))
	}
	return evicted
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
	p.leaveServerLocked(s)
	delete(p.sessions, s)
	p.perListener[s.listener]--
	p.mu.Unlock()
	p.Metrics.connClosed(s.listener)
	p.wg.Done()
}

// wsAdmitter admits a WebSocketListener's TCP connections as the proxy's
// TCP listeners' are admitted, before the upgrade is read (see accepted).
type wsAdmitter struct {
	p        *Proxy
	listener string
}

func (a wsAdmitter) Admit(c net.Conn) (transport.Admission, bool) {
	s, _ := a.p.accepted(c, a.listener)
	if s == nil {
		return nil, false
	}
	return &wsAdmission{p: a.p, s: s}, true
}

// wsAdmission is a WebSocket connection's session from its TCP accept on.
type wsAdmission struct {
	p *Proxy
	s *session
}

// Release frees the session of a connection that ended before its
// upgrade reached Serve.
func (a *wsAdmission) Release() { a.p.releaseUnserved(a.s) }
