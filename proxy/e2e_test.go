package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
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
// while connected is disconnected at exp, and the broker publishes its
// will to a subscriber connected directly.
func TestExpiryDisconnectsAndPublishesWill(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	chain, err := authn.New([]configs.Authenticator{{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	addr := startProxy(t, &Proxy{Upstream: broker.Addr, Verifier: chain})

	wills := proxytest.StartSub(t, append(proxytest.AddrArgs(t, broker.Addr), "-t", "wills/#", "-v")...)
	exp := time.Now().Add(2 * time.Second)
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
	// exp has second precision: the close comes in the second before exp at the earliest.
	if now := time.Now(); now.Before(exp.Truncate(time.Second)) {
		t.Errorf("will published at %v, before the token's exp %v", now, exp)
	}
}
