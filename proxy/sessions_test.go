package proxy

import (
	"cmp"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

func TestSessionFilterMatches(t *testing.T) {
	s := SessionInfo{ClientID: "dev-1", Username: "alice", Subject: "user-1", Listener: "tcp", Remote: "192.0.2.7:50312"}
	v6 := SessionInfo{ClientID: "dev-2", Listener: "tcp", Remote: "[2001:db8::1]:50312"}
	cases := []struct {
		name   string
		filter SessionFilter
		info   SessionInfo
		want   bool
	}{
		{"zero selects all", SessionFilter{}, s, true},
		{"client id", SessionFilter{ClientID: "dev-1"}, s, true},
		{"another client id", SessionFilter{ClientID: "dev-10"}, s, false},
		{"prefix is no match", SessionFilter{ClientID: "dev"}, s, false},
		{"username", SessionFilter{Username: "alice"}, s, true},
		{"subject", SessionFilter{Subject: "user-1"}, s, true},
		{"listener", SessionFilter{Listener: "tls"}, s, false},
		{"every field must match", SessionFilter{ClientID: "dev-1", Subject: "user-2"}, s, false},
		{"every field matches", SessionFilter{ClientID: "dev-1", Subject: "user-1", Listener: "tcp", Remote: "192.0.2.7"}, s, true},
		{"remote host", SessionFilter{Remote: "192.0.2.7"}, s, true},
		{"remote host and port", SessionFilter{Remote: "192.0.2.7:50312"}, s, true},
		{"remote, another port", SessionFilter{Remote: "192.0.2.7:50313"}, s, false},
		{"remote, another host", SessionFilter{Remote: "192.0.2.70"}, s, false},
		{"remote IPv6 host", SessionFilter{Remote: "2001:db8::1"}, v6, true},
		{"remote IPv6 host and port", SessionFilter{Remote: "[2001:db8::1]:50312"}, v6, true},
		{"remote IPv6 with brackets, no port", SessionFilter{Remote: "[2001:db8::1]"}, v6, false},
		{"empty remote field", SessionFilter{Remote: "192.0.2.7"}, SessionInfo{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.filter.Matches(tc.info); got != tc.want {
				t.Errorf("%+v.Matches(%+v) = %v, want %v", tc.filter, tc.info, got, tc.want)
			}
		})
	}
	if !(SessionFilter{}).IsZero() || (SessionFilter{Remote: "192.0.2.7"}).IsZero() {
		t.Error("IsZero is wrong")
	}
}

// sessionsChain is a jwt authenticator of e2eSecret whose tokens are
// checked against list (nil: none).
func sessionsChain(t *testing.T, list *revocation.List) *authn.Chain {
	t.Helper()
	chain, err := authn.New([]configs.Authenticator{{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret}},
		authn.WithRevocation(list))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	return chain
}

// sessionToken is a token of e2eSecret for sub with jti, expiring at exp.
func sessionToken(t *testing.T, sub, jti string, exp time.Time) string {
	return mint(t, e2eSecret, sub, func(b *jwt.Builder) { b.JwtID(jti).Expiration(exp) })
}

// watchedClient is a paho MQTT 5 client whose connection's end the test
// sees.
type watchedClient struct {
	*pahoClient
	ends proxytest.Ending
}

// connectWatched connects a paho MQTT 5 client through addr as id, with
// user name username and token as its password.
func connectWatched(t *testing.T, addr, id, username, token string) *watchedClient {
	t.Helper()
	ends := proxytest.NewEnding()
	cp := &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30, UsernameFlag: true, Username: username, PasswordFlag: true, Password: []byte(token)}
	c := connectPaho(t, addr, cp, func(cfg *paho.ClientConfig) {
		cfg.OnServerDisconnect = func(d *paho.Disconnect) { ends.End(int(d.ReasonCode)) }
		cfg.OnClientError = func(error) { ends.End(-1) }
	})
	return &watchedClient{pahoClient: c, ends: ends}
}

// ended waits for the client's connection to end and returns the code of
// the server's DISCONNECT, or -1 when there was none.
func (c *watchedClient) ended(t *testing.T) int {
	t.Helper()
	return c.ends.Wait(t, c.ClientID())
}

// connected reports whether the client's connection has not ended.
func (c *watchedClient) connected() bool { return c.ends.Connected() }

// onlySession returns the one session f selects, or fails the test.
func onlySession(t *testing.T, p *Proxy, f SessionFilter) SessionInfo {
	t.Helper()
	found := p.Sessions(f)
	if len(found) != 1 {
		t.Fatalf("Sessions(%+v) = %+v, want one session", f, found)
	}
	return found[0]
}

// TestSessionsListAndEnd: with real clients connected through the proxy
// to mosquitto, Sessions lists each one as it connected (client ID, user
// name, sub, jti, listener, address, when, exp), filters as asked, and
// counts the bytes each way as messages flow; EndSessions by client ID
// ends that session only, which is then no longer listed, logs its close
// with reason admin and counts it; the others go on. A mosquitto_sub that
// was ended reconnects at once: ending a session keeps nobody out.
func TestSessionsListAndEnd(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	p := startObserved(t, &Proxy{Upstream: broker.Addr, Verifier: sessionsChain(t, nil)})
	exp := time.Now().Add(time.Hour).Truncate(time.Second)

	before := time.Now()
	sub := proxytest.StartSub(t, append(proxytest.AddrArgs(t, p.addr), "-V", "mqttv311", "-i", "sub-a", "-u", "alice",
		"-P", sessionToken(t, "user-a", "j-a", exp), "-t", "sessions/#", "-v")...)
	if sub.Connack() != 0 {
		t.Fatalf("mosquitto_sub refused: %s", sub.Output())
	}
	b := connectWatched(t, p.addr, "paho-b", "bob", sessionToken(t, "user-b", "j-b", exp))
	c := connectWatched(t, p.addr, "paho-c", "carol", sessionToken(t, "user-c", "j-c", exp))
	after := time.Now()

	all := p.Sessions(SessionFilter{})
	if len(all) != 3 {
		t.Fatalf("Sessions() = %+v, want the 3 clients", all)
	}
	for _, want := range []struct{ clientID, username, sub, jti, remote string }{
		{"sub-a", "alice", "user-a", "j-a", ""},
		{"paho-b", "bob", "user-b", "j-b", b.local},
		{"paho-c", "carol", "user-c", "j-c", c.local},
	} {
		s := onlySession(t, p.Proxy, SessionFilter{ClientID: want.clientID})
		if s.Username != want.username || s.Subject != want.sub || s.TokenID != want.jti || s.Listener != "test" {
			t.Errorf("session %s: %+v; want user name %s, sub %s, jti %s, listener test", want.clientID, s, want.username, want.sub, want.jti)
		}
		if host, _, err := net.SplitHostPort(s.Remote); err != nil || host != "127.0.0.1" || want.remote != "" && s.Remote != want.remote {
			t.Errorf("session %s: remote %q, want the client's address %s", want.clientID, s.Remote, cmp.Or(want.remote, "127.0.0.1:*"))
		}
		if s.ConnectedAt.Before(before) || s.ConnectedAt.After(after) || !s.ExpiresAt.Equal(exp) {
			t.Errorf("session %s: connected at %v, expires at %v; want between %v and %v, and %v", want.clientID, s.ConnectedAt, s.ExpiresAt, before, after, exp)
		}
		if s.BytesFromClient == 0 || s.BytesToClient < 4 { // the CONNECT; the CONNACK
			t.Errorf("session %s: %d bytes from the client, %d to it; want its CONNECT and CONNACK counted", want.clientID, s.BytesFromClient, s.BytesToClient)
		}
	}
	for _, tc := range []struct {
		filter SessionFilter
		want   int
	}{
		{SessionFilter{Subject: "user-b"}, 1},
		{SessionFilter{Remote: b.local}, 1},
		{SessionFilter{Remote: "127.0.0.1"}, 3},
		{SessionFilter{Username: "carol", ClientID: "paho-b"}, 0},
		{SessionFilter{Listener: "another"}, 0},
	} {
		if got := p.Sessions(tc.filter); len(got) != tc.want {
			t.Errorf("Sessions(%+v) = %+v, want %d sessions", tc.filter, got, tc.want)
		}
	}

	// The counts move as a message goes from paho-b to the subscriber.
	fromB, toSub := onlySession(t, p.Proxy, SessionFilter{ClientID: "paho-b"}), onlySession(t, p.Proxy, SessionFilter{ClientID: "sub-a"})
	payload := strings.Repeat("x", 1000)
	b.publish(t, &paho.Publish{Topic: "sessions/b", QoS: 1, Payload: []byte(payload)})
	if msg, ok := sub.Next(proxytest.DefaultTimeout); !ok || msg != "sessions/b "+payload {
		t.Fatalf("subscriber got %.40q, %v; want paho-b's message", msg, ok)
	}
	if s := onlySession(t, p.Proxy, SessionFilter{ClientID: "paho-b"}); s.BytesFromClient < fromB.BytesFromClient+1000 {
		t.Errorf("paho-b: %d bytes from the client after a 1000-byte PUBLISH, %d before", s.BytesFromClient, fromB.BytesFromClient)
	}
	if s := onlySession(t, p.Proxy, SessionFilter{ClientID: "sub-a"}); s.BytesToClient < toSub.BytesToClient+1000 {
		t.Errorf("sub-a: %d bytes to the client after a 1000-byte message, %d before", s.BytesToClient, toSub.BytesToClient)
	}

	// Ending paho-b ends it only.
	if n := p.EndSessions(SessionFilter{ClientID: "paho-b"}, EndedByAdmin); n != 1 {
		t.Fatalf("EndSessions(client_id paho-b) = %d, want 1", n)
	}
	if code := b.ended(t); code != -1 {
		t.Errorf("paho-b, its session relayed byte for byte, got DISCONNECT 0x%02x; want the connection closed, with no DISCONNECT in the stream", code)
	}
	if got := p.Sessions(SessionFilter{ClientID: "paho-b"}); len(got) != 0 {
		t.Errorf("paho-b is still listed after it was ended: %+v", got)
	}
	if n := p.EndSessions(SessionFilter{ClientID: "paho-b"}, EndedByAdmin); n != 0 {
		t.Errorf("EndSessions of an ended session = %d, want 0", n)
	}
	p.waitLogged(t, "connection closed", zap.String("client_id", "paho-b"), zap.String("reason", "admin"))
	if got := p.metric(t, "mqtt_jwt_proxy_sessions_ended_total", "reason=admin"); got != 1 {
		t.Errorf("sessions_ended_total{reason=admin} = %v, want 1", got)
	}
	c.publish(t, &paho.Publish{Topic: "sessions/c", QoS: 1, Payload: []byte("still here")})
	if msg, ok := sub.Next(proxytest.DefaultTimeout); !ok || msg != "sessions/c still here" {
		t.Errorf("subscriber got %q, %v; want paho-c's message", msg, ok)
	}
	if !c.connected() {
		t.Error("paho-c was ended too")
	}

	// mosquitto_sub reconnects when its connection is lost: the new
	// session is listed, connected after the one ended.
	if n := p.EndSessions(SessionFilter{ClientID: "sub-a", Remote: "127.0.0.1"}, EndedByAdmin); n != 1 {
		t.Fatalf("EndSessions(client_id sub-a, remote 127.0.0.1) = %d, want 1", n)
	}
	waitFor(t, func() bool { return strings.Count(sub.Output(), "received CONNACK (0)") == 2 })
	if s := onlySession(t, p.Proxy, SessionFilter{ClientID: "sub-a"}); !s.ConnectedAt.After(toSub.ConnectedAt) {
		t.Errorf("sub-a after it reconnected: connected at %v, want after %v", s.ConnectedAt, toSub.ConnectedAt)
	}
	if got := p.metric(t, "mqtt_jwt_proxy_sessions_ended_total", "reason=admin"); got != 2 {
		t.Errorf("sessions_ended_total{reason=admin} = %v, want 2", got)
	}
}

// TestEndSessionsBeforeRelayed: a session whose token was accepted while
// its broker is still being dialed is listed, with nothing relayed yet;
// ending it closes the client without a CONNACK, the refusal is logged
// and counted with reason admin, and the broker's connection, once the
// dial returns, is closed.
func TestEndSessionsBeforeRelayed(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.NewRecorder(t, "")
	dialing, release := make(chan struct{}), make(chan struct{})
	p := startObserved(t, &Proxy{
		Verifier: sessionsChain(t, nil),
		DialUpstream: func(ctx context.Context) (net.Conn, error) {
			close(dialing)
			<-release
			var d net.Dialer
			return d.DialContext(ctx, "tcp", broker.Addr)
		},
	})
	c := dial(t, p.addr)
	if _, err := c.Write(connectAs(t, packets.ProtocolV5, "slow-1", sessionToken(t, "user-1", "j-1", time.Now().Add(time.Hour)))); err != nil {
		t.Fatal(err)
	}
	<-dialing
	s := onlySession(t, p.Proxy, SessionFilter{Subject: "user-1"})
	if s.ClientID != "slow-1" || s.BytesFromClient != 0 || s.BytesToClient != 0 {
		t.Errorf("session being connected: %+v; want slow-1 with no bytes relayed", s)
	}
	if n := p.EndSessions(SessionFilter{Subject: "user-1"}, EndedByAdmin); n != 1 {
		t.Fatalf("EndSessions = %d, want 1", n)
	}
	if got := readAll(t, c); len(got) != 0 {
		t.Errorf("the client ended while its broker was dialed got %x, want nothing (no CONNACK)", got)
	}
	close(release)
	broker.WaitEnded(t, 0)
	p.waitLogged(t, "connect rejected", zap.String("client_id", "slow-1"), zap.String("reason", "admin"))
	if got := p.metric(t, "mqtt_jwt_proxy_authentications_total", "outcome=refused", "reason=admin"); got != 1 {
		t.Errorf("authentications_total{refused, admin} = %v, want 1", got)
	}
	if got := p.Sessions(SessionFilter{}); len(got) != 0 {
		t.Errorf("Sessions() = %+v after the end, want none", got)
	}
}

// TestSessionsListedWhileFramedSessionsConnect: the sessions API lists
// (Proxy.Sessions) while framed sessions connect. A session's openConn
// must be complete when handOver lists it: Sessions reads its rawLen
// under Proxy.mu, and a framed session's rawLen was rewritten after, a
// data race that -race reports. Nothing may change it after listing, or
// a listing could count the bytes read past the CONNECT twice.
func TestSessionsListedWhileFramedSessionsConnect(t *testing.T) {
	broker := proxytest.StartMosquitto(t)
	o := reauthProxy(t, broker.Addr)
	var connects [][]byte
	for i := range 300 {
		id := "listed-" + strconv.Itoa(i)
		connects = append(connects, connectAs(t, packets.ProtocolV311, id, tokenOf(t, e2eSecret, id, ownTopics("devices"))))
	}
	stop := make(chan struct{})
	listed := make(chan int)
	go func() {
		most := 0
		for {
			select {
			case <-stop:
				listed <- most
				return
			default:
			}
			most = max(most, len(o.Sessions(SessionFilter{})))
		}
	}()
	proxytest.VisitAll(t, o.addr, connects)
	close(stop)
	if most := <-listed; most == 0 {
		t.Log("the lister saw no session while they connected")
	}
}
