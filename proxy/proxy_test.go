package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// passwordVerifier accepts the password "good" and refuses anything else
// with the reason named by the password ("token_expired", ...), so a test
// picks the outcome by what it sends.
type passwordVerifier struct{}

func (passwordVerifier) Verify(_ context.Context, req authn.Request) (authn.Identity, error) {
	if !req.HasPassword {
		return authn.Identity{}, &authn.RefuseError{Reason: authn.ErrTokenMissing}
	}
	if string(req.Password) == "good" {
		return authn.Identity{Authenticator: "test", Subject: req.ClientID}, nil
	}
	return authn.Identity{}, &authn.RefuseError{Reason: authn.RefuseReason(req.Password)}
}

// startProxy serves p, with the tests' timeouts (see withTestTimeouts),
// on a loopback listener and returns its address; the proxy is closed at
// cleanup.
func startProxy(t *testing.T, p *Proxy) string {
	t.Helper()
	withTestTimeouts(p)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln, "test") }()
	t.Cleanup(func() {
		p.Close()
		if err := <-served; !errors.Is(err, ErrProxyClosed) {
			t.Errorf("Serve returned %v, want ErrProxyClosed", err)
		}
	})
	return ln.Addr().String()
}

// connectPacket is a CONNECT from client "dev-1" with password as its
// token (see connectAs).
func connectPacket(t *testing.T, version byte, password string) []byte {
	return connectAs(t, version, "dev-1", password)
}

// publishPacket is a QoS 0 PUBLISH of payload to topic t/1.
func publishPacket(payload string) []byte {
	body := append([]byte{0, 3, 't', '/', '1'}, payload...)
	return append([]byte{0x30, byte(len(body))}, body...)
}

// readAll reads what the proxy sends until it closes the connection.
func readAll(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading until close: %v (got %x)", err, b)
	}
	return b
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRefusalConnackCodes(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	addr := startProxy(t, &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}})

	cases := []struct {
		password string
		v5, v3   byte
	}{
		{"", 0x86, 4},
		{string(authn.ErrTokenMalformed), 0x86, 4},
		{string(authn.ErrTokenExpired), 0x86, 4},
		{string(authn.ErrTokenNotYetValid), 0x86, 4},
		{string(authn.ErrClaimMismatch), 0x86, 4},
		{string(authn.ErrBadSignature), 0x87, 5},
		{string(authn.ErrNoKey), 0x87, 5},
		{string(authn.ErrKeysUnavailable), 0x87, 5},
		{string(authn.ErrAlgorithmNotAllowed), 0x87, 5},
		{string(authn.ErrNoAuthenticatorAccepted), 0x87, 5},
	}
	for _, tc := range cases {
		for _, version := range []byte{packets.ProtocolV31, packets.ProtocolV311, packets.ProtocolV5} {
			t.Run(tc.password+"/v"+string('0'+version), func(t *testing.T) {
				c := dial(t, addr)
				c.Write(connectPacket(t, version, tc.password))
				got := readAll(t, c)
				want := []byte{0x20, 0x02, 0x00, tc.v3}
				if version == packets.ProtocolV5 {
					want = []byte{0x20, 0x03, 0x00, tc.v5, 0x00}
				}
				if !bytes.Equal(got, want) {
					t.Errorf("proxy answered %x, want %x", got, want)
				}
			})
		}
	}
	// Only an MQTT 5 client names an Authentication Method: one that no
	// authenticator takes is a bad authentication method [MQTT-4.12.0-1].
	t.Run(string(authn.ErrBadAuthMethod)+"/v5", func(t *testing.T) {
		c := dial(t, addr)
		c.Write(connectPacket(t, packets.ProtocolV5, string(authn.ErrBadAuthMethod)))
		if got, want := readAll(t, c), []byte{0x20, 0x03, 0x00, 0x8C, 0x00}; !bytes.Equal(got, want) {
			t.Errorf("proxy answered %x, want %x", got, want)
		}
	})
	if n := rec.Accepted(); n != 0 {
		t.Errorf("upstream saw %d connections from refused clients, want 0", n)
	}
}

// TestPipelinedBytes: MQTT lets a client send packets right after CONNECT,
// before CONNACK. They reach the broker only if the CONNECT was accepted.
func TestPipelinedBytes(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	for _, version := range []byte{packets.ProtocolV311, packets.ProtocolV5} {
		refused := append(connectPacket(t, version, string(authn.ErrBadSignature)), publishPacket("leak")...)
		accepted := append(connectPacket(t, version, "good"), publishPacket("hello")...)

		rec := proxytest.NewRecorder(t, "")
		addr := startProxy(t, &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}})

		c := dial(t, addr)
		c.Write(refused) // one write: CONNECT and PUBLISH together
		if got := readAll(t, c); len(got) == 0 || got[0] != 0x20 {
			t.Fatalf("refused client got %x, want a CONNACK", got)
		}

		c = dial(t, addr)
		c.Write(accepted)
		rec.WaitReceived(t, 0, len(accepted))
		if got := rec.Received()[0]; !bytes.Equal(got, accepted) {
			t.Errorf("upstream received %x, want exactly the client's bytes %x", got, accepted)
		}
		if n := rec.Accepted(); n != 1 {
			t.Errorf("upstream saw %d connections, want 1 (the accepted client only)", n)
		}
	}
}

func TestMalformedFirstPackets(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	core, logs := observer.New(zap.InfoLevel)
	addr := startProxy(t, &Proxy{
		Upstream: rec.Addr,
		Verifier: passwordVerifier{},
		// Two cases wait it out; the others must be answered well within
		// it, also on a busy machine under -race.
		Limits: Limits{ConnectTimeout: 2 * time.Second},
		Logger: zap.New(core),
	})

	good := connectPacket(t, packets.ProtocolV311, "good")
	v5 := connectPacket(t, packets.ProtocolV5, "good")
	cases := []struct {
		name   string
		send   []byte
		want   []byte // what the proxy answers before closing
		reason string
	}{
		{"publish first", publishPacket("x"), nil, reasonNotConnect},
		{"five byte length", []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x01}, nil, reasonMalformed},
		{"declared 256 MB, v3", append([]byte{0x10, 0xff, 0xff, 0xff, 0x7f}, good[2:12]...), nil, reasonTooLarge},
		{"declared 256 MB, v5", append([]byte{0x10, 0xff, 0xff, 0xff, 0x7f}, v5[2:12]...), []byte{0x20, 0x03, 0x00, 0x95, 0x00}, reasonTooLarge},
		{"truncated", good[:len(good)-3], nil, reasonConnectTimeout},
		{"protocol level 6", append(append([]byte{}, good[:8]...), append([]byte{6}, good[9:]...)...), []byte{0x20, 0x02, 0x00, 0x01}, reasonUnsupportedProtocol},
		{"protocol level 0", append(append([]byte{}, good[:8]...), append([]byte{0}, good[9:]...)...), []byte{0x20, 0x02, 0x00, 0x01}, reasonUnsupportedProtocol},
		// MQTT 5 has no bridge bit: the 3.1.1 answer to an unknown level.
		{"protocol level 0x85", append(append([]byte{}, v5[:8]...), append([]byte{0x85}, v5[9:]...)...), []byte{0x20, 0x02, 0x00, 0x01}, reasonUnsupportedProtocol},
		{"protocol name", append(append([]byte{}, good[:4]...), append([]byte("MQTX"), good[8:]...)...), nil, ""},
		{"silent client", nil, nil, reasonConnectTimeout},
		{"closed at once", []byte{}, nil, reasonClientClosed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			if tc.send != nil {
				c.Write(tc.send)
			}
			if tc.name == "closed at once" {
				c.(*net.TCPConn).CloseWrite()
			}
			if got := readAll(t, c); !bytes.Equal(got, tc.want) {
				t.Errorf("proxy answered %x, want %x", got, tc.want)
			}
		})
	}
	if n := rec.Accepted(); n != 0 {
		t.Errorf("upstream saw %d connections, want 0", n)
	}
	for _, tc := range cases {
		if tc.reason != "" && logs.FilterField(zap.String("reason", tc.reason)).Len() == 0 {
			t.Errorf("no log line with reason %q", tc.reason)
		}
	}
}

func TestUpstreamUnavailable(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	addr := startProxy(t, &Proxy{Upstream: proxytest.ClosedAddr(t), Verifier: passwordVerifier{}})

	for version, want := range map[byte][]byte{
		packets.ProtocolV311: {0x20, 0x02, 0x00, 0x03},
		packets.ProtocolV5:   {0x20, 0x03, 0x00, 0x88, 0x00},
	} {
		c := dial(t, addr)
		c.Write(connectPacket(t, version, "good"))
		if got := readAll(t, c); !bytes.Equal(got, want) {
			t.Errorf("v%d: proxy answered %x, want %x", version, got, want)
		}
	}
}

// TestHalfClose: a client that sends DISCONNECT and shuts down its sending
// half still receives what the broker sends before it closes, and the
// broker sees the end of the stream.
func TestHalfClose(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	connect := connectPacket(t, packets.ProtocolV311, "good")
	brokerGot := make(chan []byte, 1)
	up := proxytest.ServeTCP(t, func(c net.Conn) {
		b, _ := io.ReadAll(c) // until the client's FIN arrives through the proxy
		c.Write([]byte{0x20, 0x02, 0x00, 0x00})
		brokerGot <- b
	})
	addr := startProxy(t, &Proxy{Upstream: up, Verifier: passwordVerifier{}})

	c := dial(t, addr)
	c.Write(connect)
	c.Write([]byte{0xe0, 0x00}) // DISCONNECT
	c.(*net.TCPConn).CloseWrite()
	if got := readAll(t, c); !bytes.Equal(got, []byte{0x20, 0x02, 0x00, 0x00}) {
		t.Errorf("client got %x after its half-close, want the broker's bytes", got)
	}
	if got, want := <-brokerGot, append(connect, 0xe0, 0x00); !bytes.Equal(got, want) {
		t.Errorf("broker got %x, want %x", got, want)
	}
}

// gateVerifier accepts every client, once its gate is open; entered
// receives one value per verification under way.
type gateVerifier struct {
	entered chan struct{}
	gate    chan struct{}
}

func (v gateVerifier) Verify(ctx context.Context, req authn.Request) (authn.Identity, error) {
	v.entered <- struct{}{}
	select {
	case <-v.gate:
		return authn.Identity{Authenticator: "test", Subject: req.ClientID}, nil
	case <-ctx.Done():
		return authn.Identity{}, ctx.Err()
	}
}

// TestShutdownDrainsConnectsUnderWay: a client accepted before Shutdown
// began, and authenticated after, is connected to the broker and drained
// like the others, dialed by the engine or through DialUpstream.
func TestShutdownDrainsConnectsUnderWay(t *testing.T) {
	for _, dialed := range []bool{false, true} {
		name := "engine"
		if dialed {
			name = "DialUpstream"
		}
		t.Run(name, func(t *testing.T) {
			proxytest.VerifyNoLeaks(t)
			rec := proxytest.NewRecorder(t, "")
			draining := make(chan struct{})
			core, _ := observer.New(zap.InfoLevel)
			logger := zap.New(core, zap.Hooks(func(e zapcore.Entry) error {
				if e.Message == "listeners closed; draining" {
					close(draining)
				}
				return nil
			}))
			v := gateVerifier{entered: make(chan struct{}, 1), gate: make(chan struct{})}
			p := &Proxy{Upstream: rec.Addr, Verifier: v, Logger: logger}
			if dialed {
				p.DialUpstream = func(ctx context.Context) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", rec.Addr)
				}
			}
			addr := startProxy(t, p)
			c := dial(t, addr)
			connect := connectPacket(t, packets.ProtocolV311, "good")
			c.Write(connect)
			<-v.entered

			stop, cancel := context.WithCancel(context.Background())
			defer cancel()
			shutdown := make(chan error, 1)
			go func() { shutdown <- p.Shutdown(stop) }()
			<-draining
			close(v.gate)

			c.Write([]byte{0xc0, 0x00}) // PINGREQ, relayed once the connection is
			rec.WaitReceived(t, 0, len(connect)+2)
			select {
			case err := <-shutdown:
				t.Fatalf("Shutdown returned %v with a client connected", err)
			default:
			}
			c.Close()
			select {
			case err := <-shutdown:
				if err != nil {
					t.Errorf("Shutdown = %v once the last client left, want nil", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Shutdown did not return once the last client left")
			}
		})
	}
}

func TestServeAfterClose(t *testing.T) {
	p := &Proxy{Upstream: "127.0.0.1:1", Verifier: passwordVerifier{}}
	p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Serve(ln, "late"); !errors.Is(err, ErrProxyClosed) {
		t.Errorf("Serve after Close = %v, want ErrProxyClosed", err)
	}
	if err := (&Proxy{}).Serve(ln, "x"); err == nil || errors.Is(err, ErrProxyClosed) {
		t.Errorf("Serve without Verifier = %v, want a configuration error", err)
	}
}

// TestReload: a new verifier and forward apply to connections accepted
// after Reload, while one accepted before goes on.
func TestReload(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}}
	addr := startProxy(t, p)
	before := dial(t, addr)
	connectThrough(t, before, rec, 0)

	strip, err := NewForward(configs.Forward{Password: configs.ForwardStrip})
	if err != nil {
		t.Fatal(err)
	}
	p.Reload(refuseAll{}, Limits{}, strip, Authorization{})
	refused := dial(t, addr)
	refused.Write(connectPacket(t, packets.ProtocolV311, "good"))
	if got := readAll(t, refused); !bytes.Equal(got, []byte{0x20, 0x02, 0x00, 0x05}) {
		t.Errorf("after reloading a refusing verifier, a new client got %x, want CONNACK 5", got)
	}

	p.Reload(passwordVerifier{}, Limits{}, strip, Authorization{})
	after := dial(t, addr)
	after.Write(connectPacket(t, packets.ProtocolV311, "good"))
	rec.WaitAccepted(t, 2)
	before.Write(publishPacket("still here"))
	want := append(connectPacket(t, packets.ProtocolV311, "good"), publishPacket("still here")...)
	rec.WaitReceived(t, 0, len(want))
	if got := rec.Received()[0]; !bytes.Equal(got, want) {
		t.Errorf("the connection made before the reloads got %x upstream, want %x", got, want)
	}
	wantStripped := connectAs(t, packets.ProtocolV311, "dev-1", "")
	rec.WaitReceived(t, 1, len(wantStripped))
	if got := rec.Received()[1]; !bytes.Equal(got, wantStripped) {
		t.Errorf("after reloading forward.password: strip, upstream got %x, want %x", got, wantStripped)
	}
}

// refuseAll refuses every client as not authorized.
type refuseAll struct{}

func (refuseAll) Verify(context.Context, authn.Request) (authn.Identity, error) {
	return authn.Identity{}, &authn.RefuseError{Reason: authn.ErrBadSignature}
}
