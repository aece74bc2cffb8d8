package engine

import (
	"crypto/tls"
	"net"
	"runtime"
	"testing"
	"time"
)

// testLayer is a wrapper that says whether it holds bytes, as the
// transports' connections do.
type testLayer struct {
	net.Conn
	pending bool
}

func (l *testLayer) NetConn() net.Conn { return l.Conn }
func (l *testLayer) Pending() bool     { return l.pending }

// TestReadiness: the copy waits on the socket, holding no buffer, for
// plain TCP and for layers over it that say what they hold; it cannot for
// a layer that does not say (TLS that reads ahead on its own), nor for a
// pipe. A layer holding bytes is readable at once.
func TestReadiness(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	pipe, other := net.Pipe()
	defer pipe.Close()
	defer other.Close()
	for _, tc := range []struct {
		name    string
		conn    net.Conn
		canWait bool
	}{
		{"TCP", server, true},
		{"a layer over TCP", &testLayer{Conn: server}, true},
		{"a layer over a layer over TCP", &testLayer{Conn: &testLayer{Conn: server}}, true},
		{"TLS reading ahead", tls.Server(server, nil), false},
		{"a layer over a pipe", &testLayer{Conn: pipe}, false},
		{"a pipe", pipe, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := readiness(tc.conn) != nil; got != tc.canWait && runtime.GOOS != "windows" {
				t.Errorf("readiness: %v, want %v", got, tc.canWait)
			}
		})
	}

	wait := readiness(&testLayer{Conn: &testLayer{Conn: server, pending: true}})
	if wait == nil {
		t.Skip("no readiness on this platform")
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := wait(); err != nil {
		t.Errorf("waiting on a layer that holds bytes: %v, want at once", err)
	}
	server.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if err := readiness(server)(); err == nil {
		t.Error("an idle socket was readable")
	}
}
