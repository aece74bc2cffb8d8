package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/defaults"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// errSessionEnded says that a connection was closed from outside (Close,
// eviction, token expiry) while its token was checked or its broker
// connection was being set up.
var errSessionEnded = errors.New("proxy: connection closed while connecting to the broker")

// maxCandidates is how many servers of a pool a client's dial ranks
// without allocating, as many as Pick ranks without allocating; a larger
// pool costs the dial allocations.
const maxCandidates = 16

// connectUpstream dials a's broker, sends it the PROXY header the server
// takes and first (the CONNECT, and on a spliced link what the client
// sent after it), calls through with the pool's server it reached (nil
// without a pool), and hands client, c's bare connection, and the
// broker's connection to the engine with o, which calls o.Done once both
// directions have ended. On an error only the client is left open.
func (p *Proxy) connectUpstream(s *session, c, client net.Conn, a *accepted, first []byte, o engine.Options, log *connLog, through func(server *upstream.Backend[ServerSettings])) error {
	e := p.relayEngine()
	if e == nil {
		return errSessionEnded
	}
	up, server, err := p.dialUpstream(e, s, c, a, first, log)
	if err != nil {
		return err
	}
	abandon := func() {
		up.Close()
		if server != nil {
			server.Release()
		}
	}
	if p.isAborted(s) { // ended while the broker was dialed: it was never the client's
		abandon()
		return errSessionEnded
	}
	through(server)
	// Under p.mu, so that terminate either finds the link or has marked
	// the session first. Close aborts every session it finds, and eviction
	// marks it too, so s.aborted covers them; a Shutdown under way lets
	// s go on.
	p.mu.Lock()
	if s.aborted {
		p.mu.Unlock()
		abandon()
		return errSessionEnded
	}
	o.HalfClose = p.halfCloseTimeout()
	s.link, s.version = e.Join(client, up, o), a.connect.ProtocolVersion
	s.client = nil // the engine's now
	drained := server != nil && p.joinServerLocked(s, server)
	p.mu.Unlock()
	if drained {
		// Its server was removed, and drained, while it was dialed.
		p.endSessions([]*session{s}, EndedServerRemoved)
	}
	return nil
}

// dialUpstream opens the broker's connection and sends the PROXY header
// and first on it: to a's pool's servers in the balance's order until one
// takes it, each with its own settings, all within the pool's dial
// timeout, returning the server it holds (Backend.Acquire); else through
// DialUpstream, or to Upstream, within DialTimeout.
func (p *Proxy) dialUpstream(e engine.Engine, s *session, c net.Conn, a *accepted, first []byte, log *connLog) (up net.Conn, server *upstream.Backend[ServerSettings], err error) {
	start := time.Now()
	defer func() {
		// A dial that no server was tried for, or that the client's end
		// cut short, says nothing of the brokers.
		if !errors.Is(err, upstream.ErrNoServerUp) && !errors.Is(err, errSessionEnded) {
			p.dialed(start, err)
		}
	}()
	switch {
	case a.pool != nil:
		up, server, err = p.dialPool(e, s, c, a, first, start, log)
	case p.DialUpstream != nil:
		up, err = p.dialCustom(a.header, first, start.Add(p.dialTimeout()))
	default:
		up, err = dialServer(e, p.Upstream, p.UpstreamTLS, a.header, first, start.Add(p.dialTimeout()))
	}
	return up, server, err
}

// dialPool dials the servers a's pool picks for the client, in turn, until
// one takes the connection or the pool's dial timeout, from start, has
// passed; a server that does not answer has at most half the time left
// (see tryDeadline). Each failure is reported to its server
// (Backend.Dialed), which counts it as a failed health check. The
// client's own connection c is only read from, for its PROXY header. A
// session ended from outside stops the tries.
func (p *Proxy) dialPool(e engine.Engine, s *session, c net.Conn, a *accepted, first []byte, start time.Time, log *connLog) (net.Conn, *upstream.Backend[ServerSettings], error) {
	var buf [maxCandidates]*upstream.Backend[ServerSettings]
	candidates, err := a.pool.Pick(a.clientID, buf[:0])
	if err != nil {
		return nil, nil, err
	}
	deadline := start.Add(defaults.Or(a.pool.DialTimeout(), p.dialTimeout()))
	var headers [3][]byte // by PROXY header version, formatted once
	var errs []error
	for i, b := range candidates {
		if i > 0 {
			if p.isAborted(s) {
				return nil, nil, errSessionEnded
			}
			if !time.Now().Before(deadline) {
				break
			}
		}
		server := b.Server()
		v := server.Settings.ProxyHeader
		if v != transport.NoProxyHeader && headers[v] == nil {
			if headers[v], err = v.Format(c); err != nil {
				return nil, nil, err
			}
		}
		b.Acquire()
		began := time.Now()
		up, err := dialServer(e, server.Address, server.Settings.TLS, headers[v], first, tryDeadline(began, deadline, len(candidates)-i))
		b.Dialed(time.Since(began), err)
		if err == nil {
			return up, b, nil
		}
		b.Release()
		err = fmt.Errorf("pool %s, server %s: %w", a.pool.Name(), server.Address, err)
		errs = append(errs, err)
		if i < len(candidates)-1 {
			log.Info("upstream server failed; trying the next", zap.String("pool", a.pool.Name()), zap.String("server", server.Address), zap.Error(err))
		}
	}
	return nil, nil, errors.Join(errs...)
}

// tryDeadline is when the dial of a server begun at now gives up, with
// left servers to try, this one included, before deadline: the last
// has all the time left, the others half of it each, so that a server
// that does not answer (a host down drops the SYN; a broker hung in its
// TLS handshake) leaves time for the next rather than taking the client's
// whole dial timeout, while the first, the one the balance chose, has
// the most.
func tryDeadline(now, deadline time.Time, left int) time.Time {
	if left <= 1 {
		return deadline
	}
	return now.Add(deadline.Sub(now) / 2)
}

// dialCustom opens the broker's connection with DialUpstream and sends it
// header and first; with UpstreamTLS, first goes once TLS is up.
func (p *Proxy) dialCustom(header, first []byte, deadline time.Time) (net.Conn, error) {
	send := header
	if p.UpstreamTLS == nil {
		send = concat(header, first)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	up, err := p.DialUpstream(ctx)
	cancel()
	if err != nil {
		return nil, err
	}
	if err := writeBefore(up, send, deadline); err != nil {
		up.Close()
		return nil, err
	}
	return secure(context.Background(), up, p.UpstreamTLS, first, deadline)
}

// dialServer opens a connection to the broker at address with the engine
// (a socket of its own where it has them), trying each address the name
// resolves to, and sends it header then first, all before deadline; with
// tlsConfig, first goes once TLS is up. A failure closes what it opened,
// and nothing else.
func dialServer(e engine.Engine, address string, tlsConfig *tls.Config, header, first []byte, deadline time.Time) (net.Conn, error) {
	addrs, err := resolve(address, deadline)
	if err != nil {
		return nil, err
	}
	send := header
	if tlsConfig == nil {
		send = concat(header, first)
	}
	up, err := e.Dial(addrs, send, deadline)
	if err != nil {
		return nil, err
	}
	return secure(context.Background(), up, tlsConfig, first, deadline)
}

// secure speaks TLS on up with tlsConfig, then sends first, before
// deadline or ctx's end; without tlsConfig it returns up as it is (first
// went with the dial). On failure up is closed.
func secure(ctx context.Context, up net.Conn, tlsConfig *tls.Config, first []byte, deadline time.Time) (net.Conn, error) {
	if tlsConfig == nil {
		return up, nil
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	up, err := transport.ClientTLS(ctx, up, tlsConfig)
	if err != nil {
		return nil, err
	}
	if err := writeBefore(up, first, deadline); err != nil {
		up.Close()
		return nil, err
	}
	return up, nil
}

// concat is a followed by b, in one slice: the dial's first write. It
// allocates only when both have bytes.
func concat(a, b []byte) []byte {
	switch {
	case len(a) == 0:
		return b
	case len(b) == 0:
		return a
	}
	return append(a[:len(a):len(a)], b...)
}

// writeBefore writes b to c before deadline.
func writeBefore(c net.Conn, b []byte, deadline time.Time) error {
	if len(b) == 0 {
		return nil
	}
	c.SetWriteDeadline(deadline)
	_, err := c.Write(b)
	c.SetWriteDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("writing to the broker: %w", err)
	}
	return nil
}

// dialed records how a client's dial that began at start ended, for
// metrics and Health.
func (p *Proxy) dialed(start time.Time, err error) {
	p.Metrics.dialed(time.Since(start), err)
	p.dials.record(err)
}

// resolve resolves address as the net package's dialer does, at every
// dial (a broker behind a DNS name may move): an IP address as it is, a
// name through the resolver, a service name to its port.
func resolve(address string, deadline time.Time) ([]netip.AddrPort, error) {
	host, service, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", address, err)
	}
	port, err := strconv.ParseUint(service, 10, 16)
	addr, addrErr := netip.ParseAddr(host)
	if err == nil && addrErr == nil {
		return []netip.AddrPort{netip.AddrPortFrom(addr, uint16(port))}, nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err != nil {
		n, err := net.DefaultResolver.LookupPort(ctx, "tcp", service)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: %w", address, err)
		}
		port = uint64(n)
	}
	var addrs []netip.Addr
	if addrErr == nil {
		addrs = []netip.Addr{addr}
	} else if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, fmt.Errorf("upstream %q: %w", address, err)
	}
	out := make([]netip.AddrPort, len(addrs))
	for i, a := range addrs {
		out[i] = netip.AddrPortFrom(a.Unmap(), uint16(port))
	}
	return out, nil
}
