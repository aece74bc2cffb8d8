package transport

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/defaults"
)

// DefaultProxyProtocolTimeout is ProxyProtocolListener.Timeout's zero value.
const DefaultProxyProtocolTimeout = 5 * time.Second

// proxyHeaderReadSize is the buffer that reads a PROXY header. go-proxyproto
// reads a v1 header byte by byte from it and a v2 header in one piece; what
// it reads past the header (the client's first bytes) is kept for the
// connection's first reads.
const proxyHeaderReadSize = 256

// ErrUntrustedProxyHeader is the read error of a connection from a peer
// outside the trusted CIDRs that began with a PROXY protocol header: such
// a header could forge any client address, so the connection is refused.
var ErrUntrustedProxyHeader = errors.New("proxy: PROXY protocol header from a peer that is not trusted to send one")

// ProxyProtocolListener reads the PROXY protocol header (v1 or v2) that a
// load balancer sends ahead of each connection, so that the proxy logs,
// limits and forwards the real client address. Its zero value is not
// usable; set Listener and Trusted, then call Start.
//
// A peer in Trusted must send a header, or its connection is closed.
// Headers are read on goroutines of their own, bounded by Timeout, so a
// slow peer never holds up Accept; Accept returns connections whose
// header has been read, with RemoteAddr and LocalAddr the header's source
// and destination. A peer outside Trusted is served as a direct client:
// its connection is returned at once, and if it begins with a header its
// first read fails with ErrUntrustedProxyHeader.
type ProxyProtocolListener struct {
	// Listener accepts the TCP connections. Required.
	Listener net.Listener
	// Trusted are the load balancers' addresses. Required.
	Trusted []netip.Prefix
	// Timeout bounds reading one header. Zero means
	// DefaultProxyProtocolTimeout.
	Timeout time.Duration
	// Logger receives a line for each header refused. Nil means no logs.
	Logger *zap.Logger
	// ClientCertificates takes from a v2 header's PP2_TYPE_SSL TLV the
	// common name of a client certificate that the balancer verified
	// (the TLV says a certificate came with the connection and verify is
	// 0), as a certificate this proxy verified: for ${cert_common_name}
	// and certificate authenticators, when the balancer terminates TLS
	// (HAProxy: send-proxy-v2-ssl-cn). The TLV, as it came, is also
	// passed on in a v2 header sent upstream. False ignores the TLV.
	ClientCertificates bool

	ready     chan acceptResult
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // the accept loop and the header readers

	mu      sync.Mutex
	reading map[net.Conn]struct{} // connections whose header is being read, closed by Close
}

// acceptResult is what the accept loop hands Accept.
type acceptResult struct {
	conn net.Conn
	err  error
}

var _ net.Listener = (*ProxyProtocolListener)(nil)

// Start begins accepting; it returns l for chaining.
func (l *ProxyProtocolListener) Start() *ProxyProtocolListener {
	l.ready = make(chan acceptResult)
	l.done = make(chan struct{})
	l.reading = make(map[net.Conn]struct{})
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Accept returns the next connection, its header read if it came from a
// trusted peer.
func (l *ProxyProtocolListener) Accept() (net.Conn, error) {
	select {
	case r := <-l.ready:
		return r.conn, r.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting, closes the connections whose header is still
// being read, and waits for its goroutines to end.
func (l *ProxyProtocolListener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.Listener.Close()
		l.mu.Lock()
		for c := range l.reading {
			c.Close()
		}
		l.mu.Unlock()
	})
	l.wg.Wait()
	return err
}

// Addr is the address the listener is bound to.
func (l *ProxyProtocolListener) Addr() net.Addr { return l.Listener.Addr() }

// acceptLoop accepts until the listener fails, passing errors on to Accept
// (which the proxy's accept loop retries with a backoff when temporary).
func (l *ProxyProtocolListener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !l.deliver(acceptResult{err: err}) || !IsTemporary(err) {
				return
			}
			continue
		}
		if !l.trusted(c.RemoteAddr()) {
			l.deliver(acceptResult{conn: &untrustedConn{Conn: c}})
			continue
		}
		if !l.track(c, true) {
			c.Close()
			return
		}
		l.wg.Add(1)
		go l.readHeader(c)
	}
}

// deliver hands r to Accept; false when the listener closed first.
func (l *ProxyProtocolListener) deliver(r acceptResult) bool {
	select {
	case l.ready <- r:
		return true
	case <-l.done:
		if r.conn != nil {
			r.conn.Close()
		}
		return false
	}
}

func (l *ProxyProtocolListener) trusted(addr net.Addr) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	for _, prefix := range l.Trusted {
		if prefix.Contains(ap.Addr().Unmap()) {
			return true
		}
	}
	return false
}

// track adds c to (or removes it from) the connections Close must close;
// adding fails once Close has begun.
func (l *ProxyProtocolListener) track(c net.Conn, add bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !add {
		delete(l.reading, c)
		return true
	}
	select {
	case <-l.done:
		return false
	default:
	}
	l.reading[c] = struct{}{}
	return true
}

// readHeader reads c's header and hands the connection to Accept, or
// logs why it is refused and closes it.
func (l *ProxyProtocolListener) readHeader(c net.Conn) {
	defer l.wg.Done()
	proxied, err := readProxyHeader(c, defaults.Or(l.Timeout, DefaultProxyProtocolTimeout), l.ClientCertificates)
	l.track(c, false)
	if err != nil {
		if l.Logger != nil {
			l.Logger.Info("PROXY protocol header refused", zap.String("peer", c.RemoteAddr().String()), zap.Error(err))
		}
		c.Close()
		return
	}
	l.deliver(acceptResult{conn: proxied})
}

// readProxyHeader reads the header c must begin with, within timeout, and
// with certs the verified client certificate's name in it.
func readProxyHeader(c net.Conn, timeout time.Duration, certs bool) (*proxiedConn, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	br := bufio.NewReaderSize(c, proxyHeaderReadSize)
	header, err := proxyproto.Read(br)
	if err != nil {
		return nil, fmt.Errorf("reading the PROXY header of a trusted peer: %w", err)
	}
	c.SetReadDeadline(time.Time{})
	pc := &proxiedConn{Conn: c, remote: c.RemoteAddr(), local: c.LocalAddr()}
	if n := br.Buffered(); n > 0 {
		ahead, _ := br.Peek(n)
		pc.ahead = append([]byte(nil), ahead...)
	}
	// LOCAL is the balancer's own connection (a health check); UNSPEC
	// addresses carry nothing usable. Both keep the transport's addresses.
	if src, dst, ok := header.TCPAddrs(); ok && header.Command.IsProxy() {
		pc.remote, pc.local = src, dst
		if certs {
			pc.balancer = balancerTLSOf(header)
		}
	}
	return pc, nil
}

// BalancerTLS is what a load balancer that terminated a client's TLS said
// of it in a v2 header's PP2_TYPE_SSL TLV (ClientCertificates).
type BalancerTLS struct {
	// CertCommonName is the common name of the client certificate the
	// balancer verified, or "".
	CertCommonName string
	tlv            proxyproto.TLV // passed on, as it came, in a v2 header sent upstream
}

// balancerTLSOf reads header's first well-formed SSL TLV, or returns nil.
// Verify is 0 also when the client sent no certificate, so a certificate
// counts only when the certificate flag is set too.
func balancerTLSOf(header *proxyproto.Header) *BalancerTLS {
	tlvs, err := header.TLVs()
	if err != nil {
		return nil
	}
	for _, tlv := range tlvs {
		ssl, err := tlvparse.SSL(tlv)
		if err != nil {
			continue
		}
		b := &BalancerTLS{tlv: tlv}
		if ssl.ClientSSL() && ssl.ClientCertConn() && ssl.Verified() {
			b.CertCommonName, _ = ssl.ClientCN()
		}
		return b
	}
	return nil
}

// proxiedConn is a connection whose PROXY header has been read: its
// addresses are the header's, and it first returns the bytes read past the
// header. It embeds net.Conn, not *net.TCPConn, so that no promoted
// WriteTo or ReadFrom can bypass those bytes.
type proxiedConn struct {
	net.Conn
	remote, local net.Addr
	ahead         []byte       // read past the header, not yet returned by Read
	balancer      *BalancerTLS // the balancer's SSL TLV (ClientCertificates), or nil
}

func (c *proxiedConn) Read(b []byte) (int, error) {
	if len(c.ahead) > 0 {
		n := copy(b, c.ahead)
		c.ahead = c.ahead[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// CloseWrite half-closes the socket.
func (c *proxiedConn) CloseWrite() error { return closeWrite(c.Conn) }

// NetConn is the socket the header was read from.
func (c *proxiedConn) NetConn() net.Conn { return c.Conn }

// Pending reports whether bytes read past the header are still to be
// returned.
func (c *proxiedConn) Pending() bool { return len(c.ahead) > 0 }

func (c *proxiedConn) describe(info Info) Info {
	if info.Balancer == nil {
		info.Balancer = c.balancer
	}
	return info
}

// RemoteAddr is the client's address, as the header gave it.
func (c *proxiedConn) RemoteAddr() net.Addr { return c.remote }

// LocalAddr is the address the client connected to, as the header gave it.
func (c *proxiedConn) LocalAddr() net.Addr { return c.local }

// untrustedConn is a connection from a peer not trusted to send a PROXY
// header; its first read fails with ErrUntrustedProxyHeader if it starts
// with one. No MQTT, TLS or HTTP stream begins with either signature's
// first byte, so one byte decides.
type untrustedConn struct {
	net.Conn
	checked bool
}

func (c *untrustedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if !c.checked && n > 0 {
		c.checked = true
		if b[0] == proxyproto.SIGV1[0] || b[0] == proxyproto.SIGV2[0] {
			return 0, ErrUntrustedProxyHeader
		}
	}
	return n, err
}

// CloseWrite half-closes the socket.
func (c *untrustedConn) CloseWrite() error { return closeWrite(c.Conn) }

// NetConn is the socket.
func (c *untrustedConn) NetConn() net.Conn { return c.Conn }

// Pending is false: the first read is checked as it is returned.
func (c *untrustedConn) Pending() bool { return false }

// closeWrite half-closes c where its transport can.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// IsTemporary reports whether a listener's error passes (out of
// descriptors, say): an accept loop retries after it.
func IsTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}
