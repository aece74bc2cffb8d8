package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// accepted is what the broker is to get for a client whose CONNECT was
// accepted.
type accepted struct {
	connect         *packets.Connect // as the client sent it
	req             authn.Request    // what the token was verified with
	id              authn.Identity
	acl             *acl.Policy // its topic rules; nil when it may do anything (a spliced session)
	upstreamConnect []byte      // the CONNECT the broker gets: connect.Raw, or Forward's rewrite
	clientID        string      // the client identifier in upstreamConnect
	pastConnect     []byte      // read from the socket past the CONNECT (see readConnect)
	// pool is the pool of Proxy.Upstreams the client goes to; nil
	// without Upstreams.
	pool *upstream.Pool[ServerSettings]
	// header is the PROXY header the broker gets first, or nil; a pool's
	// servers each get the version they take, formatted as they are
	// dialed.
	header []byte
}

// handshake completes a TLS client's handshake, within the connect
// timeout that began at start, before its CONNECT is read, so that a
// failed one is refused as such. Other connections have nothing to do.
func handshake(c net.Conn, start time.Time, deadline time.Time) *refusal {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return handshakeFailed(err, start)
	}
	return nil
}

// decide decides on pk, s's CONNECT, read from start on with past read
// past it: the client is accepted, with what the broker is to get, or
// refused, with why.
func (p *Proxy) decide(s *session, c net.Conn, pk *packets.Connect, past []byte, start time.Time, log *connLog) (accepted, *refusal) {
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
	// An MQTT 5 token under an Authentication Method: the authenticators
	// of that method read it from the data.
	req.AuthMethod, req.AuthData = pk.Authentication()
	req = withTransport(req, c) // certificate names, a WebSocket upgrade's token
	id, err := p.verify(s, req, start.Add(s.policy.limits.connectTimeout()))
	if !p.decided(s) { // evicted or closed while the token was checked: its socket is closed
		return accepted{}, &refusal{quiet: true}
	}
	var upstreamConnect []byte // what the broker gets: pk.Raw unless Forward rewrites it
	var upstreamClientID string
	var rules *acl.Policy
	if err == nil {
		rules, err = s.policy.authorization.policyFor(&req, &id)
	}
	if err == nil && rules != nil && pk.WillFlag {
		if d := p.judgeWill(rules, pk); !d.Allowed {
			return accepted{}, willNotAuthorized(pk, id, d, read)
		}
	}
	if err == nil {
		maxPacket := 0 // what the broker may send: a framed session's limit
		if rules != nil || id.AuthMethod != "" {
			maxPacket = s.policy.limits.maxPacketSize()
		}
		upstreamConnect, upstreamClientID, err = s.policy.forward.connect(pk, &req, &id, maxPacket, log)
	}
	if err != nil {
		return accepted{}, authenticationRefused(pk, err, read)
	}
	// The token is good, but the outcome is told once it is known, in one
	// log line and one count alike: accepted once the broker has the
	// CONNECT (handOver), refused, with who it was, when it goes no
	// further.
	p.Metrics.decisionTook(time.Since(read))
	if upstreamClientID != "" && !s.policy.idRates.allow(upstreamClientID, time.Now()) {
		return accepted{}, clientIDRateExceeded(pk, id)
	}
	a := accepted{connect: pk, req: req, id: id, acl: rules, upstreamConnect: upstreamConnect, clientID: upstreamClientID, pastConnect: past}
	if p.Upstreams != nil {
		if a.pool, err = p.Upstreams.Route(s.listener, id.Subject, id.Claims); err != nil {
			return accepted{}, noRoute(pk, id, err)
		}
		return a, nil
	}
	// The PROXY header for the broker says what the wrapper around the
	// client says.
	if a.header, err = p.UpstreamProxyHeader.Format(c); err != nil {
		return accepted{}, upstreamUnavailable(pk, id, err)
	}
	return a, nil
}

// verify checks the token of s's CONNECT until deadline, or until s is
// evicted or terminated: then the check ends at once (a JWKS fetch it
// waits for goes on without it), so that the CONNECT's bytes, which the
// budget of pending bytes stops counting at eviction, are freed with it,
// and Close does not wait for it.
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

// withTransport adds to req what the client's transports say about it:
// its certificate's common name and subject and whether it was verified,
// and for a WebSocket client whose CONNECT has no password, the token of
// its upgrade request, as the password.
func withTransport(req authn.Request, c net.Conn) authn.Request {
	info := transport.InfoOf(c)
	req.CertCommonName, req.CertSubject, req.CertVerified = info.ClientCertificate()
	if !req.HasPassword && info.Token != nil {
		req.Password, req.HasPassword = info.Token, true
	}
	return req
}
