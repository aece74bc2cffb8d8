package proxy

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// asBridge is raw, a 3.1 or 3.1.1 CONNECT, as a broker's bridge sends it:
// the protocol level with bit 7 set.
func asBridge(t *testing.T, raw []byte) []byte {
	t.Helper()
	pk, err := packets.ReadConnect(bytes.NewReader(raw), 0)
	if err != nil {
		t.Fatal(err)
	}
	pk.Bridge = true
	b, err := pk.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBridgeConnect: a bridge's CONNECT (level 0x83 or 0x84) is accepted,
// goes upstream byte for byte with what was pipelined behind it, and its
// log lines say bridge: true; a refused bridge gets its version's CONNACK.
func TestBridgeConnect(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	p := &Proxy{Upstream: rec.Addr, Verifier: passwordVerifier{}}
	logs := observe(p)
	addr := startProxy(t, p)

	accepted := 0
	for _, version := range []byte{packets.ProtocolV31, packets.ProtocolV311} {
		t.Run("v"+string('0'+version), func(t *testing.T) {
			id := "edge-v" + string('0'+version)
			good := append(asBridge(t, connectAs(t, version, id, "good")), publishPacket("up")...)
			c := dial(t, addr)
			c.Write(good)
			rec.WaitReceived(t, accepted, len(good))
			if got := rec.Received()[accepted]; !bytes.Equal(got, good) {
				t.Errorf("upstream received %x, want the bridge's bytes %x", got, good)
			}
			accepted++
			line := waitLog(t, logs, "authentication accepted", zap.String("client_id", id))
			if got := line.ContextMap()["bridge"]; got != true {
				t.Errorf("accepted line has bridge %v, want true: %v", got, line.ContextMap())
			}
			c.Close()
			line = waitLog(t, logs, "connection closed", zap.String("client_id", id))
			if got := line.ContextMap()["bridge"]; got != true {
				t.Errorf("closing line has bridge %v, want true: %v", got, line.ContextMap())
			}

			c = dial(t, addr)
			c.Write(asBridge(t, connectAs(t, version, id+"-forged", string(authn.ErrBadSignature))))
			if got, want := readAll(t, c), []byte{0x20, 0x02, 0x00, 0x05}; !bytes.Equal(got, want) {
				t.Errorf("refused bridge got %x, want %x", got, want)
			}
			line = waitLog(t, logs, "authentication refused", zap.String("client_id", id+"-forged"))
			if got := line.ContextMap()["bridge"]; got != true {
				t.Errorf("refused line has bridge %v, want true: %v", got, line.ContextMap())
			}
		})
	}

	// A client that is no bridge gets no bridge field.
	c := dial(t, addr)
	c.Write(connectAs(t, packets.ProtocolV311, "plain", "good"))
	line := waitLog(t, logs, "authentication accepted", zap.String("client_id", "plain"))
	if _, ok := line.ContextMap()["bridge"]; ok {
		t.Errorf("a plain client's line has a bridge field: %v", line.ContextMap())
	}
	// The accepted line comes before the dial: wait for the broker.
	rec.WaitAccepted(t, accepted+1)
	if n := rec.Accepted(); n != accepted+1 {
		t.Errorf("upstream saw %d connections, want %d: a refused bridge reached it", n, accepted+1)
	}
}

// TestMosquittoBridgeThroughProxy runs a real mosquitto bridge from an
// edge broker to a cloud broker, through the proxy with a token as its
// password, as directly: the cloud must take it for a bridge. A bridge
// that is not taken for one gets its own messages on "both" topics back,
// so the edge's subscribers see them twice, and the retained messages it
// relays lose their retain flag, so the edge keeps none of them.
func TestMosquittoBridgeThroughProxy(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	chain, err := authn.New([]configs.Authenticator{{
		Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret,
		VerifyClaims: map[string]string{"sub": "${clientid}"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)

	for _, tc := range []struct {
		name, version string
		viaProxy      bool
		wantBridge    bool // the cloud logs a bridge, not a client
	}{
		{"direct mqttv311", "mqttv311", false, true},
		{"proxy mqttv31", "mqttv31", true, true},
		{"proxy mqttv311", "mqttv311", true, true},
		// MQTT 5 bridges set no bit: they subscribe with no local and
		// retain as published.
		{"proxy mqttv50", "mqttv50", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cloud := proxytest.StartMosquitto(t)
			id := "edge-" + tc.version
			bridge := proxytest.Bridge{Address: cloud.Addr, ClientID: id, ProtocolVersion: tc.version, Topics: []string{"x/# both 1"}}
			var logs *observer.ObservedLogs
			if tc.viaProxy {
				p := &Proxy{Upstream: cloud.Addr, Verifier: chain}
				logs = observe(p)
				bridge.Address = startProxy(t, p)
				bridge.Username, bridge.Password = id, mint(t, e2eSecret, id, nil)
			}
			edge := proxytest.StartMosquitto(t, bridge.Config()...)
			if got := cloud.WaitForClient(t, id, 20*time.Second); got != tc.wantBridge {
				t.Errorf("the cloud took the bridge for a bridge: %v, want %v\n%s", got, tc.wantBridge, cloud.Log())
			}
			// The bridge subscribes to x/# at the cloud once connected.
			cloud.WaitForLog(t, "Sending SUBACK to "+id, 20*time.Second)
			if tc.viaProxy && tc.wantBridge {
				line := waitLog(t, logs, "authentication accepted", zap.String("client_id", id))
				if got := line.ContextMap()["bridge"]; got != true {
					t.Errorf("accepted line has bridge %v, want true: %v", got, line.ContextMap())
				}
			}

			local := proxytest.StartSub(t, append(proxytest.AddrArgs(t, edge.Addr), "-t", "x/#", "-q", "1", "-v")...)
			remote := proxytest.StartSub(t, append(proxytest.AddrArgs(t, cloud.Addr), "-t", "x/#", "-q", "1", "-v")...)
			publish := func(broker *proxytest.Mosquitto, args ...string) {
				t.Helper()
				if pub := proxytest.Pub(t, append(proxytest.AddrArgs(t, broker.Addr), append([]string{"-q", "1"}, args...)...)...); pub.Err != nil {
					t.Fatalf("publishing %v: %v\n%s", args, pub.Err, pub.Output)
				}
			}
			// until reads the local subscriber's messages up to want.
			until := func(sub *proxytest.Sub, want string) []string {
				t.Helper()
				var got []string
				for {
					msg, ok := sub.Next(20 * time.Second)
					if !ok {
						t.Fatalf("no %q, got %q\nedge log:\n%s", want, got, edge.Log())
					}
					got = append(got, msg)
					if msg == want {
						return got
					}
				}
			}

			// A local message on a "both" topic goes up once and does not
			// come back. An echo would have been queued to the bridge before
			// the cloud's subscriber got the message, so before the marker
			// published after that.
			publish(edge, "-t", "x/local", "-m", "from-edge")
			if msg, ok := remote.Next(20 * time.Second); msg != "x/local from-edge" {
				t.Fatalf("the cloud got %q, %v; want the edge's message\nedge log:\n%s", msg, ok, edge.Log())
			}
			publish(cloud, "-t", "x/marker", "-m", "after")
			if got := until(local, "x/marker after"); !slices.Equal(got, []string{"x/local from-edge", "x/marker after"}) {
				t.Errorf("the edge's subscriber got %q, want its message once, then the marker", got)
			}

			// A message retained at the cloud is retained at the edge: a
			// later subscriber there gets it, before the edge's own
			// retained marker it subscribes to next.
			publish(cloud, "-t", "x/retained", "-r", "-m", "kept")
			until(local, "x/retained kept")
			publish(edge, "-t", "sync/marker", "-r", "-m", "sync")
			late := proxytest.StartSub(t, append(proxytest.AddrArgs(t, edge.Addr), "-t", "x/retained", "-t", "sync/marker", "-v")...)
			if got := until(late, "sync/marker sync"); !slices.Equal(got, []string{"x/retained kept", "sync/marker sync"}) {
				t.Errorf("a later subscriber at the edge got %q, want the cloud's retained message, then the marker", got)
			}
		})
	}
}

// TestProtocolLevelsAnsweredAsMosquitto sends CONNECTs naming each
// protocol level, bridges' included, to mosquitto and to the proxy in
// front of it: the proxy answers each as mosquitto does (a CONNACK with
// return code 1 in the 3.1.1 form for a level it does not speak, CONNACK 0
// for a bridge, which goes through, a close without CONNACK for an unknown
// protocol name).
func TestProtocolLevelsAnsweredAsMosquitto(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	addr := startProxy(t, &Proxy{Upstream: broker.Addr, Verifier: passwordVerifier{}})

	for _, tc := range []struct {
		name  string
		level byte
		want  []byte
	}{
		{"MQIsdp", 3, []byte{0x20, 0x02, 0x00, 0x00}},
		{"MQTT", 4, []byte{0x20, 0x02, 0x00, 0x00}},
		{"MQIsdp", 0x83, []byte{0x20, 0x02, 0x00, 0x00}},
		{"MQTT", 0x84, []byte{0x20, 0x02, 0x00, 0x00}},
		{"MQTT", 0, []byte{0x20, 0x02, 0x00, 0x01}},
		{"MQTT", 3, []byte{0x20, 0x02, 0x00, 0x01}},
		{"MQTT", 6, []byte{0x20, 0x02, 0x00, 0x01}},
		{"MQTT", 0x80, []byte{0x20, 0x02, 0x00, 0x01}},
		{"MQTT", 0x83, []byte{0x20, 0x02, 0x00, 0x01}},
		{"MQTT", 0xff, []byte{0x20, 0x02, 0x00, 0x01}},
		{"MQIsdp", 0, []byte{0x20, 0x02, 0x00, 0x01}},
		{"MQIsdp", 4, []byte{0x20, 0x02, 0x00, 0x01}},
		{"MQIsdp", 0x84, []byte{0x20, 0x02, 0x00, 0x01}},
		{"MQTX", 4, nil},
	} {
		t.Run(fmt.Sprintf("%s/0x%02X", tc.name, tc.level), func(t *testing.T) {
			raw := connectNaming(tc.name, tc.level)
			fromBroker, fromProxy := firstAnswer(t, broker.Addr, raw), firstAnswer(t, addr, raw)
			if !bytes.Equal(fromBroker, tc.want) {
				t.Errorf("mosquitto answered %x, want %x", fromBroker, tc.want)
			}
			if !bytes.Equal(fromProxy, fromBroker) {
				t.Errorf("the proxy answered %x, mosquitto %x", fromProxy, fromBroker)
			}
		})
	}
}

// connectNaming is a CONNECT from client "c" with the user name "u" and
// the password "good" (see passwordVerifier), naming protocol name and
// level, whatever they are.
func connectNaming(name string, level byte) []byte {
	body := append([]byte{0, byte(len(name))}, name...)
	body = append(body, level, 0xC2, 0, 60) // user name, password, clean session; keep alive 60
	body = append(body, 0, 1, 'c', 0, 1, 'u', 0, 4, 'g', 'o', 'o', 'd')
	return append([]byte{0x10, byte(len(body))}, body...)
}

// firstAnswer sends raw to addr and returns the first four bytes of the
// answer, a CONNACK of MQTT 3, or what came before the server closed.
func firstAnswer(t *testing.T, addr string, raw []byte) []byte {
	t.Helper()
	c := dial(t, addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(raw); err != nil {
		t.Fatal(err)
	}
	answer := make([]byte, 4)
	n, err := io.ReadFull(c, answer)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		t.Fatalf("reading the answer of %s: %v", addr, err)
	}
	c.Close()
	return answer[:n]
}
