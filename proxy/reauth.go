package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/filter"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// methodSession is the part of an MQTT 5 session whose client presented
// its token under an Authentication Method that re-authenticates it: the
// proxy answers the method for the broker, which never hears of it. Its
// filter (package filter) hands each re-authentication's token to
// reauthenticate and writes the answer; methodSession is also the
// filter's Link to the engine for answers that come after the read that
// asked.
//
// A token is verified on a goroutine of its own, never on the engine's,
// since a JWKS authenticator may have to fetch its keys. Meanwhile the
// client's other packets go on, judged by the rules of the token the
// session holds, as MQTT 5 allows (§4.12.1): that token is still good
// until its exp, when the session ends unless a new one has been accepted
// by then, so nothing is let through that the client was not allowed.
// The filter lets a client have one re-authentication under way at a
// time, so a session has at most one such goroutine, and it lasts at most
// the connect timeout, or until the session ends.
type methodSession struct {
	p        *Proxy
	s        *session
	conn     *openConn
	listener string
	// req is the CONNECT's request, without its token: the client
	// identifier, user name and certificate that bind every new token as
	// they bound the first.
	req authn.Request
	// pool is the pool of Proxy.Upstreams the session was routed to; nil
	// without Upstreams. A new token must route to it too.
	pool *upstream.Pool[ServerSettings]

	mu sync.Mutex // guards the fields below
	// id is what Chain.Reauthenticate needs of the session's identity:
	// its authenticator, method and sub, as the last token gave them.
	id authn.Identity
	// cancel ends the verification under way, if any, when the session
	// ends; closed says it has.
	cancel context.CancelFunc
	closed bool
}

// newMethodSession is the re-authentication side of the session s of a,
// accepted under an Authentication Method.
func (p *Proxy) newMethodSession(s *session, a *accepted, conn *openConn) *methodSession {
	req := a.req
	req.Password, req.AuthData = nil, nil // the CONNECT's bytes: no template reads them
	return &methodSession{p: p, s: s, conn: conn, listener: s.listener, req: req, pool: a.pool,
		id: authn.Identity{Authenticator: a.id.Authenticator, AuthMethod: a.id.AuthMethod, Subject: a.id.Subject}}
}

// reauthenticate is the filter's Config.Reauthenticate: it starts the
// verification of token and returns.
func (m *methodSession) reauthenticate(token []byte, answer func(filter.Reauth)) {
	go m.verify(token, answer)
}

// verify decides on a re-authentication's token with the current
// configuration's verifier: a new token of the session's authenticator,
// method and binding (sub and client identifier), whose claims the
// current routes send to the session's pool. Accepted, the session's
// expiry moves to the new token's, and its rules are compiled from it,
// before the client is answered AUTH 0x00; refused, the session ends with
// DISCONNECT 0x87. Either way one log line and one count say so.
func (m *methodSession) verify(token []byte, answer func(filter.Reauth)) {
	start := time.Now()
	pol := m.p.currentPolicy() // a reload's verifier and rules, as a new CONNECT gets them
	ctx, cancel := context.WithTimeout(context.Background(), pol.limits.connectTimeout())
	defer cancel()
	req := m.req
	req.AuthData = token
	m.mu.Lock()
	first, over := m.id, m.closed
	m.cancel = cancel // the filter lets one verification run at a time
	m.mu.Unlock()

	var id authn.Identity
	var rules *acl.Policy
	r, ok := pol.verifier.(authn.Reauthenticator)
	var err error = errNoReauthentication
	switch {
	case over:
		err = errReauthTooLate
	case ok:
		id, err = r.Reauthenticate(ctx, first, req)
	}
	if err == nil {
		err = m.routedHere(id)
	}
	if err == nil {
		rules, err = pol.authorization.compile(&req, &id)
	}
	if err == nil && !m.p.armExpiry(m.s, m.conn, id, rules) {
		err = errReauthTooLate
	}
	if err == nil {
		m.conn.setToken(id) // listed, and held to the revocation list, from now on
		if m.p.revokedAtAccept(m.conn) {
			err = errRevokedWhileVerified
		}
	}
	if err != nil {
		m.refused(err, time.Since(start))
		answer(filter.Reauth{Err: err})
		return
	}
	m.mu.Lock()
	m.id = authn.Identity{Authenticator: id.Authenticator, AuthMethod: id.AuthMethod, Subject: id.Subject}
	m.mu.Unlock()
	m.p.Metrics.reauthenticated(outcomeReauthenticated, "")
	m.log("re-authentication accepted",
		zap.String("outcome", outcomeReauthenticated),
		zap.String("sub", id.Subject),
		expiryField(id.Expiry),
		zap.Duration("duration", time.Since(start)),
	)
	answer(filter.Reauth{Policy: rules})
}

// routedHere refuses with reason route_changed when the routes of Proxy.Upstreams
// send id, a re-authentication's new identity, to another pool than the
// session's, or to none: the session's broker is another tenant's than
// the token's, and the session cannot move.
func (m *methodSession) routedHere(id authn.Identity) error {
	if m.pool == nil {
		return nil
	}
	pool, err := m.p.Upstreams.Route(m.listener, id.Subject, id.Claims)
	switch {
	case err != nil:
		return fmt.Errorf("%w: the session is on pool %q: %w", reasonRouteChanged, m.pool.Name(), err)
	case pool != m.pool:
		return fmt.Errorf("%w: the token routes to pool %q, the session is on pool %q", reasonRouteChanged, pool.Name(), m.pool.Name())
	}
	return nil
}

// reasonRouteChanged refuses a re-authentication whose token the routes
// send to another pool than the session's, or to none.
const reasonRouteChanged authn.RefuseReason = "route_changed"

// errReauthTooLate refuses a token that was good, but came after its
// session's end: its old token expired meanwhile, or the session was
// ended.
var errReauthTooLate = errors.New("the session ended while its new token was verified")

// errRevokedWhileVerified refuses a token that a version of the
// revocation list loaded while it was verified revokes: the check of that
// version against the sessions saw the session's previous token.
var errRevokedWhileVerified = &authn.RefuseError{Reason: authn.ErrRevoked,
	Err: errors.New("revoked by a revocation list loaded while the token was verified")}

// errNoReauthentication refuses every re-authentication of a proxy whose
// Verifier is no authn.Reauthenticator.
var errNoReauthentication = &authn.RefuseError{Reason: authn.ErrNoAuthenticatorAccepted,
	Err: errors.New("the verifier does not re-authenticate")}

// Outcomes of a re-authentication, in its log line and the
// reauthentications_total metric.
const (
	outcomeReauthenticated = "accepted"
	outcomeReauthRefused   = "refused"
)

// refused logs and counts a refused re-authentication: reason as for a
// refused CONNECT, route_changed for a token routed to another pool, or
// session_ended when the session ended while the token
// was checked.
func (m *methodSession) refused(err error, took time.Duration) {
	reason := string(authn.ReasonOf(err))
	if errors.Is(err, errReauthTooLate) || errors.Is(err, context.Canceled) {
		reason = reasonSessionEnded
	}
	m.p.Metrics.reauthenticated(outcomeReauthRefused, reason)
	m.log("re-authentication refused",
		zap.String("outcome", outcomeReauthRefused),
		zap.String("reason", reason),
		zap.Duration("duration", took),
		zap.Error(err),
	)
}

// reasonSessionEnded is the reason of a re-authentication whose session
// ended (its old token expired, an operator or a drain ended it) before
// its token was decided.
const reasonSessionEnded = "session_ended"

// log writes a re-authentication's line, with who the client is.
func (m *methodSession) log(msg string, fields ...zap.Field) {
	m.p.logger().Info(msg, append([]zap.Field{
		zap.String("listener", m.listener),
		zap.String("remote", m.conn.remote),
		zap.String("client_id", m.conn.clientID),
		zap.String("username", m.conn.username),
	}, fields...)...)
}

// link is the session's engine link; nil before the engine has it.
func (m *methodSession) link() engine.Link {
	m.p.mu.Lock()
	defer m.p.mu.Unlock()
	return m.s.link
}

// ToClient queues b for the client (filter.Link).
func (m *methodSession) ToClient(b []byte) {
	if l := m.link(); l != nil {
		l.Send(b)
	}
}

// End ends the session with e's last words (filter.Link).
func (m *methodSession) End(e *filter.End) {
	if l := m.link(); l != nil {
		l.End(e.ToClient)
	}
}

// close ends a verification under way: the session is over.
func (m *methodSession) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	if m.cancel != nil {
		m.cancel()
	}
}

var _ filter.Link = (*methodSession)(nil)

// armExpiry sets when the session of conn ends for its token id's expiry,
// replacing what was set before: at id.DisconnectAt, with DISCONNECT
// 0xA0 to an MQTT 5 client; or, for an authenticator that lets sessions
// outlive their tokens (disconnect_after_expire: false), at its exp the
// token's rules in rules end, as in EMQX. One runtime timer per
// connection, no goroutine until it fires. It reports false, setting
// nothing, when the session has ended or its token has expired already.
func (p *Proxy) armExpiry(s *session, conn *openConn, id authn.Identity, rules *acl.Policy) bool {
	conn.expiryMu.Lock()
	defer conn.expiryMu.Unlock()
	if conn.closed || conn.expired.Load() {
		return false
	}
	conn.expiryGen++
	gen := conn.expiryGen
	if conn.expiry != nil {
		conn.expiry.Stop()
		conn.expiry = nil
	}
	// A timer that fires once another has replaced it does nothing: Stop
	// cannot take back one already firing.
	current := func(expire bool) bool {
		conn.expiryMu.Lock()
		defer conn.expiryMu.Unlock()
		fire := conn.expiryGen == gen && !conn.closed
		if fire && expire {
			conn.expired.Store(true) // no re-authentication is accepted from now on
		}
		return fire
	}
	switch {
	case !id.DisconnectAt.IsZero():
		// The broker sees the connection close without a DISCONNECT,
		// and publishes the client's will, as for any abnormal end.
		conn.expiry = time.AfterFunc(time.Until(id.DisconnectAt), func() {
			if current(true) && p.terminate(s, EndedTokenExpired) {
				p.Metrics.sessionsEnded(EndedTokenExpired, 1)
			}
		})
	case rules != nil && !rules.Unrestricted() && !id.Expiry.IsZero():
		conn.expiry = time.AfterFunc(time.Until(id.Expiry), func() {
			if current(false) {
				rules.Expire()
			}
		})
	}
	return true
}

// stopExpiry disarms the session's expiry for good: the session is over.
func (conn *openConn) stopExpiry() {
	conn.expiryMu.Lock()
	defer conn.expiryMu.Unlock()
	conn.closed = true
	if conn.expiry != nil {
		conn.expiry.Stop()
	}
}
