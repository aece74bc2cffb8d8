package proxy

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

var (
	stressSeed     = flag.Uint64("stress.seed", 0, "TestStress: the seed its sessions are drawn from; 0 draws one (logged, to run again with)")
	stressSessions = flag.Int("stress.sessions", 2000, "TestStress: how many sessions it runs")
	stressWorkers  = flag.Int("stress.workers", 48, "TestStress: how many sessions run at once")
)

// stressKind is what a TestStress session does.
type stressKind int

const (
	stressClean        stressKind = iota // both sides send their stream, then half-close
	stressClientReset                    // the client resets the connection partway
	stressBrokerReset                    // the broker resets the connection partway
	stressBrokerFirst                    // the broker half-closes first, the client goes on
	stressBackPressure                   // megabytes to a side that reads slowly
	stressExpiry                         // the token expires during traffic
	stressRefused                        // a bad token, with bytes pipelined behind it
	stressKinds                          // the kinds drawn at random; those below are not
	stressStalled                        // half a CONNECT, then nothing: evicted or timed out
	stressStreaming                      // both ways until the proxy closes
)

func (k stressKind) String() string {
	return [...]string{"clean", "client reset", "broker reset", "broker first", "back-pressure", "expiry", "refused", "", "stalled", "streaming"}[k]
}

// completes reports whether a session of kind k that reaches the broker
// ends with both streams delivered whole.
func (k stressKind) completes() bool {
	return k == stressClean || k == stressBrokerFirst || k == stressBackPressure
}

// halfCloses reports whether the end of one direction of a session of
// kind k is a half-close, after which the other goes on; in the others it
// is the end of the session, after which neither side writes on, as MQTT
// clients and brokers do. (An aborted session's socket may have shut its
// receive window before it closed: a peer that wrote on would wait for
// the kernel to give up the closed socket, a minute later.)
func (k stressKind) halfCloses() bool { return k.completes() }

// stressScript is one session of TestStress, drawn from the seed and the
// session's number, so that the client and the broker stand-in each draw
// the same one.
type stressScript struct {
	kind               stressKind
	toBroker, toClient int           // the streams' lengths after the CONNECT
	chunk              int           // the largest write
	cut                int           // a reset comes after this many bytes written
	expiry             time.Duration // for stressExpiry
	slowBroker         bool          // for stressBackPressure: the broker reads slowly, else the client
	// framed: the session's token has topic rules (stressACL), so the
	// proxy frames it: its streams are MQTT packets (stressFramedPacket)
	// rather than bytes, and the streams' lengths are in packets' bytes.
	framed bool
}

// Sessions numbered from streamingFrom on stream until the proxy closes;
// negative ones stall.
func drawStressScript(seed uint64, session, streamingFrom int) stressScript {
	switch {
	case session < 0:
		return stressScript{kind: stressStalled}
	case session >= streamingFrom:
		return stressScript{kind: stressStreaming, toBroker: math.MaxInt, toClient: math.MaxInt, chunk: 4 << 10, framed: session%2 == 0}
	}
	r := rand.New(rand.NewPCG(seed, uint64(session)))
	s := stressScript{kind: stressKind(r.IntN(int(stressKinds))), chunk: 1 + r.IntN(32<<10), framed: r.IntN(2) == 0}
	s.toBroker, s.toClient = r.IntN(64<<10), r.IntN(64<<10)
	switch s.kind {
	case stressClientReset, stressBrokerReset:
		s.cut = r.IntN(max(s.toBroker, s.toClient) + 1)
	case stressBackPressure:
		// More than the sockets' buffers hold (the sender's grows to
		// megabytes): the engine must wait for the slow side.
		s.slowBroker = r.IntN(2) == 0
		if s.slowBroker {
			s.toBroker = 3<<20 + r.IntN(2<<20)
		} else {
			s.toClient = 3<<20 + r.IntN(2<<20)
		}
	case stressExpiry:
		s.expiry = time.Duration(5+r.IntN(50)) * time.Millisecond
		s.toBroker, s.toClient = 64<<20, 64<<20 // more than goes through before the expiry
	}
	return s
}

// stressByte is the byte at offset of session's stream in a direction (0:
// to the broker, 1: to the client). Each session's bytes differ from
// every other's, so that a byte delivered to the wrong connection shows.
func stressByte(session int, dir int, offset int) byte { return byte(stressHash(session, dir, offset)) }

func stressHash(session int, dir int, offset int) uint64 {
	x := uint64(session)<<34 ^ uint64(offset) ^ uint64(dir)<<63
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// stressACL is the acl claim of a framed session's token: PUBLISHes to
// d/# are denied, the rest allowed.
var stressACL = []any{map[string]any{"permission": "deny", "action": "publish", "topic": "d/#"}}

// stressPayloads are the bytes framed sessions' payloads are cut from, at
// an offset drawn for each packet: cut rather than computed byte by byte,
// which the race detector would make most of the test's time.
var stressPayloads = func() []byte {
	b := make([]byte, 1<<17)
	for i := range b {
		b[i] = byte(stressHash(-1, 0, i))
	}
	return b
}()

// stressFramedPacket is packet k of a framed session's stream in direction
// dir. The client's (0) are PUBLISHes to t/SESSION, which the proxy lets
// through, and to d/SESSION, which it drops; with answered, some of those
// are at QoS 1 and get a PUBACK from the proxy, with ackID. The broker's
// (1) are PUBLISHes to b/SESSION. Their payloads differ from packet to
// packet; now and then one is longer than a read, so that the proxy
// gathers it.
func stressFramedPacket(session, dir, k int, answered bool) (raw []byte, denied bool, ackID uint16) {
	h := stressHash(session, dir, k)
	size := int(h % 1024)
	if h%64 == 0 {
		size = 20000 + int(h>>16%20000)
	}
	off := int(h >> 40 % uint64(len(stressPayloads)-40000))
	p := packets.Publish{Topic: []byte("b/" + strconv.Itoa(session)), Payload: stressPayloads[off : off+size]}
	if dir == 0 {
		p.Topic[0] = 't'
		if v := h >> 32 % 4; v >= 2 {
			p.Topic[0], denied = 'd', true
			if v == 3 && answered {
				p.QoS, ackID = 1, uint16(k%65535+1)
				p.PacketID = ackID
			}
		}
	}
	raw, err := p.Append(nil, packets.ProtocolV311)
	if err != nil {
		panic(err)
	}
	return raw, denied, ackID
}

// stressFramedWrite writes session's framed stream in direction dir to c:
// packets until they make up total bytes, in writes of at most chunk that
// cut packets anywhere; it stops after cut bytes when cut >= 0. It
// returns how many bytes it wrote and the write error.
func stressFramedWrite(c net.Conn, session, dir, total, chunk, cut int, answered bool) (int, error) {
	var buf []byte
	written, generated := 0, 0
	for k := 0; generated < total || len(buf) > 0; k++ {
		if generated < total {
			raw, _, _ := stressFramedPacket(session, dir, k, answered)
			generated += len(raw)
			buf = append(buf, raw...)
		}
		for len(buf) >= chunk || (generated >= total && len(buf) > 0) {
			n := min(len(buf), chunk)
			if cut >= 0 && written+n > cut {
				n = cut - written
			}
			w, err := c.Write(buf[:n])
			written += w
			buf = buf[w:]
			if err != nil || written == cut {
				return written, err
			}
		}
	}
	return written, nil
}

// stressFramedSent is what the proxy lets through of session's stream of
// total bytes in direction dir: how many PUBLISHes the destination gets,
// and how many PUBACKs the client does.
func stressFramedSent(session, dir, total int, answered bool) (allowed, acks int) {
	for k, generated := 0, 0; generated < total; k++ {
		raw, denied, ackID := stressFramedPacket(session, dir, k, answered)
		generated += len(raw)
		switch {
		case !denied:
			allowed++
		case ackID != 0:
			acks++
		}
	}
	return allowed, acks
}

// stressFramedRead reads a framed session's stream from c, as the reader
// of direction dir, and checks every packet: the broker (dir 0) must get
// the client's allowed PUBLISHes, whole and in order, and no other; the
// client (1) a CONNACK, then the broker's PUBLISHes in order, with the
// PUBACKs of its denied QoS 1 PUBLISHes, in order, between them. It
// returns the packets it got of each, the error that ended the stream
// (nil for EOF), a mismatch, and whether the stream ended inside a packet.
func stressFramedRead(c *net.TCPConn, session, dir, chunk int, answered, slow bool, flowing func()) (publishes, acks int, err, mismatch error, partial bool) {
	if slow {
		chunk = 64 << 10
		time.Sleep(20 * time.Millisecond) // shaping a slow reader, not waiting for anything
	}
	f := packets.NewFramer(packets.ProtocolV311, 0)
	defer f.Release()
	buf := make([]byte, chunk)
	next, ackCursor := 0, 0 // the next packet of the stream, the next client packet to look for an ack at
	connack := dir == 1
	bad := func(format string, args ...any) {
		if mismatch == nil {
			mismatch = fmt.Errorf("framed session %d, direction %d: "+format, append([]any{session, dir}, args...)...)
		}
	}
	for {
		m, readErr := c.Read(buf)
		if m > 0 && publishes+acks == 0 && flowing != nil {
			flowing()
		}
		f.Feed(buf[:m])
		for {
			fr, ok, ferr := f.Next()
			if ferr != nil {
				bad("%v", ferr)
				return publishes, acks, readErr, mismatch, false
			}
			if !ok {
				break
			}
			switch {
			case connack:
				if !bytes.Equal(fr.Raw, []byte{0x20, 2, 0, 0}) {
					bad("% X first, want a CONNACK", fr.Raw)
				}
				connack = false
			case fr.Type == packets.TypePuback && dir == 1:
				var want uint16
				for ; want == 0; ackCursor++ {
					_, _, want = stressFramedPacket(session, 0, ackCursor, answered)
				}
				if !bytes.Equal(fr.Raw, []byte{0x40, 2, byte(want >> 8), byte(want)}) {
					bad("PUBACK % X, want the one for packet identifier %d", fr.Raw, want)
				}
				acks++
			default:
				var want []byte
				for denied := true; denied; next++ {
					want, denied, _ = stressFramedPacket(session, dir, next, answered)
					denied = denied && dir == 0
				}
				if !bytes.Equal(fr.Raw, want) {
					bad("packet %d is % .32X (%d bytes), want % .32X (%d bytes)", publishes, fr.Raw, len(fr.Raw), want, len(want))
				}
				publishes++
			}
		}
		if readErr != nil {
			if errors.Is(readErr, io.EOF) {
				readErr = nil
			}
			return publishes, acks, readErr, mismatch, f.Buffered() > 0
		}
		if slow {
			time.Sleep(200 * time.Microsecond)
		}
	}
}

// stressWrite writes n bytes of session's stream in direction dir to c,
// in writes of at most chunk, and stops after cut bytes when cut >= 0. It
// returns how many it wrote and the write error.
func stressWrite(c net.Conn, session, dir, n, chunk, cut int) (int, error) {
	if cut >= 0 {
		n = min(n, cut)
	}
	buf := make([]byte, min(chunk, n))
	for off := 0; off < n; {
		b := buf[:min(len(buf), n-off)]
		for i := range b {
			b[i] = stressByte(session, dir, off+i)
		}
		w, err := c.Write(b)
		off += w
		if err != nil {
			return off, err
		}
	}
	return n, nil
}

// stressRead reads session's stream in direction dir from c until it
// ends, at most a read of chunk at a time, and checks every byte; slow
// starts late and pauses after each read, so that the sender's side fills
// up and must wait. flowing, if
// set, is called once the first byte has come. It returns how many it
// read, the error that ended the stream (nil for EOF), and a mismatch.
func stressRead(c *net.TCPConn, session, dir, chunk int, slow bool, flowing func()) (n int, err error, mismatch error) {
	if slow {
		chunk = 64 << 10
		time.Sleep(20 * time.Millisecond) // shaping a slow reader, not waiting for anything
	}
	buf := make([]byte, chunk)
	for {
		m, err := c.Read(buf)
		if m > 0 && n == 0 && flowing != nil {
			flowing()
		}
		for i := range buf[:m] {
			if want := stressByte(session, dir, n+i); buf[i] != want && mismatch == nil {
				mismatch = fmt.Errorf("session %d, direction %d: byte %d is %#x, want %#x", session, dir, n+i, buf[i], want)
			}
		}
		n += m
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return n, err, mismatch
		}
		if slow {
			time.Sleep(200 * time.Microsecond)
		}
	}
}

// stressVerifier accepts "good" and "expire:NS" (a token that expires NS
// nanoseconds from now), each with the prefix "framed-" for a token with
// topic rules (stressACL), and refuses anything else.
type stressVerifier struct{}

func (stressVerifier) Verify(_ context.Context, req authn.Request) (authn.Identity, error) {
	id := authn.Identity{Authenticator: "stress"}
	p := string(req.Password)
	if rest, framed := strings.CutPrefix(p, "framed-"); framed {
		p, id.Claims = rest, map[string]any{"acl": stressACL}
	}
	switch {
	case p == "good":
		return id, nil
	case strings.HasPrefix(p, "expire:"):
		ns, err := strconv.ParseInt(strings.TrimPrefix(p, "expire:"), 10, 64)
		if err != nil {
			break
		}
		id.Expiry = time.Now().Add(time.Duration(ns))
		id.DisconnectAt = id.Expiry
		return id, nil
	}
	return authn.Identity{}, &authn.RefuseError{Reason: authn.ErrBadSignature}
}

// stressBroker stands in for the broker: it reads each connection's
// CONNECT, knows the session by its client ID, and plays the broker's
// side of the session's script, checking every byte it gets.
type stressBroker struct {
	t             *testing.T
	seed          uint64
	streamingFrom int
	ln            net.Listener
	wg            sync.WaitGroup
	problems      atomic.Int64

	mu   sync.Mutex
	seen map[int]int // connections per session
}

// fail reports a problem at once, so that a hang later does not hide it;
// the first ten only.
func (b *stressBroker) fail(format string, args ...any) {
	if b.problems.Add(1) <= 10 {
		b.t.Errorf(format, args...)
	}
}

func (b *stressBroker) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer c.Close()
			b.session(c.(*net.TCPConn))
		}()
	}
}

func (b *stressBroker) session(c *net.TCPConn) {
	c.SetReadDeadline(time.Now().Add(time.Minute))
	pk, err := packets.ReadConnect(c, 0)
	if err != nil {
		b.fail("the broker got no CONNECT: %v", err)
		return
	}
	c.SetReadDeadline(time.Time{})
	session, err := strconv.Atoi(strings.TrimPrefix(pk.ClientID, "s"))
	if err != nil {
		b.fail("the broker got a CONNECT from %q, no session of the test", pk.ClientID)
		return
	}
	b.mu.Lock()
	b.seen[session]++
	b.mu.Unlock()
	s := drawStressScript(b.seed, session, b.streamingFrom)
	switch s.kind {
	case stressRefused, stressStalled:
		b.fail("session %d (%v) reached the broker", session, s.kind)
		return
	}
	cut := -1
	if s.kind == stressBrokerReset {
		cut = s.cut
	}
	if s.framed {
		b.framedSession(c, session, s, cut)
		return
	}
	read := make(chan struct{})
	var got int
	var readErr, mismatch error
	go func() {
		defer close(read)
		got, readErr, mismatch = stressRead(c, session, 0, s.chunk, s.kind == stressBackPressure && s.slowBroker, nil)
		if !s.kind.halfCloses() {
			c.Close() // as the client does
		}
	}()
	wrote, writeErr := stressWrite(c, session, 1, s.toClient, s.chunk, cut)
	switch {
	case s.kind == stressBrokerReset:
		c.SetLinger(0)
		c.Close() // a reset: the read below ends too
	case writeErr == nil:
		c.CloseWrite()
	}
	<-read
	if mismatch != nil {
		b.fail("the broker: %v", mismatch)
	}
	if s.kind.completes() && (readErr != nil || writeErr != nil || got != s.toBroker || wrote != s.toClient) {
		b.fail("session %d (%v): the broker read %d of %d bytes (%v), wrote %d of %d (%v)", session, s.kind, got, s.toBroker, readErr, wrote, s.toClient, writeErr)
	}
}

// framedSession plays the broker's side of a framed session: a CONNACK,
// then its stream. In a clean session, whose client's denied PUBLISHes
// may be answered by the proxy, the broker answers only once the client
// has ended its stream, as a broker's answers would come after what they
// answer: the proxy could not answer a client whose sending half the
// broker's end had shut.
func (b *stressBroker) framedSession(c *net.TCPConn, session int, s stressScript, cut int) {
	answered := s.kind == stressClean
	if _, err := c.Write([]byte{0x20, 2, 0, 0}); err != nil {
		b.fail("framed session %d (%v): the broker's CONNACK: %v", session, s.kind, err)
		return
	}
	type read struct {
		publishes     int
		err, mismatch error
		partial       bool
	}
	done := make(chan read, 1)
	go func() {
		var r read
		r.publishes, _, r.err, r.mismatch, r.partial = stressFramedRead(c, session, 0, s.chunk, answered, s.kind == stressBackPressure && s.slowBroker, nil)
		if !s.kind.halfCloses() {
			c.Close() // as the client does
		}
		done <- r
	}()
	var r read
	if answered {
		r = <-done
	}
	wrote, writeErr := stressFramedWrite(c, session, 1, s.toClient, s.chunk, cut, answered)
	switch {
	case s.kind == stressBrokerReset:
		c.SetLinger(0)
		c.Close()
	case writeErr == nil:
		c.CloseWrite()
	}
	if !answered {
		r = <-done
	}
	if r.mismatch != nil {
		b.fail("the broker: %v", r.mismatch)
	}
	if !s.kind.completes() {
		return
	}
	if allowed, _ := stressFramedSent(session, 0, s.toBroker, answered); r.err != nil || writeErr != nil || r.partial || r.publishes != allowed || wrote < s.toClient {
		b.fail("framed session %d (%v): the broker read %d of %d PUBLISHes (%v, ended inside one: %v), wrote %d of %d bytes (%v)",
			session, s.kind, r.publishes, allowed, r.err, r.partial, wrote, s.toClient, writeErr)
	}
}

// stressOutcome is what a client saw of its session.
type stressOutcome struct {
	got, wrote        int // bytes; for a framed session, got counts the broker's PUBLISHes
	acks              int // a framed session's PUBACKs from the proxy
	partial           bool
	readErr, writeErr error
	problem           error // wrong whatever the broker saw
}

// stressClient plays the client's side of session's script through the
// proxy at addr; flowing, if set, is called once bytes come back.
func stressClient(addr string, seed uint64, session, streamingFrom int, flowing func()) (o stressOutcome) {
	s := drawStressScript(seed, session, streamingFrom)
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		o.problem = err
		return o
	}
	c := raw.(*net.TCPConn)
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute)) // nothing waits forever, whatever breaks
	password := "good"
	switch s.kind {
	case stressRefused:
		password = "bad"
	case stressExpiry:
		password = "expire:" + strconv.FormatInt(int64(s.expiry), 10)
	}
	if s.framed {
		password = "framed-" + password
	}
	connect, err := (&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: packets.ProtocolV311, CleanStart: true,
		ClientID: "s" + strconv.Itoa(session), PasswordFlag: true, Password: []byte(password), UsernameFlag: true, Username: "u"}).Encode()
	if err != nil {
		o.problem = err
		return o
	}
	switch s.kind {
	case stressStalled:
		c.Write(connect[:3])
		if b, err := io.ReadAll(c); len(b) > 0 || (err != nil && !isReset(err)) {
			o.problem = fmt.Errorf("session %d: a stalled CONNECT got %x, %v; want the connection closed without an answer", session, b, err)
		}
		return o
	case stressRefused:
		// Pipelined behind the refused CONNECT: none of it may reach the
		// broker.
		first := make([]byte, min(s.toBroker, 1024))
		for i := range first {
			first[i] = stressByte(session, 0, i)
		}
		c.Write(append(connect, first...))
		if b, err := io.ReadAll(c); string(b) != "\x20\x02\x00\x05" && !(len(b) == 0 && (err == nil || isReset(err))) {
			// Closed without an answer: evicted (see check).
			o.problem = fmt.Errorf("session %d: a refused client got %x, %v; want CONNACK not authorized", session, b, err)
		}
		return o
	}
	if _, err := c.Write(connect); err != nil {
		o.writeErr = err
		return o
	}
	cut := -1
	if s.kind == stressClientReset {
		cut = s.cut
	}
	read := make(chan struct{})
	var mismatch error
	answered := s.framed && s.kind == stressClean
	go func() {
		defer close(read)
		slow := s.kind == stressBackPressure && !s.slowBroker
		if s.framed {
			o.got, o.acks, o.readErr, mismatch, o.partial = stressFramedRead(c, session, 1, s.chunk, answered, slow, flowing)
		} else {
			o.got, o.readErr, mismatch = stressRead(c, session, 1, s.chunk, slow, flowing)
		}
		if !s.kind.halfCloses() {
			// The end of a session: a client closes too, rather than
			// writing into a socket whose peer reads no more.
			c.Close()
		}
	}()
	if s.kind == stressBrokerFirst {
		<-read // the broker's half-close arrives first; this direction goes on
	}
	if s.framed {
		o.wrote, o.writeErr = stressFramedWrite(c, session, 0, s.toBroker, s.chunk, cut, answered)
	} else {
		o.wrote, o.writeErr = stressWrite(c, session, 0, s.toBroker, s.chunk, cut)
	}
	switch {
	case s.kind == stressClientReset:
		c.SetLinger(0)
		c.Close()
	case o.writeErr == nil:
		c.CloseWrite()
	}
	<-read
	switch {
	case mismatch != nil:
		o.problem = fmt.Errorf("the client: %w", mismatch)
	case s.kind == stressExpiry && !s.framed && o.got >= s.toClient:
		o.problem = fmt.Errorf("session %d: its token expired after %v, yet all %d bytes came through", session, s.expiry, o.got)
	case s.framed && o.partial && (s.kind == stressExpiry || s.kind == stressStreaming):
		// Ended by the proxy: a framed session between two packets.
		o.problem = fmt.Errorf("framed session %d (%v): the client got %d PUBLISHes, the last cut short", session, s.kind, o.got)
	case s.framed && s.kind == stressExpiry:
		if sent, _ := stressFramedSent(session, 1, s.toClient, false); o.got >= sent {
			o.problem = fmt.Errorf("framed session %d: its token expired after %v, yet all %d PUBLISHes came through", session, s.expiry, o.got)
		}
	}
	return o
}

// check says what is wrong with a session's outcome, given whether it
// reached the broker. One that did not was evicted for a newer pending
// connection before its CONNECT was read (or refused, or stalled), and
// must have got nothing.
func (o stressOutcome) check(s stressScript, session int, atBroker bool) error {
	switch {
	case o.problem != nil:
		return o.problem
	case errors.Is(o.readErr, os.ErrDeadlineExceeded) || errors.Is(o.writeErr, os.ErrDeadlineExceeded):
		return fmt.Errorf("session %d (%v, at the broker: %v) hung: read %d bytes (%v), wrote %d (%v)", session, s.kind, atBroker, o.got, o.readErr, o.wrote, o.writeErr)
	case !atBroker && s.kind != stressRefused && s.kind != stressStalled && o.got > 0:
		return fmt.Errorf("session %d (%v) never reached the broker, yet its client got %d bytes", session, s.kind, o.got)
	case atBroker && s.kind.completes() && !s.framed && (o.readErr != nil || o.writeErr != nil || o.got != s.toClient || o.wrote != s.toBroker):
		return fmt.Errorf("session %d (%v): the client read %d of %d bytes (%v), wrote %d of %d (%v)",
			session, s.kind, o.got, s.toClient, o.readErr, o.wrote, s.toBroker, o.writeErr)
	case atBroker && s.kind.completes() && s.framed:
		answered := s.kind == stressClean
		publishes, _ := stressFramedSent(session, 1, s.toClient, answered)
		_, acks := stressFramedSent(session, 0, s.toBroker, answered)
		if o.readErr != nil || o.writeErr != nil || o.partial || o.got != publishes || o.acks != acks || o.wrote < s.toBroker {
			return fmt.Errorf("framed session %d (%v): the client read %d of %d PUBLISHes and %d of %d PUBACKs (%v, ended inside a packet: %v), wrote %d of %d bytes (%v)",
				session, s.kind, o.got, publishes, o.acks, acks, o.readErr, o.partial, o.wrote, s.toBroker, o.writeErr)
		}
	}
	return nil
}

// TestStress runs thousands of sessions through the proxy, each drawn at
// random (-stress.seed to repeat a run) from clean exchanges, resets from
// either side, half-closes, back-pressure, token expiry, refused tokens
// with bytes pipelined behind them, and stalled CONNECTs evicted for
// newer ones; then Close while sessions stream. Half the sessions have
// topic rules, so the proxy frames them: their streams are PUBLISHes, some
// denied, some of those answered by the proxy. Every byte is checked where
// it arrives, so a byte delivered to another session's connection fails
// it; every packet of a framed session arrives whole, and none that was
// denied reaches the broker; a framed session the proxy ends (token
// expiry, Close) ends between two packets; no refused or stalled session
// reaches the broker; and no goroutine or descriptor is left once the
// proxy is closed.
func TestStress(t *testing.T) {
	proxytest.VerifyNoLeaks(t)
	raiseFDLimit(t, 8*(*stressWorkers))
	seed := *stressSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (-stress.seed=%d runs this again), %d sessions, %d at once, relay %s", seed, seed, *stressSessions, *stressWorkers, defaultRelay)
	// Pipes are counted apart: the engine's pool, and the runtime's, let
	// go of theirs only as garbage is collected (settledPipes).
	pipesBefore := settledPipes(t)
	fdsBefore := openFDs(t) - openPipes(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	broker := &stressBroker{t: t, seed: seed, streamingFrom: *stressSessions, ln: ln, seen: map[int]int{}}
	broker.wg.Add(1)
	go broker.serve()
	// Stalled connections come and go beside the sessions, as many as the
	// pending cap: each session's connection evicts the oldest pending
	// one, nearly always a stalled one, and now and then one of the
	// sessions'.
	stallers := max(2, *stressWorkers/4)
	// HalfCloseTimeout is long: a side that half-closed while the other
	// streams megabytes to a slow reader must not cut that stream short.
	p := &Proxy{Upstream: ln.Addr().String(), Verifier: stressVerifier{}, HalfCloseTimeout: 2 * time.Minute,
		Limits: Limits{MaxPendingConnects: *stressWorkers/2 + stallers, ConnectTimeout: 5 * time.Second}}
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(front, "stress") }()
	addr := front.Addr().String()

	// The streaming sessions, at the end, fit under the pending cap.
	n := *stressSessions
	outcomes := make([]stressOutcome, n+p.Limits.MaxPendingConnects/2)
	stalling := make(chan struct{})
	var stalled sync.WaitGroup
	var stalls atomic.Int64
	for range stallers {
		stalled.Go(func() {
			for {
				select {
				case <-stalling:
					return
				default:
				}
				if o := stressClient(addr, seed, -1, n, nil); o.problem != nil {
					t.Error(o.problem)
					return
				}
				stalls.Add(1)
			}
		})
	}
	sessions := make(chan int)
	var workers sync.WaitGroup
	for range *stressWorkers {
		workers.Go(func() {
			for session := range sessions {
				outcomes[session] = stressClient(addr, seed, session, n, nil)
			}
		})
	}
	for session := range n {
		sessions <- session
	}
	close(sessions)
	within(t, "the sessions", 5*time.Minute, workers.Wait)
	close(stalling)
	within(t, "the stalled connections", time.Minute, stalled.Wait)

	// Close during traffic: sessions that stream both ways until the
	// proxy closes them; Close comes once bytes flow in each.
	var flowing sync.WaitGroup
	for session := n; session < len(outcomes); session++ {
		flowing.Add(1)
		workers.Go(func() {
			var once sync.Once
			outcomes[session] = stressClient(addr, seed, session, n, func() { once.Do(flowing.Done) })
			once.Do(flowing.Done) // one that never flowed must not hold up Close
		})
	}
	within(t, "bytes flowing in every streaming session", time.Minute, flowing.Wait)
	within(t, "Close", time.Minute, func() { p.Close() })
	within(t, "the streaming sessions", time.Minute, workers.Wait)
	if err := <-served; !errors.Is(err, ErrProxyClosed) {
		t.Errorf("Serve returned %v, want ErrProxyClosed", err)
	}
	ln.Close()
	within(t, "the broker's connections", time.Minute, broker.wg.Wait)

	failures, completed, evictedSessions := 0, 0, 0
	for session, o := range outcomes {
		s := drawStressScript(seed, session, n)
		atBroker := broker.seen[session] > 0
		if err := o.check(s, session, atBroker); err != nil {
			if failures++; failures <= 10 {
				t.Error(err)
			}
		}
		if atBroker && s.kind.completes() {
			completed++
		}
		if !atBroker && s.kind != stressRefused {
			evictedSessions++
		}
		if s.kind == stressStreaming && !atBroker {
			t.Errorf("streaming session %d never reached the broker", session)
		}
	}
	for session, n := range broker.seen {
		if n != 1 {
			t.Errorf("session %d reached the broker %d times", session, n)
		}
	}
	counts, framed := map[stressKind]int{}, 0
	for session := range n {
		s := drawStressScript(seed, session, n)
		counts[s.kind]++
		if s.framed {
			framed++
		}
	}
	t.Logf("sessions by kind: %v (framed: %d); at the broker: %d; completed whole: %d; sessions evicted: %d; stalled connections evicted or timed out: %d",
		counts, framed, len(broker.seen), completed, evictedSessions, stalls.Load())
	if want := counts[stressClean] + counts[stressBrokerFirst] + counts[stressBackPressure]; completed < want/2 {
		t.Errorf("%d of %d sessions that complete did; the others were evicted before their CONNECT was read", completed, want)
	}

	if n := settledPipes(t) - pipesBefore; n != 0 {
		t.Errorf("%d more pipes open after Close", n)
	}
	if n := openFDs(t) - openPipes(t) - fdsBefore; n != 0 {
		t.Errorf("%d more descriptors (other than pipes) open after Close", n)
	}
}

// within runs wait and fails the test, with what it waited for, when
// wait has not returned within timeout (a hang: the goroutine dump of a
// test timeout would take minutes more to come, and say less).
func within(t *testing.T, what string, timeout time.Duration, wait func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("%s did not end within %v", what, timeout)
	}
}
