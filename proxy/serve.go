package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// serveConn starts serving one client connection: the transport's
// handshake under the connect deadline, then its CONNECT (serveConnect).
func (p *Proxy) serveConn(s *session) {
	c, pc := s.client, s.connect
	pc.conn = c
	pc.start = time.Now()
	pc.remote = c.RemoteAddr().String() // the client's, also behind a PROXY header
	pc.log = newConnLog(p.logger(), zap.String("listener", s.listener), zap.String("remote", pc.remote))
	deadline := pc.start.Add(s.policy.limits.connectTimeout())
	c.SetReadDeadline(deadline)
	if r := handshake(c, pc.start, deadline); r != nil {
		p.refuse(s, c, r, pc.log)
		return
	}
	p.serveConnect(s)
}

// serveConnect reads the CONNECT, decides on it (decide), then either
// refuses the client (refuse, the one way out for a refused connection)
// or connects it to the broker and hands both connections to the engine
// (handOver), which owns them from then on. When a socket of the epoll
// engine has sent only part of its CONNECT, it returns, and runs again,
// on a goroutine of its own, once more has arrived: no goroutine waits
// meanwhile (see connectReader).
func (p *Proxy) serveConnect(s *session) {
	pc := s.connect
	pk, past, err := pc.read()
	if errors.Is(err, errWaiting) {
		return
	}
	c, start, remote, log := pc.conn, pc.start, pc.remote, pc.log // decide lets go of pc
	var a accepted
	var r *refusal
	if err != nil {
		r = unreadable(err, start, log)
	} else {
		a, r = p.decide(s, c, pk, past, start, log)
	}
	if r == nil {
		r = p.handOver(s, c, a, start, remote, log)
	}
	if r != nil {
		p.refuse(s, c, r, log)
	}
}

// handOver dials the broker for a, sends it the CONNECT and what the client
// sent after it, and hands client and broker to the engine; from then on
// the connection outlives serveConn, and ended does what refuse would. A
// broker that cannot be had is a refusal. A session with topic rules is
// framed: its filter judges what the client sent after the CONNECT too.
func (p *Proxy) handOver(s *session, c net.Conn, a accepted, start time.Time, remote string, log *connLog) *refusal {
	pk := a.connect
	c.SetReadDeadline(time.Time{})
	bare, ahead := transport.Detach(c)      // after a PROXY header: the socket, and what was read past the CONNECT
	ahead = append(a.pastConnect, ahead...) // one of them is empty: a wrapper or the bare socket read ahead
	// What the closing line needs, kept in one small struct for the
	// connection's life: zap fields would take five times the room, and
	// a zap.Logger.With clone holds a 1 KB encoder buffer.
	conn := &openConn{
		remote:   remote,
		clientID: pk.ClientID,
		username: loggedUsername(pk.Username),
		version:  pk.ProtocolVersion,
		bridge:   pk.Bridge,
		start:    start,
		rawLen:   int64(len(pk.Raw) + len(ahead)),
	}
	o := engine.Options{Done: func(fromClient, toClient int64) { p.ended(s, conn, fromClient, toClient) }}
	first := append(a.upstreamConnect, ahead...)
	if a.id.AuthMethod != "" {
		// The proxy answers the client's AUTH packets: the session is
		// framed, rules or not.
		conn.method = p.newMethodSession(s, &a, conn)
	}
	if a.acl != nil || conn.method != nil {
		o.Filter = p.newFilter(s.policy, pk, a.acl, conn, s.listener)
		o.FromClient, first = ahead, a.upstreamConnect
		conn.rawLen = int64(len(pk.Raw)) // the engine counts what it forwards of ahead
	}
	p.armExpiry(s, conn, a.id, a.acl)
	through := false // the broker has the CONNECT
	err := p.connectUpstream(s, bare, a.header, first, o, pk.ProtocolVersion, func() {
		through = true
		p.Metrics.outcome("accepted", "")
		log.Info("authentication accepted",
			zap.String("outcome", "accepted"),
			zap.String("authenticator", a.id.Authenticator),
			zap.String("sub", a.id.Subject),
			expiryField(a.id.Expiry),
			bridgeField(pk.Bridge),
			framedField(a.acl != nil),
			methodField(a.id.AuthMethod),
		)
	})
	if err == nil {
		return nil
	}
	if o.Filter != nil {
		o.Filter.Release()
	}
	conn.stop()
	ended := errors.Is(err, errSessionEnded) // closed from outside: nothing to answer
	switch {
	case through: // accepted and counted: the client was closed from outside meanwhile
		return &refusal{quiet: true}
	case conn.expired.Load():
		return endedWhileConnecting(pk, a.id, string(authn.ErrTokenExpired), err)
	case ended:
		return endedWhileConnecting(pk, a.id, reasonProxyClosed, err)
	}
	return upstreamUnavailable(pk, a.id, err)
}

// openConn is what a proxied connection keeps until it closes.
type openConn struct {
	remote, clientID, username string
	version                    byte
	bridge                     bool
	start                      time.Time
	rawLen                     int64 // the CONNECT and what came with it
	// method re-authenticates a client that presented its token under an
	// Authentication Method; nil for the others.
	method *methodSession

	expiryMu  sync.Mutex  // guards expiry, expiryGen and closed
	expiry    *time.Timer // ends the session, or its token's rules, at the token's expiry (armExpiry)
	expiryGen uint32      // counts the timers armed: only the last may fire
	closed    bool        // the session is over: no timer is armed again
	expired   atomic.Bool // the token expired, and the session ends for it
}

// stop disarms the session's expiry and ends a re-authentication under
// way: the session is over.
func (conn *openConn) stop() {
	conn.stopExpiry()
	if conn.method != nil {
		conn.method.close()
	}
}

// ended records the end of a proxied connection, once both directions
// have ended and the engine has closed both sides. It may run on an
// engine's goroutine, which moves other connections' bytes, so it must
// not block: the closing line, when the sampler keeps it, is written on a
// goroutine of its own, since the log's output may stall.
func (p *Proxy) ended(s *session, conn *openConn, fromClient, toClient int64) {
	conn.stop()
	fromClient += conn.rawLen
	p.Metrics.proxied(fromClient, toClient)
	if ce := p.logger().Check(zap.InfoLevel, "connection closed"); ce != nil {
		reason := zap.Skip()
		if conn.expired.Load() {
			reason = zap.String("reason", string(authn.ErrTokenExpired))
		}
		go ce.Write(
			zap.String("listener", s.listener),
			zap.String("remote", conn.remote),
			zap.String("client_id", conn.clientID),
			zap.String("username", conn.username),
			zap.Uint8("protocol_version", conn.version),
			bridgeField(conn.bridge),
			reason,
			zap.Duration("duration", time.Since(conn.start)),
			zap.Int64("bytes_from_client", fromClient),
			zap.Int64("bytes_to_client", toClient),
		)
	}
	p.release(s)
}
