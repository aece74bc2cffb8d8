package proxy

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// jwtChain builds the real authentication chain of one authenticator and
// closes it at cleanup.
func jwtChain(t testing.TB, auth configs.Authenticator, opts ...authn.Option) *authn.Chain {
	t.Helper()
	chain, err := authn.New([]configs.Authenticator{auth}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(chain.Close)
	return chain
}

// boundHS256 is an HS256 authenticator whose tokens must name the client
// id as their subject.
var boundHS256 = configs.Authenticator{
	Name:         "jwt",
	Mechanism:    "jwt",
	Algorithm:    "hmac-based",
	Secret:       e2eSecret,
	VerifyClaims: map[string]string{"sub": "${clientid}"},
}

// connectAs encodes a CONNECT from client id, with password as its token;
// an empty password leaves the password flag unset.
func connectAs(t testing.TB, version byte, id, password string) []byte {
	t.Helper()
	name := "MQTT"
	if version == packets.ProtocolV31 {
		name = "MQIsdp"
	}
	c := &packets.Connect{
		ProtocolName:    name,
		ProtocolVersion: version,
		CleanStart:      true,
		ClientID:        id,
		UsernameFlag:    true,
		Username:        "user-" + id,
		PasswordFlag:    password != "",
		Password:        []byte(password),
	}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// connackFor is the CONNACK the proxy answers a client of version with.
func connackFor(t testing.TB, version byte, code packets.ReasonCode) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := packets.WriteConnack(&b, version, code); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// subscribePacket is a SUBSCRIBE to t/# at QoS 1, for the version given.
func subscribePacket(version byte) []byte {
	body := []byte{0, 1} // packet identifier
	if version == packets.ProtocolV5 {
		body = append(body, 0) // no properties
	}
	body = append(body, 0, 3, 't', '/', '#', 1)
	return append([]byte{0x82, byte(len(body))}, body...)
}

// unsignedToken is a token with alg none: never to be accepted.
func unsignedToken(sub string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		enc.EncodeToString(fmt.Appendf(nil, `{"sub":%q,"exp":%d}`, sub, time.Now().Add(time.Hour).Unix())) + "."
}

// connectBody is pk without its fixed header: what follows the remaining
// length.
func connectBody(pk []byte) []byte {
	i := 1
	for pk[i]&0x80 != 0 { // the remaining length's continuation bit
		i++
	}
	return pk[i+1:]
}

// oneByteWrites splits b into one Write per byte.
func oneByteWrites(b []byte) [][]byte {
	writes := make([][]byte, len(b))
	for i := range b {
		writes[i] = b[i : i+1]
	}
	return writes
}

// clientEnd is how a client in the property test ends its connection.
type clientEnd int

const (
	endHalfClose clientEnd = iota // shut down its sending half, then read until the proxy closes
	endSilence                    // send nothing more and read until the proxy closes
	endReset                      // SetLinger(0) and Close: the kernel sends RST
)

// attack is one way a client talks to the proxy in
// TestNothingUnauthenticatedReachesUpstream.
type attack struct {
	name string
	// accepted says the upstream must see this client, and get exactly
	// its bytes; otherwise it must not see even a TCP connection.
	accepted bool
	// writes returns what client id sends, one Write per element, and
	// answer, what the proxy must send back before it closes (nil for
	// nothing; not checked for endReset).
	writes func(t *testing.T, id string) (writes [][]byte, answer []byte)
	end    clientEnd
}

// tokenFor makes the token client id presents.
type tokenFor func(t *testing.T, id string) string

// oneWrite is an attack's writes: a CONNECT with token, then extra, all
// in one Write, answered with answer.
func oneWrite(version byte, token tokenFor, answer []byte, extra ...[]byte) func(*testing.T, string) ([][]byte, []byte) {
	return func(t *testing.T, id string) ([][]byte, []byte) {
		return [][]byte{slices.Concat(append([][]byte{connectAs(t, version, id, token(t, id))}, extra...)...)}, answer
	}
}

func attacks(t *testing.T) []attack {
	v31, v311, v5 := packets.ProtocolV31, packets.ProtocolV311, packets.ProtocolV5
	var (
		good     tokenFor = func(t *testing.T, id string) string { return mint(t, e2eSecret, id, nil) }
		wrongKey tokenFor = func(t *testing.T, id string) string { return mint(t, "not-the-secret", id, nil) }
		expired  tokenFor = func(t *testing.T, id string) string {
			return mint(t, e2eSecret, id, func(b *jwt.Builder) { b.Expiration(time.Now().Add(-time.Minute)) })
		}
		otherClient tokenFor = func(t *testing.T, id string) string { return mint(t, e2eSecret, id+"-other", nil) }
		algNone     tokenFor = func(_ *testing.T, id string) string { return unsignedToken(id) }
		noToken     tokenFor = func(*testing.T, string) string { return "" }
	)
	notAuthorized := func(version byte) []byte { return connackFor(t, version, packets.NotAuthorized) }
	badCredentials := func(version byte) []byte { return connackFor(t, version, packets.BadUserNameOrPassword) }
	leak := publishPacket("leak")
	garbage := []byte("\xde\xad\xbe\xef garbage that is no MQTT packet \x00\xff")
	connectThen := func(version byte, token tokenFor, cut func([]byte) [][]byte) func(*testing.T, string) ([][]byte, []byte) {
		return func(t *testing.T, id string) ([][]byte, []byte) {
			return cut(connectAs(t, version, id, token(t, id))), nil
		}
	}

	return []attack{
		{name: "wrong key, pipelined PUBLISH, v3.1.1", writes: oneWrite(v311, wrongKey, notAuthorized(v311), leak)},
		{name: "wrong key, pipelined SUBSCRIBE, v5", writes: oneWrite(v5, wrongKey, notAuthorized(v5), subscribePacket(v5))},
		{name: "expired, pipelined PUBLISH and SUBSCRIBE", writes: oneWrite(v311, expired, badCredentials(v311), leak, subscribePacket(v311))},
		{name: "another client's token", writes: oneWrite(v5, otherClient, badCredentials(v5), leak)},
		{name: "alg none", writes: oneWrite(v311, algNone, notAuthorized(v311), leak)},
		{name: "no token", writes: oneWrite(v5, noToken, badCredentials(v5), leak)},
		{name: "bad token, then a good second CONNECT", writes: func(t *testing.T, id string) ([][]byte, []byte) {
			return [][]byte{slices.Concat(connectAs(t, v311, id, wrongKey(t, id)), connectAs(t, v311, id, good(t, id)))}, notAuthorized(v311)
		}},
		{name: "bad token, garbage after", writes: oneWrite(v311, wrongKey, notAuthorized(v311), garbage)},
		{name: "bad token in 1-byte writes", writes: func(t *testing.T, id string) ([][]byte, []byte) {
			return oneByteWrites(slices.Concat(connectAs(t, v5, id, wrongKey(t, id)), leak)), notAuthorized(v5)
		}},
		{name: "PUBLISH before CONNECT", writes: func(t *testing.T, id string) ([][]byte, []byte) {
			return [][]byte{slices.Concat(leak, connectAs(t, v311, id, good(t, id)))}, nil
		}},
		{name: "good token behind a declared 256 MB length", writes: func(t *testing.T, id string) ([][]byte, []byte) {
			return [][]byte{slices.Concat([]byte{0x10, 0xff, 0xff, 0xff, 0x7f}, connectBody(connectAs(t, v5, id, good(t, id))))}, connackFor(t, v5, packets.PacketTooLarge)
		}},
		{name: "partial CONNECT, then half-close", writes: connectThen(v311, good, func(pk []byte) [][]byte { return [][]byte{pk[:len(pk)-1]} })},
		{name: "partial CONNECT, then silence", end: endSilence, writes: connectThen(v5, good, func(pk []byte) [][]byte { return [][]byte{pk[:len(pk)/2]} })},
		{name: "partial CONNECT, then reset", end: endReset, writes: connectThen(v311, good, func(pk []byte) [][]byte { return [][]byte{pk[:len(pk)-1]} })},
		{name: "1-byte writes, reset mid-CONNECT", end: endReset, writes: connectThen(v5, good, func(pk []byte) [][]byte { return oneByteWrites(pk[:len(pk)/2]) })},

		{name: "good token, pipelined PUBLISH and SUBSCRIBE, v3.1", accepted: true, writes: oneWrite(v31, good, nil, publishPacket("hello"), subscribePacket(v31))},
		{name: "good token, pipelined PUBLISH and SUBSCRIBE, v3.1.1", accepted: true, writes: oneWrite(v311, good, nil, publishPacket("hello"), subscribePacket(v311))},
		{name: "good token, pipelined SUBSCRIBE, v5", accepted: true, writes: oneWrite(v5, good, nil, subscribePacket(v5))},
		{name: "good token, garbage after", accepted: true, writes: oneWrite(v311, good, nil, garbage)},
		{name: "good token, a second CONNECT after", accepted: true, writes: func(t *testing.T, id string) ([][]byte, []byte) {
			return [][]byte{slices.Concat(connectAs(t, v5, id, good(t, id)), connectAs(t, v5, id+"-again", wrongKey(t, id)))}, nil
		}},
		{name: "good token in 1-byte writes", accepted: true, writes: func(t *testing.T, id string) ([][]byte, []byte) {
			return oneByteWrites(slices.Concat(connectAs(t, v311, id, good(t, id)), publishPacket("hello"))), nil
		}},
	}
}

// play sends writes to addr and ends the connection the attack's way. It
// returns the bytes sent, or what went wrong, such as an answer from the
// proxy other than answer. It only reports, so it may run in any
// goroutine.
func (a attack) play(addr string, writes [][]byte, answer []byte) ([]byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	for _, w := range writes {
		if _, err := c.Write(w); err != nil {
			return nil, fmt.Errorf("write: %w", err)
		}
	}
	switch a.end {
	case endReset:
		c.(*net.TCPConn).SetLinger(0)
		return bytes.Join(writes, nil), c.Close()
	case endHalfClose:
		c.(*net.TCPConn).CloseWrite()
	}
	got, err := readToClose(c)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(got, answer) {
		return nil, fmt.Errorf("proxy answered %x, want %x", got, answer)
	}
	return bytes.Join(writes, nil), nil
}

// TestNothingUnauthenticatedReachesUpstream throws malformed, partial,
// pipelined and refused CONNECTs at a proxy with the real HS256 chain in
// front of a recording upstream: a refused client must cause no upstream
// connection at all, and an accepted one exactly its own bytes. Each
// attack runs alone first, then all of them many times at once.
func TestNothingUnauthenticatedReachesUpstream(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	rec := proxytest.NewRecorder(t, "")
	p := &Proxy{
		Upstream: rec.Addr,
		Verifier: jwtChain(t, boundHS256),
		// The silent attacks wait it out; 1-byte writes of a whole
		// CONNECT, 160 clients at once, must fit well within it on a busy
		// machine under -race.
		Limits: Limits{ConnectTimeout: 3 * time.Second},
	}
	addr := startProxy(t, p)
	settled := func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.sessions) == 0 }

	for _, a := range attacks(t) {
		t.Run(a.name, func(t *testing.T) {
			before := rec.Accepted()
			writes, answer := a.writes(t, "alone")
			sent, err := a.play(addr, writes, answer)
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, settled)
			received := rec.Received()[before:]
			switch {
			case !a.accepted && len(received) != 0:
				t.Fatalf("upstream saw %d connections from a refused client, bytes %x", len(received), received)
			case !a.accepted:
			case len(received) != 1:
				t.Fatalf("upstream saw %d connections from one accepted client, want 1", len(received))
			default:
				rec.WaitEnded(t, before)
				if got := rec.Received()[before]; !bytes.Equal(got, sent) {
					t.Errorf("upstream received\n%x\nwant exactly the client's bytes\n%x", got, sent)
				}
			}
		})
	}

	t.Run("all at once", func(t *testing.T) {
		const copies = 8
		type result struct {
			sent     []byte
			accepted bool
			err      error
		}
		all := attacks(t)
		results := make(chan result, copies*len(all))
		before := rec.Accepted()
		var wg sync.WaitGroup
		for i := range copies {
			for j, a := range all {
				writes, answer := a.writes(t, fmt.Sprintf("c%d-%d", i, j))
				wg.Go(func() {
					sent, err := a.play(addr, writes, answer)
					if err != nil {
						err = fmt.Errorf("%s: %w", a.name, err)
					}
					results <- result{sent, a.accepted, err}
				})
			}
		}
		wg.Wait()
		close(results)
		var want []string
		for r := range results {
			if r.err != nil {
				t.Error(r.err)
			}
			if r.accepted {
				want = append(want, hex.EncodeToString(r.sent))
			}
		}
		waitFor(t, settled)
		for i := range rec.Accepted() - before {
			rec.WaitEnded(t, before+i)
		}
		var got []string
		for _, b := range rec.Received()[before:] {
			got = append(got, hex.EncodeToString(b))
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("upstream connections (%d) do not carry exactly the %d accepted clients' bytes:\ngot  %q\nwant %q", len(got), len(want), got, want)
		}
	})
}

// footprint is what the test process holds at one moment: the proxy under
// test, and the flood's own client sockets, which share the process.
type footprint struct {
	heap       uint64 // live heap after a collection (HeapInuse)
	goroutines int
	fds        int
}

func measure(t *testing.T) footprint {
	t.Helper()
	return footprint{heap: heapInUse(), goroutines: runtime.NumGoroutine(), fds: openFDs(t)}
}

// growth is how much f has grown since base.
func (f footprint) growth(base footprint) footprint {
	return footprint{heap: f.heap - min(f.heap, base.heap), goroutines: f.goroutines - base.goroutines, fds: f.fds - base.fds}
}

func (f footprint) String() string {
	return fmt.Sprintf("heap %d KiB, %d goroutines, %d fds", f.heap>>10, f.goroutines, f.fds)
}

// floodFDs is the most descriptors a flood of TestFloods holds at once:
// 2,000 authenticated connections with the proxy's two sockets each, or
// 5,000 idle sockets and the proxy's side of the pending ones.
const floodFDs = 6500

// dialMany opens n connections to addr from the loopback address src,
// each sending first (if not empty) at once; they close at cleanup.
func dialMany(t *testing.T, n int, src, addr string, first []byte) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for range n {
		c := dialFrom(t, src, addr)
		if len(first) > 0 {
			if _, err := c.Write(first); err != nil {
				t.Fatalf("flood socket %d: %v", len(conns), err)
			}
		}
		conns = append(conns, c)
	}
	return conns
}

// trickle writes body to each of conns one byte per interval, until body
// is spent or the test ends. Write errors are expected: the proxy closes
// flood sockets.
func trickle(t *testing.T, conns []net.Conn, body []byte, interval time.Duration) {
	stop, done := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for _, b := range body {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, c := range conns {
				c.SetWriteDeadline(time.Now().Add(interval))
				c.Write([]byte{b})
			}
		}
	}()
}

// fixedHeader is a CONNECT fixed header declaring remaining bytes.
func fixedHeader(remaining int) []byte {
	h := []byte{0x10}
	for {
		b := byte(remaining & 0x7f)
		if remaining >>= 7; remaining > 0 {
			b |= 0x80
		}
		h = append(h, b)
		if remaining == 0 {
			return h
		}
	}
}

// TestFloods runs, one at a time, the floods a proxy facing the internet
// must absorb, against a proxy capping pending connects in front of
// mosquitto. During each, a legitimate client connects through and
// exchanges messages; the test measures the process's live heap,
// goroutines and descriptors, logs them, and asserts bounds that follow
// from the limits.
func TestFloods(t *testing.T) {
	proxytest.RequireMosquitto(t)
	raiseFDLimit(t, floodFDs)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	const pendingCap = 200
	// The connect timeout outlasts a flood's opening on a busy machine
	// under -race: its pending connections are to be evicted or counted,
	// not timed out.
	limits := Limits{MaxPendingConnects: pendingCap, ConnectTimeout: 30 * time.Second}
	hs256 := configs.Authenticator{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret}

	// startFloodProxy starts a proxy with the chain auth builds, lets a
	// client with token through once (which starts the relay engine),
	// and returns it with the footprint before any flood.
	startFloodProxy := func(t *testing.T, auth configs.Authenticator, token string) (*Proxy, string, footprint) {
		p := &Proxy{Upstream: broker.Addr, Verifier: jwtChain(t, auth), Limits: limits}
		addr := startProxy(t, p)
		exchange(t, addr, "legit", token)
		return p, addr, measure(t)
	}
	// settled: the proxy has accepted the flood up to its last socket,
	// which is pending, and the connections evicted for it are gone.
	settled := func(p *Proxy, last net.Conn) func() bool {
		return func() bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			newest := p.pending.Back()
			return p.pending.Len() == pendingCap && len(p.sessions) == pendingCap &&
				newest.Value.(*session).client.RemoteAddr().String() == last.LocalAddr().String()
		}
	}
	idle := func(p *Proxy) func() bool {
		return func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.sessions) == 0 }
	}
	legitToken := mint(t, e2eSecret, "legit", nil)

	for _, flood := range []struct {
		name    string
		sockets int
		first   []byte // sent at once by each flood socket
		body    []byte // then trickled, a byte a second
		// perSocket bounds the heap growth per flood socket; perPending
		// adds to it per pending connection, up to the cap.
		perSocket, perPending uint64
	}{
		// Idle sockets cost their client side and, for the last
		// pendingCap, a session; the rest were evicted.
		{name: "slowloris: idle sockets", sockets: 5000, perSocket: 2 << 10, perPending: 4 << 10},
		// A declared 256 MB is refused once the protocol level is in:
		// nothing is allocated for it, however slowly it comes.
		{name: "declared 256 MB, trickled", sockets: 2000, first: fixedHeader(268_435_455), body: []byte("\x00\x04MQTT\x05"), perSocket: 2 << 10, perPending: 4 << 10},
		// Just under max_connect_size, the packet buffer grows as the
		// bytes arrive, at most doubling, not to the declared length.
		{name: "declared 1 MB, trickled", sockets: 2000, first: fixedHeader(1_000_000), body: slices.Concat([]byte("\x00\x04MQTT\x05\xc2\x00\x3c"), make([]byte, 64)), perSocket: 2 << 10, perPending: 8 << 10},
	} {
		t.Run(flood.name, func(t *testing.T) {
			p, addr, base := startFloodProxy(t, hs256, legitToken)
			start := time.Now()
			conns := dialMany(t, flood.sockets, "127.0.0.5", addr, flood.first)
			trickle(t, conns, flood.body, 250*time.Millisecond)
			waitFor(t, settled(p, conns[len(conns)-1]))
			opened := time.Since(start)
			grown := measure(t).growth(base)
			took := exchange(t, addr, "legit", legitToken)
			perSocket := grown.heap / uint64(flood.sockets)
			t.Logf("%s: %d sockets opened in %v; the proxy holds %d pending; growth: %v (%d B per socket); a legitimate exchange took %v",
				flood.name, flood.sockets, opened.Round(time.Millisecond), pendingCap, grown, perSocket, took.Round(time.Millisecond))
			if bound := uint64(flood.sockets)*flood.perSocket + pendingCap*flood.perPending; grown.heap > bound {
				t.Errorf("heap grew by %d KiB, over the %d KiB the limits allow", grown.heap>>10, bound>>10)
			}
			// The slack is for the test's own helpers.
			if each := pendingGoroutines(p); grown.goroutines > each*pendingCap+50 {
				t.Errorf("%d more goroutines for %d pending connections; %d each was expected", grown.goroutines, pendingCap, each)
			}
		})
	}

	t.Run("bad tokens with random kids, JWKS", func(t *testing.T) {
		const minRefresh, workers, attempts = 250 * time.Millisecond, 16, 4000
		legitKey, attackerKey := keyPair(t, "p256"), keyPair(t, "p256")
		keys := startJWKSServer(t)
		keys.publish(t, map[string]crypto.Signer{"legit": legitKey})
		token := signJWT(t, jwa.ES256, legitKey, "legit", "legit")
		p, addr, base := startFloodProxy(t, configs.Authenticator{
			Name: "jwks", Mechanism: "jwt", UseJWKS: true, Endpoint: keys.URL,
			MinRefreshInterval: configs.Duration(minRefresh),
		}, token)
		broker.SyncLog(t)
		brokerBefore := broker.Connections()
		fetchesBefore := keys.requestCount()

		bad := make(chan []byte, attempts)
		for range attempts {
			bad <- connectAs(t, packets.ProtocolV5, "attacker", signJWT(t, jwa.ES256, attackerKey, rand.Text(), "attacker"))
		}
		close(bad)
		want := connackFor(t, packets.ProtocolV5, packets.NotAuthorized)
		var wrong atomic.Int64
		var peak peakFootprint
		stopSampling := peak.sample(10 * time.Millisecond)
		start := time.Now()
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for pk := range bad {
					c, err := net.Dial("tcp", addr)
					if err == nil {
						err = expectAnswer(c, pk, want)
						c.Close()
					}
					if err != nil {
						wrong.Add(1)
					}
				}
			})
		}
		took := exchange(t, addr, "legit", token)
		wg.Wait()
		elapsed := time.Since(start)
		stopSampling()
		waitFor(t, idle(p))

		fetches := keys.requestCount() - fetchesBefore
		grown := peak.growth(base)
		t.Logf("%d bad tokens with random kids in %v by %d clients: %d JWKS fetches (min_refresh_interval %v); peak growth: heap %d KiB (garbage included), %d goroutines; a legitimate exchange took %v",
			attempts, elapsed.Round(time.Millisecond), workers, fetches, minRefresh, grown.heap>>10, grown.goroutines, took.Round(time.Millisecond))
		if n := wrong.Load(); n != 0 {
			t.Errorf("%d of %d bad tokens were not answered CONNACK not authorized", n, attempts)
		}
		if most := int(elapsed/minRefresh) + 2; fetches > most {
			t.Errorf("%d JWKS fetches in %v; unknown kids may cause at most one per %v (%d)", fetches, elapsed, minRefresh, most)
		}
		if elapsed > 2*minRefresh && fetches == 0 {
			t.Errorf("no JWKS fetch in %v of unknown kids; one per %v is due, to pick up rotated keys", elapsed, minRefresh)
		}
		broker.SyncLog(t)
		if n := broker.Connections() - brokerBefore; n != 1 {
			t.Errorf("the broker saw %d connections during the flood, want the legitimate client's only", n)
		}
		// At the peak: the workers, a proxy goroutine per client and the
		// JWKS fetch's; on a busy machine, under -race or -cover, also
		// proxy goroutines of clients already gone that were not yet
		// scheduled to end. Each bad token leaving one behind would be
		// thousands.
		if grown.goroutines > 8*workers+100 {
			t.Errorf("%d more goroutines at the peak, for %d concurrent clients", grown.goroutines, workers)
		}
		// Once every connection has ended, so has every goroutine the
		// flood started, but for an HTTP connection or two to the JWKS
		// endpoint kept for the next fetch.
		if left := waitGoroutines(base.goroutines + 10); left > base.goroutines+10 {
			t.Errorf("%d goroutines left after the flood, %d before it", left, base.goroutines)
		}
	})

	t.Run("valid connects", func(t *testing.T) {
		const connections, workers = 2000, 16
		p, addr, base := startFloodProxy(t, hs256, legitToken)
		broker.SyncLog(t)
		brokerBefore := broker.Connections()
		packetsByID := make([][]byte, connections)
		for i := range packetsByID {
			id := fmt.Sprintf("valid-%d", i)
			packetsByID[i] = connectAs(t, packets.ProtocolV311, id, mint(t, e2eSecret, id, nil))
		}
		next := make(chan int, connections)
		for i := range connections {
			next <- i
		}
		close(next)
		start := time.Now()
		conns := make([]net.Conn, connections)
		errs := make(chan error, connections)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for i := range next {
					c, err := net.Dial("tcp", addr)
					if err == nil {
						conns[i] = c
						err = expectAnswer(c, packetsByID[i], []byte{0x20, 0x02, 0x00, 0x00})
					}
					if err != nil {
						errs <- fmt.Errorf("connection %d: %w", i, err)
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		t.Cleanup(func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		})
		for err := range errs {
			t.Error(err)
		}
		opened := time.Since(start)
		grown := measure(t).growth(base)
		took := exchange(t, addr, "legit", legitToken)
		t.Logf("%d authenticated connections opened in %v by %d clients; growth: %v (%d B per connection); a legitimate exchange took %v",
			connections, opened.Round(time.Millisecond), workers, grown, grown.heap/connections, took.Round(time.Millisecond))
		broker.SyncLog(t)
		if n := broker.Connections() - brokerBefore; n != connections+1 {
			t.Errorf("the broker saw %d connections, want %d", n, connections+1)
		}
		// Idle authenticated connections wait in the epoll engine's
		// sets: no goroutine each (two each with the portable engine).
		perConnection := 0
		if p.relayKind() == RelayPortable {
			perConnection = 2
		}
		// The slack: the test's own, and a proxy goroutine per worker that
		// may not have returned yet from handing its connection over.
		if grown.goroutines > perConnection*connections+workers+20 {
			t.Errorf("%d more goroutines for %d idle connections", grown.goroutines, connections)
		}
		if grown.heap > connections*(8<<10) {
			t.Errorf("heap grew by %d KiB for %d idle connections", grown.heap>>10, connections)
		}
	})
}

// waitGoroutines waits, for up to 20 s, until no more than atMost
// goroutines run, and returns how many run.
func waitGoroutines(atMost int) int {
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= atMost || time.Now().After(deadline) {
			return n
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expectAnswer sends pk on c and checks that c then receives want.
func expectAnswer(c net.Conn, pk, want []byte) error {
	c.SetDeadline(time.Now().Add(proxytest.DefaultTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(pk); err != nil {
		return err
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("answered %x, want %x", got, want)
	}
	return nil
}

// peakFootprint samples the heap in use (garbage included: no collection
// is forced) and the goroutines, keeping the highest of each.
type peakFootprint struct {
	mu   sync.Mutex
	peak footprint
}

// sample starts sampling every interval; the returned func stops it.
func (p *peakFootprint) sample(interval time.Duration) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			p.mu.Lock()
			p.peak.heap = max(p.peak.heap, m.HeapInuse)
			p.peak.goroutines = max(p.peak.goroutines, runtime.NumGoroutine())
			p.mu.Unlock()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() { close(done); <-stopped }
}

func (p *peakFootprint) growth(base footprint) footprint {
	p.mu.Lock()
	defer p.mu.Unlock()
	return footprint{heap: p.peak.heap - min(p.peak.heap, base.heap), goroutines: p.peak.goroutines - base.goroutines}
}

// TestPendingConnectBytesFlood: sockets that each send the first 32,000
// bytes of a CONNECT declaring 1,000,000 (within the default
// max_connect_size) and then trickle hold no more than
// max_pending_connect_bytes in all: the heap grows by the budget and
// each socket's small bookkeeping, not by what the flood sent, the
// connections that have held bytes longest are evicted, no goroutine
// waits for any of them, and a legitimate client exchanges messages
// meanwhile.
func TestPendingConnectBytesFlood(t *testing.T) {
	proxytest.RequireMosquitto(t)
	const sockets, sent, budget = 1000, 32_000, 8 << 20
	raiseFDLimit(t, 2*sockets+200)
	proxytest.VerifyNoLeaks(t)
	broker := proxytest.StartMosquitto(t)
	o := startObserved(t, &Proxy{Upstream: broker.Addr, Verifier: jwtChain(t, boundHS256),
		Limits: Limits{MaxPendingConnectBytes: budget, ConnectTimeout: time.Minute}})
	legitToken := mint(t, e2eSecret, "legit", nil)
	exchange(t, o.addr, "legit", legitToken) // starts the relay engine
	base := measure(t)

	first := slices.Concat(fixedHeader(1_000_000), []byte("\x00\x04MQTT\x05\xc2\x00\x3c"))
	first = append(first, make([]byte, sent-len(first))...)
	start := time.Now()
	conns := dialMany(t, sockets, "127.0.0.6", o.addr, first)
	trickle(t, conns, make([]byte, 64), 250*time.Millisecond)
	last := conns[len(conns)-1].LocalAddr().String()
	// Settled: the last socket is pending, and every pending connection
	// has read what its socket sent at once.
	var held, pending, behind int
	var newest string
	defer func() {
		if t.Failed() {
			t.Logf("%d pending hold %d bytes, %d of them less than sent; the newest is %s, the last socket %s", pending, held, behind, newest, last)
		}
	}()
	waitFor(t, func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		held, pending, behind, newest = o.heldBytes, o.pending.Len(), 0, ""
		if pending > 0 {
			newest = o.pending.Back().Value.(*session).client.RemoteAddr().String()
		}
		for e := o.pending.Front(); e != nil; e = e.Next() {
			if pc := e.Value.(*session).connect; pc == nil || pc.charged < sent {
				behind++
			}
		}
		return newest == last && behind == 0
	})
	opened := time.Since(start)
	grown := measure(t).growth(base)
	evicted := o.metric(t, "mqtt_jwt_proxy_limit_rejections_total", "kind="+limitPendingBytes)
	// The legitimate client's CONNECT, counted too, evicts one more.
	took := exchange(t, o.addr, "legit", legitToken)
	t.Logf("%d sockets sending %d bytes of a 1,000,000-byte CONNECT each, opened in %v: %d pending hold %d KiB (budget %d KiB), %v evicted; growth: %v (%d B per socket); a legitimate exchange took %v",
		sockets, sent, opened.Round(time.Millisecond), pending, held>>10, budget>>10, evicted, grown, grown.heap/sockets, took.Round(time.Millisecond))
	if held > budget {
		t.Errorf("pending CONNECTs hold %d bytes, over the budget of %d", held, budget)
	}
	if int(evicted) != sockets-pending || pending == 0 {
		t.Errorf("%v evicted and %d pending of %d sockets; want the oldest evicted, the rest pending", evicted, pending, sockets)
	}
	if !closedAtAccept(t, conns[0]) || !stillOpen(t, conns[len(conns)-1]) {
		t.Error("the oldest socket should be closed, the newest waiting")
	}
	// Each socket's two ends and the proxy's bookkeeping take about
	// 2 KiB (see TestFloods); the flood sent 32 MB. The portable engine
	// reads each connection on a goroutine of its own, whose state, and
	// that of an evicted connection's goroutine still ending, is on the
	// heap too.
	perSocket := 4 << 10
	if defaultRelay == RelayPortable {
		perSocket += 1 << 10
	}
	if bound := uint64(budget + sockets*perSocket); grown.heap > bound {
		t.Errorf("heap grew by %d KiB, over the %d KiB the budget allows", grown.heap>>10, bound>>10)
	}
	if each := pendingGoroutines(o.Proxy); grown.goroutines > each*pending+50 {
		t.Errorf("%d more goroutines for %d pending connections; %d each was expected", grown.goroutines, pending, each)
	}
}

// pendingGoroutines is how many goroutines a connection waiting for the
// rest of its CONNECT holds: none with the epoll engine, whose sockets
// wait in its epoll sets, one with the portable engine, whose reads block.
func pendingGoroutines(p *Proxy) int {
	if p.relayKind() == RelayPortable {
		return 1
	}
	return 0
}
