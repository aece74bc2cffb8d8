package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// Reasons logged for connections that end before authentication, beside
// the authn.RefuseReason values and the kinds of limit. They are bounded,
// for logs and metrics.
const (
	reasonConnectTimeout      = "connect_timeout"
	reasonClientClosed        = "client_closed"
	reasonReadFailed          = "read_failed"
	reasonNotConnect          = "not_connect"
	reasonMalformed           = "malformed_connect"
	reasonProtocolError       = "protocol_error"
	reasonUnsupportedProtocol = "unsupported_protocol"
	reasonTooLarge            = "connect_too_large"
	reasonUpstreamUnavailable = "upstream_unavailable"
	// reasonNoRoute: no route of Proxy.Upstreams takes the client and
	// there is no default pool.
	reasonNoRoute     = "no_route"
	reasonProxyClosed = "proxy_closed"
	reasonInternal    = "internal_error"
	// reasonWillNotAuthorized: the CONNECT's will is to a topic its
	// client's rules deny publishing to.
	reasonWillNotAuthorized = "will_not_authorized"
	// reasonTLSHandshake: the TLS handshake failed (no or a wrong client
	// certificate, an old TLS version, a timeout).
	reasonTLSHandshake = "tls_handshake_failed"
	// reasonUntrustedProxyHeader: see transport.ErrUntrustedProxyHeader.
	reasonUntrustedProxyHeader = "untrusted_proxy_header"
)

const (
	// refuseWriteTimeout bounds writing a CONNACK to a client that does not read.
	refuseWriteTimeout = 5 * time.Second
	// lingerTimeout and lingerBytes bound how long and how much a refused
	// client's unread input is drained before the close: closing a socket
	// with unread data makes the kernel send RST, which can destroy the
	// CONNACK before the client reads it.
	lingerTimeout = time.Second
	lingerBytes   = 64 << 10
)

// refusal is why a client is turned away, and how: what the metrics count,
// what the log says and what the client is answered. Proxy.refuse is the
// one way out for every refused connection.
type refusal struct {
	message string // the log line
	reason  string // its reason field, and the metric's label
	err     error  // logged, when there is one
	warn    bool   // logged as a warning: the broker failed, not the client
	bridge  bool   // the client said it is a bridge (packets.Connect.Bridge)
	// id is the accepted token of a client refused after its token was
	// accepted: its authenticator, sub and exp are logged.
	id *authn.Identity
	// version is the protocol version the CONNACK is written in, with
	// code; 0 closes without one.
	version byte
	code    packets.ReasonCode
	// linger drains what the client still sends before the close, so that
	// it reads what it was sent rather than a reset; always after a
	// CONNACK.
	linger bool
	// decided, when set, counts the refusal as an outcome of the
	// connection's decision, which took since then; outcome counts it as
	// an outcome whose decision was timed already, or not at all (an
	// eviction); limit counts it as a limit hit of that kind too.
	decided time.Time
	outcome bool
	limit   string
	// quiet is a connection ended from outside (Close, token expiry)
	// while it was decided on: nothing is logged or counted.
	quiet bool
}

// refuse turns a client away as r says: it counts r, logs it once, answers
// with a CONNACK where r has one, and closes c, then releases s (nil for a
// connection refused at accept, before it had a session). A session
// evicted meanwhile is refused as evicted, whatever else went wrong: its
// socket is closed already, and the eviction was counted.
func (p *Proxy) refuse(s *session, c net.Conn, r *refusal, log *connLog) {
	if s != nil && s.evicted.Load() {
		r = evicted(s.evictedBy)
	}
	if !r.quiet {
		if r.limit != "" {
			p.Metrics.limitHit(r.limit)
		}
		switch {
		case !r.decided.IsZero():
			p.Metrics.decided("refused", r.reason, time.Since(r.decided))
		case r.outcome:
			p.Metrics.outcome("refused", r.reason)
		}
		level := zapcore.InfoLevel
		if r.warn {
			level = zapcore.WarnLevel
		}
		fields := []zap.Field{zap.String("outcome", "refused"), zap.String("reason", r.reason)}
		if r.id != nil {
			fields = append(fields, zap.String("authenticator", r.id.Authenticator), zap.String("sub", r.id.Subject), expiryField(r.id.Expiry))
		}
		log.write(level, r.message, append(fields, bridgeField(r.bridge), zap.Error(r.err), hintField(r.err)))
	}
	switch {
	case r.version != 0:
		if writeConnack(c, r.version, r.code) == nil {
			lingerClose(c)
		}
	case r.linger:
		lingerClose(c)
	}
	c.Close()
	if s != nil {
		p.release(s)
	}
}

// refusedAtAccept: a limit refused c as it was accepted, before it was
// admitted (so it has no outcome).
func refusedAtAccept(kind string) *refusal {
	return &refusal{message: "connection refused by limit", reason: kind, limit: kind}
}

// evicted: the connection was closed to keep within the limit kind of
// pending connections; the limit hit was counted then.
func evicted(kind string) *refusal {
	return &refusal{message: "connect rejected", reason: kind, outcome: true}
}

// handshakeFailed: the TLS handshake that began at start failed.
func handshakeFailed(err error, start time.Time) *refusal {
	reason := reasonTLSHandshake
	if errors.Is(err, transport.ErrUntrustedProxyHeader) {
		reason = reasonUntrustedProxyHeader
	}
	return &refusal{message: "connect rejected", reason: reason, err: err, decided: start}
}

// unreadable: the client's first packet, read from start on, could not be
// read or is no acceptable CONNECT. The client gets a CONNACK where its
// version has a code for the failure, which log then says.
func unreadable(err error, start time.Time, log *connLog) *refusal {
	r := &refusal{message: "connect rejected", reason: reasonReadFailed, err: err, linger: true, decided: start}
	var perr *packets.Error
	switch {
	case errors.As(err, &perr):
		r.reason = packetReason(perr)
		if _, ok := perr.Code.V3ReturnCode(); perr.Version != 0 && (ok || perr.Version == packets.ProtocolV5) {
			log.add(zap.Uint8("protocol_version", perr.Version))
			r.version, r.code = perr.Version, perr.Code
		}
	case errors.Is(err, os.ErrDeadlineExceeded):
		r.reason = reasonConnectTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		r.reason = reasonClientClosed
	case errors.Is(err, transport.ErrUntrustedProxyHeader):
		r.reason = reasonUntrustedProxyHeader
	}
	return r
}

// authenticationRefused: pk, read at read, was refused by the verifier or
// by Forward's rewrite.
func authenticationRefused(pk *packets.Connect, err error, read time.Time) *refusal {
	reason := string(authn.ReasonOf(err))
	if reason == "" {
		reason = reasonInternal
	}
	return &refusal{message: "authentication refused", reason: reason, err: err, bridge: pk.Bridge,
		version: pk.ProtocolVersion, code: RefuseCode(authn.ReasonOf(err)), decided: read}
}

// willNotAuthorized: pk, read at read and accepted as id, carries a will
// that its rules deny publishing (decision d): the CONNECT is refused with
// not authorized (0x87; 5 in MQTT 3.1.1), as EMQX refuses it.
func willNotAuthorized(pk *packets.Connect, id authn.Identity, d acl.Decision, read time.Time) *refusal {
	return &refusal{message: "authorization refused", reason: reasonWillNotAuthorized, id: &id, bridge: pk.Bridge,
		err: fmt.Errorf("will to %q: %s", pk.WillTopic, d), version: pk.ProtocolVersion, code: packets.NotAuthorized, decided: read}
}

// clientIDRateExceeded: the client ID the broker would get, for pk
// accepted as id, has connected too often (PerClientIDConnectRate).
func clientIDRateExceeded(pk *packets.Connect, id authn.Identity) *refusal {
	return &refusal{message: "connect rejected", reason: limitClientIDRate, id: &id, bridge: pk.Bridge,
		limit: limitClientIDRate, outcome: true, version: pk.ProtocolVersion, code: packets.ConnectionRateExceeded}
}

// upstreamUnavailable: the broker could not be had for pk, accepted as id.
func upstreamUnavailable(pk *packets.Connect, id authn.Identity, err error) *refusal {
	return &refusal{message: "upstream unavailable", reason: reasonUpstreamUnavailable, err: err, warn: true,
		id: &id, bridge: pk.Bridge, outcome: true, version: pk.ProtocolVersion, code: packets.ServerUnavailable}
}

// noRoute: no route takes pk, accepted as id, to a pool, and there is no
// default pool (upstream.ErrNoRoute).
func noRoute(pk *packets.Connect, id authn.Identity, err error) *refusal {
	return &refusal{message: "connect rejected", reason: reasonNoRoute, err: err, id: &id, bridge: pk.Bridge,
		outcome: true, version: pk.ProtocolVersion, code: RefuseCode(reasonNoRoute)}
}

// revokedWhileVerified: pk's token, accepted as id, is revoked by a
// version of the revocation list that was loaded while it was verified.
// The client is refused as the verifier would have refused it.
func revokedWhileVerified(pk *packets.Connect, id authn.Identity) *refusal {
	return &refusal{message: "authentication refused", reason: string(authn.ErrRevoked),
		err: errors.New("revoked by a revocation list loaded while the token was verified"), id: &id, bridge: pk.Bridge,
		outcome: true, version: pk.ProtocolVersion, code: RefuseCode(authn.ErrRevoked)}
}

// endedWhileConnecting: the connection of pk, accepted as id, was ended
// from outside (reason: its token expired, the proxy closed) before the
// broker had its CONNECT. Its socket is closed: nothing is answered.
func endedWhileConnecting(pk *packets.Connect, id authn.Identity, reason string, err error) *refusal {
	return &refusal{message: "connect rejected", reason: reason, err: err, id: &id, bridge: pk.Bridge, outcome: true}
}

// RefuseCode is the MQTT 5 reason code a client refused for reason gets,
// as EMQX answers: a token that is absent, unreadable or whose claims do
// not hold is a bad user name or password; a token whose signature or key
// does not check out, or a refusal without a reason, is not authorized.
// An Authentication Method no authenticator takes is a bad authentication
// method [MQTT-4.12.0-1], which only MQTT 5 clients can name. A client
// that no route of Proxy.Upstreams takes anywhere (no_route) is not
// authorized: the routes are policy over who goes where, and coming back
// later cannot help, which server unavailable would tell it to do.
// packets.ReasonCode.V3ReturnCode gives the MQTT 3.1.1 code.
func RefuseCode(reason authn.RefuseReason) packets.ReasonCode {
	switch reason {
	case authn.ErrTokenMissing, authn.ErrTokenMalformed, authn.ErrTokenExpired,
		authn.ErrTokenNotYetValid, authn.ErrClaimMismatch:
		return packets.BadUserNameOrPassword
	case authn.ErrBadAuthMethod:
		return packets.BadAuthenticationMethod
	default:
		return packets.NotAuthorized
	}
}

func packetReason(err *packets.Error) string {
	switch {
	case errors.Is(err, packets.ErrNotConnect):
		return reasonNotConnect
	case errors.Is(err, packets.ErrTooLarge):
		return reasonTooLarge
	case errors.Is(err, packets.ErrUnsupportedVersion):
		return reasonUnsupportedProtocol
	case errors.Is(err, packets.ErrProtocolViolation):
		return reasonProtocolError
	default:
		return reasonMalformed
	}
}

// writeConnack writes a CONNACK with code under a write deadline. On a
// socket of the epoll engine the CONNACK is held to leave with the FIN, so
// that the client acknowledges both at once (measured in
// docs/performance.md).
func writeConnack(c net.Conn, version byte, code packets.ReasonCode) error {
	c.SetWriteDeadline(time.Now().Add(refuseWriteTimeout))
	var w io.Writer = c
	if lw, ok := c.(interface{ LastWriter() io.Writer }); ok {
		w = lw.LastWriter()
	}
	return packets.WriteConnack(w, version, code)
}

// lingerClose half-closes c and drains what the client still sends, for at
// most lingerTimeout and lingerBytes, so that the kernel sends FIN rather
// than RST and the client can read what was written. The drained bytes go
// nowhere. The caller closes c.
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		c.SetReadDeadline(time.Now().Add(lingerTimeout))
		io.CopyN(io.Discard, c, lingerBytes)
	}
}
