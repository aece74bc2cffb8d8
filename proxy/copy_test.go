package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// echoUpstream is a stand-in broker that reads the CONNECT (of size
// connectSize) and then echoes every byte, over TLS when config is set.
func echoUpstream(t *testing.T, connectSize int, config *tls.Config) string {
	return proxytest.ServeTCP(t, func(c net.Conn) {
		if config != nil {
			c = tls.Server(c, config)
		}
		if _, err := io.CopyN(io.Discard, c, int64(connectSize)); err != nil {
			return
		}
		io.Copy(c, c)
	})
}

// TestTLSBulkBothWays sends 4 MiB each way through TLS on the client's
// side, and on both sides, and checks every byte: the user-space copy that
// takes a buffer per burst loses nothing, reorders nothing and ends.
func TestTLSBulkBothWays(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	pki := newTestPKI(t, "bulk")
	certFile, keyFile := pki.issue(t, "proxy", true)
	serverCert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	connect := connectPacket(t, packets.ProtocolV311, "good")
	payload := make([]byte, 4<<20)
	rand.Read(payload)

	for _, tc := range []struct {
		name        string
		upstreamTLS bool
	}{
		{"TLS client, TCP broker", false},
		{"TLS client, TLS broker", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Proxy{Verifier: passwordVerifier{}}
			var brokerTLS *tls.Config
			if tc.upstreamTLS {
				brokerTLS = &tls.Config{Certificates: []tls.Certificate{serverCert}}
				p.UpstreamTLS = &tls.Config{RootCAs: pki.pool(), ServerName: "127.0.0.1"}
			}
			p.Upstream = echoUpstream(t, len(connect), brokerTLS)
			addr, _, _ := startTLSProxy(t, p, transport.TLSFiles{CertFile: certFile, KeyFile: keyFile})
			c, err := tls.Dial("tcp", addr, pki.clientConfig(t, ""))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			written := make(chan error, 1)
			go func() {
				_, err := c.Write(append(append([]byte(nil), connect...), payload...))
				written <- err
			}()
			echoed := make([]byte, len(payload))
			if _, err := io.ReadFull(c, echoed); err != nil {
				t.Fatalf("reading the echo: %v", err)
			}
			if err := <-written; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(echoed, payload) {
				t.Error("the echo differs from what was sent")
			}
		})
	}
}

// BenchmarkThroughput moves bytes from a client through the proxy to a
// broker that discards them, over plain TCP (socket to socket: the epoll engine
// splices bulk traffic) and over TLS from the client (decrypted and
// copied through user space).
//
//	go test -run '^$' -bench Throughput -benchtime 2000x ./proxy
func BenchmarkThroughput(b *testing.B) {
	pki := newTestPKI(b, "bench")
	certFile, keyFile := pki.issue(b, "proxy", true)
	connect := func() []byte {
		pk, err := (&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: packets.ProtocolV311, CleanStart: true,
			ClientID: "bench", UsernameFlag: true, Username: "u", PasswordFlag: true, Password: []byte("good")}).Encode()
		if err != nil {
			b.Fatal(err)
		}
		return pk
	}()
	chunk := make([]byte, 64<<10)
	rand.Read(chunk)

	for _, wire := range []string{"tcp", "tls"} {
		b.Run(wire, func(b *testing.B) {
			received := make(chan int64, 1)
			sink := listen(b)
			go func() {
				c, err := sink.Accept()
				if err != nil {
					received <- 0
					return
				}
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				received <- n
			}()
			p := &Proxy{Upstream: sink.Addr().String(), Verifier: passwordVerifier{}}
			ln := listen(b)
			dial := func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }
			if wire == "tls" {
				certs, err := transport.NewCertReloader(transport.TLSFiles{CertFile: certFile, KeyFile: keyFile}, nil)
				if err != nil {
					b.Fatal(err)
				}
				serveOn(b, p, transport.NewTLSListener(ln, certs.Config()))
				dial = func() (net.Conn, error) { return tls.Dial("tcp", ln.Addr().String(), pki.clientConfig(b, "")) }
			} else {
				serveOn(b, p, ln)
			}
			c, err := dial()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(connect); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			c.Close() // the proxy passes the end on; the sink reports when all arrived
			if n := <-received; n != int64(len(connect))+int64(b.N)*int64(len(chunk)) {
				b.Fatalf("the broker received %d bytes, want %d", n, int64(len(connect))+int64(b.N)*int64(len(chunk)))
			}
		})
	}
}
