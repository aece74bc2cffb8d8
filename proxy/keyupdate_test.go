package proxy

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// keyUpdater is a TLS 1.3 client that, after the handshake, writes its
// own records: KeyUpdate(update_requested) messages, which make the
// server write a KeyUpdate of its own from inside Read, interleaved with
// one byte of application data so that crypto/tls's 16-useless-records
// limit never trips. It never reads: the server's writes pile up until
// its socket is full and its Read blocks, holding tls.Conn's out lock.
type keyUpdater struct {
	raw    net.Conn
	newH   func() hash.Hash
	keyLen int
	secret []byte
	aead   cipher.AEAD
	iv     []byte
	seq    uint64
}

func expandLabel(newH func() hash.Hash, secret []byte, label string, length int) []byte {
	full := "tls13 " + label
	info := []byte{byte(length >> 8), byte(length), byte(len(full))}
	info = append(info, full...)
	info = append(info, 0) // empty context
	out, err := hkdf.Expand(newH, secret, string(info), length)
	if err != nil {
		panic(err)
	}
	return out
}

func (k *keyUpdater) setSecret(secret []byte) {
	k.secret = secret
	key := expandLabel(k.newH, secret, "key", k.keyLen)
	k.iv = expandLabel(k.newH, secret, "iv", 12)
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	k.aead, err = cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	k.seq = 0
}

func (k *keyUpdater) record(typ byte, content []byte) []byte {
	inner := append(append([]byte{}, content...), typ)
	hdr := []byte{0x17, 3, 3, 0, 0}
	binary.BigEndian.PutUint16(hdr[3:], uint16(len(inner)+k.aead.Overhead()))
	nonce := append([]byte{}, k.iv...)
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], k.seq)
	for i := range 8 {
		nonce[4+i] ^= s[i]
	}
	k.seq++
	return k.aead.Seal(hdr, nonce, inner, hdr)
}

// smallBuffers is the size of the kernel's buffers, both ways, on both
// ends of the attacks in this file: a flood then fills them with
// kilobytes rather than the megabytes loopback's autotuning allows,
// which under -race on a busy machine took longer than a connect timeout.
const smallBuffers = 4 << 10

// shrinkBuffers gives c small kernel buffers (see smallBuffers).
func shrinkBuffers(c net.Conn) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return fmt.Errorf("%T is not a TCP connection", c)
	}
	return errors.Join(tc.SetReadBuffer(smallBuffers), tc.SetWriteBuffer(smallBuffers))
}

// smallBuffersListener is a listener whose connections have small kernel
// buffers.
type smallBuffersListener struct{ net.Listener }

func (l smallBuffersListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if err := shrinkBuffers(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// dialKeyUpdater connects to addr over TLS 1.3 with small buffers.
func dialKeyUpdater(t *testing.T, addr string) *keyUpdater {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if err := shrinkBuffers(raw); err != nil {
		t.Fatal(err)
	}
	var keylog bytes.Buffer
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, KeyLogWriter: &keylog})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	k := &keyUpdater{raw: raw}
	switch tc.ConnectionState().CipherSuite {
	case tls.TLS_AES_128_GCM_SHA256:
		k.newH, k.keyLen = sha256.New, 16
	case tls.TLS_AES_256_GCM_SHA384:
		k.newH, k.keyLen = sha512.New384, 32
	default:
		t.Skipf("cipher suite %x not supported by this test", tc.ConnectionState().CipherSuite)
	}
	for _, line := range strings.Split(keylog.String(), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "CLIENT_TRAFFIC_SECRET_0" {
			secret, _ := hex.DecodeString(f[2])
			k.setSecret(secret)
		}
	}
	if k.aead == nil {
		t.Fatal("no client traffic secret in the key log")
	}
	return k
}

// stalled is how long a write of the flood must block for the server to
// count as stuck: far longer than a busy machine keeps a reader waiting.
const stalled = 2 * time.Second

// flood sends data one byte per application record, each after 15
// KeyUpdate requests; it returns once a write has blocked for stalled
// (the server stopped reading: it is stuck writing its KeyUpdates).
func (k *keyUpdater) flood(t *testing.T, data []byte) {
	t.Helper()
	keyUpdate := []byte{24, 0, 0, 1, 1} // KeyUpdate, update_requested
	sent := 0
	defer func() { t.Logf("flood: %d data bytes sent", sent) }()
	for _, b := range data {
		sent++
		var out []byte
		for range 15 {
			out = append(out, k.record(22, keyUpdate)...)
			k.setSecret(expandLabel(k.newH, k.secret, "traffic upd", k.newH().Size()))
		}
		out = append(out, k.record(23, []byte{b})...)
		k.raw.SetWriteDeadline(time.Now().Add(stalled))
		if _, err := k.raw.Write(out); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return
			}
			t.Fatalf("flood: %v", err)
		}
	}
	t.Fatal("the server kept reading")
}

// TestEvictingStuckTLSClient: a TLS client whose server-side Read is
// stuck writing (KeyUpdate requests it never reads the answers to) holds
// tls.Conn's write lock; evicting it over max_pending_connects must not
// wait for that lock, which it does under the proxy's lock: a client on
// another listener still gets through.
func TestEvictingStuckTLSClient(t *testing.T) {
	rec := proxytest.NewRecorder(t, "")
	// The connect timeout outlasts the flood by far: the attacker is to
	// be evicted, not timed out.
	p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}, Limits: Limits{MaxPendingConnects: 1, ConnectTimeout: time.Minute}}
	pki := newTestPKI(t, "ca")
	cert, key := pki.issue(t, "proxy", true)
	certs, err := NewCertReloader(TLSFiles{CertFile: cert, KeyFile: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tlsLn := listen(t)
	serveOn(t, p, NewTLSListener(smallBuffersListener{tlsLn}, certs.Config()))
	plain := listen(t)
	go p.Serve(plain, "plain") // ends with the proxy, at cleanup

	attacker := dialKeyUpdater(t, tlsLn.Addr().String())
	// A CONNECT declaring 60,012 bytes, sent a byte at a time: the
	// server reads on, answering each KeyUpdate, until its writes block.
	attacker.flood(t, append([]byte{0x10, 0xec, 0xd4, 0x03, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0xea, 0x60},
		strings.Repeat("a", 50000)...))
	t.Cleanup(func() { attacker.raw.Close() }) // so that cleanup ends even when the proxy is stuck

	connectThrough(t, dial(t, plain.Addr().String()), rec, 0) // evicts the attacker, and must get in
	// What the server had queued drains, then the socket ends.
	attacker.raw.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	if _, err := io.Copy(io.Discard, attacker.raw); err != nil && !isReset(err) {
		t.Errorf("the stuck TLS client's socket: %v, want EOF or a reset once evicted", err)
	}
}
