package filter

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	paho "github.com/eclipse/paho.golang/packets"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// Reauth is the outcome of a re-authentication, which the
// Config.Reauthenticate hook hands its answer function.
type Reauth struct {
	// Err, when not nil, refuses the token (an *authn.RefuseError, say):
	// the session ends with DISCONNECT 0x87 (not authorized)
	// [MQTT-4.12.1-2], and the *End's Err wraps ErrReauthRefused and Err.
	Err error
	// Policy, on success, replaces the session's policy from the next
	// packet the client direction judges on, even within the read under
	// way; nil keeps the session's policy.
	Policy *acl.Policy
}

// ErrReauthRefused is wrapped by the Err of the *End that closes a session
// whose re-authentication was refused.
var ErrReauthRefused = errors.New("re-authentication refused")

// Link is what a Session needs of its engine for the answers that come
// later than the Filter call that asked for them: the outcome of a
// re-authentication, which waits for the token to be verified. Its methods
// are called from any goroutine, the one that answers, or the client
// direction's during a Filter call; they must neither block nor wait for a
// Filter call to return.
type Link interface {
	// ToClient writes b, whole packets, to the client, between two whole
	// packets of what it gets otherwise: after the outputs of the Filter
	// calls that returned before ToClient was called, before those of the
	// calls that return after. b is the engine's from the call on.
	ToClient(b []byte)
	// End ends the link as an *End from Filter does: what the client was
	// to get before it, then e.ToClient, then both sockets closed. The
	// Filter calls under way, and any made after, return e as their
	// error; the engine ends the link once, at the first of End and those
	// errors.
	End(e *End)
}

// methodAuth is the state of a session whose client authenticated under
// an Authentication Method: the proxy answers its AUTH packets.
type methodAuth struct {
	method string
	// success is the AUTH that ends a re-authentication well, with the
	// method [MQTT-4.12.0-5].
	success        []byte
	reauthenticate func(token []byte, answer func(Reauth))
	link           Link
	// pending says a re-authentication awaits its answer: set by the
	// client direction, cleared by the answer.
	pending atomic.Bool
	// ended is the *End of a session over by an answer that came
	// between Filter calls, or by a Config that cannot be served.
	ended atomic.Pointer[End]
	// released is set by Release: an answer after it is dropped.
	released atomic.Bool
}

// newMethodAuth is the state of a session authenticated under cfg's
// method.
func newMethodAuth(cfg Config, version byte) *methodAuth {
	m := &methodAuth{method: cfg.AuthMethod, reauthenticate: cfg.Reauthenticate, link: cfg.Link}
	success := packets.Auth{ReasonCode: packets.Success, Properties: &paho.Properties{AuthMethod: cfg.AuthMethod}}
	var err error
	if m.success, err = success.Append(nil, version); err != nil {
		// Not the method of a decoded CONNECT: no answer can carry it.
		m.ended.Store(&End{ToClient: Disconnect(version, packets.ImplementationSpecificError),
			Reason: reasonLabel(packets.ImplementationSpecificError), Code: packets.ImplementationSpecificError,
			Err: fmt.Errorf("Config.AuthMethod %.64q: %w", cfg.AuthMethod, err)})
	}
	return m
}

// auth handles an AUTH from the client of a session authenticated under a
// method: a re-authentication (reason 0x19, the session's method, after
// the CONNACK, none under way) goes to the hook, and its answer to the
// client, at once when the hook gave it before returning, else later
// through the Link; anything else is a protocol error. The AUTH never
// reaches the broker.
func (s *Session) auth(fr packets.Frame, back []byte) ([]byte, error) {
	var a packets.Auth
	if err := a.Decode(s.version, fr); err != nil {
		return back, s.refuse(err)
	}
	var method string
	var token []byte
	if a.Properties != nil {
		method, token = a.Properties.AuthMethod, bytes.Clone(a.Properties.AuthData)
	}
	m := s.methodAuth
	switch {
	case !s.connack.Load():
		return back, s.refuse(protocolError(s.version, "AUTH before the CONNACK [MQTT-4.12.1-1]"))
	case a.ReasonCode != packets.ReAuthenticate:
		// The proxy never asks to continue (its method takes one step), and
		// success is the server's to say.
		return back, s.refuse(protocolError(s.version, "AUTH %v from the client, which only starts a re-authentication, with 0x19 (§4.12.1)", a.ReasonCode))
	case method != m.method:
		return back, s.refuse(protocolError(s.version, "AUTH under the Authentication Method %.64q, the session's is %.64q [MQTT-4.12.1-1]", method, m.method))
	case !m.pending.CompareAndSwap(false, true):
		return back, s.refuse(protocolError(s.version, "AUTH while a re-authentication is under way"))
	case m.reauthenticate == nil || m.link == nil:
		return back, s.reauthRefused(errors.New("this proxy does not serve re-authentication"))
	}
	at := &attempt{s: s, calling: true}
	m.reauthenticate(token, at.answer)
	at.mu.Lock()
	at.calling = false
	r, answered := at.result, at.done
	at.mu.Unlock()
	switch {
	case !answered:
		return back, nil
	case r.Err != nil:
		return back, s.reauthRefused(r.Err)
	}
	s.reauthenticated(r)
	return append(back, m.success...), nil
}

// attempt is one re-authentication, awaiting its answer.
type attempt struct {
	s       *Session
	mu      sync.Mutex
	calling bool   // the hook has not returned yet: the answer goes back through its Filter call
	done    bool   // answered: a second answer is ignored
	result  Reauth // the answer given while calling
}

// answer is the hook's answer function.
func (at *attempt) answer(r Reauth) {
	at.mu.Lock()
	if at.done {
		at.mu.Unlock()
		return
	}
	at.done = true
	if at.calling {
		at.result = r
		at.mu.Unlock()
		return
	}
	at.mu.Unlock()
	at.s.answerLater(r)
}

// answerLater delivers an answer that came after the Filter call that
// asked for it, through the Link.
func (s *Session) answerLater(r Reauth) {
	m := s.methodAuth
	if m.released.Load() {
		return
	}
	if r.Err != nil {
		end := reauthEnd(s.version, r.Err)
		m.ended.Store(end)
		m.link.End(end)
		return
	}
	s.reauthenticated(r)
	m.link.ToClient(m.success)
}

// reauthenticated takes the new policy, before the client can learn of
// its success, and lets the client re-authenticate again.
func (s *Session) reauthenticated(r Reauth) {
	if r.Policy != nil {
		s.policy.Store(r.Policy)
	}
	s.methodAuth.pending.Store(false)
}

// reauthRefused ends the session, in the client direction's call, for a
// refused re-authentication.
func (s *Session) reauthRefused(cause error) *End {
	s.framers[FromClient].Release() // let go of the caller's bytes
	return reauthEnd(s.version, cause)
}

// reauthEnd is the end of a session whose re-authentication was refused
// for cause.
func reauthEnd(version byte, cause error) *End {
	return &End{ToClient: Disconnect(version, packets.NotAuthorized), Reason: reasonLabel(packets.NotAuthorized),
		Code: packets.NotAuthorized, Err: fmt.Errorf("%w: %w", ErrReauthRefused, cause)}
}
