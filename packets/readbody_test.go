package packets

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// TestReadConnectAllocatesAsBytesArrive: a client that declares a CONNECT
// just under the limit and sends a little of it costs about what it sent.
// (Regression: the whole declared length was allocated at once, so 200
// pending clients trickling 60 KB CONNECTs held 12 MB.)
func TestReadConnectAllocatesAsBytesArrive(t *testing.T) {
	partial := unhex("10 e0d403", mqtt5, "c2 003c") // declares 60,000 bytes, sends 10
	run := func() error {
		_, err := ReadConnect(bytes.NewReader(partial), 0)
		return err
	}
	if err := run(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("error %v, want the unexpected end of input", err)
	}
	// TotalAlloc counts every goroutine's allocations (the race detector's
	// too), so the bound leaves room: the old reader took 60,000.
	if perRun := bytesPerRun(func() { run() }); perRun > 2*bodyChunk {
		t.Errorf("%d bytes allocated for a CONNECT declaring 60,000 bytes and sending 10, want at most %d", perRun, 2*bodyChunk)
	}
}

// TestReadConnectLargePackets reads CONNECTs whose body fills the first
// chunk exactly, or needs it to grow once or several times, delivered a
// few bytes per read.
func TestReadConnectLargePackets(t *testing.T) {
	// The password's length puts the body around bodyChunk and beyond.
	for _, password := range []int{0, bodyChunk - 40, bodyChunk - 39, bodyChunk - 38, 3 * bodyChunk, 65535} {
		c := &Connect{
			ProtocolName: "MQTT", ProtocolVersion: ProtocolV311, ClientID: "big",
			UsernameFlag: true, Username: "u", PasswordFlag: true, Password: []byte(strings.Repeat("p", password)),
		}
		raw, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadConnect(iotest.HalfReader(bytes.NewReader(raw)), 0)
		if err != nil {
			t.Fatalf("%d-byte packet: %v", len(raw), err)
		}
		if !bytes.Equal(got.Raw, raw) || !bytes.Equal(got.Password, c.Password) {
			t.Errorf("%d-byte packet read back differently", len(raw))
		}
	}
}

// bytesPerRun is what run allocates on average, counted in bytes by the
// runtime (testing.AllocsPerRun counts allocations, not their size).
func bytesPerRun(run func()) uint64 {
	const runs = 100
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		run()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / runs
}

// TestConnectNeeds: what a reader fed a few bytes at a time is told to
// wait for before ParseConnect can decide.
func TestConnectNeeds(t *testing.T) {
	connect := unhex("10 0c", mqtt311, "02 003c 0000") // the shortest CONNECT, 14 bytes
	for _, tc := range []struct {
		name   string
		prefix []byte
		max    int
		want   int
	}{
		{"nothing yet", nil, 0, 1},
		{"the type byte", connect[:1], 0, 2},
		{"the fixed header", connect[:2], 0, 14},
		{"half the packet", connect[:7], 0, 14},
		{"the packet", connect, 0, 14},
		{"the packet and more", append(bytes.Clone(connect), 0xc0, 0x00), 0, 14},
		{"a PUBLISH: refused on its first byte", unhex("30"), 0, 1},
		{"reserved flags: refused on the first byte", unhex("11"), 0, 1},
		{"a remaining length going on", unhex("10 ff ff"), 0, 4},
		{"a remaining length too long: refused on its fifth byte", unhex("10 ff ff ff ff"), 0, 5},
		{"oversize: the protocol name's length first", unhex("10 e0d403"), 1024, 6},
		{"oversize: then the name and level", unhex("10 e0d403 0004"), 1024, 11},
		{"oversize, unknown name length: refused once it is in", unhex("10 e0d403 0009"), 1024, 6},
		{"a 1 MiB CONNECT is within a 1 MiB limit", unhex("10 fcff3f"), 1 << 20, 1 << 20},
		{"a byte more is not", unhex("10 fdff3f"), 1 << 20, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ConnectNeeds(tc.prefix, tc.max); got != tc.want {
				t.Errorf("ConnectNeeds(% x, %d) = %d, want %d", tc.prefix, tc.max, got, tc.want)
			}
		})
	}
}
