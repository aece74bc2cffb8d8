package authn

import (
	"context"
	"errors"
)

// errNoCertificate is why a certificate authenticator passes a client.
var errNoCertificate = errors.New("no verified client certificate")

// certificateLink is a certificate authenticator (mechanism: certificate).
// The TLS handshake has done the verifying, against the listener's client
// CA or at a load balancer in front; the link accepts a client that came
// through it with a certificate, as the certificate's common name, and
// passes any other client to the next authenticator, so that
// [certificate, jwt] takes a certificate or a token. It takes no token, so
// it passes a client that presents one under an Authentication Method too.
type certificateLink struct {
	name string
}

func (l certificateLink) label() string { return l.name }

func (certificateLink) method() string { return "" }

func (l certificateLink) verify(_ context.Context, req *Request) (Identity, error) {
	if req.AuthMethod != "" {
		return Identity{}, errOtherMethod
	}
	if !req.CertVerified {
		return Identity{}, errNoCertificate
	}
	return Identity{Authenticator: l.name, Subject: req.CertCommonName}, nil
}

func (l certificateLink) passes(err error) bool {
	return errors.Is(err, errNoCertificate) || errors.Is(err, errOtherMethod)
}

func (certificateLink) close() {}
