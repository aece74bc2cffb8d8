package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// errSessionEnded says that a connection was closed from outside (Close,
// eviction, token expiry) while its token was checked or its broker
// connection was being set up.
var errSessionEnded = errors.New("proxy: connection closed while connecting to the broker")

// connectUpstream dials the broker, sends it header (a PROXY header or
// nothing) and first (the CONNECT, and on a spliced link what the client
// sent after it), calls through, and hands client and the broker's
// connection to the engine with o, which calls o.Done once both directions
// have ended. On an error only the client is left open.
func (p *Proxy) connectUpstream(s *session, client net.Conn, header, first []byte, o engine.Options, version byte, through func()) error {
	e := p.relayEngine()
	if e == nil {
		return errSessionEnded
	}
	up, err := p.dialUpstream(e, header, first)
	if err != nil {
		return err
	}
	through()
	// Under p.mu, so that terminate either finds the link or has marked
	// the session first. Close aborts every session it finds, and eviction
	// marks it too, so s.aborted covers them; a Shutdown under way lets
	// s go on.
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.aborted {
		up.Close()
		return errSessionEnded
	}
	o.HalfClose = p.halfCloseTimeout()
	s.link, s.version = e.Join(client, up, o), version
	s.client = nil // the engine's now
	return nil
}

// dialUpstream opens the broker's connection within DialTimeout and sends
// header then first on it: through DialUpstream when set, else with the
// engine (a socket of its own where it has them), to each of Upstream's
// addresses in turn; with UpstreamTLS, first goes once TLS is up.
func (p *Proxy) dialUpstream(e engine.Engine, header, first []byte) (up net.Conn, err error) {
	start := time.Now()
	deadline := start.Add(p.dialTimeout())
	defer func() { p.dialed(start, err) }()
	send := header
	switch {
	case p.UpstreamTLS != nil: // first goes once TLS is up
	case len(header) == 0:
		send = first
	default:
		send = append(header, first...) // one write
	}
	if p.DialUpstream != nil {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		up, err = p.DialUpstream(ctx)
		cancel()
		if err == nil {
			if err = writeBefore(up, send, deadline); err != nil {
				up.Close()
			}
		}
	} else {
		var addrs []netip.AddrPort
		if addrs, err = p.upstreamAddrs(deadline); err == nil {
			up, err = e.Dial(addrs, send, deadline)
		}
	}
	if err != nil || p.UpstreamTLS == nil {
		return up, err
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if up, err = transport.ClientTLS(ctx, up, p.UpstreamTLS); err != nil {
		return nil, err
	}
	if err = writeBefore(up, first, deadline); err != nil {
		up.Close()
		return nil, err
	}
	return up, nil
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

// dialed records how a dial that began at start ended, for metrics and
// Health.
func (p *Proxy) dialed(start time.Time, err error) {
	p.Metrics.dialed(time.Since(start), err)
	p.dials.record(err)
}

// upstreamAddrs resolves Upstream as the net package's dialer does, at
// every dial (a broker behind a DNS name may move): an IP address as it
// is, a name through the resolver, a service name to its port.
func (p *Proxy) upstreamAddrs(deadline time.Time) ([]netip.AddrPort, error) {
	host, service, err := net.SplitHostPort(p.Upstream)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", p.Upstream, err)
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
			return nil, fmt.Errorf("upstream %q: %w", p.Upstream, err)
		}
		port = uint64(n)
	}
	var addrs []netip.Addr
	if addrErr == nil {
		addrs = []netip.Addr{addr}
	} else if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, fmt.Errorf("upstream %q: %w", p.Upstream, err)
	}
	out := make([]netip.AddrPort, len(addrs))
	for i, a := range addrs {
		out[i] = netip.AddrPortFrom(a.Unmap(), uint16(port))
	}
	return out, nil
}
