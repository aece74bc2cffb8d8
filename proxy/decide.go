package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// accepted is what the broker is to get for a client whose CONNECT was
// accepted.
type accepted struct {
	connect         *packets.Connect // as the client sent it
	id              authn.Identity
	upstreamConnect []byte // the CONNECT the broker gets: connect.Raw, or Forward's rewrite
	pastConnect     []byte // read from the socket past the CONNECT (see readConnect)
	header          []byte // the PROXY header the broker gets first, or nil
}

// decide reads s's CONNECT, within the connect timeout that began at
// start, and decides on it: the client is accepted, with what the broker
// is to get, or refused, with why.
func (p *Proxy) decide(s *session, start time.Time, log *connLog) (*accepted, *refusal) {
	c := s.client
	deadline := start.Add(s.policy.limits.connectTimeout())
	c.SetReadDeadline(deadline)
	if tc, ok := c.(*tls.Conn); ok {
		// Before the CONNECT is read, so that a failed handshake is
		// logged as such.
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			return nil, handshakeFailed(err, start)
		}
	}
	pk, past, err := readConnect(c, s.policy.limits.MaxConnectSize)
	if err != nil {
		return nil, unreadable(err, start, log)
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
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	id, err := s.policy.verifier.Verify(ctx, req)
	cancel()
	if !p.decided(s) { // evicted or closed while the token was checked: its socket is closed
		return nil, &refusal{quiet: true}
	}
	a := &accepted{connect: pk, id: id, pastConnect: past}
	var upstreamClientID string
	if err == nil {
		a.upstreamConnect, upstreamClientID, err = s.policy.forward.connect(pk, &req, id.Claims, log)
	}
	if err != nil {
		return nil, authenticationRefused(pk, err, read)
	}
	p.Metrics.decided("accepted", "", time.Since(read))
	log.Info("authentication accepted",
		zap.String("outcome", "accepted"),
		zap.String("authenticator", id.Authenticator),
		zap.String("sub", id.Subject),
		expiryField(id.Expiry),
		bridgeField(pk.Bridge),
	)
	if upstreamClientID != "" && !s.policy.idRates.allow(upstreamClientID, time.Now()) {
		return nil, clientIDRateExceeded(pk)
	}
	// The PROXY header for the broker says what the wrapper around the
	// client says.
	if a.header, err = p.UpstreamProxyHeader.Format(c); err != nil {
		return nil, upstreamUnavailable(pk.ProtocolVersion, err)
	}
	return a, nil
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
