package proxy

import (
	"net"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
)

// SessionInfo describes one authenticated session, from the accepted
// CONNECT to its end: what the admin API lists.
type SessionInfo struct {
	// ClientID is the client identifier of the client's CONNECT.
	ClientID string
	// Username is the CONNECT's user name as the logs show it: a token
	// carried there is shown as "jwt:" and a digest, never as itself.
	Username string
	// Subject is the token's sub claim; empty when it has none.
	Subject string
	// TokenID is the token's jti claim; empty when it has none.
	TokenID string
	// Listener names the listener the client connected to.
	Listener string
	// Remote is the client's address (host:port) as the logs show it:
	// behind a PROXY protocol header, the address the header gave.
	Remote string
	// ConnectedAt is when the CONNECT was accepted.
	ConnectedAt time.Time
	// ExpiresAt is the token's exp; zero when it has none.
	ExpiresAt time.Time
	// BytesFromClient and BytesToClient are the bytes relayed so far in
	// each direction, the CONNECT included.
	BytesFromClient, BytesToClient int64
}

// SessionFilter selects sessions. Each field that is not empty must equal
// the session's; the zero value selects every session.
type SessionFilter struct {
	ClientID string
	Username string // as SessionInfo.Username shows it
	Subject  string
	Listener string
	// Remote is an address with its port (192.0.2.7:50312, [2001:db8::1]:50312),
	// which selects that one connection, or without (192.0.2.7,
	// 2001:db8::1), which selects every connection from the address.
	Remote string
}

// IsZero reports whether f selects every session.
func (f SessionFilter) IsZero() bool { return f == SessionFilter{} }

// Matches reports whether f selects the session s describes.
func (f SessionFilter) Matches(s SessionInfo) bool {
	return matchField(f.ClientID, s.ClientID) &&
		matchField(f.Username, s.Username) &&
		matchField(f.Subject, s.Subject) &&
		matchField(f.Listener, s.Listener) &&
		f.matchesRemote(s.Remote)
}

func matchField(want, got string) bool { return want == "" || want == got }

// matchesRemote reports whether f.Remote selects a client at remote
// (host:port): the whole address, or its host.
func (f SessionFilter) matchesRemote(remote string) bool {
	if matchField(f.Remote, remote) {
		return true
	}
	host, _, err := net.SplitHostPort(remote)
	return err == nil && host == f.Remote
}

// EndReason says why sessions were ended from outside the session: it is
// the reason in their log lines and metrics.
type EndReason string

const (
	// EndedByAdmin: an operator ended the session (the admin API). An
	// MQTT 5 client gets DISCONNECT 0x98, administrative action.
	EndedByAdmin EndReason = "admin"
	// EndedRevoked: the session's token, subject or client identifier was
	// revoked after it connected (a new revocation list). An MQTT 5
	// client gets DISCONNECT 0x87, not authorized: what its next CONNECT
	// with the token gets too (CONNACK 0x87), and what ends a session
	// whose re-authentication is refused.
	EndedRevoked EndReason = "revoked"
	// EndedTokenExpired: the session's token expired
	// (disconnect_after_expire). An MQTT 5 client gets DISCONNECT 0xA0,
	// maximum connect time.
	EndedTokenExpired EndReason = EndReason(authn.ErrTokenExpired)
	// EndedServerRemoved: a reload removed the pool's server the session
	// was connected to, and the drain timeout passed (UpdateUpstreams).
	// An MQTT 5 client gets DISCONNECT 0x9C, use another server: the
	// proxy goes on, and its next CONNECT is routed to a server that
	// stays.
	EndedServerRemoved EndReason = "upstream_server_removed"
)

// endReasons are the reasons the metrics export at zero from the start.
var endReasons = []EndReason{EndedByAdmin, EndedRevoked, EndedTokenExpired, EndedServerRemoved}

// code is the reason code of the DISCONNECT an MQTT 5 client gets when its
// session is ended for r, where its session's stream has a place for one
// (see engine.Link.End).
func (r EndReason) code() packets.ReasonCode {
	switch r {
	case EndedByAdmin:
		return packets.AdministrativeAction
	case EndedRevoked:
		return packets.NotAuthorized
	case EndedTokenExpired:
		return packets.MaximumConnectTime
	case EndedServerRemoved:
		return packets.UseAnotherServer
	}
	return packets.ServerShuttingDown // Close, which has no reason of its own
}

// Sessions lists the authenticated sessions f selects: those whose CONNECT
// was accepted, relayed or still being connected to the broker, and not
// ended. Their byte counts are read as the call runs.
func (p *Proxy) Sessions(f SessionFilter) []SessionInfo {
	type listed struct {
		info   SessionInfo
		link   engine.Link // nil until the broker has the CONNECT
		rawLen int64
	}
	var found []listed
	p.mu.Lock()
	for s := range p.sessions {
		if s.conn == nil || s.aborted {
			continue
		}
		if info := s.info(); f.Matches(info) {
			found = append(found, listed{info, s.link, s.conn.rawLen})
		}
	}
	p.mu.Unlock()
	out := make([]SessionInfo, len(found))
	for i, l := range found {
		out[i] = l.info
		if l.link != nil { // outside p.mu: the engine takes its own locks
			from, to := l.link.Bytes()
			out[i].BytesFromClient, out[i].BytesToClient = l.rawLen+from, to
		}
	}
	return out
}

// EndSessions ends every authenticated session f selects, as Sessions
// lists them, for reason: an MQTT 5 client whose session is framed gets
// what was on its way to it, then a DISCONNECT with reason's code, and
// its connection closes once it has closed its own (within
// HalfCloseTimeout); any other connection closes at once. A session still
// being connected to the broker is closed before the broker gets its
// CONNECT. Each session's closing line carries the reason. It returns how
// many sessions it ended, and does not wait for them to close.
func (p *Proxy) EndSessions(f SessionFilter, reason EndReason) int {
	var matched []*session
	p.mu.Lock()
	for s := range p.sessions {
		if s.conn != nil && !s.aborted && f.Matches(s.info()) {
			matched = append(matched, s)
		}
	}
	p.mu.Unlock()
	return p.endSessions(matched, reason)
}

// endSessions ends each of sessions for reason, and returns how many it
// ended: those that had not been ended meanwhile.
func (p *Proxy) endSessions(sessions []*session, reason EndReason) int {
	n := 0
	for _, s := range sessions {
		if p.terminate(s, reason) {
			n++
		}
	}
	p.Metrics.sessionsEnded(reason, n)
	return n
}

// info describes s, whose CONNECT was accepted (s.conn set). Proxy.mu is
// held.
func (s *session) info() SessionInfo {
	c := s.conn
	c.expiryMu.Lock() // a re-authentication replaces the token
	defer c.expiryMu.Unlock()
	return SessionInfo{
		ClientID: c.clientID, Username: c.username, Subject: c.subject, TokenID: c.tokenID,
		Listener: s.listener, Remote: c.remote, ConnectedAt: unixNano(c.connected), ExpiresAt: unixNano(c.expires),
	}
}
