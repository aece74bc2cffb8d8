package transport

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
)

// TestRecordConn: crypto/tls reading through a recordConn gets one record
// at a time, so after each Read nothing is left pending above the socket.
func TestRecordConn(t *testing.T) {
	records := []byte{
		0x17, 0x03, 0x03, 0x00, 0x03, 'a', 'b', 'c', // a record of 3 bytes
		0x17, 0x03, 0x03, 0x00, 0x00, // an empty one
		0x17, 0x03, 0x03, 0x00, 0x02, 'd', 'e',
	}
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		client.Write(records)
		client.Close()
	}()
	rc := &recordConn{Conn: server}
	var reads [][]byte
	buf := make([]byte, 64)
	for {
		n, err := rc.Read(buf)
		if n > 0 {
			reads = append(reads, append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			break
		}
		if rc.Pending() != (rc.bodyLeft > 0 || rc.headerLen > 0) {
			t.Fatal("pending disagrees with the record state")
		}
	}
	want := [][]byte{records[0:5], records[5:8], records[8:13], records[13:18], records[18:20]}
	if len(reads) != len(want) {
		t.Fatalf("reads %x, want %x", reads, want)
	}
	for i := range want {
		if !bytes.Equal(reads[i], want[i]) {
			t.Errorf("read %d: %x, want %x", i, reads[i], want[i])
		}
	}
	if rc.Pending() {
		t.Error("pending after the last record")
	}
}

// TestDetachTLS: a TLS connection that reads one record at a time is
// handed over as one whose every layer, down to the socket, says what it
// holds, behind a PROXY header too, so that the copy can wait on the
// socket with no buffer; one that reads ahead on its own is not.
func TestDetachTLS(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	for _, tc := range []struct {
		name        string
		conn        net.Conn
		transparent bool
	}{
		{"over a recordConn", tls.Server(&recordConn{Conn: server}, nil), true},
		{"over a recordConn behind a PROXY header", tls.Server(&recordConn{Conn: &proxiedConn{Conn: server}}, nil), true},
		{"reading ahead", tls.Server(server, nil), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			detached, ahead := Detach(tc.conn)
			if len(ahead) != 0 {
				t.Errorf("%d bytes ahead, want none", len(ahead))
			}
			transparent := true
			for layer := range Layers(detached) {
				if layer == server {
					break
				}
				if _, ok := layer.(interface{ Pending() bool }); !ok {
					transparent = false
				}
			}
			if transparent != tc.transparent {
				t.Errorf("every layer says what it holds: %v, want %v", transparent, tc.transparent)
			}
		})
	}
}
