package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// revocationFile is a revocation list read from a file that holds doc,
// closed at the end of t, with the file's path.
func revocationFile(t *testing.T, doc string) (*revocation.List, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "revoked.json")
	writeRevocations(t, path, doc)
	list, err := revocation.New(configs.Revocation{File: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(list.Close)
	return list, path
}

// writeRevocations writes doc to the revocation file at path.
func writeRevocations(t *testing.T, path, doc string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
}

// refresh reads list's source again at once, and fails the test if the
// read fails.
func refresh(t *testing.T, list *revocation.List) {
	t.Helper()
	if err := list.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// answerTo sends a CONNECT of version from id with token through addr and
// returns what the proxy answers until it closes the connection.
func answerTo(t *testing.T, addr string, version byte, id, token string) []byte {
	t.Helper()
	c := dial(t, addr)
	if _, err := c.Write(connectAs(t, version, id, token)); err != nil {
		t.Fatal(err)
	}
	return readAll(t, c)
}

// TestRevocationEndsSessions: when the revocation list the proxy watches
// loads a new version, the live sessions it revokes end (by jti, sub,
// client ID, and issued_before for a token issued before the time), each
// logged with reason revoked and counted, while the others go on; a
// revoked mosquitto_sub that reconnects is refused (return code 5), and
// so is a new MQTT 5 CONNECT with a revoked token (0x87).
func TestRevocationEndsSessions(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	list, path := revocationFile(t, `{}`)
	p := startObserved(t, &Proxy{Upstream: broker.Addr, Verifier: sessionsChain(t, list)})
	p.WatchRevocation(list)

	exp := time.Now().Add(time.Hour)
	cutoff := time.Now().Add(-time.Minute).Truncate(time.Second)
	token := func(sub, jti string, iat time.Time) string {
		return mint(t, e2eSecret, sub, func(b *jwt.Builder) { b.JwtID(jti).Expiration(exp).IssuedAt(iat) })
	}
	sub := proxytest.StartSub(t, append(proxytest.AddrArgs(t, p.addr), "-V", "mqttv311", "-i", "sub-v3", "-u", "frank",
		"-P", token("frank", "stolen-2", time.Now()), "-t", "revoke/#")...)
	if sub.Connack() != 0 {
		t.Fatalf("mosquitto_sub refused: %s", sub.Output())
	}
	revoked := map[string]*watchedClient{
		"by jti":           connectWatched(t, p.addr, "c-jti", "u", token("carol", "stolen", time.Now())),
		"by sub":           connectWatched(t, p.addr, "c-sub", "u", token("mallory", "m-1", time.Now())),
		"by client id":     connectWatched(t, p.addr, "sensor-13", "u", token("dave", "d-1", time.Now())),
		"by issued_before": connectWatched(t, p.addr, "c-old", "u", token("alice", "a-1", cutoff.Add(-time.Hour))),
	}
	kept := map[string]*watchedClient{
		"issued after the time": connectWatched(t, p.addr, "c-new", "u", token("alice", "a-2", cutoff)),
		"not listed":            connectWatched(t, p.addr, "c-ok", "u", token("erin", "e-1", time.Now())),
	}

	writeRevocations(t, path, fmt.Sprintf(`{"jti": ["stolen", "stolen-2"], "sub": ["mallory"], "client_id": ["sensor-13"],
		"issued_before": {"alice": %q}}`, cutoff.Format(time.RFC3339)))
	refresh(t, list)
	for name, c := range revoked {
		if code := c.ended(t); code != -1 {
			t.Errorf("%s: DISCONNECT 0x%02x on a session relayed byte for byte, want the connection closed", name, code)
		}
	}
	p.waitLogged(t, "revocation list checked against the sessions", zap.Uint64("version", 2), zap.Int("ended", 5))
	for name, c := range kept {
		if !c.connected() {
			t.Errorf("%s: the session was ended", name)
		}
	}
	if got := p.Sessions(SessionFilter{}); len(got) != len(kept) {
		t.Errorf("Sessions() = %+v, want the %d not revoked", got, len(kept))
	}
	for _, id := range []string{"sub-v3", "c-jti", "c-sub", "sensor-13", "c-old"} {
		p.waitLogged(t, "connection closed", zap.String("client_id", id), zap.String("reason", "revoked"))
	}
	if got := p.metric(t, "mqtt_jwt_proxy_sessions_ended_total", "reason=revoked"); got != 5 {
		t.Errorf("sessions_ended_total{reason=revoked} = %v, want 5", got)
	}

	// mosquitto_sub reconnects with its token, now refused.
	waitFor(t, func() bool { return strings.Contains(sub.Output(), "received CONNACK (5)") })
	if got, want := answerTo(t, p.addr, packets.ProtocolV5, "c-jti", token("carol", "stolen", time.Now())), connackFor(t, packets.ProtocolV5, packets.NotAuthorized); !bytes.Equal(got, want) {
		t.Errorf("a new CONNECT with the revoked jti: answered %x, want CONNACK 0x87 %x", got, want)
	}
}

// pausedVerifier verifies with Verifier, then tells verified and waits for
// release before it answers.
type pausedVerifier struct {
	authn.Verifier
	verified, release chan struct{}
}

func (v pausedVerifier) Verify(ctx context.Context, req authn.Request) (authn.Identity, error) {
	id, err := v.Verifier.Verify(ctx, req)
	close(v.verified)
	<-v.release
	return id, err
}

// TestRevokedWhileVerified: a token that the list revokes in a version
// loaded after the token was verified, but before the session could be
// checked with the others, is refused (CONNACK 0x87, reason revoked), and
// the broker is not dialed.
func TestRevokedWhileVerified(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.NewRecorder(t, "")
	list, path := revocationFile(t, `{}`)
	v := pausedVerifier{Verifier: sessionsChain(t, list), verified: make(chan struct{}), release: make(chan struct{})}
	p := startObserved(t, &Proxy{Upstream: broker.Addr, Verifier: v})
	p.WatchRevocation(list)
	p.waitLogged(t, "revocation list checked against the sessions", zap.Uint64("version", 1))

	answer := make(chan []byte, 1)
	c := dial(t, p.addr)
	if _, err := c.Write(connectAs(t, packets.ProtocolV5, "late-1", sessionToken(t, "late", "late-jti", time.Now().Add(time.Hour)))); err != nil {
		t.Fatal(err)
	}
	go func() {
		c.SetReadDeadline(time.Now().Add(proxytest.DefaultTimeout))
		b, _ := io.ReadAll(c)
		answer <- b
	}()
	<-v.verified
	writeRevocations(t, path, `{"jti": ["late-jti"]}`)
	refresh(t, list)
	p.waitLogged(t, "revocation list checked against the sessions", zap.Uint64("version", 2), zap.Int("ended", 0))
	close(v.release)
	if got, want := <-answer, connackFor(t, packets.ProtocolV5, packets.NotAuthorized); !bytes.Equal(got, want) {
		t.Errorf("answered %x, want CONNACK 0x87 %x", got, want)
	}
	p.waitLogged(t, "authentication refused", zap.String("client_id", "late-1"), zap.String("reason", "revoked"))
	if n := broker.Accepted(); n != 0 {
		t.Errorf("the broker was dialed %d times for a revoked token", n)
	}
}

// TestWatchRevocationReplaced: watching another list (a reload that
// changed the revocation section) checks the sessions against it at once
// when it has a version loaded, and stops watching the one before; nil
// watches none; after Close, nothing is watched and no goroutine is left.
func TestWatchRevocationReplaced(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	first, _ := revocationFile(t, `{}`)
	second, secondPath := revocationFile(t, `{"sub": ["bob"]}`)
	p := startObserved(t, &Proxy{Upstream: broker.Addr, Verifier: sessionsChain(t, first)})
	p.WatchRevocation(first)
	exp := time.Now().Add(time.Hour)
	bob := connectWatched(t, p.addr, "bob-1", "u", sessionToken(t, "bob", "b-1", exp))
	carol := connectWatched(t, p.addr, "carol-1", "u", sessionToken(t, "carol", "c-1", exp))

	p.WatchRevocation(second)
	bob.ended(t)
	p.WatchRevocation(nil)
	writeRevocations(t, secondPath, `{"sub": ["carol"]}`)
	refresh(t, second)
	if !carol.connected() {
		t.Fatal("carol was ended by a list no longer watched")
	}
	p.WatchRevocation(second)
	carol.ended(t)
	p.waitLogged(t, "connection closed", zap.String("client_id", "carol-1"), zap.String("reason", "revoked"))

	p.Close()
	p.WatchRevocation(first) // no goroutine starts after Close: VerifyNoLeaks
}
