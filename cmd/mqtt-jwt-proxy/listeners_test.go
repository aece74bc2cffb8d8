package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
	"go.uber.org/goleak"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// TestServeEdgeListeners runs serve with an MQTT-over-TLS listener, a
// secure WebSocket listener that takes the token from the URL, using the
// example's test certificates, and a plain listener behind a load
// balancer's PROXY header, with the client certificate it verified, and
// connects through each.
func TestServeEdgeListeners(t *testing.T) {
	certs, err := filepath.Abs("../../configs/testdata")
	if err != nil {
		t.Fatal(err)
	}
	config := `listeners:
  - name: mqtts
    bind: "127.0.0.1:0"
    tls: {cert_file: ` + certs + `/server.pem, key_file: ` + certs + `/server.key, client_ca_file: ` + certs + `/ca.pem, client_auth: required}
  - name: wss
    bind: "127.0.0.1:0"
    tls: {cert_file: ` + certs + `/server.pem, key_file: ` + certs + `/server.key}
    websocket: {token_from: query, fail_if_no_subprotocol: true}
  - name: behind-lb
    bind: "127.0.0.1:0"
    proxy_protocol: {enabled: true, trusted_cidrs: ["127.0.0.1/32"], client_certificates: true}
upstream:
  address: embedded
authentication:
  - {mechanism: certificate, name: devices}
  - {mechanism: jwt, algorithm: hmac-based, secret: secret}
log: {format: json}
`
	lines, stop := serveInProcess(t, config)
	addrs := map[string]string{}
	for range 3 {
		line := waitForLog(t, lines, "listening")
		addrs[line["listener"].(string)] = line["address"].(string)
	}

	caPEM, err := os.ReadFile(filepath.Join(certs, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	device, err := tls.LoadX509KeyPair(filepath.Join(certs, "device-1.pem"), filepath.Join(certs, "device-1.key"))
	if err != nil {
		t.Fatal(err)
	}
	connect := func(password string) []byte {
		raw, err := (&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 4, CleanStart: true, ClientID: "edge",
			UsernameFlag: true, Username: "any", PasswordFlag: password != "", Password: []byte(password)}).Encode()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	accepted := []byte{0x20, 0x02, 0x00, 0x00}

	t.Run("mqtts with a device certificate", func(t *testing.T) {
		c, err := tls.Dial("tcp", addrs["mqtts"], &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{device}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(connect(seedToken))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil || string(ack) != string(accepted) {
			t.Errorf("CONNACK %x (%v), want %x", ack, err, accepted)
		}
	})
	t.Run("mqtts without a certificate", func(t *testing.T) {
		c, err := tls.Dial("tcp", addrs["mqtts"], &tls.Config{RootCAs: roots, ServerName: "localhost"})
		if err == nil {
			c.Write(connect(seedToken))
			_, err = c.Read(make([]byte, 4))
			c.Close()
		}
		if err == nil {
			t.Error("a client without a certificate got through client_auth: required")
		}
	})
	t.Run("wss with the token in the URL", func(t *testing.T) {
		u := url.URL{Scheme: "wss", Host: addrs["wss"], Path: "/mqtt", RawQuery: url.Values{"token": {seedToken}}.Encode()}
		dialer := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}, Subprotocols: []string{"mqtt"}}
		ws, _, err := dialer.Dial(u.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		ws.WriteMessage(websocket.BinaryMessage, connect(""))
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, ack, err := ws.ReadMessage(); err != nil || string(ack) != string(accepted) {
			t.Errorf("CONNACK %x (%v), want %x", ack, err, accepted)
		}
	})
	t.Run("wss without the mqtt subprotocol", func(t *testing.T) {
		u := url.URL{Scheme: "wss", Host: addrs["wss"], Path: "/mqtt", RawQuery: url.Values{"token": {seedToken}}.Encode()}
		dialer := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}
		ws, resp, err := dialer.Dial(u.String(), nil)
		if err == nil {
			ws.Close()
		}
		if resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("upgrade: %v, %v; want 400 with fail_if_no_subprotocol", err, resp)
		}
	})

	t.Run("a PROXY header from a trusted balancer", func(t *testing.T) {
		c, err := net.Dial("tcp", addrs["behind-lb"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(append([]byte("PROXY TCP4 203.0.113.9 192.0.2.1 40001 1883\r\n"), connect(seedToken)...))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil || string(ack) != string(accepted) {
			t.Errorf("CONNACK %x (%v), want %x", ack, err, accepted)
		}
		line := waitForLog(t, lines, "authentication accepted")
		for line["listener"] != "behind-lb" { // the lines of the connections above come first
			line = waitForLog(t, lines, "authentication accepted")
		}
		if line["remote"] != "203.0.113.9:40001" {
			t.Errorf("accepted %v, want the client the header names", line)
		}
	})

	t.Run("a certificate the balancer verified", func(t *testing.T) {
		h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(203, 0, 113, 9), Port: 40002}, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 8883})
		tlv, err := tlvparse.PP2SSL{Client: tlvparse.PP2_BITFIELD_CLIENT_SSL | tlvparse.PP2_BITFIELD_CLIENT_CERT_CONN, TLV: []proxyproto.TLV{
			{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte("TLSv1.3")},
			{Type: proxyproto.PP2_SUBTYPE_SSL_CN, Value: []byte("device-2")},
		}}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		h.SetTLVs([]proxyproto.TLV{tlv})
		header, err := h.Format()
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", addrs["behind-lb"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(append(header, connect("")...))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil || string(ack) != string(accepted) {
			t.Errorf("CONNACK %x (%v), want %x", ack, err, accepted)
		}
		line := waitForLog(t, lines, "authentication accepted")
		for line["remote"] != "203.0.113.9:40002" {
			line = waitForLog(t, lines, "authentication accepted")
		}
		if line["authenticator"] != "devices" || line["sub"] != "device-2" {
			t.Errorf("accepted %v, want by devices as device-2", line)
		}
	})

	stop()
}

// TestServeBindsFirst: with a port taken, serve fails at once with an error
// naming the port's key, before it starts the embedded broker or asks the
// JWKS endpoint for keys. Whatever fails once a socket is bound (a later
// port, the authentication chain), serve releases all it took: the ports,
// and the relay engine that a PROXY-protocol listener starts.
func TestServeBindsFirst(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var jwksRequests atomic.Int64
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		jwksRequests.Add(1)
		http.Error(w, "no keys here", http.StatusServiceUnavailable)
	}))
	defer jwks.Close()
	jwksAuthenticator := `{mechanism: jwt, use_jwks: true, endpoint: "` + jwks.URL + `"}`
	config := func(listeners, authenticator, metrics string) string {
		return "listeners: " + listeners + `
upstream: {address: embedded}
authentication:
  - ` + authenticator + `
log: {format: json}
` + metrics
	}

	// The port of a listener that binds before the failure, to check
	// that it is closed again; behind a load balancer, so that binding it
	// starts the relay engine.
	free := fmt.Sprintf("127.0.0.1:%d", proxytest.FreePort(t))
	first := `{name: lb, bind: "` + free + `", proxy_protocol: {enabled: true, trusted_cidrs: ["127.0.0.1/32"]}}`

	tests := []struct {
		name, config, wantErr string
	}{
		{"admin port taken", config("["+first+"]", jwksAuthenticator, `metrics: {bind: "`+taken.Addr().String()+`"}`),
			"mqtt-jwt-proxy serve: metrics.bind: listen tcp " + taken.Addr().String() + ": bind: address already in use"},
		{"listener port taken", config("["+first+`, {name: busy, bind: "`+taken.Addr().String()+`"}]`, jwksAuthenticator, ""),
			"mqtt-jwt-proxy serve: listener busy: listen tcp " + taken.Addr().String() + ": bind: address already in use"},
		{"authentication chain fails", config("["+first+"]", `{mechanism: jwt, algorithm: public-key, public_key: "no such key.pem"}`, ""),
			"authentication[0] (jwt): public_key: not PEM text, and not a readable file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxytest.VerifyNoLeaks(t, goleak.IgnoreCurrent()) // the JWKS endpoint's goroutines stay
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tt.config), 0o600); err != nil {
				t.Fatal(err)
			}
			// Should serve go on, the deadline ends it with exit code 0.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var stderr bytes.Buffer
			if code := run(ctx, []string{"serve", "-config", path}, io.Discard, &stderr); code != 1 {
				t.Errorf("serve exited %d, want 1", code)
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("serve said:\n%s\nwant %q", stderr.String(), tt.wantErr)
			}
			for _, started := range []string{"embedded broker started", "authenticator ready", "listening"} {
				if strings.Contains(stderr.String(), started) {
					t.Errorf("serve logged %q before failing:\n%s", started, stderr.String())
				}
			}
			if n := jwksRequests.Load(); n != 0 {
				t.Errorf("the JWKS endpoint got %d requests, want none", n)
			}
			ln, err := net.Listen("tcp", free)
			if err != nil {
				t.Fatalf("the listener bound before the failure stays open: %v", err)
			}
			ln.Close()
		})
	}
}
