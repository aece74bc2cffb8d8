package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	paho "github.com/eclipse/paho.golang/packets"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

func TestNewForward(t *testing.T) {
	cases := []struct {
		name    string
		cfg     configs.Forward
		wantNil bool
		wantErr []string
	}{
		{"zero keeps everything", configs.Forward{}, true, nil},
		{"keep everything", configs.Forward{Password: "keep", Username: "keep", ClientID: "keep"}, true, nil},
		{"strip", configs.Forward{Password: "strip"}, false, nil},
		{"literal password", configs.Forward{Password: "broker-pass"}, false, nil},
		{"templates", configs.Forward{Username: "${claims.tenant}", ClientID: "${claims.sub}"}, false, nil},
		{"bad username", configs.Forward{Username: "${claim.sub}"}, false,
			[]string{"forward.username: unknown placeholder ${claim.sub}; known are ${clientid}, ${username}, ${cert_common_name}, ${cert_subject}, ${claims.NAME}"}},
		{"bad client id", configs.Forward{ClientID: "dev-${claims.sub"}, false,
			[]string{`forward.client_id: unterminated placeholder in "dev-${claims.sub"`}},
		{"password too long", configs.Forward{Password: strings.Repeat("p", 65536)}, false,
			[]string{"forward.password: 65536 bytes, more than the 65535 a CONNECT field holds"}},
		{"every problem reported", configs.Forward{Username: "${x}", ClientID: "${claims.}"}, false,
			[]string{"forward.username: unknown placeholder ${x}", "forward.client_id: placeholder ${claims.} names no claim"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewForward(tc.cfg)
			if tc.wantErr == nil {
				if err != nil || (f == nil) != tc.wantNil {
					t.Errorf("NewForward = %v, %v; want nil %v and no error", f, err, tc.wantNil)
				}
				return
			}
			if err == nil || f != nil {
				t.Fatalf("NewForward = %v, %v; want an error", f, err)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

// clientConnect is a CONNECT as ReadConnect returns it, Raw included, with
// a will and, for MQTT 5, properties, so that a rewrite can be seen to
// keep them.
func clientConnect(t *testing.T, version byte, edit func(*packets.Connect)) *packets.Connect {
	t.Helper()
	c := &packets.Connect{
		ProtocolName:    "MQTT",
		ProtocolVersion: version,
		CleanStart:      true,
		KeepAlive:       45,
		ClientID:        "dev-1",
		UsernameFlag:    true,
		Username:        "alice",
		PasswordFlag:    true,
		Password:        []byte("the.bearer.token"),
		WillFlag:        true,
		WillQoS:         1,
		WillTopic:       "wills/dev-1",
		WillPayload:     []byte("gone"),
	}
	if version == packets.ProtocolV31 {
		c.ProtocolName = "MQIsdp"
	}
	if version == packets.ProtocolV5 {
		expiry := uint32(300)
		c.Properties = &paho.Properties{SessionExpiryInterval: &expiry, User: []paho.User{{Key: "site", Value: "north"}}}
		c.WillProperties = &paho.Properties{ContentType: "text/plain"}
	}
	if edit != nil {
		edit(c)
	}
	raw, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	pk, err := packets.ReadConnect(bytes.NewReader(raw), 0)
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

func TestForwardConnect(t *testing.T) {
	claims := map[string]any{"sub": "sensor-7", "tenant": "acme", "n": json.Number("42")}
	cases := []struct {
		name string
		cfg  configs.Forward
		// edit turns the client's CONNECT into the expected upstream one;
		// nil means the client's bytes go upstream unchanged.
		edit func(c *packets.Connect, version byte)
		// client edits the client's CONNECT first.
		client func(*packets.Connect)
	}{
		{name: "keep", cfg: configs.Forward{}},
		{name: "explicit keep", cfg: configs.Forward{Password: "keep", Username: "keep", ClientID: "keep"}},
		{name: "template rendering the client's own value", cfg: configs.Forward{ClientID: "${clientid}", Username: "${username}"}},
		{name: "strip password", cfg: configs.Forward{Password: "strip"},
			edit: func(c *packets.Connect, _ byte) { c.PasswordFlag, c.Password = false, nil }},
		{name: "literal password", cfg: configs.Forward{Password: "broker-pass"},
			edit: func(c *packets.Connect, _ byte) { c.Password = []byte("broker-pass") }},
		{name: "client id from sub", cfg: configs.Forward{ClientID: "${claims.sub}"},
			edit: func(c *packets.Connect, _ byte) { c.ClientID = "sensor-7" }},
		{name: "username from claims and connect", cfg: configs.Forward{Username: "${claims.tenant}:${username}:${claims.n}"},
			edit: func(c *packets.Connect, _ byte) { c.Username = "acme:alice:42" }},
		{name: "everything", cfg: configs.Forward{Password: "strip", Username: "${claims.tenant}", ClientID: "${claims.tenant}-${claims.sub}"},
			edit: func(c *packets.Connect, _ byte) {
				c.PasswordFlag, c.Password, c.Username, c.ClientID = false, nil, "acme", "acme-sensor-7"
			}},
		{name: "username added to a client without one", cfg: configs.Forward{Username: "${claims.sub}"},
			client: withoutCredentials,
			edit:   func(c *packets.Connect, _ byte) { c.UsernameFlag, c.Username = true, "sensor-7" }},
		{name: "literal password without a username", cfg: configs.Forward{Password: "broker-pass"},
			client: withoutCredentials,
			edit: func(c *packets.Connect, version byte) {
				c.PasswordFlag, c.Password = true, []byte("broker-pass")
				if version != packets.ProtocolV5 {
					c.UsernameFlag = true // an empty user name: 3.1.1 wants one before a password
				}
			}},
	}
	for _, v := range []struct {
		name    string
		version byte
		bridge  bool
	}{
		{"v3.1", packets.ProtocolV31, false}, {"v3.1.1", packets.ProtocolV311, false}, {"v5", packets.ProtocolV5, false},
		{"v3.1 bridge", packets.ProtocolV31, true}, {"v3.1.1 bridge", packets.ProtocolV311, true},
	} {
		version := v.version
		for _, tc := range cases {
			t.Run(v.name+"/"+tc.name, func(t *testing.T) {
				f, err := NewForward(tc.cfg)
				if err != nil {
					t.Fatal(err)
				}
				client := func(c *packets.Connect) {
					c.Bridge = v.bridge
					if tc.client != nil {
						tc.client(c)
					}
				}
				pk := clientConnect(t, version, client)
				req := requestOf(pk)
				got, _, err := f.connect(pk, &req, &authn.Identity{Claims: claims}, 0, newConnLog(zap.NewNop()))
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				if tc.edit == nil {
					if !bytes.Equal(got, pk.Raw) {
						t.Errorf("got %x, want the client's bytes %x", got, pk.Raw)
					}
					return
				}
				want := clientConnect(t, version, func(c *packets.Connect) {
					client(c)
					tc.edit(c, version)
				})
				if !bytes.Equal(got, want.Raw) {
					t.Errorf("got  %x\nwant %x", got, want.Raw)
				}
				upstream, err := packets.ReadConnect(bytes.NewReader(got), 0)
				if err != nil {
					t.Fatalf("the upstream CONNECT is not valid: %v", err)
				}
				// A bridge stays one: the broker treats it apart.
				if upstream.ProtocolVersion != version || upstream.Bridge != v.bridge {
					t.Errorf("upstream version %d, bridge %t; want %d, %t", upstream.ProtocolVersion, upstream.Bridge, version, v.bridge)
				}
			})
		}
	}
}

func TestForwardConnectRefuses(t *testing.T) {
	claims := map[string]any{"sub": "sensor-7", "nul": "a\u0000b", "groups": []any{"a"}, "empty": ""}
	cases := []struct {
		name string
		cfg  configs.Forward
		want string
	}{
		{"missing claim", configs.Forward{ClientID: "${claims.tenant}"}, `forward.client_id: "${claims.tenant}" has no value for this client`},
		{"array claim", configs.Forward{Username: "${claims.groups}"}, `forward.username: "${claims.groups}" has no value`},
		{"empty claim", configs.Forward{Username: "u-${claims.empty}"}, `forward.username: "u-${claims.empty}" has no value`},
		{"claim the packet cannot carry", configs.Forward{ClientID: "${claims.nul}"}, "client identifier"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewForward(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			pk := clientConnect(t, packets.ProtocolV311, nil)
			req := requestOf(pk)
			got, _, err := f.connect(pk, &req, &authn.Identity{Claims: claims}, 0, newConnLog(zap.NewNop()))
			if got != nil || !errors.Is(err, authn.ErrClaimMismatch) || authn.ReasonOf(err) != authn.ErrClaimMismatch {
				t.Fatalf("connect = %x, %v; want a claim_mismatch error", got, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

// TestForwardConnectAuthMethod: a client that presented its token under an
// Authentication Method reaches the broker without the method and the
// token, whatever forward says, its other properties and fields kept; a
// forward rewrite applies as well.
func TestForwardConnectAuthMethod(t *testing.T) {
	const token = "eyJ.eyJ.token-under-the-method"
	client := func(c *packets.Connect) {
		withoutCredentials(c)
		c.Properties.AuthMethod, c.Properties.AuthData = "JWT", []byte(token)
	}
	id := &authn.Identity{AuthMethod: "JWT", Claims: map[string]any{"sub": "sensor-7"}}
	for _, tc := range []struct {
		name string
		cfg  configs.Forward
		edit func(*packets.Connect)
	}{
		{"no forward section", configs.Forward{}, func(*packets.Connect) {}},
		{"client id from sub", configs.Forward{ClientID: "${claims.sub}"}, func(c *packets.Connect) { c.ClientID = "sensor-7" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewForward(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zapcore.DebugLevel)
			pk := clientConnect(t, packets.ProtocolV5, client)
			req := requestOf(pk)
			got, _, err := f.connect(pk, &req, id, 0, newConnLog(zap.New(core)))
			if err != nil {
				t.Fatal(err)
			}
			want := clientConnect(t, packets.ProtocolV5, func(c *packets.Connect) { withoutCredentials(c); tc.edit(c) })
			if !bytes.Equal(got, want.Raw) {
				t.Errorf("got  %x\nwant %x", got, want.Raw)
			}
			if bytes.Contains(got, []byte(token)) || bytes.Contains(got, []byte("JWT")) {
				t.Errorf("the method or the token reached the broker: %q", got)
			}
			if method, data := pk.Authentication(); method != "JWT" || string(data) != token {
				t.Errorf("the client's CONNECT was changed: %q, %q", method, data)
			}
			entries := logs.FilterMessage("connect rewritten for the upstream").All()
			if len(entries) != 1 {
				t.Fatalf("got %d rewrite lines, want 1", len(entries))
			}
			if rewritten, _ := json.Marshal(entries[0].ContextMap()["rewritten"]); !strings.Contains(string(rewritten), `"authentication"`) {
				t.Errorf("rewritten = %s, want authentication in it", rewritten)
			}
		})
	}
}

// TestForwardConnectLogs: the debug line names what was rewritten and the
// new identity, never the password.
func TestForwardConnectLogs(t *testing.T) {
	f, err := NewForward(configs.Forward{Password: "broker-pass", ClientID: "${claims.sub}"})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	pk := clientConnect(t, packets.ProtocolV5, nil)
	req := requestOf(pk)
	if _, _, err := f.connect(pk, &req, &authn.Identity{Claims: map[string]any{"sub": "sensor-7"}}, 0, newConnLog(zap.New(core))); err != nil {
		t.Fatal(err)
	}
	entries := logs.FilterMessage("connect rewritten for the upstream").All()
	if len(entries) != 1 {
		t.Fatalf("got %d rewrite lines, want 1: %v", len(entries), logs.All())
	}
	fields := entries[0].ContextMap()
	if fields["upstream_client_id"] != "sensor-7" {
		t.Errorf("upstream_client_id = %v, want sensor-7", fields["upstream_client_id"])
	}
	if rewritten, _ := json.Marshal(fields["rewritten"]); string(rewritten) != `["client_id","password"]` {
		t.Errorf("rewritten = %s, want client_id and password", rewritten)
	}
	for key, value := range fields {
		if s, _ := json.Marshal(value); bytes.Contains(s, []byte("broker-pass")) || bytes.Contains(s, []byte("bearer")) {
			t.Errorf("field %s logs a password: %s", key, s)
		}
	}
}

// TestMosquittoForward runs mosquitto_pub through a proxy that strips the
// password and takes the client ID and user name from the token's claims,
// to a real mosquitto behind a Recorder: the broker accepts the rewritten
// CONNECT, the Recorder shows it holds no token, and a token without the
// claim a template needs is refused before the upstream is dialed.
func TestMosquittoForward(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	recorder := proxytest.NewRecorder(t, broker.Addr)
	chain, err := authn.New([]configs.Authenticator{{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	forward, err := NewForward(configs.Forward{Password: "strip", Username: "${claims.tenant}", ClientID: "${claims.sub}"})
	if err != nil {
		t.Fatal(err)
	}
	addr := startProxy(t, &Proxy{Upstream: recorder.Addr, Verifier: chain, Forward: forward})
	withTenant := func(b *jwt.Builder) { b.Claim("tenant", "acme") }

	accepted := 0
	for _, v := range []struct {
		name          string
		version       byte
		badCredential int
	}{
		{"mqttv31", packets.ProtocolV31, 4},
		{"mqttv311", packets.ProtocolV311, 4},
		{"mqttv5", packets.ProtocolV5, 0x86},
	} {
		t.Run(v.name, func(t *testing.T) {
			sub := "sensor-" + v.name
			token := mint(t, e2eSecret, sub, withTenant)
			pub := proxytest.Pub(t, append(proxytest.AddrArgs(t, addr), "-V", v.name, "-i", "chosen-by-client", "-u", "device", "-P", token, "-t", "fwd/t", "-m", "hi")...)
			if pub.Err != nil || pub.Connack != 0 {
				t.Fatalf("CONNACK %d, %v; want accepted\n%s", pub.Connack, pub.Err, pub.Output)
			}
			recorder.WaitEnded(t, accepted)
			upstream := recorder.Received()[accepted]
			accepted++
			got, err := packets.ReadConnect(bytes.NewReader(upstream), 0)
			if err != nil {
				t.Fatalf("the broker got no valid CONNECT: %v", err)
			}
			if got.ProtocolVersion != v.version || got.ClientID != sub || !got.UsernameFlag || got.Username != "acme" || got.PasswordFlag {
				t.Errorf("the broker got version %d, client ID %q, user name %q (flag %v), password flag %v; want %d, %q, \"acme\", no password",
					got.ProtocolVersion, got.ClientID, got.Username, got.UsernameFlag, got.PasswordFlag, v.version, sub)
			}
			if bytes.Contains(upstream, []byte(token)) || bytes.Contains(upstream, []byte(strings.Split(token, ".")[2])) {
				t.Errorf("the token reached the broker")
			}
			if !bytes.Contains(upstream, []byte("fwd/t")) {
				t.Errorf("the PUBLISH behind the CONNECT did not reach the broker: %x", upstream)
			}

			refused := proxytest.Pub(t, append(proxytest.AddrArgs(t, addr), "-V", v.name, "-i", "c", "-u", "device", "-P", mint(t, e2eSecret, sub, nil), "-t", "fwd/t", "-m", "no")...)
			if refused.Connack != v.badCredential {
				t.Errorf("without the tenant claim: CONNACK %d, want %d\n%s", refused.Connack, v.badCredential, refused.Output)
			}
			if n := recorder.Accepted(); n != accepted {
				t.Errorf("the upstream was dialed %d times, want %d: a refused client reached it", n, accepted)
			}
		})
	}
}

// withoutCredentials makes a client that sends neither user name nor
// password (its token would come some other way).
func withoutCredentials(c *packets.Connect) {
	c.UsernameFlag, c.Username, c.PasswordFlag, c.Password = false, "", false, nil
}

// requestOf is what serveConn asks the verifier about pk.
func requestOf(pk *packets.Connect) authn.Request {
	return authn.Request{ClientID: pk.ClientID, Username: pk.Username, HasUsername: pk.UsernameFlag,
		Password: pk.Password, HasPassword: pk.PasswordFlag}
}
