package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/embedded"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
	"go.uber.org/zap"
)

const e2eSecret = "e2e-secret-not-for-production"

// mint signs an HS256 token for clientID (sub) with the given changes
// applied to the builder.
func mint(t *testing.T, secret, sub string, edit func(*jwt.Builder)) string {
	t.Helper()
	b := jwt.NewBuilder().Subject(sub).Expiration(time.Now().Add(time.Hour))
	if edit != nil {
		edit(b)
	}
	tok, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.HS256, []byte(secret)))
	if err != nil {
		t.Fatal(err)
	}
	return string(signed)
}

// TestMosquittoThroughProxy runs the real mosquitto clients through the
// proxy to a real mosquitto broker, for each protocol version.
func TestMosquittoThroughProxy(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	chain, err := authn.New([]configs.Authenticator{{
		Name:         "jwt",
		Mechanism:    "jwt",
		Algorithm:    "hmac-based",
		Secret:       e2eSecret,
		VerifyClaims: map[string]string{"sub": "${clientid}"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	host, port, _ := net.SplitHostPort(startProxy(t, &Proxy{Upstream: broker.Addr, Verifier: chain}))

	for _, v := range []struct {
		name          string
		v3Codes       bool
		badCred, deny int
	}{
		{"mqttv31", true, 4, 5},
		{"mqttv311", true, 4, 5},
		{"mqttv5", false, 0x86, 0x87},
	} {
		t.Run(v.name, func(t *testing.T) {
			topic := "e2e/" + v.name
			client := func(id, token string, args ...string) []string {
				a := []string{"-h", host, "-p", port, "-V", v.name, "-i", id, "-u", "user-" + id}
				if token != "" {
					a = append(a, "-P", token)
				}
				return append(a, args...)
			}

			// Messages flow both ways through two proxied connections, QoS 1 and 2.
			sub := proxytest.StartSub(t, client("s-"+v.name, mint(t, e2eSecret, "s-"+v.name, nil), "-t", topic+"/#", "-q", "2", "-v")...)
			if code := sub.Connack(); code != 0 {
				t.Fatalf("subscriber refused with %d", code)
			}
			for _, qos := range []string{"0", "1", "2"} {
				pub := proxytest.Pub(t, client("p-"+v.name, mint(t, e2eSecret, "p-"+v.name, nil), "-t", topic+"/q"+qos, "-q", qos, "-m", "hello "+qos)...)
				if pub.Err != nil || pub.Connack != 0 {
					t.Fatalf("publisher: connack %d, %v\n%s", pub.Connack, pub.Err, pub.Output)
				}
				if msg, ok := sub.Next(10 * time.Second); !ok || msg != topic+"/q"+qos+" hello "+qos {
					t.Errorf("subscriber got %q, %v; want the QoS %s message", msg, ok, qos)
				}
			}

			// Retained: published through the proxy, delivered to a later subscriber.
			pub := proxytest.Pub(t, client("r-"+v.name, mint(t, e2eSecret, "r-"+v.name, nil), "-t", topic+"/retained", "-r", "-q", "1", "-m", "kept")...)
			if pub.Connack != 0 {
				t.Fatalf("retained publisher refused: %s", pub.Output)
			}
			late := proxytest.StartSub(t, client("l-"+v.name, mint(t, e2eSecret, "l-"+v.name, nil), "-t", topic+"/retained", "-v")...)
			if msg, ok := late.Next(10 * time.Second); !ok || msg != topic+"/retained kept" {
				t.Errorf("late subscriber got %q, %v; want the retained message", msg, ok)
			}

			// Refusals get the exact code, and the broker sees no connection.
			before := broker.Connections()
			id := "x-" + v.name
			for _, tc := range []struct {
				name  string
				token string
				want  int
			}{
				{"bad signature", mint(t, "another-secret", id, nil), v.deny},
				{"expired", mint(t, e2eSecret, id, func(b *jwt.Builder) { b.Expiration(time.Now().Add(-time.Minute)) }), v.badCred},
				{"not yet valid", mint(t, e2eSecret, id, func(b *jwt.Builder) { b.NotBefore(time.Now().Add(time.Hour)) }), v.badCred},
				{"claim mismatch", mint(t, e2eSecret, "someone-else", nil), v.badCred},
				{"no password", "", v.badCred},
			} {
				res := proxytest.Pub(t, client(id, tc.token, "-t", topic+"/denied", "-m", "never")...)
				if res.Connack != tc.want {
					t.Errorf("%s: CONNACK %d, want %d\n%s", tc.name, res.Connack, tc.want, res.Output)
				}
			}
			if after := broker.Connections(); after != before {
				t.Errorf("broker saw %d new connections from refused clients, want 0", after-before)
			}
		})
	}
}

// TestExpiryDisconnectsAndPublishesWill: a client whose token expires
// while connected is disconnected at exp plus the leeway, and the broker
// publishes its will to a subscriber connected directly. The token's exp
// has passed already when it connects: the leeway lets it in, and keeps it
// in for as long.
func TestExpiryDisconnectsAndPublishesWill(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	const leeway = 3 * time.Second
	chain, err := authn.New([]configs.Authenticator{{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret,
		Leeway: configs.Duration(leeway)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	addr := startProxy(t, &Proxy{Upstream: broker.Addr, Verifier: chain})

	wills := proxytest.StartSub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", "wills/#", "-v")...)
	exp := time.Now().Add(-time.Second)
	token := mint(t, e2eSecret, "short-lived", func(b *jwt.Builder) { b.Expiration(exp) })
	device := proxytest.StartSub(t, append(proxytest.AddrArgs(t, addr), "-i", "short-lived", "-u", "d", "-P", token,
		"-t", "cmd/short-lived", "--will-topic", "wills/short-lived", "--will-payload", "gone")...)
	if device.Connack() != 0 {
		t.Fatalf("device refused: %s", device.Output())
	}
	msg, ok := wills.Next(10 * time.Second)
	if !ok || msg != "wills/short-lived gone" {
		t.Fatalf("will subscriber got %q, %v; want the will", msg, ok)
	}
	// exp has second precision: the close comes in the second before exp
	// plus the leeway at the earliest.
	if now, end := time.Now(), exp.Truncate(time.Second).Add(leeway); now.Before(end) {
		t.Errorf("will published at %v, before the token's exp plus the leeway %v", now, end)
	}
}

// TestTokenInUsernameIsNotLogged: with from: username the user name is
// the client's token. No log line holds it, whether the client is
// accepted or refused; the lines name the client by the token's hash.
func TestTokenInUsernameIsNotLogged(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	broker, err := embedded.Start(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Close() })
	chain, err := authn.New([]configs.Authenticator{{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret, From: "username"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	p := &Proxy{Upstream: broker.Addr(), Verifier: chain}
	logs := observe(p)
	addr := startProxy(t, p)

	good := mint(t, e2eSecret, "dev-1", nil)
	forged := mint(t, "not-the-secret", "dev-1", nil)
	for _, tc := range []struct {
		token   string
		connack []byte
	}{
		{good, []byte{0x20, 0x02, 0x00, 0x00}},
		{forged, []byte{0x20, 0x02, 0x00, 0x05}},
	} {
		pk := clientConnect(t, packets.ProtocolV311, func(c *packets.Connect) {
			c.Username, c.PasswordFlag, c.Password = tc.token, false, nil
			c.WillFlag, c.WillQoS, c.WillTopic, c.WillPayload = false, 0, "", nil
		})
		c := dial(t, addr)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(pk.Raw); err != nil {
			t.Fatal(err)
		}
		connack := make([]byte, 4)
		if _, err := io.ReadFull(c, connack); err != nil || !bytes.Equal(connack, tc.connack) {
			t.Fatalf("CONNACK %x, %v; want %x", connack, err, tc.connack)
		}
		c.Close()
	}

	hash := func(token string) string {
		sum := sha256.Sum256([]byte(token))
		return "jwt:" + hex.EncodeToString(sum[:6])
	}
	waitLog(t, logs, "connection closed", zap.String("username", hash(good)))
	waitLog(t, logs, "authentication accepted", zap.String("username", hash(good)))
	waitLog(t, logs, "authentication refused", zap.String("username", hash(forged)))
	for _, e := range logs.All() {
		line, _ := json.Marshal(map[string]any{"message": e.Message, "fields": e.ContextMap()})
		for _, token := range []string{good, forged} {
			signature := token[strings.LastIndexByte(token, '.')+1:]
			if bytes.Contains(line, []byte(signature)) {
				t.Errorf("a log line holds a token: %s", line)
			}
		}
	}
}

func TestLoggedUsername(t *testing.T) {
	token := mint(t, e2eSecret, "dev-1", nil)
	sum := sha256.Sum256([]byte(token))
	for _, tc := range []struct{ username, want string }{
		{"", ""},
		{"alice", "alice"},
		{"alice@example.com", "alice@example.com"},
		{"a.b.c", "a.b.c"},                                       // dots, but the first part is not JSON
		{"eyJhbGciOiJIUzI1NiJ9.e30", "eyJhbGciOiJIUzI1NiJ9.e30"}, // one dot: not a JWS
		{token, "jwt:" + hex.EncodeToString(sum[:6])},
	} {
		if got := loggedUsername(tc.username); got != tc.want {
			t.Errorf("loggedUsername(%q) = %q, want %q", tc.username, got, tc.want)
		}
	}
}

// TestLargeWillThroughProxy: a client whose CONNECT carries a will of
// 65,400 bytes beside its token, which mosquitto accepts with its
// defaults, gets through the proxy at its default limits too, and
// mosquitto publishes that will when the client goes away. (Regression:
// max_connect_size defaulted to 64 KiB, so the proxy closed such a 3.1.1
// client with no CONNACK and refused an MQTT 5 one with 0x95.)
func TestLargeWillThroughProxy(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	p := &Proxy{Upstream: broker.Addr, Verifier: jwtChain(t, boundHS256),
		Limits: Limits{ConnectTimeout: proxytest.DefaultTimeout}} // sizes at their defaults
	addr := startProxy(t, p)
	watcher := connectPaho(t, broker.Addr, &paho.Connect{ClientID: "watcher", CleanStart: true, KeepAlive: 30})
	watcher.subscribe(t, "will/#", 1)

	for _, version := range []byte{packets.ProtocolV311, packets.ProtocolV5} {
		t.Run(fmt.Sprintf("level %d", version), func(t *testing.T) {
			id := fmt.Sprintf("will-%d", version)
			will := make([]byte, 65_400)
			rand.Read(will)
			connect := &packets.Connect{
				ProtocolName: "MQTT", ProtocolVersion: version, CleanStart: true, KeepAlive: 30, ClientID: id,
				UsernameFlag: true, Username: "user-" + id,
				PasswordFlag: true, Password: []byte(mint(t, e2eSecret, id, nil)),
				WillFlag: true, WillQoS: 1, WillTopic: "will/" + id, WillPayload: will,
			}
			raw, err := connect.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if len(raw) <= 64<<10 {
				t.Fatalf("the CONNECT is %d bytes; the test needs one over 64 KiB", len(raw))
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// The CONNACK's first bytes: type, remaining length (MQTT 5
			// adds the broker's properties), flags, code 0.
			c.SetDeadline(time.Now().Add(proxytest.DefaultTimeout))
			if _, err := c.Write(raw); err != nil {
				t.Fatal(err)
			}
			connack := make([]byte, 4)
			if _, err := io.ReadFull(c, connack); err != nil || connack[0] != 0x20 || connack[3] != 0 {
				t.Fatalf("%d-byte CONNECT answered % x, %v; want an accepting CONNACK", len(raw), connack, err)
			}
			c.Close() // no DISCONNECT: the broker publishes the will
			got := watcher.next(t)
			if got.Topic != "will/"+id || !bytes.Equal(got.Payload, will) {
				t.Errorf("the broker published %d bytes on %s, want the %d-byte will on will/%s", len(got.Payload), got.Topic, len(will), id)
			}
		})
	}
}
