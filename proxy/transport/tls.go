package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// certCheckInterval bounds how often a handshake looks at the certificate
// files' modification times: a renewal applies within it, and a busy
// listener costs at most one stat per file and interval.
const certCheckInterval = time.Second

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
// (*tls.Conn) with config. Accept does not handshake: the proxy does, on
// the connection's own goroutine, within the connect timeout and counted
// by its limits. The connections read one TLS record at a time
// (recordConn), so that an idle one holds no copy buffer.
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

// ClientTLS speaks TLS with config over up, just connected to the
// broker, and returns the connection once the handshake is done, within
// ctx. It reads one record at a time, as NewTLSListener's connections do.
// It closes up when it fails.
func ClientTLS(ctx context.Context, up net.Conn, config *tls.Config) (net.Conn, error) {
	tc := tls.Client(&recordConn{Conn: up}, config)
	if err := tc.HandshakeContext(ctx); err != nil {
		up.Close()
		return nil, fmt.Errorf("TLS to the broker: %w", err)
	}
	return recordTLS{tc}, nil
}
