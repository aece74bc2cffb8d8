package engine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lineFilter frames a link by lines: the tests' Filter, which knows no
// MQTT. A line "deny ..." from the client is dropped and answered with
// "denied ...\n"; a line "end" ends the link with "bye\n"; the rest
// passes. It fails the test when a direction is filtered by two calls at
// once, or after Release.
type lineFilter struct {
	t        *testing.T
	partial  [2][]byte
	busy     [2]atomic.Bool
	released atomic.Bool
	calls    atomic.Int64
}

type endError struct{ final []byte }

func (e endError) Error() string      { return "the link ends" }
func (e endError) FinalBytes() []byte { return e.final }

func (f *lineFilter) Filter(dir int, in, fwd, back []byte) ([]byte, []byte, error) {
	if !f.busy[dir].CompareAndSwap(false, true) {
		f.t.Errorf("direction %d filtered by two calls at once", dir)
	}
	defer f.busy[dir].Store(false)
	if f.released.Load() {
		f.t.Errorf("Filter called after Release")
	}
	f.calls.Add(1)
	f.partial[dir] = append(f.partial[dir], in...)
	for {
		i := bytes.IndexByte(f.partial[dir], '\n')
		if i < 0 {
			return fwd, back, nil
		}
		line := f.partial[dir][:i+1]
		f.partial[dir] = f.partial[dir][i+1:]
		switch {
		case dir == 0 && bytes.HasPrefix(line, []byte("deny")):
			back = append(back, "denied"...)
			back = append(back, line[4:]...)
		case dir == 0 && string(line) == "end\n":
			return fwd, back, endError{final: []byte("bye\n")}
		default:
			fwd = append(fwd, line...)
		}
	}
}

func (f *lineFilter) Release() {
	if f.released.Swap(true) {
		f.t.Errorf("Release called twice")
	}
}

// framedLink is one link of either engine between a client and a broker
// stand-in, on loopback.
type framedLink struct {
	link           Link
	client, broker *net.TCPConn // the ends the test plays
	filter         *lineFilter
	done           chan [2]int64
}

func engineKinds(t *testing.T) []Kind {
	if runtime.GOOS == "linux" {
		return []Kind{Epoll, Portable}
	}
	return []Kind{Portable}
}

// tcpConns returns both ends of a loopback TCP connection, closed when
// the test ends.
func tcpConns(t *testing.T) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d.(*net.TCPConn), a.(*net.TCPConn)
}

func joinFramed(t *testing.T, e Engine, fromClient string, halfClose time.Duration) *framedLink {
	t.Helper()
	client, proxyClient := tcpConns(t)
	proxyUp, broker := tcpConns(t)
	fl := &framedLink{client: client, broker: broker, filter: &lineFilter{t: t}, done: make(chan [2]int64, 1)}
	fl.link = e.Join(proxyClient, proxyUp, Options{HalfClose: halfClose, Filter: fl.filter, FromClient: []byte(fromClient),
		Done: func(from, to int64) { fl.done <- [2]int64{from, to} }})
	return fl
}

// ended waits for Done and returns its counts.
func (fl *framedLink) ended(t *testing.T) [2]int64 {
	t.Helper()
	select {
	case n := <-fl.done:
		if !fl.filter.released.Load() {
			t.Error("Done came before the filter was released")
		}
		return n
	case <-time.After(20 * time.Second):
		t.Fatal("the link did not end")
		return [2]int64{}
	}
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read %q: %v", line, err)
	}
	return line
}

func newTestEngine(t *testing.T, k Kind) Engine {
	t.Helper()
	e, err := New(k)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// TestFramedLinkPassesWholeUnits: a framed link gives each side only what
// the Filter returns, whole, its answers to the source, the bytes read
// with the first ones through the Filter, and the client direction only
// after the broker's first output.
func TestFramedLinkPassesWholeUnits(t *testing.T) {
	for _, k := range engineKinds(t) {
		t.Run(string(k), func(t *testing.T) {
			e := newTestEngine(t, k)
			fl := joinFramed(t, e, "early\ndeny early\npart", 10*time.Second)
			fromClient, fromBroker := bufio.NewReader(fl.client), bufio.NewReader(fl.broker)
			// The client's bytes wait for the broker's first words.
			fl.client.Write([]byte("ial\n"))
			fl.broker.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if b, err := fromBroker.ReadByte(); err == nil {
				t.Fatalf("the broker got %q before it spoke", b)
			}
			fl.broker.SetReadDeadline(time.Time{})
			fl.broker.Write([]byte("hel"))
			fl.broker.Write([]byte("lo\n"))
			if got := readLine(t, fromClient); got != "hello\n" {
				t.Fatalf("the client got %q, want hello", got)
			}
			if got := readLine(t, fromClient); got != "denied early\n" {
				t.Fatalf("the client got %q, want the answer to its early denied line", got)
			}
			for _, want := range []string{"early\n", "partial\n"} {
				if got := readLine(t, fromBroker); got != want {
					t.Fatalf("the broker got %q, want %q", got, want)
				}
			}
			fl.client.Write([]byte("deny x\nok\n"))
			if got := readLine(t, fromClient); got != "denied x\n" {
				t.Fatalf("the client got %q", got)
			}
			if got := readLine(t, fromBroker); got != "ok\n" {
				t.Fatalf("the broker got %q: a denied line passed, or a unit was cut", got)
			}
			fl.link.Send([]byte("sent\n"))
			if got := readLine(t, fromClient); got != "sent\n" {
				t.Fatalf("the client got %q, want what Send sent", got)
			}
			// A clean end passes on, as on a spliced link.
			fl.client.CloseWrite()
			if _, err := fromBroker.ReadByte(); err != io.EOF {
				t.Fatalf("the broker read %v after the client's FIN, want EOF", err)
			}
			from, to := fl.link.Bytes()
			fl.broker.Close()
			n := fl.ended(t)
			want := [2]int64{int64(len("early\npartial\nok\n")), int64(len("hello\ndenied early\ndenied x\nsent\n"))}
			// Bytes may trail a write the other side has read already.
			if n != want || from > want[0] || to > want[1] {
				t.Errorf("Done(%d, %d), Bytes() %d, %d: want %d, %d", n[0], n[1], from, to, want[0], want[1])
			}
		})
	}
}

// TestFramedLinkEnd: End writes what the client was to get, then its last
// words, shuts the client's sending half and ends once the client closes;
// an error of the Filter does the same with its Final bytes; a unit cut
// by the end never reaches either side.
func TestFramedLinkEnd(t *testing.T) {
	for _, k := range engineKinds(t) {
		t.Run(string(k)+"/End", func(t *testing.T) {
			e := newTestEngine(t, k)
			fl := joinFramed(t, e, "", 10*time.Second)
			fl.broker.Write([]byte("hello\nhalf a li"))
			fromClient := bufio.NewReader(fl.client)
			readLine(t, fromClient)
			fl.link.Send([]byte("sent\n"))
			fl.link.End([]byte("bye\n"))
			fl.link.Send([]byte("too late\n"))
			rest, err := io.ReadAll(fromClient)
			if err != nil || string(rest) != "sent\nbye\n" {
				t.Fatalf("after End the client read %q, %v; want what was sent, the last words, then EOF", rest, err)
			}
			if b, err := io.ReadAll(fl.broker); len(b) != 0 || err != nil {
				t.Errorf("the broker read %q, %v after End, want EOF", b, err)
			}
			fl.client.Close()
			fl.ended(t)
		})
		t.Run(string(k)+"/Filter", func(t *testing.T) {
			e := newTestEngine(t, k)
			fl := joinFramed(t, e, "", 10*time.Second)
			fl.broker.Write([]byte("hello\n"))
			fromClient := bufio.NewReader(fl.client)
			readLine(t, fromClient)
			fl.client.Write([]byte("deny a\nend\nnever\n"))
			rest, err := io.ReadAll(fromClient)
			if err != nil || string(rest) != "denied a\nbye\n" {
				t.Fatalf("the client read %q, %v; want the answer, the Filter's last words, then EOF", rest, err)
			}
			fl.client.Close()
			fl.ended(t)
			if b, _ := io.ReadAll(fl.broker); len(b) != 0 {
				t.Errorf("the broker got %q after the end", b)
			}
		})
		t.Run(string(k)+"/client that does not close", func(t *testing.T) {
			e := newTestEngine(t, k)
			fl := joinFramed(t, e, "", 100*time.Millisecond)
			fl.broker.Write([]byte("hello\n"))
			readLine(t, bufio.NewReader(fl.client))
			fl.link.End(nil)
			fl.ended(t) // within HalfClose
		})
	}
}

// TestFramedLinkSlowClient: the broker's units and the Filter's answers
// to a client that reads slowly arrive whole and in order, the client
// direction held back while its answers wait; nothing is lost.
func TestFramedLinkSlowClient(t *testing.T) {
	for _, k := range engineKinds(t) {
		t.Run(string(k), func(t *testing.T) {
			e := newTestEngine(t, k)
			fl := joinFramed(t, e, "", 10*time.Second)
			const lines = 20000
			long := strings.Repeat("x", 200)
			var wg sync.WaitGroup
			wg.Go(func() {
				fl.broker.Write([]byte("hello\n"))
				for i := range lines {
					fmt.Fprintf(fl.broker, "b%d %s\n", i, long)
				}
			})
			wg.Go(func() {
				for i := range lines {
					fmt.Fprintf(fl.client, "deny c%d %s\n", i, long)
				}
			})
			fromClient := bufio.NewReader(fl.client)
			readLine(t, fromClient)
			time.Sleep(100 * time.Millisecond) // shaping a slow reader: both sides fill up
			nb, nc := 0, 0
			for nb < lines || nc < lines {
				line := readLine(t, fromClient)
				switch {
				case line == fmt.Sprintf("b%d %s\n", nb, long):
					nb++
				case line == fmt.Sprintf("denied c%d %s\n", nc, long):
					nc++
				default:
					t.Fatalf("after %d of the broker's lines and %d answers the client got %.40q", nb, nc, line)
				}
			}
			wg.Wait()
			fl.link.Abort()
			fl.ended(t)
		})
	}
}

// TestFramedLinkAbortWhileHeld: a link aborted, or whose broker closes,
// before the broker's first output ends, its Filter released.
func TestFramedLinkAbortWhileHeld(t *testing.T) {
	for _, k := range engineKinds(t) {
		t.Run(string(k), func(t *testing.T) {
			e := newTestEngine(t, k)
			fl := joinFramed(t, e, "early\n", 10*time.Second)
			fl.client.Write([]byte("more\n"))
			fl.link.Abort()
			fl.ended(t)
			fl = joinFramed(t, e, "", 10*time.Second)
			fl.broker.Close()
			if b, err := io.ReadAll(fl.client); len(b) != 0 || (err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset")) {
				t.Errorf("the client got %q, %v", b, err)
			}
			fl.ended(t)
		})
	}
}
