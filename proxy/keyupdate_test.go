//go:build unix

package proxy

import (
	"bufio"
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
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
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

// dialTLS13 connects to addr with small buffers, sends prefix (a PROXY
// header, say) and completes a TLS 1.3 handshake, its secrets written to
// keylog if it is not nil. It returns the socket and the TLS connection
// over it; the socket is closed at cleanup.
func dialTLS13(t *testing.T, addr string, prefix []byte, keylog io.Writer) (net.Conn, *tls.Conn) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if err := shrinkBuffers(raw); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Write(prefix); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, KeyLogWriter: keylog})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return raw, tc
}

// dialKeyUpdater connects to addr as dialTLS13 does.
func dialKeyUpdater(t *testing.T, addr string, prefix []byte) *keyUpdater {
	t.Helper()
	var keylog bytes.Buffer
	raw, tc := dialTLS13(t, addr, prefix, &keylog)
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

// send writes data in one application data record.
func (k *keyUpdater) send(t *testing.T, data []byte) {
	t.Helper()
	if _, err := k.raw.Write(k.record(23, data)); err != nil {
		t.Fatal(err)
	}
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

// closeNotifyTimeout is how long crypto/tls's Close may spend sending
// close_notify to a client that does not read.
const closeNotifyTimeout = 5 * time.Second

// stuckConnect is a CONNECT declaring 60,012 bytes, the first 50,016 of
// them: a client that sends it a byte at a time stays pending.
var stuckConnect = append([]byte{0x10, 0xec, 0xd4, 0x03, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0xea, 0x60},
	strings.Repeat("a", 50000)...)

// upgradeRequest asks for a WebSocket carrying MQTT.
const upgradeRequest = "GET /mqtt HTTP/1.1\r\nHost: proxy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"

// TestStuckTLSClients: a TLS client whose server-side Read is stuck
// writing (KeyUpdate requests it never reads the answers to) holds
// tls.Conn's write lock, and a close that writes (TLS close_notify, a
// WebSocket close frame) waits for it, or for crypto/tls's 5 s. Over TLS,
// over WebSocket over TLS, and behind a PROXY header, evicting such a
// client over max_pending_connects must not hold up a client on another
// listener, and Close must not wait for it either: both close the socket
// under the wrappers first, which a pending client that reads sees as the
// connection ending with nothing from the wrappers (no close frame, no
// close_notify).
func TestStuckTLSClients(t *testing.T) {
	pki := newTestPKI(t, "ca")
	cert, err := tls.LoadX509KeyPair(pki.issue(t, "proxy", true))
	if err != nil {
		t.Fatal(err)
	}
	// No session tickets: after its handshake, the server sends nothing a
	// pending client has not asked for.
	config := &tls.Config{Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: true}
	var framed []byte // stuckConnect, a byte per masked binary frame
	for _, b := range stuckConnect {
		framed = append(framed, 0x82, 0x81, 0, 0, 0, 0, b)
	}

	for _, tc := range []struct {
		name                   string
		proxyHeader, webSocket bool
	}{
		{"tls", false, false},
		{"wss", false, true},
		{"wss behind a PROXY header", true, true},
	} {
		// start serves a proxy capping pending connects at pending on the
		// transport, with small buffers, and on a plain listener; it
		// returns the proxy and a function connecting a pending client on
		// the transport: one that reads, whose socket it returns, or one
		// stuck in a KeyUpdate flood.
		start := func(t *testing.T, pending int) (p *Proxy, rec *proxytest.Recorder, plain string, connect func(stuck bool) net.Conn) {
			rec = proxytest.NewRecorder(t, "")
			// The connect timeout outlasts the test by far: the clients are
			// to be evicted or closed, not timed out.
			p = &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}, Limits: Limits{MaxPendingConnects: pending, ConnectTimeout: time.Minute}}
			ln := listen(t)
			var edge net.Listener = smallBuffersListener{ln}
			var prefix []byte
			if tc.proxyHeader {
				edge = (&transport.ProxyProtocolListener{Listener: edge, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Timeout: testHeaderTimeout}).Start()
				prefix = proxyHeader(t, 1, "203.0.113.9:40000", "192.0.2.1:8883")
			}
			edge = transport.NewTLSListener(edge, config)
			if tc.webSocket {
				edge = (&transport.WebSocketListener{Listener: edge, HandshakeTimeout: testHeaderTimeout}).Start()
			}
			serveOn(t, p, edge)
			plainLn := listen(t)
			go p.Serve(plainLn, "plain") // ends with the proxy
			// upgraded waits until the proxy has the connection the upgrade
			// made of the one client pending on the transport.
			upgraded := func() {
				waitFor(t, func() bool {
					p.mu.Lock()
					defer p.mu.Unlock()
					for e := p.pending.Front(); e != nil; e = e.Next() {
						// A WebSocket connection, which carries messages.
						if _, ok := e.Value.(*session).client.(interface{ NextMessage() (io.Reader, error) }); ok {
							return true
						}
					}
					return false
				})
			}
			connect = func(stuck bool) net.Conn {
				if stuck {
					attacker := dialKeyUpdater(t, ln.Addr().String(), prefix)
					data := stuckConnect
					if tc.webSocket {
						attacker.send(t, []byte(upgradeRequest))
						data = framed
					}
					attacker.flood(t, data)
					return attacker.raw
				}
				raw, c := dialTLS13(t, ln.Addr().String(), prefix, nil)
				if tc.webSocket {
					if _, err := io.WriteString(c, upgradeRequest); err != nil {
						t.Fatal(err)
					}
					resp, err := http.ReadResponse(bufio.NewReader(c), nil)
					if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
						t.Fatalf("upgrade: %v, %v", resp, err)
					}
					upgraded()
				}
				return raw
			}
			return p, rec, plainLn.Addr().String(), connect
		}
		// ends checks that the socket of a client that reads ends with
		// nothing more from the server.
		ends := func(t *testing.T, raw net.Conn) {
			t.Helper()
			raw.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
			got, err := io.ReadAll(raw)
			if err != nil && !isReset(err) {
				t.Errorf("the pending client's socket: %v, want EOF or a reset", err)
			}
			if len(got) > 0 {
				t.Errorf("the pending client got %d bytes before the end (a close frame, close_notify): its socket was not closed first", len(got))
			}
		}

		t.Run(tc.name+", evicted", func(t *testing.T) {
			p, rec, plain, connect := start(t, 1)
			reader := connect(false)
			connectThrough(t, dial(t, plain), rec, 0) // evicts the reader
			ends(t, reader)

			attacker := connect(true)
			begun := time.Now()
			connectThrough(t, dial(t, plain), rec, 1) // evicts the attacker, and must get in
			if took := time.Since(begun); took >= closeNotifyTimeout {
				t.Errorf("a client on another listener got through in %v, the time a close_notify takes to time out", took)
			}
			// What the server had queued drains, then the socket ends.
			attacker.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
			if _, err := io.Copy(io.Discard, attacker); err != nil && !isReset(err) {
				t.Errorf("the stuck client's socket: %v, want EOF or a reset once evicted", err)
			}
			p.Close()
		})

		t.Run(tc.name+", closed", func(t *testing.T) {
			p, _, _, connect := start(t, 0)
			reader := connect(false)
			attacker := connect(true)
			closed := make(chan struct{})
			go func() { p.Close(); close(closed) }()
			select {
			case <-closed:
			case <-time.After(closeNotifyTimeout): // the time a close_notify takes to time out
				t.Errorf("Close did not return within %v with a stuck client", closeNotifyTimeout)
				attacker.Close() // which unsticks it
				<-closed
			}
			ends(t, reader)
		})
	}
}
