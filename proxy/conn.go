package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// Reasons logged for connections that end before authentication, beside
// the authn.RefuseReason values. They are bounded, for logs and metrics.
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
	reasonProxyClosed         = "proxy_closed"
	reasonInternal            = "internal_error"
)

// serveConn starts serving one client connection: the transport's
// handshake under the connect deadline, then its CONNECT (serveConnect).
func (p *Proxy) serveConn(s *session) {
	c, pc := s.client, s.connect
	pc.conn = c
	pc.start = time.Now()
	pc.remote = c.RemoteAddr().String() // the client's, also behind a PROXY header
	pc.log = newConnLog(p.logger(), zap.String("listener", s.listener), zap.String("remote", pc.remote))
	c.SetReadDeadline(pc.start.Add(s.policy.limits.connectTimeout()))
	if !p.handshake(s, pc.start, pc.log) {
		c.Close()
		p.release(s)
		return
	}
	p.serveConnect(s)
}

// serveConnect reads the CONNECT under the connect deadline, decides,
// then refuses or dials and relays. When a bare socket has sent only part
// of its CONNECT, it returns, and runs again once more has arrived: no
// goroutine waits meanwhile (see connectReader).
func (p *Proxy) serveConnect(s *session) {
	pc := s.connect
	pk, pastConnect, err := pc.read()
	if errors.Is(err, errWaiting) {
		return
	}
	c, start, remote, log := pc.conn, pc.start, pc.remote, pc.log
	handedOff := false // set once the relay owns the connection's end
	defer func() {
		if !handedOff {
			c.Close()
			p.release(s)
		}
	}()
	limits := &s.policy.limits
	deadline := start.Add(limits.connectTimeout())
	if err != nil {
		if s.evicted.Load() {
			p.logEvicted(log, s)
			return
		}
		p.Metrics.decided("refused", p.rejectPacket(c, err, log), time.Since(start))
		return
	}
	read := time.Now()
	log.add(
		zap.String("client_id", pk.ClientID),
		zap.String("username", loggedUsername(pk.Username)),
		zap.Uint8("protocol_version", pk.ProtocolVersion),
	)

	req := authn.Request{
		ClientID:    pk.ClientID,
		Username:    pk.Username,
		HasUsername: pk.UsernameFlag,
		Password:    pk.Password,
		HasPassword: pk.PasswordFlag,
	}
	req = withTransport(req, c) // certificate names, a WebSocket upgrade's token
	id, err := p.verify(s, req, deadline)
	if !p.decided(s) { // evicted or closed while the token was checked: its socket is closed
		if s.evicted.Load() {
			p.logEvicted(log, s)
		}
		return
	}
	var upstreamConnect []byte // what the broker gets: pk.Raw unless Forward rewrites it
	var upstreamClientID string
	if err == nil {
		upstreamConnect, upstreamClientID, err = s.policy.forward.connect(pk, &req, &id, log)
	}
	if err != nil {
		reason := string(authn.ReasonOf(err))
		if reason == "" {
			reason = reasonInternal
		}
		p.Metrics.decided("refused", reason, time.Since(read))
		log.Info("authentication refused", zap.String("outcome", "refused"), zap.String("reason", reason), bridgeField(pk.Bridge), zap.Error(err), hintField(err))
		refuse(c, pk.ProtocolVersion, RefuseCode(authn.ReasonOf(err)))
		return
	}
	p.Metrics.decisionTook(time.Since(read))
	// The token is good, but the outcome is told once it is known, in
	// one log line and one count alike: accepted once the broker has the
	// CONNECT, refused (with who it was) when it goes no further.
	decline := func(level zapcore.Level, msg, reason string, err error) {
		p.Metrics.outcome("refused", reason)
		log.write(level, msg, []zap.Field{zap.String("outcome", "refused"), zap.String("reason", reason),
			zap.String("authenticator", id.Authenticator), zap.String("sub", id.Subject), expiryField(id.Expiry),
			bridgeField(pk.Bridge), zap.Error(err)})
	}
	if upstreamClientID != "" && !s.policy.idRates.allow(upstreamClientID, time.Now()) {
		p.Metrics.limitHit(limitClientIDRate)
		decline(zapcore.InfoLevel, "connect rejected", limitClientIDRate, nil)
		refuse(c, pk.ProtocolVersion, packets.ConnectionRateExceeded)
		return
	}

	// The PROXY header for the broker says what the wrapper around the
	// client says; from here on only the socket under it is needed.
	header, err := p.upstreamHeader(c)
	if err != nil {
		decline(zapcore.WarnLevel, "upstream unavailable", reasonUpstreamUnavailable, err)
		refuse(c, pk.ProtocolVersion, packets.ServerUnavailable)
		return
	}
	c.SetReadDeadline(time.Time{})
	c, ahead := p.bareClient(s)           // after a PROXY header: the socket, and what was read past the CONNECT
	ahead = append(pastConnect, ahead...) // one of them is empty: a wrapper or the bare socket read ahead
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
	if !id.DisconnectAt.IsZero() {
		// One runtime timer per connection, no goroutine until it fires.
		// Closing both sides without a DISCONNECT makes the broker publish
		// the client's will, as for any abnormal end.
		conn.expiry = time.AfterFunc(time.Until(id.DisconnectAt), func() {
			conn.expired.Store(true)
			p.abort(s)
		})
	}
	through := false // the broker has the CONNECT
	err = p.connectUpstream(s, header, append(upstreamConnect, ahead...), func() {
		through = true
		p.Metrics.outcome("accepted", "")
		log.Info("authentication accepted",
			zap.String("outcome", "accepted"),
			zap.String("authenticator", id.Authenticator),
			zap.String("sub", id.Subject),
			expiryField(id.Expiry),
			bridgeField(pk.Bridge),
		)
	}, func(fromClient, toClient int64) {
		p.finish(s, conn, fromClient, toClient)
	})
	if err != nil {
		if conn.expiry != nil {
			conn.expiry.Stop()
		}
		ended := errors.Is(err, errSessionEnded) // closed from outside: nothing to answer
		switch {
		case through && !ended: // accepted, but the relay could not start
			log.Warn("relay failed", zap.Error(err))
		case through:
		case conn.expired.Load():
			decline(zapcore.InfoLevel, "connect rejected", string(authn.ErrTokenExpired), err)
		case ended:
			decline(zapcore.InfoLevel, "connect rejected", reasonProxyClosed, err)
		default:
			decline(zapcore.WarnLevel, "upstream unavailable", reasonUpstreamUnavailable, err)
		}
		if !ended {
			refuse(c, pk.ProtocolVersion, packets.ServerUnavailable)
		}
		return
	}
	// From here the connection outlives this goroutine: finish does what
	// the deferred calls above would.
	handedOff = true
}

// verify checks the token of s's CONNECT until deadline, or until s is
// evicted or aborted: then the check ends at once (a JWKS fetch it waits
// for goes on without it), so that the CONNECT's bytes, which the budget
// of pending bytes stops counting at eviction, are freed with it, and
// Close does not wait for it.
func (p *Proxy) verify(s *session, req authn.Request, deadline time.Time) (authn.Identity, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	p.mu.Lock()
	ended := s.aborted
	if !ended {
		s.connect.stopVerify = cancel
	}
	p.mu.Unlock()
	if ended {
		return authn.Identity{}, errSessionEnded
	}
	return s.policy.verifier.Verify(ctx, req)
}

// errSessionEnded says that a connection was closed from outside (Close,
// eviction, token expiry) while its token was checked or its broker
// connection was being set up.
var errSessionEnded = errors.New("proxy: connection closed while connecting to the broker")

// connectUpstream dials the broker, sends it header (a PROXY header or
// nothing) and first (the CONNECT and what the client sent after it),
// calls through, and hands the connection to a relay that calls done once
// both directions have ended. On an error only the client is left open. A plain TCP client
// of a plain TCP broker goes to an epoll watcher with a socket the relay
// dials itself; other connections get a dialed net.Conn (see dial).
func (p *Proxy) connectUpstream(s *session, header, first []byte, through func(), done func(fromClient, toClient int64)) error {
	if ws := p.relays(); ws != nil && p.DialUpstream == nil && p.UpstreamTLS == nil {
		if isSocket(s.client) {
			if len(header) > 0 {
				first = append(header, first...)
			}
			return p.dialRelay(ws, s, first, through, done)
		}
	}
	up, err := p.dial()
	if err == nil {
		up, err = p.startUpstream(up, header) // PROXY header, TLS
	}
	if err != nil {
		return err
	}
	if !p.setUpstream(s, up) {
		up.Close()
		return errSessionEnded
	}
	if _, err := up.Write(first); err != nil {
		up.Close()
		return fmt.Errorf("writing the CONNECT to the broker: %w", err)
	}
	through()
	p.relay(s, done)
	return nil
}

// openConn is what a proxied connection keeps until it closes.
type openConn struct {
	remote, clientID, username string
	version                    byte
	bridge                     bool
	start                      time.Time
	rawLen                     int64 // the CONNECT and what came with it
	expiry                     *time.Timer
	expired                    atomic.Bool
}

// finish ends a proxied connection once both directions have ended. It
// may run on a relay's watcher, which moves other connections' bytes, so
// it must not block: the closing line, when the sampler keeps it, is
// written on a goroutine of its own, since the log's output may stall.
func (p *Proxy) finish(s *session, conn *openConn, fromClient, toClient int64) {
	if conn.expiry != nil {
		conn.expiry.Stop()
	}
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
	s.client.Close()
	if s.upstream != nil { // nil when the relay dialed (and has closed) it
		s.upstream.Close()
	}
	p.release(s)
}

// RefuseCode is the MQTT 5 reason code a client refused for reason gets,
// as EMQX answers: a token that is absent, unreadable or whose claims do
// not hold is a bad user name or password; a token whose signature or key
// does not check out, or a refusal without a reason, is not authorized.
// An Authentication Method no authenticator takes is a bad authentication
// method [MQTT-4.12.0-1], which only MQTT 5 clients can name.
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

// rejectPacket ends a connection whose first packet could not be read or
// accepted: with a CONNACK where the client's version has a code for the
// failure, else by closing. It returns the reason it logged.
func (p *Proxy) rejectPacket(c net.Conn, err error, log *connLog) string {
	reason := reasonReadFailed
	var perr *packets.Error
	switch {
	case errors.As(err, &perr):
		reason = packetReason(perr)
		if _, ok := perr.Code.V3ReturnCode(); perr.Version != 0 && (ok || perr.Version == packets.ProtocolV5) {
			log.Info("connect rejected", zap.String("outcome", "refused"), zap.String("reason", reason), zap.Uint8("protocol_version", perr.Version), zap.Error(err))
			refuse(c, perr.Version, perr.Code)
			return reason
		}
	case errors.Is(err, os.ErrDeadlineExceeded):
		reason = reasonConnectTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		reason = reasonClientClosed
	case errors.Is(err, ErrUntrustedProxyHeader):
		reason = reasonUntrustedProxyHeader
	}
	log.Info("connect rejected", zap.String("outcome", "refused"), zap.String("reason", reason), zap.Error(err))
	lingerClose(c)
	return reason
}

// logEvicted says and counts that s, a pending connection, was closed to
// keep within a limit of pending connections (MaxPendingConnects,
// MaxPendingConnectBytes).
func (p *Proxy) logEvicted(log *connLog, s *session) {
	p.Metrics.outcome("refused", s.evictedBy)
	log.Info("connect rejected", zap.String("outcome", "refused"), zap.String("reason", s.evictedBy))
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

// refuse writes a CONNACK with code under a write deadline and closes c.
// On a bare socket the CONNACK is held to leave with the FIN, so that the
// client acknowledges both at once (measured in docs/performance.md).
func refuse(c net.Conn, version byte, code packets.ReasonCode) {
	c.SetWriteDeadline(time.Now().Add(refuseWriteTimeout))
	var w io.Writer = c
	if fc, ok := c.(interface{ lastWrite() io.Writer }); ok {
		w = fc.lastWrite()
	}
	if err := packets.WriteConnack(w, version, code); err == nil {
		lingerClose(c)
	}
}

// lingerClose half-closes c and drains what the client still sends, for at
// most lingerTimeout and lingerBytes, so that the kernel sends FIN rather
// than RST and the client can read what was written. The drained bytes go
// nowhere.
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		c.SetReadDeadline(time.Now().Add(lingerTimeout))
		io.CopyN(io.Discard, c, lingerBytes)
	}
	c.Close()
}

// hintField is the refusal's hint at the client's likely mistake
// (authn.HintOf), or no field.
func hintField(err error) zap.Field {
	if hint := authn.HintOf(err); hint != "" {
		return zap.String("hint", hint)
	}
	return zap.Skip()
}

// bridgeField marks the lines of a broker's bridge (packets.Connect.Bridge)
// with bridge: true; other clients' lines go without the field.
func bridgeField(bridge bool) zap.Field {
	if !bridge {
		return zap.Skip()
	}
	return zap.Bool("bridge", true)
}

func expiryField(exp time.Time) zap.Field {
	if exp.IsZero() {
		return zap.Skip()
	}
	return zap.Time("exp", exp)
}

// relay joins the client and the upstream until both directions have
// ended, then calls done with the bytes each way, and returns at once.
// Plain TCP on both sides goes to an epoll watcher (relay_linux.go): no
// goroutine, buffer or pipe while idle; the watcher moves each burst
// itself, and bulk traffic goes by splice(2). Other connections (TLS,
// WebSocket) get splice's two goroutines.
func (p *Proxy) relay(s *session, done func(fromClient, toClient int64)) {
	if w := p.relays(); w != nil {
		// Under p.mu, so that abort either finds the relay or has marked
		// the session first; a socket must never close while it is in the
		// epoll set without the relay knowing.
		p.mu.Lock()
		started := false
		if !s.aborted {
			s.relay, started = w.startRelay(s.client, s.upstream, p.halfCloseTimeout(), done)
		}
		p.mu.Unlock()
		if started {
			return
		}
	}
	go func() { done(p.splice(s.client, s.upstream)) }()
}

// splice copies both ways between the client and the upstream until both
// directions have ended, and returns the bytes each way. When one side
// closes its sending half, that is passed on and the other direction gets
// HalfCloseTimeout to finish; when a copy fails, both connections close.
func (p *Proxy) splice(client, upstream net.Conn) (fromClient, toClient int64) {
	done := make(chan int64, 1)
	go func() { done <- p.copyHalf(upstream, client) }()
	toClient = p.copyHalf(client, upstream)
	return <-done, toClient
}

// copyHalf copies src to dst. It is a named function so each direction
// shows by name in goroutine dumps.
func (p *Proxy) copyHalf(dst, src net.Conn) int64 {
	n, err := copyPooled(dst, src)
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			// The other direction may still carry the last packets (a
			// broker's answer to DISCONNECT); it gets a bounded time.
			dst.SetReadDeadline(time.Now().Add(p.halfCloseTimeout()))
			return n
		}
	}
	dst.Close()
	src.Close()
	return n
}
