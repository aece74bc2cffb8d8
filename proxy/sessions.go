package proxy

import (
	"net"
	"time"
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
	// revoked after it connected (a new revocation list).
	EndedRevoked EndReason = "revoked"
)
