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
	for _, password := range []int{0, bodyChunk - 40, bodyChunk - 39, bodyChunk - 38, 3 * bodyChunk, DefaultMaxConnectSize - 64} {
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
