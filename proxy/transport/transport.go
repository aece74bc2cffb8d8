// Package transport holds the listeners that carry MQTT to the proxy,
// stacked in the order they arrive on the wire: a ProxyProtocolListener
// reads a load balancer's PROXY header, NewTLSListener speaks TLS (with
// certificates from a CertReloader), and a WebSocketListener carries MQTT
// over WebSocket. Each connection they yield wraps the one beneath it
// (NetConn, as tls.Conn does) and knows what its layer learned; InfoOf
// collects that for the proxy's decision, and Detach hands over what is
// left to relay once the client is accepted:
//
//	certs, err := transport.NewCertReloader(transport.TLSFiles{CertFile: "server.pem", KeyFile: "server.key"}, logger)
//	if err != nil { ... }
//	ln = transport.NewTLSListener(ln, certs.Config())
//	ln = (&transport.WebSocketListener{Listener: ln}).Start()
//	c, err := ln.Accept()
//	...
//	info := transport.InfoOf(c) // TLS state, certificate names, the upgrade's token
//	conn, ahead := transport.Detach(c)
//
// Toward the broker, ProxyHeader formats the PROXY header that describes a
// client, and ClientTLS speaks TLS. The package knows nothing of MQTT
// sessions: the proxy admits, authenticates and relays.
package transport

import (
	"crypto/tls"
	"iter"
	"net"
	"time"
)

// Info is what a client's transports know of it.
type Info struct {
	// TLS is the state of the client's TLS connection, terminated by
	// this proxy (directly or under WebSocket); nil over plain TCP.
	TLS *tls.ConnectionState
	// Balancer is what a load balancer that terminated the client's TLS
	// said of it in a v2 PROXY header's SSL TLV (see
	// ProxyProtocolListener.ClientCertificates); nil when none did.
	Balancer *BalancerTLS
	// Token is the token a WebSocket upgrade request carried where the
	// listener was told to look; nil without one.
	Token []byte
}

// ClientCertificate returns what the transports say of the client's
// certificate: its common name and subject (RFC 2253, as Go's pkix.Name
// prints it), and whether it was verified; all zero without one. A
// certificate this proxy's TLS verified comes first; else the common name
// of one a load balancer verified, without a subject.
func (i Info) ClientCertificate() (commonName, subject string, verified bool) {
	if i.TLS != nil && len(i.TLS.PeerCertificates) > 0 {
		cert := i.TLS.PeerCertificates[0]
		// Verified by the handshake: with client_auth optional or
		// required, Go keeps no peer certificate it could not verify.
		return cert.Subject.CommonName, cert.Subject.String(), len(i.TLS.VerifiedChains) > 0
	}
	if i.Balancer != nil && i.Balancer.CertCommonName != "" {
		return i.Balancer.CertCommonName, "", true
	}
	return "", "", false
}

// describer is a layer of this package's that adds what it knows to an
// Info, the outer layers' first.
type describer interface {
	describe(Info) Info
}

// InfoOf collects what each of c's layers knows of the client.
func InfoOf(c net.Conn) Info {
	var info Info
	for layer := c; layer != nil; layer = netConnOf(layer) {
		switch l := layer.(type) {
		case describer:
			info = l.describe(info)
		case interface{ ConnectionState() tls.ConnectionState }: // *tls.Conn
			if info.TLS == nil {
				state := l.ConnectionState()
				info.TLS = &state
			}
		}
	}
	return info
}

// netConnOf is the connection c is carried over, or nil for a socket.
func netConnOf(c net.Conn) net.Conn {
	if u, ok := c.(interface{ NetConn() net.Conn }); ok {
		return u.NetConn()
	}
	return nil
}

// Layers yields c and then each connection beneath it, through NetConn
// (which this package's connections, tls.Conn and gorilla's WebSocket
// connection have), down to the socket.
func Layers(c net.Conn) iter.Seq[net.Conn] {
	return func(yield func(net.Conn) bool) {
		for ; c != nil; c = netConnOf(c) {
			if !yield(c) {
				return
			}
		}
	}
}

// Detach returns what is to be relayed of c once its client is accepted,
// and the bytes its layers read from the client past what the proxy has
// read (they go to the broker first): under a PROXY header, the socket
// beneath, so that a plain TCP client can be relayed socket to socket, and
// what the header's reader took past the header; for TLS, the plaintext
// crypto/tls decrypted ahead (the rest of the record the CONNECT came in),
// and a connection that tells the copy it holds nothing more, so that an
// idle one waits on its socket without a buffer. Others are returned as
// they are.
func Detach(c net.Conn) (net.Conn, []byte) {
	switch w := c.(type) {
	case *proxiedConn:
		ahead := w.ahead
		w.ahead = nil
		return w.Conn, ahead
	case *untrustedConn:
		return w.Conn, nil
	case *tls.Conn:
		ahead := decryptedAhead(w)
		if _, ok := w.NetConn().(*recordConn); ok {
			return recordTLS{w}, ahead
		}
		return w, ahead
	}
	return c, nil
}

// decryptedAhead returns the plaintext tc holds that was not read yet. A
// Read under an expired deadline returns it without touching the socket,
// or times out at once when there is none; crypto/tls does not hold a
// read timeout against the connection.
func decryptedAhead(tc *tls.Conn) []byte {
	tc.SetReadDeadline(time.Unix(1, 0))
	defer tc.SetReadDeadline(time.Time{})
	var ahead []byte
	var buf [512]byte
	for {
		n, err := tc.Read(buf[:])
		ahead = append(ahead, buf[:n]...)
		if err != nil {
			return ahead
		}
	}
}

// recordTLS is a TLS connection that reads one record at a time (its
// NetConn is a recordConn) and has handed over what it had decrypted
// ahead: once a Read of 16 KiB, a record's largest plaintext, has
// returned, it holds nothing, and the copy can wait on the socket beneath.
type recordTLS struct{ *tls.Conn }

// Pending is false: whatever is due is in the layers beneath.
func (recordTLS) Pending() bool { return false }
