package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// engineSocketPair returns a client's connection and the socket the epoll
// engine's listener accepted for it.
func engineSocketPair(t *testing.T) (client net.Conn, accepted net.Conn) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the epoll engine is Linux-only")
	}
	e, err := engine.New(engine.Epoll)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	ln := e.Listener(listen(t))
	t.Cleanup(func() { ln.Close() })
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	accepted, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	if _, ok := accepted.(queuedReader); !ok {
		t.Fatalf("the epoll engine accepted a %T, which cannot read ahead", accepted)
	}
	return client, accepted
}

// unlimitedOwner lets a connectReader hold all it reads, and says when
// it is resumed.
type unlimitedOwner chan struct{}

func (unlimitedOwner) hold(int) bool { return true }
func (o unlimitedOwner) Resume()     { o <- struct{}{} }

// readBareConnect reads a CONNECT from c, a bare socket, with a
// connectReader, waiting for each resume when it has to.
func readBareConnect(t *testing.T, c net.Conn) (*packets.Connect, []byte, error) {
	t.Helper()
	resumed := make(unlimitedOwner, 1)
	r := &connectReader{conn: c, owner: resumed}
	for {
		pk, past, err := r.read()
		if !errors.Is(err, errWaiting) {
			return pk, past, err
		}
		select {
		case <-resumed:
		case <-time.After(proxytest.DefaultTimeout):
			t.Fatal("the reader was not resumed")
		}
	}
}

// A connectReader takes a CONNECT from a bare socket in one read when it
// has arrived, and returns what came after it in that read; a CONNECT
// larger than the read-ahead is read to its end and no further, and one
// that arrives in pieces is waited for without a goroutine.
func TestReadConnectAhead(t *testing.T) {
	long := make([]byte, 3*connectReadAhead)
	for i := range long {
		long[i] = 'x'
	}
	small := connectPacket(t, packets.ProtocolV311, "good")
	large := connectPacket(t, packets.ProtocolV311, string(long))
	publish := publishPacket("after")
	cases := []struct {
		name       string
		writes     [][]byte
		connect    []byte
		wantPast   []byte
		wantUnread []byte // still in the socket after readConnect
	}{
		{name: "CONNECT alone", writes: [][]byte{small}, connect: small},
		{name: "PUBLISH in the same read", writes: [][]byte{append(append([]byte(nil), small...), publish...)}, connect: small, wantPast: publish},
		{name: "larger than the read-ahead", writes: [][]byte{append(append([]byte(nil), large...), publish...)}, connect: large, wantUnread: publish},
		{name: "in pieces", writes: [][]byte{small[:3], small[3:20], small[20:]}, connect: small},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, c := engineSocketPair(t)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			go func() {
				for _, w := range tc.writes {
					client.Write(w)
				}
			}()
			pk, past, err := readBareConnect(t, c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pk.Raw, tc.connect) {
				t.Errorf("CONNECT of %d bytes, want %d", len(pk.Raw), len(tc.connect))
			}
			if !bytes.Equal(past, tc.wantPast) {
				t.Errorf("read past the CONNECT %x, want %x", past, tc.wantPast)
			}
			if len(tc.wantUnread) > 0 {
				unread := make([]byte, len(tc.wantUnread))
				if _, err := io.ReadFull(c, unread); err != nil || !bytes.Equal(unread, tc.wantUnread) {
					t.Errorf("socket then held %x (%v), want %x", unread, err, tc.wantUnread)
				}
			}
		})
	}
	b := readAheads.Get().(*[connectReadAhead]byte)
	defer readAheads.Put(b)
	if bytes.Contains(b[:], []byte("good")) {
		t.Error("a pooled buffer kept the token")
	}
}
