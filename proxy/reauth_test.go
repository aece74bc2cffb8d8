package proxy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	ppk "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// tokenLife is the lifetime of the re-authentication tests' tokens: long
// enough for a re-authentication and a round trip through the broker
// under -race on a loaded machine, short enough to outlive a few.
const tokenLife = 6 * time.Second

// reauthProxy starts an observed proxy to broker whose HS256 tokens name
// the client identifier as their sub and come in the password or under
// the Authentication Method JWT; a client may do what its token's acl
// claim allows, and nothing else.
func reauthProxy(t *testing.T, broker string) *observedProxy {
	t.Helper()
	rules, err := acl.FromConfig(configs.Authorization{NoMatch: "deny"})
	if err != nil {
		t.Fatal(err)
	}
	return startObserved(t, &Proxy{Upstream: broker, Verifier: jwtChain(t, boundHS256), Authorization: Authorization{Rules: rules}})
}

// ownTopics is an acl claim that lets client %c publish and subscribe
// under prefix/%c/.
func ownTopics(prefix string) func(*jwt.Builder) {
	own := prefix + "/%c/#"
	return withACL(map[string]any{"pub": []any{own}, "sub": []any{own}})
}

// expiring is a token edit that sets exp to the whole second at or before
// life from now, and returns that exp in *exp.
func expiring(life time.Duration, exp *time.Time) func(*jwt.Builder) {
	*exp = time.Now().Add(life).Truncate(time.Second)
	return func(b *jwt.Builder) { b.Expiration(*exp) }
}

// tokenOf mints the token of client id with edits.
func tokenOf(t *testing.T, secret, id string, edits ...func(*jwt.Builder)) string {
	t.Helper()
	return mint(t, secret, id, func(b *jwt.Builder) {
		for _, e := range edits {
			e(b)
		}
	})
}

// methodAuther is the paho Auther of a client under the method JWT: the
// proxy never asks it to continue, and it counts the CONNACKs and AUTHs
// that said it was authenticated.
type methodAuther struct {
	authenticated chan struct{}
}

func (a *methodAuther) Authenticate(*paho.Auth) *paho.Auth {
	return &paho.Auth{ReasonCode: 0x18} // never asked: the method takes one step
}

func (a *methodAuther) Authenticated() { a.authenticated <- struct{}{} }

// methodClient is a paho client connected through addr as id with token
// under the Authentication Method JWT rather than in its password; its
// server DISCONNECTs arrive on disconnects.
type methodClient struct {
	*pahoClient
	auther      *methodAuther
	disconnects chan byte
}

func connectMethod(t *testing.T, addr, id, token string) *methodClient {
	t.Helper()
	cp := pahoConnect(t, id)
	cp.PasswordFlag, cp.Password = false, nil
	cp.Properties = &paho.ConnectProperties{AuthMethod: "JWT", AuthData: []byte(token)}
	m := &methodClient{auther: &methodAuther{authenticated: make(chan struct{}, 8)}, disconnects: make(chan byte, 1)}
	m.pahoClient = connectPaho(t, addr, cp, func(cfg *paho.ClientConfig) {
		cfg.AuthHandler = m.auther
		cfg.OnServerDisconnect = func(d *paho.Disconnect) { m.disconnects <- d.ReasonCode }
	})
	if m.connack.Properties == nil || m.connack.Properties.AuthMethod != "JWT" {
		t.Fatalf("CONNACK %+v, want the Authentication Method JWT in it [MQTT-4.12.0-5]", m.connack.Properties)
	}
	m.waitAuthenticated(t)
	return m
}

// waitAuthenticated waits for paho to say the client is authenticated.
func (m *methodClient) waitAuthenticated(t *testing.T) {
	t.Helper()
	select {
	case <-m.auther.authenticated:
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatalf("paho did not call Authenticated within %v", proxytest.DefaultTimeout)
	}
}

// reauthenticate sends AUTH 0x19 under method with token and returns the
// answer: an AUTH, or the DISCONNECT that ended the session.
func (m *methodClient) reauthenticate(t *testing.T, method, token string) *paho.AuthResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
	defer cancel()
	r, err := m.Authenticate(ctx, &paho.Auth{ReasonCode: 0x19, Properties: &paho.AuthProperties{AuthMethod: method, AuthData: []byte(token)}})
	if err != nil {
		t.Fatalf("re-authenticating %s: %v", m.ClientID(), err)
	}
	return r
}

// roundTrip publishes through the client to its own topic at QoS 1 and
// waits for the broker to deliver it back: the session is alive through
// the proxy and the broker.
func (m *methodClient) roundTrip(t *testing.T, topic, payload string) {
	t.Helper()
	m.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if got := m.next(t); got.Topic != topic || string(got.Payload) != payload {
		t.Fatalf("received %s, want %s %q", describe(got), topic, payload)
	}
}

// untilPast waits until the clock is margin past deadline: what a test of
// expiry must wait for is the clock itself.
func untilPast(deadline time.Time, margin time.Duration) {
	<-time.After(time.Until(deadline.Add(margin)))
}

// TestReauthenticationKeepsSession: an MQTT 5 client that presented its
// token under the method JWT re-authenticates three times, each past the
// exp of the token before: each time it gets AUTH 0x00, and after each
// old exp it still publishes and receives through the broker, which saw
// one connection of it, never closed. A client that never
// re-authenticates gets DISCONNECT 0xA0 at its token's exp. Each
// re-authentication is logged and counted.
func TestReauthenticationKeepsSession(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	o := reauthProxy(t, broker.Addr)

	const id = "c-reauth"
	var exp, stillExp time.Time
	c := connectMethod(t, o.addr, id, tokenOf(t, e2eSecret, id, ownTopics("devices"), expiring(tokenLife, &exp)))
	still := connectMethod(t, o.addr, "c-still", tokenOf(t, e2eSecret, "c-still", ownTopics("devices"), expiring(tokenLife, &stillExp)))
	c.subscribe(t, "devices/"+id+"/#", 1)
	c.roundTrip(t, "devices/"+id+"/t", "first token")

	for i := 1; i <= 3; i++ {
		// Half way through the token's life, as a client refreshes ahead.
		untilPast(exp.Add(-tokenLife/2), 0)
		old := exp
		r := c.reauthenticate(t, "JWT", tokenOf(t, e2eSecret, id, ownTopics("devices"), expiring(tokenLife, &exp)))
		if !r.Success || r.ReasonCode != 0 {
			t.Fatalf("re-authentication %d: %+v, want AUTH 0x00", i, r)
		}
		c.waitAuthenticated(t)
		untilPast(old, 500*time.Millisecond)
		if i == 1 {
			disconnected(t, still.disconnects, 0xA0) // its exp, the first token's, has passed
		}
		c.roundTrip(t, "devices/"+id+"/t", fmt.Sprintf("past exp %d", i))
		if time.Now().After(exp) {
			t.Fatalf("re-authentication %d: the round trip ended past the new token's exp: tokenLife is too short for this machine", i)
		}
	}
	select {
	case code := <-c.disconnects:
		t.Fatalf("the re-authenticated client got DISCONNECT 0x%02X", code)
	default:
	}

	broker.SyncLog(t)
	log := broker.Log()
	if n := strings.Count(log, " as "+id+" "); n != 1 {
		t.Errorf("the broker logged %d connections of %s, want 1:\n%s", n, id, log)
	}
	if strings.Contains(log, "Client "+id+" ") || strings.Contains(log, "Received AUTH") {
		t.Errorf("the broker logged the end of %s's connection, or an AUTH:\n%s", id, log)
	}
	o.waitLogged(t, "re-authentication accepted", zap.String("client_id", id), zap.String("outcome", "accepted"))
	if n := o.logs.FilterMessage("re-authentication accepted").FilterField(zap.String("client_id", id)).Len(); n != 3 {
		t.Errorf("%d re-authentications logged, want 3", n)
	}
	if got := o.metric(t, "mqtt_jwt_proxy_reauthentications_total", "outcome=accepted", "reason="); got != 3 {
		t.Errorf("reauthentications_total{outcome=accepted} = %v, want 3", got)
	}
}

// TestReauthenticationRefused: a re-authentication whose token does not
// do ends the session with DISCONNECT 0x87 then the close, and never
// reaches the broker: a bad signature, another sub, another method, an
// expired token. Each refusal is logged and counted with its reason.
func TestReauthenticationRefused(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	o := reauthProxy(t, broker.Addr)
	for _, tc := range []struct {
		name, method, reason string
		token                func(t *testing.T, id string) string
	}{
		{"bad signature", "JWT", "bad_signature", func(t *testing.T, id string) string {
			return tokenOf(t, "another-secret", id, ownTopics("devices"))
		}},
		{"other sub", "JWT", "claim_mismatch", func(t *testing.T, id string) string {
			// Verified against the session's client identifier, then its sub.
			return tokenOf(t, e2eSecret, "someone-else", ownTopics("devices"))
		}},
		{"expired", "JWT", "token_expired", func(t *testing.T, id string) string {
			return tokenOf(t, e2eSecret, id, ownTopics("devices"), func(b *jwt.Builder) { b.Expiration(time.Now().Add(-time.Minute)) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "c-forged-" + strings.ReplaceAll(tc.name, " ", "-")
			c := connectMethod(t, o.addr, id, tokenOf(t, e2eSecret, id, ownTopics("devices")))
			c.subscribe(t, "devices/"+id+"/#", 1)
			r := c.reauthenticate(t, tc.method, tc.token(t, id))
			if r.Success || r.ReasonCode != 0x87 {
				t.Errorf("answer %+v, want DISCONNECT 0x87", r)
			}
			disconnected(t, c.disconnects, 0x87)
			o.waitLogged(t, "re-authentication refused", zap.String("client_id", id), zap.String("reason", tc.reason))
			if got := o.metric(t, "mqtt_jwt_proxy_reauthentications_total", "outcome=refused", "reason="+tc.reason); got != 1 {
				t.Errorf("reauthentications_total{refused, %s} = %v, want 1", tc.reason, got)
			}
			// The broker saw the client go as from a broken connection
			// (no DISCONNECT of the client's), not a protocol error of an
			// AUTH it got.
			broker.WaitForLog(t, "Client "+id+" closed its connection", proxytest.DefaultTimeout)
		})
	}
	broker.SyncLog(t)
	if strings.Contains(broker.Log(), "Received AUTH") {
		t.Errorf("the broker logged an AUTH:\n%s", broker.Log())
	}
}

// TestReauthenticationChangesRules: a re-authentication's token brings
// its own acl claim, which judges the client's PUBLISHes from the AUTH
// 0x00 on: a topic the first token allowed is denied (PUBACK 0x87, never
// at the broker) and one it denied is allowed.
func TestReauthenticationChangesRules(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	o := reauthProxy(t, broker.Addr)
	watch := watchBroker(t, broker.Addr, "devices/#", "fleet/#")

	const id = "c-rules"
	c := connectMethod(t, o.addr, id, tokenOf(t, e2eSecret, id, ownTopics("devices")))
	publish := func(topic, payload string) byte {
		return publishCode(t, c.pahoClient, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	}
	if code := publish("devices/c-rules/t", "allowed before"); code != 0 {
		t.Errorf("a PUBLISH the first token allows: 0x%02X", code)
	}
	if code := publish("fleet/c-rules/t", "denied before"); code != 0x87 {
		t.Errorf("a PUBLISH the first token denies: 0x%02X, want 0x87", code)
	}
	if r := c.reauthenticate(t, "JWT", tokenOf(t, e2eSecret, id, ownTopics("fleet"))); !r.Success {
		t.Fatalf("re-authentication: %+v", r)
	}
	if code := publish("fleet/c-rules/t", "allowed after"); code != 0 {
		t.Errorf("a PUBLISH the new token allows: 0x%02X", code)
	}
	if code := publish("devices/c-rules/t", "denied after"); code != 0x87 {
		t.Errorf("a PUBLISH the new token denies: 0x%02X, want 0x87", code)
	}
	expectOnly(t, watch, broker.Addr, "devices/c-rules/t allowed before", "fleet/c-rules/t allowed after")
}

// TestConnectAuthMethod: a CONNECT under an Authentication Method no
// authenticator takes gets CONNACK 0x8C (bad authentication method), one
// with a bad token under JWT the refusal a password's would get, and
// neither reaches the broker; the broker gets a good one without the
// method, and the client a CONNACK that names it.
func TestConnectAuthMethod(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	o := reauthProxy(t, broker.Addr)
	broker.SyncLog(t)
	before := broker.Connections()
	for _, tc := range []struct {
		method, token string
		want          byte
	}{
		{"SCRAM-SHA-1", tokenOf(t, e2eSecret, "c-method", ownTopics("devices")), 0x8C},
		{"JWT", tokenOf(t, "another-secret", "c-method", ownTopics("devices")), 0x87},
		{"JWT", "", 0x86},
	} {
		conn, err := net.DialTimeout("tcp", o.addr, proxytest.DefaultTimeout)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, AuthHandler: &methodAuther{authenticated: make(chan struct{}, 1)}})
		cp := pahoConnect(t, "c-method")
		cp.PasswordFlag, cp.Password = false, nil
		cp.Properties = &paho.ConnectProperties{AuthMethod: tc.method, AuthData: []byte(tc.token)}
		ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
		ack, err := c.Connect(ctx, cp)
		cancel()
		conn.Close()
		if err == nil || ack == nil || ack.ReasonCode != tc.want {
			t.Errorf("CONNECT under %q with token %.20q: %v, %+v; want CONNACK 0x%02X", tc.method, tc.token, err, ack, tc.want)
		}
	}
	broker.SyncLog(t)
	if n := broker.Connections(); n != before {
		t.Errorf("the broker saw %d connections of refused clients", n-before)
	}
	c := connectMethod(t, o.addr, "c-method", tokenOf(t, e2eSecret, "c-method", ownTopics("devices")))
	c.subscribe(t, "devices/c-method/#", 1)
	c.roundTrip(t, "devices/c-method/t", "under JWT")
	o.waitLogged(t, "authentication accepted", zap.String("client_id", "c-method"), zap.String("auth_method", "JWT"))
}

// heldReauthenticator is the real chain, but each re-authentication waits
// until the test lets it go on (a send on release), as one that waits for
// a JWKS fetch does.
type heldReauthenticator struct {
	*authn.Chain
	started chan struct{}
	release chan struct{}
}

func (h *heldReauthenticator) Reauthenticate(ctx context.Context, first authn.Identity, req authn.Request) (authn.Identity, error) {
	h.started <- struct{}{}
	select {
	case <-h.release:
	case <-ctx.Done():
		return authn.Identity{}, ctx.Err()
	}
	return h.Chain.Reauthenticate(ctx, first, req)
}

// TestReauthenticationOffTheEngine: while a re-authentication's token is
// being verified, the session's other packets go on through the broker,
// and another client connects and exchanges messages: the verification
// holds no engine goroutine. Released, the client gets AUTH 0x00. A
// session that ends while its token is verified ends the verification,
// logged as session_ended.
func TestReauthenticationOffTheEngine(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	rules, err := acl.FromConfig(configs.Authorization{NoMatch: "deny"})
	if err != nil {
		t.Fatal(err)
	}
	held := &heldReauthenticator{Chain: jwtChain(t, boundHS256), started: make(chan struct{}, 1), release: make(chan struct{})}
	o := startObserved(t, &Proxy{Upstream: broker.Addr, Verifier: held, Authorization: Authorization{Rules: rules}})

	const id = "c-held"
	c := connectMethod(t, o.addr, id, tokenOf(t, e2eSecret, id, ownTopics("devices")))
	c.subscribe(t, "devices/"+id+"/#", 1)
	answered := make(chan *paho.AuthResponse, 1)
	fresh := tokenOf(t, e2eSecret, id, ownTopics("devices"))
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
		defer cancel()
		r, _ := c.Authenticate(ctx, &paho.Auth{ReasonCode: 0x19, Properties: &paho.AuthProperties{AuthMethod: "JWT", AuthData: []byte(fresh)}})
		answered <- r
	}()
	<-held.started
	c.roundTrip(t, "devices/"+id+"/t", "while verified")
	other := connectMethod(t, o.addr, "c-other", tokenOf(t, e2eSecret, "c-other", ownTopics("devices")))
	other.subscribe(t, "devices/c-other/#", 1)
	other.roundTrip(t, "devices/c-other/t", "meanwhile")
	select {
	case r := <-answered:
		t.Fatalf("answered %+v before the token was verified", r)
	default:
	}
	held.release <- struct{}{}
	if r := <-answered; r == nil || !r.Success {
		t.Fatalf("re-authentication: %+v, want AUTH 0x00", r)
	}
	c.roundTrip(t, "devices/"+id+"/t", "after")

	// The next one is held until the session ends. paho waits for its
	// answer until its context ends.
	ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
	defer cancel()
	waited := make(chan struct{})
	otherFresh := tokenOf(t, e2eSecret, "c-other", ownTopics("devices"))
	go func() {
		defer close(waited)
		other.Authenticate(ctx, &paho.Auth{ReasonCode: 0x19, Properties: &paho.AuthProperties{AuthMethod: "JWT", AuthData: []byte(otherFresh)}})
	}()
	<-held.started
	other.Disconnect(&paho.Disconnect{})
	o.waitLogged(t, "re-authentication refused", zap.String("client_id", "c-other"), zap.String("reason", reasonSessionEnded))
	cancel()
	<-waited
}

// TestReauthenticationRefusedForEndedSession: an MQTT 5 client under the
// Authentication Method JWT sends AUTH 0x19 with a new token; while the
// token is verified an operator ends the session (EndSessions, as DELETE
// /sessions does) and the client gets DISCONNECT 0x98, but does not close
// its side at once (it has HalfCloseTimeout to). The re-authentication is
// refused with reason session_ended, as operations.md says, not accepted,
// counted and given a new expiry timer once its token is decided.
func TestReauthenticationRefusedForEndedSession(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	rules, err := acl.FromConfig(configs.Authorization{NoMatch: "deny"})
	if err != nil {
		t.Fatal(err)
	}
	held := &heldReauthenticator{Chain: jwtChain(t, boundHS256), started: make(chan struct{}, 1), release: make(chan struct{})}
	o := startObserved(t, &Proxy{Upstream: broker.Addr, Verifier: held, Authorization: Authorization{Rules: rules}, HalfCloseTimeout: time.Minute})
	const id = "kicked"
	cp := &ppk.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: id, CleanStart: true, KeepAlive: 30,
		Properties: &ppk.Properties{AuthMethod: "JWT", AuthData: []byte(tokenOf(t, e2eSecret, id, ownTopics("devices")))}}
	c := rawConnect(t, o.addr, cp)
	auth := &ppk.Auth{ReasonCode: 0x19, Properties: &ppk.Properties{AuthMethod: "JWT", AuthData: []byte(tokenOf(t, e2eSecret, id, ownTopics("devices")))}}
	if _, err := auth.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.started:
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatalf("the re-authentication did not start; logged %v", o.logs.All())
	}
	if n := o.EndSessions(SessionFilter{ClientID: id}, EndedByAdmin); n != 1 {
		t.Fatalf("EndSessions ended %d sessions, want 1", n)
	}
	c.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
	pk, err := ppk.ReadPacket(c)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := pk.Content.(*ppk.Disconnect); !ok || d.ReasonCode != 0x98 {
		t.Fatalf("got %v, want DISCONNECT 0x98", pk)
	}
	close(held.release) // lets the verification go on, if the end did not stop it
	waitFor(t, func() bool {
		return o.logs.FilterMessage("re-authentication accepted").Len()+o.logs.FilterMessage("re-authentication refused").Len() > 0
	})
	if o.logs.FilterMessage("re-authentication accepted").Len() > 0 {
		t.Fatalf("the re-authentication of a session an operator ended while its token was verified was accepted; want refused, reason %s", reasonSessionEnded)
	}
	o.waitLogged(t, "re-authentication refused", zap.String("client_id", id), zap.String("reason", reasonSessionEnded))
}

// TestReauthenticatedSessionListedAndRevoked: a session that
// re-authenticated is listed with its new token's jti and exp, and is
// held to the revocation list by its new token: a version that revokes
// the token it connected with leaves it, one that revokes the new token
// ends it with DISCONNECT 0x87.
func TestReauthenticatedSessionListedAndRevoked(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	list, path := revocationFile(t, `{}`)
	rules, err := acl.FromConfig(configs.Authorization{NoMatch: "deny"})
	if err != nil {
		t.Fatal(err)
	}
	p := startObserved(t, &Proxy{Upstream: broker.Addr, Verifier: jwtChain(t, boundHS256, authn.WithRevocation(list)), Authorization: Authorization{Rules: rules}})
	p.WatchRevocation(list)

	var firstExp, secondExp time.Time
	m := connectMethod(t, p.addr, "dev-r", tokenOf(t, e2eSecret, "dev-r", ownTopics("r"), expiring(time.Hour, &firstExp),
		func(b *jwt.Builder) { b.JwtID("j-1") }))
	m.subscribe(t, "r/dev-r/#", 1)
	if s := onlySession(t, p.Proxy, SessionFilter{ClientID: "dev-r"}); s.TokenID != "j-1" || !s.ExpiresAt.Equal(firstExp) {
		t.Errorf("before re-authenticating: listed with jti %q, exp %v; want j-1, %v", s.TokenID, s.ExpiresAt, firstExp)
	}
	if r := m.reauthenticate(t, "JWT", tokenOf(t, e2eSecret, "dev-r", ownTopics("r"), expiring(2*time.Hour, &secondExp),
		func(b *jwt.Builder) { b.JwtID("j-2") })); !r.Success {
		t.Fatalf("re-authentication refused: %+v", r)
	}
	if s := onlySession(t, p.Proxy, SessionFilter{ClientID: "dev-r"}); s.TokenID != "j-2" || !s.ExpiresAt.Equal(secondExp) {
		t.Errorf("after re-authenticating: listed with jti %q, exp %v; want j-2, %v", s.TokenID, s.ExpiresAt, secondExp)
	}

	writeRevocations(t, path, `{"jti": ["j-1"]}`)
	refresh(t, list)
	p.waitLogged(t, "revocation list checked against the sessions", zap.Uint64("version", 2), zap.Int("ended", 0))
	m.roundTrip(t, "r/dev-r/x", "still here")

	writeRevocations(t, path, `{"jti": ["j-1", "j-2"]}`)
	refresh(t, list)
	select {
	case code := <-m.disconnects:
		if code != byte(packets.NotAuthorized) {
			t.Errorf("revoked after re-authenticating: DISCONNECT 0x%02x, want 0x87", code)
		}
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatal("the session whose new token was revoked goes on")
	}
	p.waitLogged(t, "connection closed", zap.String("client_id", "dev-r"), zap.String("reason", "revoked"))
}

// verifiedThenHeld is the real chain, whose re-authentications, once
// decided, wait for the test (a send on release) before they answer.
type verifiedThenHeld struct {
	*authn.Chain
	verified, release chan struct{}
}

func (v *verifiedThenHeld) Reauthenticate(ctx context.Context, first authn.Identity, req authn.Request) (authn.Identity, error) {
	id, err := v.Chain.Reauthenticate(ctx, first, req)
	v.verified <- struct{}{}
	<-v.release
	return id, err
}

// TestReauthenticationRevokedWhileVerified: a re-authentication's token
// that a version of the revocation list, loaded after the token was
// verified, revokes is refused (DISCONNECT 0x87, reason revoked), though
// the check of that version against the sessions saw the session's first
// token.
func TestReauthenticationRevokedWhileVerified(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	list, path := revocationFile(t, `{}`)
	rules, err := acl.FromConfig(configs.Authorization{NoMatch: "deny"})
	if err != nil {
		t.Fatal(err)
	}
	held := &verifiedThenHeld{Chain: jwtChain(t, boundHS256, authn.WithRevocation(list)), verified: make(chan struct{}, 1), release: make(chan struct{})}
	p := startObserved(t, &Proxy{Upstream: broker.Addr, Verifier: held, Authorization: Authorization{Rules: rules}})
	p.WatchRevocation(list)
	m := connectMethod(t, p.addr, "dev-w", tokenOf(t, e2eSecret, "dev-w", ownTopics("w"), func(b *jwt.Builder) { b.JwtID("j-1") }))

	second := tokenOf(t, e2eSecret, "dev-w", ownTopics("w"), func(b *jwt.Builder) { b.JwtID("j-2") })
	answered := make(chan *paho.AuthResponse, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
		defer cancel()
		r, _ := m.Authenticate(ctx, &paho.Auth{ReasonCode: 0x19, Properties: &paho.AuthProperties{AuthMethod: "JWT", AuthData: []byte(second)}})
		answered <- r
	}()
	<-held.verified
	writeRevocations(t, path, `{"jti": ["j-2"]}`)
	refresh(t, list)
	p.waitLogged(t, "revocation list checked against the sessions", zap.Uint64("version", 2), zap.Int("ended", 0))
	close(held.release)

	select {
	case code := <-m.disconnects:
		if code != byte(packets.NotAuthorized) {
			t.Errorf("DISCONNECT 0x%02x, want 0x87", code)
		}
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatal("the session goes on with a token revoked while it was verified")
	}
	if r := <-answered; r != nil && r.Success {
		t.Errorf("the re-authentication was answered %+v, want a refusal", r)
	}
	p.waitLogged(t, "re-authentication refused", zap.String("client_id", "dev-w"), zap.String("reason", "revoked"))
}
