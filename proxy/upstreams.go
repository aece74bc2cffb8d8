package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// ServerSettings is how the proxy connects to one server of a pool: what
// UpstreamTLS and UpstreamProxyHeader are to the one broker of Upstream.
type ServerSettings struct {
	// TLS, if set, speaks TLS to the server with this client
	// configuration, after the PROXY header. Nil means plain TCP.
	TLS *tls.Config
	// ProxyHeader is the PROXY protocol header sent to the server ahead
	// of each client's connection; a health check sends the LOCAL header
	// of the same version (transport.ProxyHeader.Local). Zero sends none.
	ProxyHeader transport.ProxyHeader
}

// Upstreams are pools of brokers and the routes between them (see package
// upstream), each server with the proxy's settings for dialing it. Make
// them with NewUpstreams.
type Upstreams = upstream.Router[ServerSettings]

// UpstreamsConfig is what NewUpstreams and UpdateUpstreams take; see
// upstream.FromConfig for the one a configuration file describes.
type UpstreamsConfig = upstream.RouterConfig[ServerSettings]

// NewUpstreams starts the pools of cfg, and their health checks, which
// dial each server as a client's connection to it is dialed (TLS and a
// PROXY header of the version the server takes, a LOCAL one since a check
// has no client), for Proxy.Upstreams, whose Close or Shutdown stops
// them. A nil logger logs nothing.
func NewUpstreams(cfg UpstreamsConfig, logger *zap.Logger) (*Upstreams, error) {
	return upstream.NewRouter(cfg, dialForCheck, logger)
}

// dialForCheck opens a health check's connection to s, which the check
// then closes or speaks MQTT on, within ctx: the net package's dial (the
// check needs no socket of the engine's, and ctx ends it when the checks
// stop), then what a client's dial sends, with no client.
func dialForCheck(ctx context.Context, s *upstream.Server[ServerSettings]) (net.Conn, error) {
	header, err := s.Settings.ProxyHeader.Local()
	if err != nil {
		return nil, err
	}
	d := net.Dialer{KeepAlive: -1}
	c, err := d.DialContext(ctx, "tcp", s.Address)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline() // zero, no deadline, when ctx has none
	if err := writeBefore(c, header, deadline); err != nil {
		c.Close()
		return nil, err
	}
	return secure(ctx, c, s.Settings.TLS, nil, deadline)
}

// serverSessions are the sessions linked to one server of a pool, so that
// they can be drained when a reload removes it.
type serverSessions struct {
	sessions map[*session]struct{}
	// drain, once the server is removed, ends the sessions left when the
	// drain timeout has passed; drained says it has.
	drain   *time.Timer
	drained bool
}

// joinServerLocked counts s, just linked, among the sessions of server,
// which it holds (Backend.Acquire). It reports true when server was
// removed and its drain is over: s is to be ended at once. p.mu is held.
func (p *Proxy) joinServerLocked(s *session, server *upstream.Backend[ServerSettings]) bool {
	s.server = server
	set := p.servers[server]
	if set == nil {
		if p.servers == nil {
			p.servers = make(map[*upstream.Backend[ServerSettings]]*serverSessions)
		}
		set = &serverSessions{sessions: make(map[*session]struct{})}
		p.servers[server] = set
	}
	set.sessions[s] = struct{}{}
	if isRemoved(server) {
		p.drainLocked(server, set)
	}
	return set.drained
}

// leaveServerLocked forgets s, which has ended, among its server's
// sessions, and lets go of the server. The set of a server that stays is
// kept, empty, for its next sessions; a removed server's goes with its
// last session. p.mu is held.
func (p *Proxy) leaveServerLocked(s *session) {
	server := s.server
	if server == nil {
		return
	}
	s.server = nil
	server.Release()
	set := p.servers[server]
	delete(set.sessions, s)
	if len(set.sessions) == 0 && isRemoved(server) {
		p.forgetServerLocked(server, set)
	}
}

// forgetServerLocked forgets server, removed, and its set, now empty.
// p.mu is held.
func (p *Proxy) forgetServerLocked(server *upstream.Backend[ServerSettings], set *serverSessions) {
	if set.drain != nil {
		set.drain.Stop()
	}
	delete(p.servers, server)
}

// UpdateUpstreams applies cfg to Upstreams, as a reload does (see
// upstream.Router.Update): established connections go on, counted against
// the servers they have; a server that cfg removes, alone or with its
// pool, takes no new client, and its connections are given drain to end
// by themselves, then closed; one that cfg puts back in its pool before
// then is kept, its drain stopped. On error nothing changes.
func (p *Proxy) UpdateUpstreams(cfg UpstreamsConfig, drain time.Duration) error {
	if p.Upstreams == nil {
		return errors.New("proxy: no Upstreams to update")
	}
	if err := p.Upstreams.Update(cfg); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serverDrain = drain
	for server, set := range p.servers {
		switch {
		case !isRemoved(server):
			p.keepLocked(server, set)
		case len(set.sessions) == 0:
			p.forgetServerLocked(server, set)
		default:
			p.drainLocked(server, set)
		}
	}
	return nil
}

// drainLocked starts the drain of server, removed by a reload, unless it
// has begun: its sessions are ended once the drain timeout of the latest
// UpdateUpstreams has passed. p.mu is held.
func (p *Proxy) drainLocked(server *upstream.Backend[ServerSettings], set *serverSessions) {
	if set.drain != nil {
		return
	}
	address := server.Server().Address
	p.logger().Info("upstream server removed; draining its connections", zap.String("server", address),
		zap.Int("connections", len(set.sessions)), zap.Duration("drain_timeout", p.serverDrain))
	var drain *time.Timer
	drain = time.AfterFunc(p.serverDrain, func() {
		p.mu.Lock()
		if set.drain != drain { // the server was put back meanwhile
			p.mu.Unlock()
			return
		}
		set.drained = true
		left := make([]*session, 0, len(set.sessions))
		for s := range set.sessions {
			left = append(left, s)
		}
		p.mu.Unlock()
		if len(left) > 0 {
			p.logger().Info("drain timeout reached; closing the connections left on a removed upstream server",
				zap.String("server", address), zap.Int("connections", len(left)))
		}
		p.endSessions(left, EndedServerRemoved)
	})
	set.drain = drain
}

// keepLocked stops the drain of server, if it had begun: a reload put
// the server back in its pool before the drain's end, so its sessions go
// on. p.mu is held.
func (p *Proxy) keepLocked(server *upstream.Backend[ServerSettings], set *serverSessions) {
	if set.drain == nil {
		return
	}
	set.drain.Stop()
	set.drain, set.drained = nil, false
	p.logger().Info("upstream server put back; its connections are kept", zap.String("server", server.Server().Address),
		zap.Int("connections", len(set.sessions)))
}

// isRemoved reports whether a reload has removed server.
func isRemoved(server *upstream.Backend[ServerSettings]) bool {
	select {
	case <-server.Removed():
		return true
	default:
		return false
	}
}
