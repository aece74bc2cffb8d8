package transport

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"

	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// ProxyHeader is the PROXY protocol header the proxy sends the broker
// ahead of each connection. The zero value sends none.
type ProxyHeader byte

// PROXY protocol versions.
const (
	NoProxyHeader ProxyHeader = 0
	ProxyHeaderV1 ProxyHeader = 1
	ProxyHeaderV2 ProxyHeader = 2
)

// Format returns the header for client, nil for NoProxyHeader: its
// address as the source, the address it connected to as the destination
// (both as a PROXY header in front of the proxy gave them), and with v2 a
// PP2_TYPE_SSL TLV for a client over TLS: the facts of the proxy's own
// handshake, the certificate's common name included, or the TLV of the
// balancer that terminated the client's TLS, as it came
// (ClientCertificates).
func (v ProxyHeader) Format(client net.Conn) ([]byte, error) {
	if v == NoProxyHeader {
		return nil, nil
	}
	header := proxyproto.HeaderProxyFromAddrs(byte(v), client.RemoteAddr(), client.LocalAddr())
	if v == ProxyHeaderV2 {
		var ssl proxyproto.TLV
		info := InfoOf(client)
		if info.TLS != nil {
			tlv, err := sslTLV(*info.TLS).Marshal()
			if err != nil {
				return nil, fmt.Errorf("PROXY header SSL TLV: %w", err)
			}
			ssl = tlv
		} else if info.Balancer != nil {
			ssl = info.Balancer.tlv
		}
		if ssl.Type != 0 {
			if err := header.SetTLVs([]proxyproto.TLV{ssl}); err != nil {
				return nil, fmt.Errorf("PROXY header SSL TLV: %w", err)
			}
		}
	}
	b, err := header.Format()
	if err != nil {
		return nil, fmt.Errorf("PROXY header for %s: %w", client.RemoteAddr(), err)
	}
	return b, nil
}

// Local returns the header of a connection the proxy opens on its own
// behalf, such as a health check, nil for NoProxyHeader: with no client
// to speak for, v2 sends the LOCAL command and v1 "PROXY UNKNOWN", which
// a broker takes as a connection from the proxy itself.
func (v ProxyHeader) Local() ([]byte, error) {
	if v == NoProxyHeader {
		return nil, nil
	}
	b, err := proxyproto.HeaderProxyFromAddrs(byte(v), nil, nil).Format()
	if err != nil {
		return nil, fmt.Errorf("PROXY header v%d LOCAL: %w", v, err)
	}
	return b, nil
}

// sslTLV describes a TLS client as HAProxy does: the TLS version, the
// cipher, and the client certificate's common name when it sent one;
// verify is zero only when a certificate was sent and verified.
func sslTLV(state tls.ConnectionState) tlvparse.PP2SSL {
	ssl := tlvparse.PP2SSL{
		Client: tlvparse.PP2_BITFIELD_CLIENT_SSL,
		Verify: 1,
		TLV: []proxyproto.TLV{
			{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte(strings.Replace(tls.VersionName(state.Version), "TLS ", "TLSv", 1))},
			{Type: proxyproto.PP2_SUBTYPE_SSL_CIPHER, Value: []byte(tls.CipherSuiteName(state.CipherSuite))},
		},
	}
	if len(state.PeerCertificates) > 0 {
		ssl.Client |= tlvparse.PP2_BITFIELD_CLIENT_CERT_CONN | tlvparse.PP2_BITFIELD_CLIENT_CERT_SESS
		if len(state.VerifiedChains) > 0 {
			ssl.Verify = 0
		}
		ssl.TLV = append(ssl.TLV, proxyproto.TLV{Type: proxyproto.PP2_SUBTYPE_SSL_CN, Value: []byte(state.PeerCertificates[0].Subject.CommonName)})
	}
	return ssl
}
