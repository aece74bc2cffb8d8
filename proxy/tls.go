package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
)

// certCheckInterval bounds how often a handshake looks at the certificate
// files' modification times: a renewal applies within it, and a busy
// listener costs at most one stat per file and interval.
const certCheckInterval = time.Second

// Reasons logged for clients refused by their transport.
const (
	// reasonTLSHandshake: the TLS handshake failed (no or a wrong client
	// certificate, an old TLS version, a timeout).
	reasonTLSHandshake = "tls_handshake_failed"
	// reasonUntrustedProxyHeader: see ErrUntrustedProxyHeader.
	reasonUntrustedProxyHeader = "untrusted_proxy_header"
)

// TLSFiles names the files of a TLS listener.
type TLSFiles struct {
	// CertFile and KeyFile are the PEM certificate chain and private key
	// the proxy presents. Required.
	CertFile, KeyFile string
	// ClientCAFile is a PEM bundle of the CAs client certificates must
	// chain to. Empty means no client certificate is asked for.
	ClientCAFile string
	// ClientAuth is what is asked of clients when ClientCAFile is set:
	// tls.VerifyClientCertIfGiven or tls.RequireAndVerifyClientCert.
	// Ignored without ClientCAFile.
	ClientAuth tls.ClientAuthType
	// MinVersion is the oldest TLS version accepted. Zero means TLS 1.2.
	MinVersion uint16
}

// CertReloader serves a TLS listener's certificate, key and client CAs
// from files, and reads them again when they change: a handshake that
// finds a file's modification time or size changed (looked at once per
// second at most) builds a new configuration, which applies to the
// handshakes that follow; established connections keep theirs. If the
// new files do not load (a renewal half written), the last good ones stay
// in force and the failure is logged. Make one with NewCertReloader.
type CertReloader struct {
	files  TLSFiles
	logger *zap.Logger

	mu      sync.Mutex
	config  *tls.Config // built from the files as last read
	stamps  []fileStamp // of the files as last read
	checked time.Time   // when the stamps were last compared
}

// fileStamp is what tells that a file changed.
type fileStamp struct {
	modTime time.Time
	size    int64
}

// NewCertReloader reads the files once; it fails if they do not load.
// logger receives a line per reload; nil means no logs.
func NewCertReloader(files TLSFiles, logger *zap.Logger) (*CertReloader, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	r := &CertReloader{files: files, logger: logger}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Config returns the TLS configuration for the listener (see
// NewTLSListener); each handshake gets the files' current contents.
func (r *CertReloader) Config() *tls.Config {
	return &tls.Config{
		MinVersion:         r.minVersion(),
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return r.current(time.Now()), nil },
	}
}

func (r *CertReloader) minVersion() uint16 { return max(r.files.MinVersion, tls.VersionTLS12) }

// Reload reads the files now, as SIGHUP asks. On failure the
// configuration in force stays.
func (r *CertReloader) Reload() error {
	stamps := r.stampFiles()
	config, err := r.load()
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.config, r.stamps, r.checked = config, stamps, time.Now()
	return nil
}

// current returns the configuration in force, reloading it first when
// the files changed since they were last read.
func (r *CertReloader) current(now time.Time) *tls.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.checked) < certCheckInterval {
		return r.config
	}
	r.checked = now
	stamps := r.stampFiles()
	if equalStamps(stamps, r.stamps) {
		return r.config
	}
	config, err := r.load()
	if err != nil {
		r.logger.Warn("TLS files changed but do not load; the previous certificate stays in force", zap.String("cert_file", r.files.CertFile), zap.Error(err))
		return r.config
	}
	r.config, r.stamps = config, stamps
	r.logger.Info("TLS certificate reloaded", zap.String("cert_file", r.files.CertFile))
	return r.config
}

func (r *CertReloader) paths() []string {
	return []string{r.files.CertFile, r.files.KeyFile, r.files.ClientCAFile}
}

// stampFiles stats the files; a missing file has the zero stamp.
func (r *CertReloader) stampFiles() []fileStamp {
	var stamps []fileStamp
	for _, path := range r.paths() {
		var s fileStamp
		if info, err := os.Stat(path); err == nil {
			s = fileStamp{modTime: info.ModTime(), size: info.Size()}
		}
		stamps = append(stamps, s)
	}
	return stamps
}

func equalStamps(a, b []fileStamp) bool {
	for i := range a {
		if !a[i].modTime.Equal(b[i].modTime) || a[i].size != b[i].size {
			return false
		}
	}
	return len(a) == len(b)
}

// load builds a configuration from the files.
func (r *CertReloader) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(r.files.CertFile, r.files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s, key %s: %w", r.files.CertFile, r.files.KeyFile, err)
	}
	config := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   r.minVersion(),
	}
	if r.files.ClientCAFile != "" {
		pem, err := os.ReadFile(r.files.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("TLS client CA file: %w", err)
		}
		config.ClientCAs = x509.NewCertPool()
		if !config.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS client CA file %s holds no PEM certificate", r.files.ClientCAFile)
		}
		config.ClientAuth = r.files.ClientAuth
	}
	return config, nil
}

// NewTLSListener returns a listener whose connections are TLS servers
// with config. Accept does not handshake: the proxy does, on the
// connection's own goroutine, within the connect timeout and counted by
// its limits. The connections read one TLS record at a time (recordConn),
// so that an idle one holds no copy buffer.
func NewTLSListener(inner net.Listener, config *tls.Config) net.Listener {
	return &tlsListener{Listener: inner, config: config}
}

type tlsListener struct {
	net.Listener
	config *tls.Config
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return tls.Server(&recordConn{Conn: c}, l.config), nil
}

// handshake completes a TLS client's handshake, within the connect
// timeout that began at start, before its CONNECT is read, so that a
// failed one is logged as such; it reports whether the connection may go
// on. Other connections have nothing to do.
func (p *Proxy) handshake(s *session, start time.Time, log *connLog) bool {
	tc, ok := s.client.(*tls.Conn)
	if !ok {
		return true
	}
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(s.policy.limits.connectTimeout()))
	defer cancel()
	err := tc.HandshakeContext(ctx)
	if err == nil {
		return true
	}
	if s.evicted.Load() {
		p.logEvicted(log, s)
		return false
	}
	reason := reasonTLSHandshake
	if errors.Is(err, ErrUntrustedProxyHeader) {
		reason = reasonUntrustedProxyHeader
	}
	p.Metrics.decided("refused", reason, time.Since(start))
	log.Info("connect rejected", zap.String("outcome", "refused"), zap.String("reason", reason), zap.Error(err))
	return false
}

// tlsState returns the TLS state of a client over TLS (plain or over
// WebSocket).
func tlsState(c net.Conn) (tls.ConnectionState, bool) {
	switch c := c.(type) {
	case *tls.Conn:
		return c.ConnectionState(), true
	case *wsConn:
		if c.tls != nil {
			return *c.tls, true
		}
	}
	return tls.ConnectionState{}, false
}

// withTransport adds to req what the client's transport says about it:
// its TLS certificate's common name and subject (RFC 2253, as Go's
// pkix.Name prints it) and that it was verified, or the common name of the
// certificate a load balancer verified (ProxyProtocolListener's
// ClientCertificates), and for a WebSocket client whose CONNECT has no
// password, the token of its upgrade request, as the password.
func withTransport(req authn.Request, c net.Conn) authn.Request {
	if state, ok := tlsState(c); ok && len(state.PeerCertificates) > 0 {
		req.CertCommonName = state.PeerCertificates[0].Subject.CommonName
		req.CertSubject = state.PeerCertificates[0].Subject.String()
		// Verified by the handshake: with client_auth optional or
		// required, Go keeps no peer certificate it could not verify.
		req.CertVerified = len(state.VerifiedChains) > 0
	} else if b := balancerOf(c); b != nil && b.certCN != "" {
		// The balancer verified it and names only its common name.
		req.CertCommonName, req.CertVerified = b.certCN, true
	}
	if ws, ok := c.(*wsConn); ok && !req.HasPassword && ws.token != nil {
		req.Password, req.HasPassword = ws.token, true
	}
	return req
}

// balancerOf is what the load balancer in front of c said of the
// client's TLS, or nil.
func balancerOf(c net.Conn) *balancerTLS {
	switch c := c.(type) {
	case *proxiedConn:
		return c.balancer
	case *wsConn:
		return c.balancer
	}
	return nil
}

// startUpstream makes up, just dialed, ready for the client's CONNECT:
// it sends header (see upstreamHeader), then speaks TLS, as the Proxy is
// configured, within DialTimeout. It closes up when it fails.
func (p *Proxy) startUpstream(up net.Conn, header []byte) (net.Conn, error) {
	if len(header) > 0 {
		up.SetWriteDeadline(time.Now().Add(p.dialTimeout()))
		_, err := up.Write(header)
		up.SetWriteDeadline(time.Time{})
		if err != nil {
			up.Close()
			return nil, fmt.Errorf("sending the PROXY header: %w", err)
		}
	}
	if p.UpstreamTLS == nil {
		return up, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.dialTimeout())
	defer cancel()
	tc := tls.Client(&recordConn{Conn: up}, p.UpstreamTLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		up.Close()
		return nil, fmt.Errorf("TLS to the broker: %w", err)
	}
	return tc, nil
}

// upstreamHeader is the PROXY header the broker gets for client, if
// UpstreamProxyHeader asks for one.
func (p *Proxy) upstreamHeader(client net.Conn) ([]byte, error) {
	if p.UpstreamProxyHeader == NoProxyHeader {
		return nil, nil
	}
	return p.UpstreamProxyHeader.format(client)
}

// bareClient replaces s's client by the socket under its PROXY protocol
// wrapper, so that a plain TCP client is spliced, and returns it with the
// bytes already read from the client past its CONNECT, which go upstream
// first: what the wrapper read ahead, or for TLS the rest of the record
// the CONNECT came in, which crypto/tls holds decrypted where waiting on
// the socket would not see it.
func (p *Proxy) bareClient(s *session) (net.Conn, []byte) {
	p.mu.Lock()
	bare, ahead := bareConn(s.client)
	s.client = bare
	p.mu.Unlock()
	if tc, ok := bare.(*tls.Conn); ok {
		ahead = append(ahead, decryptedAhead(tc)...)
	}
	return bare, ahead
}

// decryptedAhead returns the plaintext tc holds that was not read yet. A
// Read under an expired deadline returns it without touching the socket,
// or times out at once when there is none; crypto/tls does not hold a
// read timeout against the connection.
func decryptedAhead(tc *tls.Conn) []byte {
	tc.SetReadDeadline(time.Unix(1, 0))
	defer tc.SetReadDeadline(time.Time{})
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	n, _ := tc.Read(*bp)
	return append([]byte(nil), (*bp)[:n]...)
}
