package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// fleetRules are the configured rules of the authorization tests, those
// of configs/authorization.yaml: each device under its own prefix, but
// not its config topic; the firmware filters to read, at QoS 0 or 1; its
// status topic, retained only; nothing else.
func fleetRules() configs.Authorization {
	retained := true
	return configs.Authorization{
		Rules: []configs.AuthorizationRule{
			{Permission: "deny", Action: "publish", Topic: "devices/${claims.sub}/config"},
			{Permission: "allow", Action: "all", Topic: "devices/${claims.sub}/#"},
			{Permission: "allow", Action: "subscribe", Topics: []string{"eq firmware/#", "firmware/latest"}, QoS: []int{0, 1}},
			{Permission: "allow", Action: "publish", Topic: "status/${clientid}", Retain: &retained},
		},
		NoMatch: "deny",
	}
}

// authzProxy is a proxy to upstream whose tokens are HS256 with sub the
// client identifier, under the authorization a.
func authzProxy(t *testing.T, upstream string, a configs.Authorization) *Proxy {
	t.Helper()
	rules, err := acl.FromConfig(a)
	if err != nil {
		t.Fatal(err)
	}
	chain := jwtChain(t, configs.Authenticator{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret,
		VerifyClaims: map[string]string{"sub": "${clientid}"}})
	return &Proxy{Upstream: upstream, Verifier: chain,
		Authorization: Authorization{Rules: rules, DisconnectOnDeny: a.DenyAction == configs.DenyActionDisconnect}}
}

// startAuthzProxy serves authzProxy and returns its address.
func startAuthzProxy(t *testing.T, upstream string, a configs.Authorization) string {
	t.Helper()
	return startProxy(t, authzProxy(t, upstream, a))
}

// withACL is a token edit that puts claim in acl.
func withACL(claim any) func(*jwt.Builder) {
	return func(b *jwt.Builder) { b.Claim("acl", claim) }
}

// watchBroker subscribes directly to the broker at addr to filters, and
// to the sentinels of expectOnly.
func watchBroker(t *testing.T, addr string, filters ...string) *proxytest.Sub {
	t.Helper()
	args := append(proxytest.AddrArgs(t, addr), "-V", "mqttv311", "-i", "observer-"+t.Name(), "-t", "end/#", "-v")
	for _, f := range filters {
		args = append(args, "-t", f)
	}
	o := proxytest.StartSub(t, args...)
	if o.Connack() != 0 {
		t.Fatalf("observer refused: %s", o.Output())
	}
	return o
}

// expectOnly checks that the next lines o receives are want, in order,
// then a sentinel published directly to the broker after everything
// else: nothing else came before it.
func expectOnly(t *testing.T, o *proxytest.Sub, broker string, want ...string) {
	t.Helper()
	sentinel := "end/" + strings.ReplaceAll(t.Name(), "/", "-") + " sentinel"
	if res := proxytest.Pub(t, append(proxytest.AddrArgs(t, broker), "-t", strings.Fields(sentinel)[0], "-m", "sentinel")...); res.Err != nil {
		t.Fatalf("publishing the sentinel: %v\n%s", res.Err, res.Output)
	}
	for _, w := range append(want, sentinel) {
		if got, ok := o.Next(proxytest.DefaultTimeout); !ok || got != w {
			t.Fatalf("the broker delivered %q, %v; want %q", got, ok, w)
		}
	}
}

// TestAuthorizationMosquittoClients: mosquitto_pub and mosquitto_sub,
// MQTT 3.1.1 and 5, through a proxy with the fleet's rules: an allowed
// PUBLISH reaches the broker, a denied one never does (neither a
// subscriber attached to mosquitto directly nor the bytes the proxy sent
// upstream show it) and is answered PUBACK or PUBREC, with 0x87 in MQTT
// 5; a SUBSCRIBE with mixed filters gets a code per filter, and only the
// allowed topics are delivered.
func TestAuthorizationMosquittoClients(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	for _, v := range []struct {
		name    string
		refusal string // a refused filter's code, as mosquitto_sub prints it
		puback  string // a denied QoS 1 PUBLISH's PUBACK
		qos2    string // what the client prints of a denied QoS 2 PUBLISH's exchange
	}{
		{"mqttv311", "128", "RC:0", "received PUBREC (Mid: 1)\nClient p-mqttv311 sending PUBREL (m1)\nClient p-mqttv311 received PUBCOMP (Mid: 1, RC:0)"},
		{"mqttv5", "135", "RC:135", "Warning: Publish 1 failed: Not authorized."},
	} {
		t.Run(v.name, func(t *testing.T) {
			rec := proxytest.NewRecorder(t, broker.Addr)
			addr := startAuthzProxy(t, rec.Addr, fleetRules())
			pubID, subID := "p-"+v.name, "s-"+v.name
			watch := watchBroker(t, broker.Addr, "devices/#", "status/"+pubID)
			client := func(id string, args ...string) []string {
				return append(append(proxytest.AddrArgs(t, addr), "-V", v.name, "-i", id, "-u", "user", "-P", mint(t, e2eSecret, id, nil)), args...)
			}

			sub := proxytest.StartSub(t, client(subID, "-q", "1", "-v", "-t", "devices/"+subID+"/#", "-t", "devices/"+pubID+"/#", "-t", "firmware/latest")...)

			for _, tc := range []struct {
				topic, qos string
				retain     bool
				answer     string // the line of the client's output that answers it
			}{
				{"devices/" + pubID + "/config", "1", false, "received PUBACK (Mid: 1, " + v.puback + ")"},
				{"devices/" + subID + "/temp", "2", false, v.qos2},
				{"status/" + pubID, "1", false, "received PUBACK (Mid: 1, " + v.puback + ")"},
				{"devices/" + pubID + "/temp", "1", false, "received PUBACK (Mid: 1, RC:0)"},
				{"status/" + pubID, "1", true, "received PUBACK (Mid: 1, RC:0)"},
			} {
				args := client(pubID, "-t", tc.topic, "-q", tc.qos, "-m", "q"+tc.qos)
				if tc.retain {
					args = append(args, "-r")
				}
				res := proxytest.Pub(t, args...)
				if res.Err != nil || res.Connack != 0 || !strings.Contains(res.Output, tc.answer) {
					t.Errorf("publishing to %s at QoS %s (retain %v): %v; want %q in\n%s", tc.topic, tc.qos, tc.retain, res.Err, tc.answer, res.Output)
				}
			}
			expectOnly(t, watch, broker.Addr, "devices/"+pubID+"/temp q1", "status/"+pubID+" q1")
			for i, b := range rec.Received() {
				if bytes.Contains(b, []byte("/config")) || bytes.Contains(b, []byte(subID+"/temp")) || bytes.Contains(b, []byte("devices/"+pubID+"/#")) {
					t.Errorf("connection %d to the broker carried a denied PUBLISH or filter: %q", i, b)
				}
			}

			// The broker has only the subscriber's allowed filters: of
			// these three, the first is not delivered.
			for _, topic := range []string{"devices/" + pubID + "/x", "devices/" + subID + "/x", "firmware/latest"} {
				proxytest.Pub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", topic, "-m", "direct")...)
			}
			for _, want := range []string{"devices/" + subID + "/x direct", "firmware/latest direct"} {
				if msg, ok := sub.Next(proxytest.DefaultTimeout); !ok || msg != want {
					t.Errorf("the subscriber got %q, %v; want %q", msg, ok, want)
				}
			}
			// Printed with the SUBACK, before the messages.
			if !strings.Contains(sub.Output(), "Subscribed (mid: 1): 1, "+v.refusal+", 1") {
				t.Errorf("the mixed SUBSCRIBE's codes: want 1, %s, 1 in\n%s", v.refusal, sub.Output())
			}
		})
	}
}

// publishCode publishes p through c and returns the reason code of its
// answer (PUBACK, or PUBREC or PUBCOMP at QoS 2); a refusal is not an
// error here.
func publishCode(t *testing.T, c *pahoClient, p *paho.Publish) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
	defer cancel()
	r, err := c.Publish(ctx, p)
	if r == nil {
		t.Fatalf("publishing to %q (alias %v): %v", p.Topic, p.Properties, err)
	}
	return r.ReasonCode
}

// subscribeCodes subscribes c to subs and returns the SUBACK's codes.
func subscribeCodes(t *testing.T, c *pahoClient, subs ...paho.SubscribeOptions) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
	defer cancel()
	ack, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if ack == nil {
		t.Fatalf("subscribing to %v: %v", subs, err)
	}
	return ack.Reasons
}

// authzClient connects a paho client through addr as id, its token
// edited by edits.
func authzClient(t *testing.T, addr, id string, edits ...func(*jwt.Builder)) *pahoClient {
	t.Helper()
	cp := pahoConnect(t, id)
	cp.Password = []byte(mint(t, e2eSecret, id, func(b *jwt.Builder) {
		for _, e := range edits {
			e(b)
		}
	}))
	return connectPaho(t, addr, cp)
}

func alias(n uint16) *paho.PublishProperties { return &paho.PublishProperties{TopicAlias: &n} }

// TestAuthorizationPaho: an MQTT 5 client (paho.golang) through a proxy
// with the fleet's rules: a topic alias cannot carry a PUBLISH to a
// denied topic, whether it is set by that PUBLISH or was set before;
// shared subscriptions ($share/g/f, $queue/f) are judged by f; "eq" is one literal
// filter; a rule's QoS and retain conditions apply; placeholders put each
// client under its own prefix (${claims.sub}, ${clientid}, ${username},
// %c, %u); both of EMQX's token formats apply, before the configured
// rules; with no_match allow, what no rule covers passes; a token whose
// acl claim cannot be read is refused.
func TestAuthorizationPaho(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	addr := startAuthzProxy(t, broker.Addr, fleetRules())
	ok := func(code byte) bool { return code < 0x80 }

	t.Run("topic aliases", func(t *testing.T) {
		watch := watchBroker(t, broker.Addr, "devices/#")
		c := authzClient(t, addr, "c-alias")
		for _, step := range []struct {
			p       *paho.Publish
			allowed bool
		}{
			{&paho.Publish{Topic: "devices/c-alias/a", QoS: 1, Properties: alias(1), Payload: []byte("set")}, true},
			{&paho.Publish{QoS: 1, Properties: alias(1), Payload: []byte("by-alias")}, true},
			{&paho.Publish{Topic: "devices/c-other/a", QoS: 1, Properties: alias(1), Payload: []byte("reset")}, false},
			{&paho.Publish{QoS: 1, Properties: alias(1), Payload: []byte("smuggled")}, false},
			{&paho.Publish{QoS: 0, Properties: alias(1), Payload: []byte("smuggled at QoS 0")}, false},
			{&paho.Publish{Topic: "devices/c-alias/b", QoS: 1, Properties: alias(2), Payload: []byte("other alias")}, true},
		} {
			// A QoS 0 PUBLISH has no answer: the broker's side shows it.
			if code := publishCode(t, c, step.p); step.p.QoS > 0 && (ok(code) != step.allowed || !step.allowed && code != 0x87) {
				t.Errorf("PUBLISH %q, %q by alias 1: answered 0x%02X, want allowed %v (0x87 when denied)", step.p.Topic, step.p.Payload, code, step.allowed)
			}
		}
		expectOnly(t, watch, broker.Addr, "devices/c-alias/a set", "devices/c-alias/a by-alias", "devices/c-alias/b other alias")
	})

	t.Run("shared subscriptions, eq, QoS", func(t *testing.T) {
		c := authzClient(t, addr, "c-sub")
		got := subscribeCodes(t, c,
			paho.SubscribeOptions{Topic: "$share/g/devices/c-sub/#", QoS: 1},
			paho.SubscribeOptions{Topic: "$share/g/devices/c-other/#", QoS: 1},
			paho.SubscribeOptions{Topic: "firmware/#", QoS: 1},
			paho.SubscribeOptions{Topic: "firmware/v1", QoS: 0},
			paho.SubscribeOptions{Topic: "firmware/latest", QoS: 2},
			paho.SubscribeOptions{Topic: "firmware/latest", QoS: 0},
			paho.SubscribeOptions{Topic: "$queue/devices/c-sub/q/#", QoS: 1},
			paho.SubscribeOptions{Topic: "$queue/devices/c-other/#", QoS: 1},
		)
		if want := []byte{1, 0x87, 1, 0x87, 0x87, 0, 1, 0x87}; !bytes.Equal(got, want) {
			t.Errorf("SUBACK codes % X, want % X", got, want)
		}
		for _, topic := range []string{"devices/c-other/x", "devices/c-sub/x", "firmware/v1"} {
			proxytest.Pub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", topic, "-q", "1", "-m", "direct")...)
		}
		// firmware/v1 comes through firmware/#, which eq allowed as one
		// literal filter; devices/c-other/x never does.
		for _, want := range []string{"devices/c-sub/x", "firmware/v1"} {
			if p := c.next(t); p.Topic != want {
				t.Errorf("the client got %s, want %s", p.Topic, want)
			}
		}
	})

	t.Run("retain", func(t *testing.T) {
		watch := watchBroker(t, broker.Addr, "status/c-ret")
		c := authzClient(t, addr, "c-ret")
		if code := publishCode(t, c, &paho.Publish{Topic: "status/c-ret", QoS: 1, Payload: []byte("live")}); code != 0x87 {
			t.Errorf("a status PUBLISH without retain: 0x%02X, want 0x87", code)
		}
		if code := publishCode(t, c, &paho.Publish{Topic: "status/c-ret", QoS: 1, Retain: true, Payload: []byte("kept")}); !ok(code) {
			t.Errorf("a retained status PUBLISH: 0x%02X, want allowed", code)
		}
		expectOnly(t, watch, broker.Addr, "status/c-ret kept")
		proxytest.Pub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", "status/c-ret", "-r", "-n")...) // no retained message left
	})

	t.Run("token formats", func(t *testing.T) {
		watch := watchBroker(t, broker.Addr, "devices/#", "extra/#", "old/#")
		list := authzClient(t, addr, "c-list", withACL([]any{
			map[string]any{"permission": "allow", "action": "publish", "topic": "extra/${clientid}"},
			map[string]any{"permission": "deny", "action": "publish", "topic": "devices/${clientid}/blocked"},
		}))
		for topic, allowed := range map[string]bool{"extra/c-list": true, "devices/c-list/blocked": false, "extra/c-other": false} {
			if code := publishCode(t, list, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("list")}); ok(code) != allowed {
				t.Errorf("EMQX 5.5 rules: PUBLISH %s answered 0x%02X, want allowed %v", topic, code, allowed)
			}
		}
		if code := publishCode(t, list, &paho.Publish{Topic: "extra/user-c-list", QoS: 1, Payload: []byte("username")}); ok(code) {
			t.Errorf("EMQX 5.5 rules: PUBLISH to the username's topic before a rule names it: 0x%02X, want denied", code)
		}
		named := authzClient(t, addr, "c-named", withACL([]any{
			map[string]any{"permission": "allow", "action": "publish", "topic": "extra/${username}"},
		}))
		if code := publishCode(t, named, &paho.Publish{Topic: "extra/user-c-named", QoS: 1, Payload: []byte("username")}); !ok(code) {
			t.Errorf("EMQX 5.5 rules: PUBLISH to extra/${username}: 0x%02X, want allowed", code)
		}
		// Then the configured rules, for what the token's rules do not name.
		if code := publishCode(t, list, &paho.Publish{Topic: "devices/c-list/t", QoS: 1, Payload: []byte("config")}); !ok(code) {
			t.Errorf("a topic the configured rules allow: 0x%02X", code)
		}
		lists := authzClient(t, addr, "c-old", withACL(map[string]any{"pub": []any{"old/%c", "old/%u/x"}, "sub": []any{"old/#"}}))
		// The allow lists are all there is: the configured rules are not
		// consulted.
		for _, p := range []struct {
			topic   string
			allowed bool
		}{{"old/c-old", true}, {"devices/c-old/t", false}, {"old/user-c-old/x", true}, {"old/user-c-other/x", false}} {
			if code := publishCode(t, lists, &paho.Publish{Topic: p.topic, QoS: 1, Payload: []byte("lists")}); ok(code) != p.allowed {
				t.Errorf("EMQX 4 lists: PUBLISH %s answered 0x%02X, want allowed %v", p.topic, code, p.allowed)
			}
		}
		if got := subscribeCodes(t, lists, paho.SubscribeOptions{Topic: "old/#", QoS: 1}, paho.SubscribeOptions{Topic: "devices/c-old/#", QoS: 1}); !bytes.Equal(got, []byte{1, 0x87}) {
			t.Errorf("EMQX 4 lists: SUBACK % X, want 01 87", got)
		}
		expectOnly(t, watch, broker.Addr, "extra/c-list list", "extra/user-c-named username", "devices/c-list/t config", "old/c-old lists", "old/user-c-old/x lists")
	})

	t.Run("no_match allow", func(t *testing.T) {
		rules := fleetRules()
		rules.NoMatch = "allow"
		open := startAuthzProxy(t, broker.Addr, rules)
		watch := watchBroker(t, broker.Addr, "devices/#", "anywhere/#")
		c := authzClient(t, open, "c-open")
		for _, p := range []struct {
			topic   string
			allowed bool
		}{{"anywhere/c-open", true}, {"devices/c-open/config", false}, {"devices/c-open/t", true}} {
			if code := publishCode(t, c, &paho.Publish{Topic: p.topic, QoS: 1, Payload: []byte("open")}); ok(code) != p.allowed {
				t.Errorf("no_match allow: PUBLISH %s answered 0x%02X, want allowed %v", p.topic, code, p.allowed)
			}
		}
		if got := subscribeCodes(t, c, paho.SubscribeOptions{Topic: "anywhere/#", QoS: 1}, paho.SubscribeOptions{Topic: "firmware/latest", QoS: 2}); !bytes.Equal(got, []byte{1, 2}) {
			t.Errorf("no_match allow: SUBACK % X, want 01 02 (no rule covers the first; the second's QoS condition does not hold, so none applies)", got)
		}
		expectOnly(t, watch, broker.Addr, "anywhere/c-open open", "devices/c-open/t open")
	})

	t.Run("unreadable acl claim", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		cp := pahoConnect(t, "c-bad")
		cp.Password = []byte(mint(t, e2eSecret, "c-bad", withACL("publish everything")))
		ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
		defer cancel()
		if ack, err := c.Connect(ctx, cp); err == nil || ack == nil || ack.ReasonCode != 0x86 {
			t.Errorf("CONNECT with an acl claim in neither format: %v, %+v; want CONNACK 0x86", err, ack)
		}
	})
}

// disconnects connects a paho client through addr as id whose server
// DISCONNECTs arrive on the channel returned.
func disconnects(t *testing.T, addr, id string, edits ...func(*jwt.Builder)) (*pahoClient, chan byte) {
	t.Helper()
	got := make(chan byte, 1)
	cp := pahoConnect(t, id)
	cp.Password = []byte(mint(t, e2eSecret, id, func(b *jwt.Builder) {
		for _, e := range edits {
			e(b)
		}
	}))
	c := connectPaho(t, addr, cp, func(cfg *paho.ClientConfig) {
		cfg.OnServerDisconnect = func(d *paho.Disconnect) { got <- d.ReasonCode }
	})
	return c, got
}

// disconnected waits for the reason code of a server DISCONNECT on got.
func disconnected(t *testing.T, got chan byte, want byte) {
	t.Helper()
	select {
	case code := <-got:
		if code != want {
			t.Errorf("DISCONNECT 0x%02X, want 0x%02X", code, want)
		}
	case <-time.After(proxytest.DefaultTimeout):
		t.Errorf("no DISCONNECT within %v, want 0x%02X", proxytest.DefaultTimeout, want)
	}
}

// TestAuthorizationDenyDisconnect: with deny_action disconnect, a denied
// PUBLISH ends the session, with DISCONNECT 0x87 to an MQTT 5 client and
// a close to an MQTT 3.1.1 one, and never reaches the broker.
func TestAuthorizationDenyDisconnect(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	rules := fleetRules()
	rules.DenyAction = configs.DenyActionDisconnect
	addr := startAuthzProxy(t, broker.Addr, rules)
	watch := watchBroker(t, broker.Addr, "devices/#")

	c, got := disconnects(t, addr, "c-dis5")
	if code := publishCode(t, c, &paho.Publish{Topic: "devices/c-dis5/t", QoS: 1, Payload: []byte("allowed")}); code >= 0x80 {
		t.Errorf("an allowed PUBLISH: 0x%02X", code)
	}
	answered := make(chan *paho.PublishResponse, 1)
	go func() { // paho waits for the answer until its context ends
		r, _ := c.Publish(t.Context(), &paho.Publish{Topic: "devices/c-other/t", QoS: 1, Payload: []byte("denied")})
		answered <- r
	}()
	disconnected(t, got, 0x87)
	select {
	case r := <-answered:
		if r != nil {
			t.Errorf("a denied PUBLISH was answered %+v; want the session ended", r)
		}
	default:
	}

	res := proxytest.Pub(t, append(proxytest.AddrArgs(t, addr), "-V", "mqttv311", "-i", "c-dis3", "-u", "u", "-P", mint(t, e2eSecret, "c-dis3", nil),
		"-t", "devices/c-dis3/config", "-q", "1", "-m", "denied")...)
	if res.Err == nil || !strings.Contains(res.Output, "The connection was lost") {
		t.Errorf("an MQTT 3.1.1 client's denied PUBLISH: %v, want the connection lost\n%s", res.Err, res.Output)
	}
	expectOnly(t, watch, broker.Addr, "devices/c-dis5/t allowed")
}

// TestSessionEndDisconnectCodes: an MQTT 5 session with topic rules is
// ended the way a broker ends one, with a DISCONNECT between whole packets
// then the close: 0xA0 (maximum connect time) when its token expires,
// 0x8B (server shutting down) at the end of a drain; an MQTT 3.1.1 one,
// whose protocol has no server DISCONNECT, is closed.
func TestSessionEndDisconnectCodes(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	p := authzProxy(t, broker.Addr, fleetRules())
	addr := startProxy(t, p)

	_, expiring := disconnects(t, addr, "c-exp", func(b *jwt.Builder) { b.Expiration(time.Now().Add(2 * time.Second)) })
	disconnected(t, expiring, 0xA0)

	c, draining := disconnects(t, addr, "c-drain")
	c.subscribe(t, "devices/c-drain/#", 1)
	v3, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer v3.Close()
	v3.Write(connectAs(t, packets.ProtocolV311, "c-drain3", mint(t, e2eSecret, "c-drain3", nil)))
	v3.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	connack := make([]byte, 4)
	if _, err := io.ReadFull(v3, connack); err != nil || connack[3] != 0 {
		t.Fatalf("the MQTT 3.1.1 client: CONNACK % X, %v", connack, err)
	}
	v3Ended := make(chan error, 1)
	go func() { // as a client does: it reads until the proxy's end, then closes
		rest, err := io.ReadAll(v3)
		if len(rest) != 0 {
			err = fmt.Errorf("read % X", rest)
		}
		v3.Close()
		v3Ended <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want the drain to end at its deadline", err)
	}
	disconnected(t, draining, 0x8B)
	if err := <-v3Ended; err != nil {
		t.Errorf("the MQTT 3.1.1 client: %v after the drain, want the close alone", err)
	}
}

// TestAuthorizationOperators: each decision is counted in
// authorizations_total by action and outcome, and each denial logged with
// the client, the topic, the action and the rule that decided.
func TestAuthorizationOperators(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	o := startObserved(t, authzProxy(t, broker.Addr, fleetRules()))
	c := authzClient(t, o.addr, "c-ops")
	publishCode(t, c, &paho.Publish{Topic: "devices/c-ops/t", QoS: 1, Payload: []byte("a")})
	publishCode(t, c, &paho.Publish{Topic: "devices/c-ops/config", QoS: 1, Payload: []byte("b")})
	publishCode(t, c, &paho.Publish{Topic: "devices/c-ops/t", QoS: 1, Payload: []byte("c")})
	subscribeCodes(t, c, paho.SubscribeOptions{Topic: "devices/c-ops/#"}, paho.SubscribeOptions{Topic: "devices/c-x/#"}, paho.SubscribeOptions{Topic: "a/b"})
	for _, m := range []struct {
		action, outcome string
		want            float64
	}{{"publish", "allow", 2}, {"publish", "deny", 1}, {"subscribe", "allow", 1}, {"subscribe", "deny", 2}} {
		if got := o.metric(t, "mqtt_jwt_proxy_authorizations_total", "action="+m.action, "outcome="+m.outcome); got != m.want {
			t.Errorf("authorizations_total{action=%s, outcome=%s} = %v, want %v", m.action, m.outcome, got, m.want)
		}
	}
	o.waitLogged(t, "authorization denied", zap.String("client_id", "c-ops"), zap.String("username", "user-c-ops"),
		zap.String("action", "publish"), zap.String("topic", "devices/c-ops/config"),
		zap.String("rule", `deny: config rule 0: deny publish "devices/${claims.sub}/config" (for this client: "devices/c-ops/config")`))
	o.waitLogged(t, "authorization denied", zap.String("action", "subscribe"), zap.String("topic", "a/b"),
		zap.String("rule", "deny: no rule applies (no_match: deny)"))
	o.waitLogged(t, "authentication accepted", zap.String("client_id", "c-ops"), zap.Bool("rules", true))
}
