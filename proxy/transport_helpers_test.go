package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// testPKI is a certificate authority made for one test; it writes PEM
// files into the test's temporary directory.
type testPKI struct {
	dir    string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	CAFile string
}

var certSerial atomic.Int64

func newTestPKI(t testing.TB, name string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(certSerial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pki := &testPKI{dir: t.TempDir(), cert: cert, key: key}
	pki.CAFile = pki.write(t, name+"-ca.pem", "CERTIFICATE", der)
	return pki
}

func (pki *testPKI) write(t testing.TB, file, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(pki.dir, file)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue writes a certificate signed by the CA, for the server at
// 127.0.0.1 and localhost or for a client, with subject O=Test Devices,
// CN=cn; it returns the certificate and key files.
func (pki *testPKI) issue(t testing.TB, cn string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(certSerial.Add(1)),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Test Devices"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		template.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		template.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, template, pki.cert, key.Public(), pki.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pki.write(t, cn+".pem", "CERTIFICATE", der), pki.write(t, cn+".key", "PRIVATE KEY", keyDER)
}

// pool is a pool holding the CA.
func (pki *testPKI) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(pki.cert)
	return pool
}

// clientConfig trusts the CA and presents the client certificate cn,
// issued for the occasion, unless cn is empty.
func (pki *testPKI) clientConfig(t testing.TB, cn string) *tls.Config {
	t.Helper()
	config := &tls.Config{RootCAs: pki.pool(), ServerName: "127.0.0.1"}
	if cn != "" {
		cert, err := tls.LoadX509KeyPair(pki.issue(t, cn, false))
		if err != nil {
			t.Fatal(err)
		}
		config.Certificates = []tls.Certificate{cert}
	}
	return config
}

// observe gives p a logger whose lines the test reads.
func observe(p *Proxy) *observer.ObservedLogs {
	core, logs := observer.New(zap.DebugLevel)
	p.Logger = zap.New(core)
	return logs
}

// Timeouts the tests' proxies and listeners get where a test sets none:
// far longer than any step of a test takes on a busy machine under -race,
// so that only a test about a timeout, which sets its own, meets one.
const (
	testConnectTimeout = time.Minute
	testDialTimeout    = 30 * time.Second
	// testHeaderTimeout bounds reading a WebSocket upgrade request or a
	// PROXY header.
	testHeaderTimeout = 30 * time.Second
)

// withTestTimeouts gives p the tests' timeouts where it has none; call it
// before p serves.
func withTestTimeouts(p *Proxy) {
	if p.Limits.ConnectTimeout == 0 {
		p.Limits.ConnectTimeout = testConnectTimeout
	}
	if p.DialTimeout == 0 {
		p.DialTimeout = testDialTimeout
	}
}

// serveOn serves p, with the tests' timeouts, on ln and closes p at
// cleanup.
func serveOn(t testing.TB, p *Proxy, ln net.Listener) {
	t.Helper()
	withTestTimeouts(p)
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln, "edge") }()
	t.Cleanup(func() {
		p.Close()
		if err := <-served; !errors.Is(err, ErrProxyClosed) {
			t.Errorf("Serve returned %v, want ErrProxyClosed", err)
		}
	})
}

// listen is a loopback TCP listener, closed at cleanup if still open.
func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// waitLog waits until a line with message and the fields was logged.
func waitLog(t *testing.T, logs *observer.ObservedLogs, message string, fields ...zap.Field) observer.LoggedEntry {
	t.Helper()
	var found []observer.LoggedEntry
	waitFor(t, func() bool {
		lines := logs.FilterMessage(message)
		for _, f := range fields {
			lines = lines.FilterField(f)
		}
		found = lines.All()
		return len(found) > 0
	})
	return found[0]
}

// waitServing waits until p serves a listener: Serve runs on a goroutine
// of its own, and a WebSocketListener admits through p from then on.
func waitServing(t *testing.T, p *Proxy) {
	t.Helper()
	waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.listeners) > 0 })
}
