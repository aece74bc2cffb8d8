package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// certReloaders are the TLS listeners' certificates, which SIGHUP reads
// again (they are also read again whenever their files change).
type certReloaders []*transport.CertReloader

func (c certReloaders) reload(logger *zap.Logger) {
	for _, r := range c {
		if err := r.Reload(); err != nil {
			logger.Error("TLS certificate reload failed; the previous one stays in force", zap.Error(err))
		}
	}
}

// openListeners binds every listener of cfg with its transports, in the
// order they arrive on the wire: the PROXY header first, then TLS, then
// the WebSocket upgrade. plain makes a listener's sockets the relay
// engine's own (proxy.Proxy.Listener), for a PROXY header with plain TCP
// behind it. On failure nothing stays open.
func openListeners(cfg *configs.File, plain func(net.Listener) net.Listener, logger *zap.Logger) ([]net.Listener, certReloaders, error) {
	var listeners []net.Listener
	var certs certReloaders
	for _, l := range cfg.Listeners {
		ln, cert, err := openListener(l, cfg.Limits.ConnectTimeout.Or(0), plain, logger.With(zap.String("listener", l.Name)))
		if err != nil {
			closeAll(listeners)
			return nil, nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		listeners = append(listeners, ln)
		if cert != nil {
			certs = append(certs, cert)
		}
	}
	return listeners, certs, nil
}

// closeAll closes listeners not served yet.
func closeAll(listeners []net.Listener) {
	for _, ln := range listeners {
		ln.Close()
	}
}

func openListener(l configs.Listener, handshakeTimeout time.Duration, plain func(net.Listener) net.Listener, logger *zap.Logger) (net.Listener, *transport.CertReloader, error) {
	// No TCP keep-alive probes: MQTT's own keep-alive, enforced by the
	// broker, ends dead sessions, and connect_timeout ends silent new
	// ones. It saves system calls on every accepted connection.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", l.Bind)
	if err != nil {
		return nil, nil, err
	}
	if pp := l.ProxyProtocol; pp != nil && pp.Enabled {
		trusted, err := pp.TrustedPrefixes()
		if err != nil {
			ln.Close()
			return nil, nil, fmt.Errorf("proxy_protocol.trusted_cidrs: %w", err)
		}
		if l.TLS == nil && l.WebSocket == nil {
			ln = plain(ln)
		}
		ln = (&transport.ProxyProtocolListener{Listener: ln, Trusted: trusted, Timeout: pp.Timeout.Or(0),
			ClientCertificates: pp.ClientCertificates, Logger: logger}).Start()
	}
	var cert *transport.CertReloader
	if t := l.TLS; t != nil {
		if cert, err = transport.NewCertReloader(tlsFiles(t), logger); err != nil {
			ln.Close()
			return nil, nil, err
		}
		ln = transport.NewTLSListener(ln, cert.Config())
	}
	if w := l.WebSocket; w != nil {
		ws := &transport.WebSocketListener{
			Listener:               ln,
			Path:                   w.Path,
			AllowedOrigins:         w.AllowedOrigins,
			TokenFromAuthorization: w.TokenFrom == configs.TokenFromAuthorization,
			RequireSubprotocol:     w.FailIfNoSubprotocol,
			HandshakeTimeout:       handshakeTimeout,
			Logger:                 logger,
		}
		if w.TokenFrom == configs.TokenFromQuery {
			ws.TokenQueryParam = cmp.Or(w.TokenQueryParam, configs.DefaultTokenQueryParam)
		}
		ln = ws.Start()
	}
	return ln, cert, nil
}

// tlsFiles translates a listener's tls section.
func tlsFiles(t *configs.ListenerTLS) transport.TLSFiles {
	files := transport.TLSFiles{CertFile: t.CertFile, KeyFile: t.KeyFile, ClientCAFile: t.ClientCAFile, MinVersion: t.TLSVersion()}
	switch t.ClientAuth {
	case configs.ClientAuthOptional:
		files.ClientAuth = tls.VerifyClientCertIfGiven
	case configs.ClientAuthRequired:
		files.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return files
}

// upstreamsConfig translates cfg's upstream, upstreams and routes for the
// proxy; embedded is the embedded broker's address, which replaces an
// upstream address of "embedded" (empty when none runs, which the caller
// checks).
func upstreamsConfig(cfg *configs.File, embedded string) (proxy.UpstreamsConfig, error) {
	f := *cfg
	if f.Upstream.Address == configs.EmbeddedAddress {
		f.Upstream.Address = embedded
	}
	return upstream.FromConfig(&f, serverSettings)
}

// serverSettings translates the PROXY header and TLS a server of a pool
// is dialed with.
func serverSettings(_ configs.Upstream, s configs.UpstreamServer) (proxy.ServerSettings, error) {
	var settings proxy.ServerSettings
	switch s.ProxyProtocol {
	case configs.ProxyProtocolV1:
		settings.ProxyHeader = transport.ProxyHeaderV1
	case configs.ProxyProtocolV2:
		settings.ProxyHeader = transport.ProxyHeaderV2
	}
	if s.TLS == nil {
		return settings, nil
	}
	host, _, err := net.SplitHostPort(s.Address)
	if err != nil {
		return settings, fmt.Errorf("address %q: not host:port", s.Address)
	}
	if settings.TLS, err = s.TLS.ClientConfig(host); err != nil {
		return settings, fmt.Errorf("tls.%w", err)
	}
	return settings, nil
}
