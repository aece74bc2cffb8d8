package proxy

import (
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
)

// revocationWatch is the revocation list the proxy holds its sessions to,
// and the goroutine that ends the sessions each new version revokes.
type revocationWatch struct {
	mu      sync.Mutex // makes WatchRevocation and stopWatching one at a time; guards the fields but list
	stopped bool       // Close or Shutdown has stopped watching for good
	cancel  func()     // ends the subscription to the list watched
	done    chan struct{}

	list atomic.Pointer[revocation.List] // the list watched; nil when none
}

// WatchRevocation holds the proxy's sessions to list from now on: when a
// refresh loads a new version of it, every session whose token it revokes
// (revocation.List.Matches, by jti, sub, the CONNECT's client identifier,
// or issued_before) is ended with reason revoked, and an MQTT 5 client
// whose session is framed gets DISCONNECT 0x87 (not authorized) first, as
// EndSessions does. The sessions connected already are checked at once
// when list has a version loaded, and so is each session accepted from
// now on, once its token is verified: a version loaded while the token
// was checked is not missed. Clients that a certificate authenticator
// accepted carry no token and are not checked.
//
// A list that cannot be refreshed ends nothing: its last good version
// stays the one sessions are held to, whatever on_unavailable says of new
// connections. Calling it again with another list (a reload that changed
// the revocation section) watches that one instead; nil watches none. One
// goroutine watches, until Close or the end of Shutdown; the caller keeps
// list open meanwhile, or closes it, which ends the watching too.
func (p *Proxy) WatchRevocation(list *revocation.List) {
	w := &p.revocations
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || w.list.Load() == list {
		return
	}
	w.stopLocked()
	w.list.Store(list)
	if list == nil {
		return
	}
	versions, cancel := list.Subscribe()
	done := make(chan struct{})
	w.cancel, w.done = cancel, done
	go func() {
		defer close(done)
		// Subscribed first: a version loaded from now on is announced, and
		// one loaded before (a file is read as its list is built) is
		// checked here.
		if v := list.Status().Version; v > 0 {
			p.endRevoked(list, v)
		}
		for v := range versions {
			p.endRevoked(list, v)
		}
	}()
}

// stopLocked stops watching the list watched, if any, and waits for its
// goroutine. w.mu is held.
func (w *revocationWatch) stopLocked() {
	if w.cancel != nil {
		w.cancel()
		<-w.done
		w.cancel, w.done = nil, nil
	}
	w.list.Store(nil)
}

// stopWatching stops watching for good: Close and Shutdown call it.
func (p *Proxy) stopWatching() {
	w := &p.revocations
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.stopLocked()
}

// endRevoked ends the sessions that list, just loaded at version, revokes
// (or a later version, loaded meanwhile). The tokens are
// looked up outside Proxy.mu, so that accepting never waits for a scan
// of many sessions; a session accepted after the scan took its sessions
// checks itself (revokedAtAccept).
func (p *Proxy) endRevoked(list *revocation.List, version uint64) {
	start := time.Now()
	type candidate struct {
		s     *session
		token revocation.Token
	}
	p.mu.Lock()
	candidates := make([]candidate, 0, len(p.sessions))
	for s := range p.sessions {
		if s.conn == nil || s.aborted {
			continue
		}
		if token, revocable := s.conn.revocationToken(); revocable {
			candidates = append(candidates, candidate{s, token})
		}
	}
	p.mu.Unlock()
	var revoked []*session
	for _, c := range candidates {
		if _, ok := list.Matches(c.token); ok {
			revoked = append(revoked, c.s)
		}
	}
	n := p.endSessions(revoked, EndedRevoked)
	p.logger().Info("revocation list checked against the sessions",
		zap.Uint64("version", version),
		zap.Int("sessions", len(candidates)),
		zap.Int("ended", n),
		zap.Duration("duration", time.Since(start)))
}

// revokedAtAccept reports whether the list watched revokes the session
// whose CONNECT was just accepted as conn, which the sessions now include,
// or whose re-authentication's token conn now holds: a version loaded
// after the token was verified but before the scan of that version took
// the sessions would otherwise miss it.
func (p *Proxy) revokedAtAccept(conn *openConn) bool {
	list := p.revocations.list.Load()
	if list == nil {
		return false
	}
	token, revocable := conn.revocationToken()
	if !revocable {
		return false
	}
	_, revoked := list.Matches(token)
	return revoked
}
