package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
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
		remote:    remote,
		clientID:  pk.ClientID,
		username:  loggedUsername(pk.Username),
		version:   pk.ProtocolVersion,
		bridge:    pk.Bridge,
		start:     start,
		connected: toUnixNano(time.Now()),
		rawLen:    int64(len(pk.Raw) + len(ahead)),
	}
	conn.setToken(a.id)
	o := engine.Options{Done: func(fromClient, toClient int64) { p.ended(s, conn, fromClient, toClient) }}
	first := append(a.upstreamConnect, ahead...)
	// The framing is decided before the session is listed (identified):
	// the sessions API reads rawLen and terminate reads method under
	// Proxy.mu, and neither changes after.
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
	p.identified(s, conn)
	if p.revokedAtAccept(conn) {
		if o.Filter != nil {
			o.Filter.Release()
		}
		return revokedWhileVerified(pk, a.id)
	}
	p.armExpiry(s, conn, a.id, a.acl)
	through := false // the broker has the CONNECT
	err := p.connectUpstream(s, c, bare, &a, first, o, log, func(server *upstream.Backend[ServerSettings]) {
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
			poolField(a.pool),
			serverField(server),
		)
	})
	if err == nil {
		return nil
	}
	if o.Filter != nil {
		o.Filter.Release()
	}
	conn.stop()
	reason := p.endedFor(s) // closed from outside, for that: nothing to answer
	switch {
	case through: // accepted and counted: the client was ended from outside just after
		if reason != "" {
			log.Info("connection closed", zap.String("reason", string(reason)), zap.Duration("duration", time.Since(start)))
		}
		return &refusal{quiet: true}
	case reason != "":
		return endedWhileConnecting(pk, a.id, string(reason), err)
	case errors.Is(err, errSessionEnded):
		return endedWhileConnecting(pk, a.id, reasonProxyClosed, err)
	}
	return upstreamUnavailable(pk, a.id, err)
}

// openConn is what a proxied connection keeps until it closes: what its
// closing line says, and what the sessions API lists. Only its token's
// fields change, at a re-authentication (setToken).
type openConn struct {
	remote, clientID, username string
	subject, tokenID           string // the token's sub and jti
	version                    byte
	bridge                     bool
	revocable                  bool      // a token's, which the revocation list is checked against
	start                      time.Time // accept
	// When the CONNECT was accepted, and the token's exp and iat, in Unix
	// nanoseconds (see toUnixNano): a third of a time.Time's room.
	connected, expires, issued int64
	rawLen                     int64 // the CONNECT and what came with it
	// method re-authenticates a client that presented its token under an
	// Authentication Method; nil for the others.
	method *methodSession

	// expiryMu guards expiry, expiryGen and closed, and the token's
	// fields (subject to issued), which a re-authentication replaces.
	expiryMu  sync.Mutex
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

// setToken records the token of id as the session's: the one it was
// accepted with, then each a re-authentication accepts.
func (conn *openConn) setToken(id authn.Identity) {
	token, revocable := id.RevocationToken(conn.clientID)
	conn.expiryMu.Lock()
	defer conn.expiryMu.Unlock()
	conn.subject, conn.tokenID, conn.revocable = token.Subject, token.ID, revocable
	conn.expires, conn.issued = toUnixNano(id.Expiry), toUnixNano(token.IssuedAt)
}

// revocationToken is what the revocation list checks of the session, and
// whether it has a token to check (see authn.Identity.RevocationToken).
func (conn *openConn) revocationToken() (revocation.Token, bool) {
	conn.expiryMu.Lock()
	defer conn.expiryMu.Unlock()
	return revocation.Token{ID: conn.tokenID, Subject: conn.subject, ClientID: conn.clientID, IssuedAt: unixNano(conn.issued)}, conn.revocable
}

// toUnixNano is t in Unix nanoseconds, or 0 for the zero time (a token
// without the claim), as unixNano reads it back.
func toUnixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
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
		if r := p.endedFor(s); r != "" {
			reason = zap.String("reason", string(r))
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
