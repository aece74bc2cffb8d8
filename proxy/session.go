package proxy

import (
	"container/list"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// session is one client connection, from accept to close. Its fields but
// policy and listener are guarded by Proxy.mu.
type session struct {
	client   net.Conn // for a WebSocket, its TCP connection until the upgrade (see Proxy.upgraded); nil once joined
	listener string
	policy   *policy
	pending  *list.Element // in Proxy.pending until the CONNECT is decided
	link     engine.Link   // set once the connection is handed to the engine, which then owns client and upstream
	aborted  bool          // terminate or eviction has begun; no link may start after it
	evicted  atomic.Bool   // closed to make room for newer pending connects (aborted too)
}

// terminate ends s at once from outside its own goroutine (Close, token
// expiry): its link, once it has one, else its client's connection, which
// makes serveConn give up. Closing happens outside Proxy.mu: a WebSocket
// close frame may take a while, and accepting must not wait for it.
func (p *Proxy) terminate(s *session) {
	p.mu.Lock()
	s.aborted = true
	link, client := s.link, s.client
	p.mu.Unlock()
	if link != nil {
		link.Abort()
		return
	}
	engine.CloseNow(client)
}

// accepted admits c, just accepted on the listener called name, under
// the limits: it returns its session, or nil when a limit refused c, which
// is then closed; ErrProxyClosed when the proxy is closing.
func (p *Proxy) accepted(c net.Conn, name string) (*session, error) {
	p.Metrics.connAccepted(name)
	s := &session{client: c, listener: name, policy: p.currentPolicy()}
	switch kind, ok := p.admit(s); {
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
	c.Close()
	p.release(s)
	return false
}

// admit registers a newly accepted session if the limits allow it. It
// returns the kind of limit that refused it, or ok; "" and !ok when the
// proxy is closing. Over MaxPendingConnects, the oldest pending session is
// evicted instead of refusing the new one.
func (p *Proxy) admit(s *session) (kind string, ok bool) {
	l := &s.policy.limits
	if !s.policy.ipRates.allow(hostOf(s.client.RemoteAddr()), time.Now()) {
		return limitRate, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return "", false
	case l.MaxConnections > 0 && len(p.sessions) >= l.MaxConnections:
		return limitMaxConnections, false
	case l.MaxListenerConnections[s.listener] > 0 && p.perListener[s.listener] >= l.MaxListenerConnections[s.listener]:
		return limitListenerConnections, false
	}
	if l.MaxPendingConnects > 0 && p.pending.Len() >= l.MaxPendingConnects {
		oldest := p.pending.Remove(p.pending.Front()).(*session)
		oldest.pending = nil
		oldest.evicted.Store(true)
		// Aborted too: a session whose CONNECT is being verified must not
		// go on to the broker, nor hand on a descriptor closed here, whose
		// number the next accepted socket may get.
		oldest.aborted = true
		engine.CloseNow(oldest.client) // under p.mu: it must not wait
		p.Metrics.limitHit(limitPending)
	}
	if p.sessions == nil {
		p.sessions = make(map[*session]struct{})
		p.perListener = make(map[string]int)
	}
	p.sessions[s] = struct{}{}
	p.perListener[s.listener]++
	s.pending = p.pending.PushBack(s)
	p.wg.Add(1)
	p.Metrics.connOpened(s.listener)
	return "", true
}

// decided takes s off the pending list: its CONNECT has been answered.
// It reports false when s was ended from outside meanwhile (evicted,
// Close), so that nothing more is done for it.
func (p *Proxy) decided(s *session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.pending != nil {
		p.pending.Remove(s.pending)
		s.pending = nil
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
func (a *wsAdmission) Release() { a.p.release(a.s) }
