package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// observedProxy is a proxy under test whose logs and metrics the test
// reads.
type observedProxy struct {
	*Proxy
	addr string
	logs *observer.ObservedLogs
	reg  *prometheus.Registry
}

// startObserved serves p on a loopback listener with an observed logger
// and metrics on a fresh registry; it is closed at cleanup.
func startObserved(t *testing.T, p *Proxy) *observedProxy {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	reg := prometheus.NewRegistry()
	p.Logger, p.Metrics = zap.New(core), NewMetrics(reg, "test")
	return &observedProxy{Proxy: p, addr: startProxy(t, p), logs: logs, reg: reg}
}

// waitLogged waits until a line with message was logged, with the fields
// given.
func (o *observedProxy) waitLogged(t *testing.T, message string, fields ...zap.Field) {
	t.Helper()
	found := false
	defer func() {
		if !found { // waitFor failed the test: say what was logged instead
			t.Logf("no log line %q with %v; logged: %v", message, fields, o.logs.All())
		}
	}()
	waitFor(t, func() bool {
		lines := o.logs.FilterMessage(message)
		for _, f := range fields {
			lines = lines.FilterField(f)
		}
		found = lines.Len() > 0
		return found
	})
}

// metric returns the value of the counter or gauge name with exactly the
// labels given (name=value pairs) on the proxy's registry; 0 if absent.
func (o *observedProxy) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	return gathered(t, o.reg, name, labels...)
}

// gathered returns the value of the counter or gauge name with exactly
// the labels given (name=value pairs) on reg; 0 if absent.
func gathered(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, family := range families {
		if family.GetName() != name {
			continue
		}
		for _, m := range family.GetMetric() {
			var have []string
			for _, l := range m.GetLabel() {
				have = append(have, l.GetName()+"="+l.GetValue())
			}
			if strings.Join(have, ",") == strings.Join(labels, ",") {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// waitIdle waits until the proxy holds no connection.
func (o *observedProxy) waitIdle(t *testing.T) {
	t.Helper()
	waitFor(t, func() bool { o.mu.Lock(); defer o.mu.Unlock(); return len(o.sessions) == 0 })
	if n := o.metric(t, "mqtt_jwt_proxy_connections_active", "listener=test"); n != 0 {
		t.Errorf("connections_active = %v once every connection ended", n)
	}
}

// readToClose reads what c receives until the peer closes (EOF or
// reset), for at most DefaultTimeout.
func readToClose(c net.Conn) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	var got bytes.Buffer
	if _, err := got.ReadFrom(c); err != nil && !isReset(err) {
		return got.Bytes(), fmt.Errorf("reading until the peer closes: %w (got %x)", err, got.Bytes())
	}
	return got.Bytes(), nil
}

// readUntilClosed is readToClose failing the test on error; then it
// closes c, as a client would.
func readUntilClosed(t *testing.T, c net.Conn) []byte {
	t.Helper()
	defer c.Close()
	got, err := readToClose(c)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// heapInUse is the live heap after a collection, in bytes.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestUpstreamFaults: each way the broker can fail has one outcome for
// the client, one log line and metric, and leaves no goroutine behind.
func TestUpstreamFaults(t *testing.T) {
	v5 := packets.ProtocolV5
	token := func(t *testing.T) string { return mint(t, e2eSecret, "dev", nil) }

	t.Run("refuses the connection", func(t *testing.T) {
		proxytest.VerifyNoLeaks(t)
		o := startObserved(t, &Proxy{Upstream: proxytest.ClosedAddr(t), Verifier: jwtChain(t, boundHS256)})
		c := dial(t, o.addr)
		c.Write(connectAs(t, v5, "dev", token(t)))
		if got, want := readUntilClosed(t, c), connackFor(t, v5, packets.ServerUnavailable); !bytes.Equal(got, want) {
			t.Errorf("client got %x, want CONNACK server unavailable %x", got, want)
		}
		o.waitLogged(t, "upstream unavailable", zap.String("outcome", "refused"), zap.String("reason", reasonUpstreamUnavailable))
		if n := o.metric(t, "mqtt_jwt_proxy_upstream_dial_failures_total"); n != 1 {
			t.Errorf("upstream_dial_failures_total = %v, want 1", n)
		}
		// The log and the metrics tell one story: a good token (the line
		// says whose), refused for the broker, which an alert on refusals
		// by reason sees.
		if n := o.logs.FilterMessage("upstream unavailable").FilterField(zap.String("sub", "dev")).Len(); n != 1 {
			t.Errorf("%d upstream unavailable lines name the token's subject, want 1", n)
		}
		if n := o.logs.FilterMessage("authentication accepted").Len(); n != 0 {
			t.Errorf("%d lines say the client was accepted", n)
		}
		if n := o.metric(t, "mqtt_jwt_proxy_authentications_total", "outcome=refused", "reason=upstream_unavailable"); n != 1 {
			t.Errorf("authentications_total{refused,upstream_unavailable} = %v, want 1", n)
		}
		if n := o.metric(t, "mqtt_jwt_proxy_authentications_total", "outcome=accepted", "reason="); n != 0 {
			t.Errorf("authentications_total{accepted} = %v, want 0", n)
		}
		o.waitIdle(t)
	})

	t.Run("accepts, reads the CONNECT, resets", func(t *testing.T) {
		proxytest.VerifyNoLeaks(t)
		up := proxytest.ServeTCP(t, func(c net.Conn) {
			packets.ReadConnect(c, 0)
			c.(*net.TCPConn).SetLinger(0) // the close that follows sends RST
		})
		o := startObserved(t, &Proxy{Upstream: up, Verifier: jwtChain(t, boundHS256)})
		c := dial(t, o.addr)
		c.Write(connectAs(t, v5, "dev", token(t)))
		if got := readUntilClosed(t, c); len(got) != 0 {
			t.Errorf("client got %x, want the connection closed without a byte", got)
		}
		o.waitLogged(t, "connection closed", zap.Int64("bytes_to_client", 0))
		o.waitIdle(t)
	})

	t.Run("accepts, never answers the CONNECT", func(t *testing.T) {
		proxytest.VerifyNoLeaks(t)
		upstreamEnded := make(chan struct{})
		up := proxytest.ServeTCP(t, func(c net.Conn) {
			packets.ReadConnect(c, 0)
			io.Copy(io.Discard, c)
			close(upstreamEnded)
		})
		o := startObserved(t, &Proxy{Upstream: up, Verifier: jwtChain(t, boundHS256)})
		c := dial(t, o.addr)
		c.Write(connectAs(t, v5, "dev", token(t)))
		// Past the CONNECT the proxy only relays: waiting for the CONNACK
		// is the client's business (its own timeout), not the proxy's.
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("client read %d bytes, %v; want nothing while the broker is silent", n, err)
		}
		closed := make(chan error, 1)
		go func() { closed <- o.Close() }()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not return within 5s while a connection waited on a silent broker")
		}
		if got := readUntilClosed(t, c); len(got) != 0 {
			t.Errorf("client got %x after Close", got)
		}
		select {
		case <-upstreamEnded:
		case <-time.After(proxytest.DefaultTimeout):
			t.Fatal("the broker's connection stayed open after Close")
		}
		o.waitIdle(t)
	})

	t.Run("closes mid-stream", func(t *testing.T) {
		proxytest.VerifyNoLeaks(t)
		partial := []byte{0x30, 0x0a, 0, 3, 't', '/', '1'} // a PUBLISH cut short
		want := append(connackFor(t, v5, packets.Success), partial...)
		up := proxytest.ServeTCP(t, func(c net.Conn) {
			packets.ReadConnect(c, 0)
			c.Write(want)
		})
		o := startObserved(t, &Proxy{Upstream: up, Verifier: jwtChain(t, boundHS256)})
		c := dial(t, o.addr)
		c.Write(connectAs(t, v5, "dev", token(t)))
		if got := readUntilClosed(t, c); !bytes.Equal(got, want) {
			t.Errorf("client got %x, want everything the broker sent before closing, %x", got, want)
		}
		o.waitLogged(t, "connection closed", zap.Int64("bytes_to_client", int64(len(want))))
		o.waitIdle(t)
		if n := o.metric(t, "mqtt_jwt_proxy_bytes_total", "direction=to_client"); n != float64(len(want)) {
			t.Errorf("bytes_total{to_client} = %v, want %d", n, len(want))
		}
	})

	t.Run("client disappears mid-stream", func(t *testing.T) {
		proxytest.VerifyNoLeaks(t)
		upstreamGot := make(chan []byte, 1)
		connack := connackFor(t, v5, packets.Success)
		up := proxytest.ServeTCP(t, func(c net.Conn) {
			packets.ReadConnect(c, 0)
			c.Write(connack)
			b, _ := io.ReadAll(c) // until the proxy passes the client's end on
			upstreamGot <- b
		})
		o := startObserved(t, &Proxy{Upstream: up, Verifier: jwtChain(t, boundHS256)})
		c := dial(t, o.addr)
		c.Write(connectAs(t, v5, "dev", token(t)))
		if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
			t.Fatalf("reading CONNACK: %v", err)
		}
		c.Write(publishPacket("last words"))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		select {
		case b := <-upstreamGot:
			if !bytes.Equal(b, publishPacket("last words")) && len(b) != 0 {
				t.Errorf("broker got %x after the CONNECT, want the PUBLISH or nothing", b)
			}
		case <-time.After(proxytest.DefaultTimeout):
			t.Fatal("the broker's connection stayed open after the client vanished")
		}
		o.waitLogged(t, "connection closed")
		o.waitIdle(t)
	})
}

// TestBackPressure: while the broker does not read, a client pushing
// bytes is held back by TCP flow control; the proxy buffers nothing of its
// own, so its heap does not grow with what the client pushes.
func TestBackPressure(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	release := make(chan struct{})
	connack := connackFor(t, packets.ProtocolV311, packets.Success)
	up := proxytest.ServeTCP(t, func(c net.Conn) {
		packets.ReadConnect(c, 0)
		c.Write(connack)
		<-release // reads nothing more
	})
	o := startObserved(t, &Proxy{Upstream: up, Verifier: jwtChain(t, boundHS256)})
	c := dial(t, o.addr)
	c.Write(connectAs(t, packets.ProtocolV311, "dev", mint(t, e2eSecret, "dev", nil)))
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatalf("reading CONNACK: %v", err)
	}

	const chunk, limit = 64 << 10, 256 << 20
	payload := bytes.Repeat([]byte{'x'}, chunk)
	before := heapInUse()
	pushed := 0
	for pushed < limit {
		// The write stalls once the kernel's buffers on the way are full.
		c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Write(payload)
		pushed += n
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("write after %d bytes: %v", pushed, err)
		}
	}
	grown := int64(heapInUse()) - int64(before)
	t.Logf("back-pressure: the client pushed %d KiB before stalling; heap grew by %d KiB", pushed>>10, grown>>10)
	if pushed >= limit {
		t.Errorf("the client pushed %d MiB without stalling while the broker read nothing", pushed>>20)
	}
	if grown > 4<<20 {
		t.Errorf("heap grew by %d KiB while %d KiB waited for a broker that does not read", grown>>10, pushed>>10)
	}
	close(release)
	readUntilClosed(t, c)
	o.waitIdle(t)
}

// jwksFault is how a broken JWKS endpoint answers.
type jwksFault struct {
	name  string
	serve http.HandlerFunc
	// logged is part of the authn log line's error when the fetch fails
	// before the client is refused; empty when the fetch is still hanging.
	logged string
}

// TestJWKSFaults: an endpoint that hangs, fails, or sends garbage or too
// much costs a client a prompt CONNACK "not authorized" with the reason
// keys_unavailable, never a hung connection, and the broker nothing.
func TestJWKSFaults(t *testing.T) {
	// The refusal comes at the connect timeout at the latest; a proxy
	// that waited for a hung fetch would take jwksFetchTimeout (10 s).
	const connectTimeout, margin = 2 * time.Second, 5 * time.Second
	for _, fault := range []jwksFault{
		{name: "slow", serve: func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
		{name: "500", serve: func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusInternalServerError) }, logged: "500 Internal Server Error"},
		{name: "invalid JSON", serve: func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, `{"keys": [{"kty":`) }, logged: "parse JWKS"},
		{name: "10 MB body", serve: func(w http.ResponseWriter, _ *http.Request) {
			block := bytes.Repeat([]byte(" "), 64<<10)
			for range 160 {
				if _, err := w.Write(block); err != nil {
					return // the proxy stopped reading, as it should
				}
			}
		}, logged: "body is over the 1048576-byte limit"},
	} {
		t.Run(fault.name, func(t *testing.T) {
			proxytest.VerifyNoLeaks(t)
			server := httptest.NewServer(fault.serve)
			t.Cleanup(server.Close) // after the chain's, which ends a hanging fetch
			core, authnLogs := observer.New(zap.DebugLevel)
			chain := jwtChain(t, configs.Authenticator{Name: "jwks", Mechanism: "jwt", UseJWKS: true, Endpoint: server.URL},
				authn.WithLogger(zap.New(core)))
			rec := proxytest.NewRecorder(t, "")
			o := startObserved(t, &Proxy{Upstream: rec.Addr, Verifier: chain, Limits: Limits{ConnectTimeout: connectTimeout}})

			token := signJWT(t, jwa.ES256, keyPair(t, "p256"), "k1", "dev")
			c := dial(t, o.addr)
			start := time.Now()
			c.Write(connectAs(t, packets.ProtocolV5, "dev", token))
			if got, want := readUntilClosed(t, c), connackFor(t, packets.ProtocolV5, packets.NotAuthorized); !bytes.Equal(got, want) {
				t.Errorf("client got %x, want CONNACK not authorized %x", got, want)
			}
			if took := time.Since(start); took > connectTimeout+margin {
				t.Errorf("the refusal took %v; connect_timeout is %v", took, connectTimeout)
			}
			o.waitLogged(t, "authentication refused", zap.String("reason", "keys_unavailable"))
			if n := o.metric(t, "mqtt_jwt_proxy_authentications_total", "outcome=refused", "reason=keys_unavailable"); n != 1 {
				t.Errorf("authentications_total{refused,keys_unavailable} = %v, want 1", n)
			}
			if fault.logged != "" {
				failed := authnLogs.FilterMessageSnippet("jwks fetch failed").All()
				if len(failed) == 0 || !strings.Contains(failed[0].ContextMap()["error"].(string), fault.logged) {
					t.Errorf("authn logged %v, want a failed fetch mentioning %q", authnLogs.All(), fault.logged)
				}
			}
			if n := rec.Accepted(); n != 0 {
				t.Errorf("the broker saw %d connections", n)
			}
			o.waitIdle(t)
		})
	}
}
