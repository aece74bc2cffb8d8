package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/transport"
)

// rawConnect sends cp to addr over a plain TCP connection and returns the
// connection once the CONNACK accepted it.
func rawConnect(t *testing.T, addr string, cp *packets.Connect) net.Conn {
	t.Helper()
	conn, code := sendConnect(t, addr, cp)
	if code != 0 {
		t.Fatalf("CONNECT of %s (v%d) refused: 0x%02X", cp.ClientID, cp.ProtocolVersion, code)
	}
	return conn
}

// sendConnect sends cp to addr over a plain TCP connection and returns the
// connection and its CONNACK's return or reason code.
func sendConnect(t *testing.T, addr string, cp *packets.Connect) (net.Conn, byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, proxytest.DefaultTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if cp.ProtocolVersion == 5 {
		pk := packets.NewControlPacket(packets.CONNECT)
		pk.Content = cp
		if _, err := pk.WriteTo(conn); err != nil {
			t.Fatal(err)
		}
	} else if _, err := conn.Write(connect311(cp)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	// A CONNACK: 0x20, its length, flags, return code (then MQTT 5
	// properties, read as the length says).
	head := make([]byte, 2)
	if _, err := io.ReadFull(conn, head); err != nil || head[0] != 0x20 || head[1] < 2 || head[1] > 127 {
		t.Fatalf("reading the CONNACK of %s (v%d): % X, %v", cp.ClientID, cp.ProtocolVersion, head, err)
	}
	rest := make([]byte, head[1])
	if _, err := io.ReadFull(conn, rest); err != nil {
		t.Fatalf("reading the CONNACK of %s (v%d): % X, %v", cp.ClientID, cp.ProtocolVersion, rest, err)
	}
	conn.SetReadDeadline(time.Time{})
	return conn, rest[1]
}

// connect311 encodes cp as an MQTT 3.1.1 CONNECT (paho's encoder writes
// MQTT 5 only).
func connect311(cp *packets.Connect) []byte {
	str := func(b []byte, s []byte) []byte { return append(append(b, byte(len(s)>>8), byte(len(s))), s...) }
	var body []byte
	body = str(body, []byte("MQTT"))
	body = append(body, 4, cp.PackFlags(), byte(cp.KeepAlive>>8), byte(cp.KeepAlive))
	body = str(body, []byte(cp.ClientID))
	if cp.WillFlag {
		body = str(body, []byte(cp.WillTopic))
		body = str(body, cp.WillMessage)
	}
	if cp.UsernameFlag {
		body = str(body, []byte(cp.Username))
	}
	if cp.PasswordFlag {
		body = str(body, cp.Password)
	}
	out := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

// TestWillTopicAuthorized: the will of a CONNECT is judged as a PUBLISH
// of it, when the CONNECT is read: a will to a topic the client's rules
// deny refuses the CONNECT with not authorized (0x87, 5 in MQTT 3.1.1), as
// EMQX refuses it, so the broker never publishes it; a will to a topic
// they allow is accepted, and the broker publishes it at an abnormal end.
func TestWillTopicAuthorized(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	addr := startAuthzProxy(t, broker.Addr, fleetRules())
	for _, version := range []byte{4, 5} {
		version := version
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			id := "will-" + string('0'+version)
			denied := "devices/victim-" + id + "/cmd" // not under devices/<sub>/: no_match deny
			allowed := "devices/" + id + "/status"
			watch := watchBroker(t, broker.Addr, "devices/#")
			will := func(topic string) *packets.Connect {
				cp := &packets.Connect{
					ProtocolName: "MQTT", ProtocolVersion: version, ClientID: id, CleanStart: true, KeepAlive: 30,
					UsernameFlag: true, Username: "u", PasswordFlag: true, Password: []byte(mint(t, e2eSecret, id, nil)),
					WillFlag: true, WillTopic: topic, WillMessage: []byte("will"), WillQOS: 1,
				}
				if version == 5 {
					cp.Properties = &packets.Properties{}
					cp.WillProperties = &packets.Properties{}
				}
				return cp
			}
			want := byte(0x87)
			if version == 4 {
				want = 5
			}
			conn, code := sendConnect(t, addr, will(denied))
			if code != want {
				t.Fatalf("a will to a denied topic got CONNACK code 0x%02X, want 0x%02X", code, want)
			}
			conn.Close()
			conn = rawConnect(t, addr, will(allowed))
			conn.Close() // an abnormal end: the broker publishes the will
			// The denied will never reached the broker: the allowed one,
			// sent after it, is the first message.
			expectOnly(t, watch, broker.Addr, allowed+" will")
			watch.Stop()
		})
	}
}

// TestBrokerDropsOversizeForFramedSubscriber: the CONNECT of a framed
// MQTT 5 client reaches the broker with limits.max_packet_size (1 MiB by
// default) as its Maximum Packet Size, so that the broker drops a message
// over it for that client [MQTT-3.1.2-25] rather than send it, which
// would end the session as a broken broker stream: a subscriber is not
// cut off by one message of 1.5 MiB to its topic, and gets the next one.
func TestBrokerDropsOversizeForFramedSubscriber(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	addr := startAuthzProxy(t, broker.Addr, fleetRules())
	disconnect := make(chan byte, 1)
	c := connectPaho(t, addr, pahoConnect(t, "c-big"), func(cfg *paho.ClientConfig) {
		cfg.OnServerDisconnect = func(d *paho.Disconnect) { disconnect <- d.ReasonCode }
	})
	c.subscribe(t, "devices/c-big/#", 1)

	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 3<<19), 0o600); err != nil { // 1.5 MiB
		t.Fatal(err)
	}
	if res := proxytest.Pub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", "devices/c-big/big", "-f", big)...); res.Err != nil {
		t.Fatalf("publishing the large message: %v\n%s", res.Err, res.Output)
	}
	if res := proxytest.Pub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", "devices/c-big/small", "-m", "small")...); res.Err != nil {
		t.Fatalf("publishing the small message: %v\n%s", res.Err, res.Output)
	}
	// The subscriber is still connected and gets the small message (the
	// large one discarded by the broker, as MQTT 5 has it for a client
	// that announced a smaller Maximum Packet Size).
	deadline := time.After(proxytest.DefaultTimeout)
	for {
		select {
		case p := <-c.received:
			if p.Topic == "devices/c-big/small" {
				return
			}
		case code := <-disconnect:
			t.Fatalf("the subscriber was disconnected with 0x%02X", code)
		case <-deadline:
			t.Fatalf("the subscriber never got the small message after the large one")
		}
	}
}

// TestExpiryMidStreamWholePackets: an MQTT 5 subscriber with topic rules
// reads slowly while the broker floods it, and its token expires: what it
// receives is whole packets, the broker's PUBLISHes, then DISCONNECT 0xA0
// as the last one, never a DISCONNECT inside a PUBLISH.
func TestExpiryMidStreamWholePackets(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	addr := startAuthzProxy(t, broker.Addr, fleetRules())
	const id, topic = "c-flood", "devices/c-flood/x"
	token := mint(t, e2eSecret, id, func(b *jwt.Builder) { b.Expiration(time.Now().Add(3 * time.Second)) })
	conn := rawConnect(t, addr, &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: id, CleanStart: true,
		KeepAlive: 60, UsernameFlag: true, Username: "u", PasswordFlag: true, Password: []byte(token), Properties: &packets.Properties{}})
	sub := []byte{0x82, byte(2 + 1 + 2 + len(topic) + 1), 0, 1, 0, 0, byte(len(topic))}
	sub = append(append(sub, topic...), 0)
	if _, err := conn.Write(sub); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	suback := make([]byte, 6)
	if _, err := io.ReadFull(conn, suback); err != nil || suback[0] != 0x90 || suback[5] != 0 {
		t.Fatalf("SUBACK % X, %v", suback, err)
	}

	// The flood, straight to the broker: PUBLISHes of 15 KiB at QoS 0.
	pub, err := net.Dial("tcp", broker.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	pub.Write(connect311(&packets.Connect{ClientID: "flood", CleanStart: true, KeepAlive: 60}))
	payload := bytes.Repeat([]byte("p"), 15<<10) // a remaining length of two bytes
	body := append(append([]byte{0, byte(len(topic))}, topic...), payload...)
	publish := append([]byte{0x30, byte(len(body)%128) | 0x80, byte(len(body) / 128)}, body...)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for sent := 0; sent < 48<<20; sent += len(publish) {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := pub.Write(publish); err != nil {
				return
			}
		}
	}()

	// A slow reader, until the proxy closes.
	var got []byte
	chunk := make([]byte, 4<<10)
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		n, err := conn.Read(chunk)
		got = append(got, chunk[:n]...)
		if err != nil {
			if err != io.EOF {
				t.Fatalf("reading: %v after %d bytes", err, len(got))
			}
			break
		}
		time.Sleep(200 * time.Microsecond) // throttles the reader; not a synchronisation
	}
	var last []byte
	publishes := 0
	for len(got) > 0 {
		mult, length, i := 1, 0, 1
		for ; i < len(got) && i < 5; i++ {
			length += int(got[i]&0x7F) * mult
			mult *= 128
			if got[i]&0x80 == 0 {
				break
			}
		}
		end := i + 1 + length
		if i >= len(got) || end > len(got) {
			t.Fatalf("after %d PUBLISHes, a partial packet: % X...", publishes, got[:min(len(got), 16)])
		}
		pk := got[:end]
		got = got[end:]
		if pk[0] == 0x30 {
			if !bytes.Equal(pk[i+1:], append(append([]byte{0, byte(len(topic))}, topic...), append([]byte{0}, payload...)...)) {
				t.Fatalf("PUBLISH %d is not the one sent: % X...", publishes, pk[:min(len(pk), 32)])
			}
			publishes++
			continue
		}
		if last != nil {
			t.Fatalf("after %d PUBLISHes, packet % X then more", publishes, last)
		}
		last = pk
	}
	if !bytes.Equal(last, []byte{0xE0, 1, 0xA0}) && !(len(last) > 3 && last[0] == 0xE0 && last[2] == 0xA0) {
		t.Fatalf("after %d PUBLISHes the last packet is % X, want DISCONNECT 0xA0", publishes, last)
	}
	t.Logf("%d PUBLISHes, then DISCONNECT 0xA0", publishes)
}

// pipelined is a CONNECT of id (MQTT 3.1.1) with, behind it, a PUBLISH
// to a topic the fleet's rules deny, one to the client's own, and a
// DISCONNECT.
func pipelined(t *testing.T, id string) []byte {
	pub := func(topic, msg string) []byte {
		body := append(append([]byte{0, byte(len(topic))}, topic...), msg...)
		return append([]byte{0x30, byte(len(body))}, body...)
	}
	w := connect311(&packets.Connect{ClientID: id, CleanStart: true, KeepAlive: 60, UsernameFlag: true, Username: "u",
		PasswordFlag: true, Password: []byte(mint(t, e2eSecret, id, nil))})
	w = append(w, pub("devices/victim/cmd", "denied")...)
	w = append(w, pub("devices/"+id+"/t", "allowed")...)
	return append(w, 0xE0, 0)
}

// TestPipelinedDeniedPublish: PUBLISHes written in the same write as the
// CONNECT, before the broker's CONNACK, are judged like the others: the
// denied one never reaches the broker, the allowed one does.
func TestPipelinedDeniedPublish(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	addr := startAuthzProxy(t, broker.Addr, fleetRules())
	const id = "c-pipe"
	watch := watchBroker(t, broker.Addr, "devices/#")
	w := pipelined(t, id)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(w); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	if rest, err := io.ReadAll(conn); err != nil || !bytes.Equal(rest, []byte{0x20, 2, 0, 0}) {
		t.Fatalf("read % X, %v; want the CONNACK then the close", rest, err)
	}
	expectOnly(t, watch, broker.Addr, "devices/"+id+"/t allowed")
}

// TestPipelinedDeniedPublishWebSocket: the same in one WebSocket
// message, which the WebSocket transport reads past the CONNECT.
func TestPipelinedDeniedPublishWebSocket(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	url := startWebSocketProxy(t, authzProxy(t, broker.Addr, fleetRules()), &transport.WebSocketListener{}, nil)
	const id = "c-pipe-ws"
	watch := watchBroker(t, broker.Addr, "devices/#")
	ws, _, err := (&websocket.Dialer{Subprotocols: []string{"mqtt"}}).Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.BinaryMessage, pipelined(t, id)); err != nil {
		t.Fatal(err)
	}
	if got := readPackets(t, ws, 1); !bytes.Equal(got[0], []byte{0x20, 2, 0, 0}) {
		t.Fatalf("got % X, want the CONNACK", got[0])
	}
	expectOnly(t, watch, broker.Addr, "devices/"+id+"/t allowed")
}

// TestClientToldPacketLimit: an MQTT 5 client with topic rules is held to
// limits.max_packet_size (1 MiB by default), and its CONNACK says so as its
// Maximum Packet Size (mosquitto announces none: the proxy adds it), so
// that a client keeps to it rather than be disconnected with 0x95 for a
// PUBLISH within what its CONNACK allowed.
func TestClientToldPacketLimit(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	addr := startAuthzProxy(t, broker.Addr, fleetRules())
	const limit = 1 << 20 // configs.DefaultMaxPacketSize
	c, _ := disconnects(t, addr, "c-large")
	if p := c.connack.Properties; p == nil || p.MaximumPacketSize == nil || *p.MaximumPacketSize != limit {
		t.Fatalf("the CONNACK's properties %+v; want Maximum Packet Size %d", p, limit)
	}
}

// TestHeldClientCloseEndsLink: a framed session whose broker has not
// answered the CONNECT yet (the client's direction is held until it does)
// ends when the client closes: the broker's connection is closed too, as
// it is for a session relayed unframed.
func TestHeldClientCloseEndsLink(t *testing.T) {
	for _, framed := range []bool{false, true} {
		t.Run(fmt.Sprintf("framed=%v", framed), func(t *testing.T) { heldClientClose(t, framed) })
	}
}

func heldClientClose(t *testing.T, framed bool) {
	gotConnect, brokerEOF := make(chan struct{}), make(chan struct{})
	upstream := proxytest.ServeTCP(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		first := true
		for {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Read(buf); err != nil {
				if err == io.EOF {
					close(brokerEOF)
				}
				return
			}
			if first {
				first = false
				close(gotConnect)
			}
		}
	})
	rules := configs.Authorization{} // no rules: relayed unframed
	if framed {
		rules = fleetRules()
	}
	addr := startAuthzProxy(t, upstream, rules)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(connect311(&packets.Connect{ClientID: "c-held", CleanStart: true, KeepAlive: 60, UsernameFlag: true,
		Username: "u", PasswordFlag: true, Password: []byte(mint(t, e2eSecret, "c-held", nil))})); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gotConnect:
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatal("the broker never got the CONNECT")
	}
	conn.Close()
	select {
	case <-brokerEOF:
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatalf("the client closed, and the broker's connection was still open %v later", proxytest.DefaultTimeout)
	}
}

// TestResumedSessionDeniedDeliveries: a client subscribes to secret/# in
// a persistent session (clean session off) while it has no rules, then
// comes back, same client identifier, under rules that deny that filter
// (a newly configured authorization section, or a token with narrower
// rules): the broker resumes its session, subscription included, and
// delivers what it queued, but the proxy judges each delivery as a
// subscription to its topic and drops (and acknowledges) what the client
// could not subscribe to now: the first message the client gets is the
// sentinel to a topic it may read.
func TestResumedSessionDeniedDeliveries(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	before := startAuthzProxy(t, broker.Addr, configs.Authorization{}) // no rules yet
	now := startAuthzProxy(t, broker.Addr, fleetRules())
	const id = "c-persist"
	client := func(addr string, args ...string) []string {
		return append(append(proxytest.AddrArgs(t, addr), "-V", "mqttv311", "-i", id, "-c", "-q", "1", "-v",
			"-u", "u", "-P", mint(t, e2eSecret, id, nil)), args...)
	}
	first := proxytest.StartSub(t, client(before, "-t", "secret/#")...)
	if first.Connack() != 0 {
		t.Fatalf("first connection: %s", first.Output())
	}
	first.Stop()
	if res := proxytest.Pub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", "secret/x", "-q", "1", "-m", "queued")...); res.Err != nil {
		t.Fatal(res.Err)
	}
	again := proxytest.StartSub(t, client(now, "-t", "devices/"+id+"/#")...)
	if again.Connack() != 0 {
		t.Fatalf("second connection: %s", again.Output())
	}
	// A sentinel to a topic it may read: nothing may come before it.
	if res := proxytest.Pub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", "devices/"+id+"/end", "-q", "1", "-m", "sentinel")...); res.Err != nil {
		t.Fatal(res.Err)
	}
	if msg, ok := again.Next(proxytest.DefaultTimeout); !ok || msg != "devices/"+id+"/end sentinel" {
		t.Fatalf("under rules that deny secret/#, the client received %q (%v) from its resumed session, before the sentinel", msg, ok)
	}
}
