package packets

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// frameCase is a stream of bytes in one direction of a session and what a
// Framer makes of it.
type frameCase struct {
	name    string
	version byte
	// maxSize is the Framer's limit; 0 means the protocol's maximum.
	maxSize int
	raw     []byte
	// want is the packets found, in order.
	want []wantFrame
	// wantErr is the sentinel the stream fails with after them, with
	// wantCode; nil when it does not fail.
	wantErr  error
	wantCode ReasonCode
	// wantBuffered is how many bytes of an unfinished packet the Framer
	// holds at the end.
	wantBuffered int
}

type wantFrame struct {
	typ   PacketType
	flags byte
	size  int
}

// rawPublish is a PUBLISH at QoS 0 to topic for the version, written by
// hand so that the Framer's tests stand apart from the PUBLISH encoder.
func rawPublish(version byte, topic string, payload []byte) []byte {
	body := append([]byte{byte(len(topic) >> 8), byte(len(topic))}, topic...)
	if version == ProtocolV5 {
		body = append(body, 0) // no properties
	}
	body = append(body, payload...)
	return append(appendVarint([]byte{0x30}, len(body)), body...)
}

// bigPublish is an MQTT 3.1.1 PUBLISH to "t" of exactly size bytes, for
// remaining lengths of several bytes.
func bigPublish(size int) []byte {
	for headerLen := 2; headerLen <= maxFixedHeaderSize; headerLen++ {
		if raw := rawPublish(ProtocolV311, "t", make([]byte, size-headerLen-3)); len(raw) == size {
			return raw
		}
	}
	panic(fmt.Sprintf("no PUBLISH of %d bytes", size))
}

func appendVarint(dst []byte, v int) []byte {
	e := encoder{buf: dst}
	e.varint(v)
	return e.buf
}

var frameCases = []frameCase{
	{
		name:    "PINGREQ",
		version: ProtocolV311,
		raw:     unhex("c0 00"),
		want:    []wantFrame{{TypePingreq, 0, 2}},
	},
	{
		name:    "mqttv311 publish, puback, pingreq back to back",
		version: ProtocolV311,
		raw: unhex(
			"32 0a 0003 612f62 0001 6869 6a", // PUBLISH QoS 1 to "a/b", packet id 1, payload "hij"
			"40 02 0001",                     // PUBACK 1
			"c0 00",                          // PINGREQ
		),
		want: []wantFrame{{TypePublish, 0x02, 12}, {TypePuback, 0, 4}, {TypePingreq, 0, 2}},
	},
	{
		name:    "mqttv5 publish with a topic alias, retained, dup at QoS 2",
		version: ProtocolV5,
		raw: unhex(
			"3d 0a",     // PUBLISH DUP, QoS 2, retain; remaining length 10
			"0000 0007", // empty topic name, packet id 7
			"03 23 0001",
			"6f6b", // payload "ok"
		),
		want: []wantFrame{{TypePublish, 0x0d, 12}},
	},
	{
		name:    "mqttv5 AUTH",
		version: ProtocolV5,
		raw:     unhex("f0 00"),
		want:    []wantFrame{{TypeAuth, 0, 2}},
	},
	{
		name:    "PUBREL, SUBSCRIBE, UNSUBSCRIBE with their flags",
		version: ProtocolV311,
		raw: unhex(
			"62 02 0005",            // PUBREL 5
			"82 06 0006 0001 61 00", // SUBSCRIBE 6: "a" at QoS 0
			"a2 05 0007 0001 61",    // UNSUBSCRIBE 7: "a"
		),
		want: []wantFrame{{TypePubrel, 2, 4}, {TypeSubscribe, 2, 8}, {TypeUnsubscribe, 2, 7}},
	},
	{
		name:    "remaining length of two bytes",
		version: ProtocolV311,
		raw:     bigPublish(200),
		want:    []wantFrame{{TypePublish, 0, 200}},
	},
	{
		name:    "remaining length of three bytes",
		version: ProtocolV5,
		raw:     append(unhex("30 ff 7f 0001 74 00"), make([]byte, 16383-4)...),
		want:    []wantFrame{{TypePublish, 0, 16386}},
	},
	{
		name:    "mqttv311 non-minimal remaining length",
		version: ProtocolV311,
		raw:     unhex("c0 80 00", "c0 00"), // PINGREQ, length 0 in two bytes; PINGREQ
		want:    []wantFrame{{TypePingreq, 0, 3}, {TypePingreq, 0, 2}},
	},
	{
		name:    "mqttv5 non-minimal remaining length",
		version: ProtocolV5,
		raw:     unhex("c0 00", "c0 80 00"),
		want:    []wantFrame{{TypePingreq, 0, 2}},
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "remaining length of five bytes",
		version: ProtocolV311,
		raw:     unhex("30 ff ff ff ff 7f"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		// Without a limit of its own, the Framer takes the largest packet
		// MQTT allows, and holds only what has arrived of it.
		name:         "the largest remaining length, under no limit",
		version:      ProtocolV5,
		raw:          unhex("30 ff ff ff 7f", "0001 74"),
		wantBuffered: 8,
	},
	{
		name:    "reserved type 0",
		version: ProtocolV5,
		raw:     unhex("c0 00", "00 00"),
		want:    []wantFrame{{TypePingreq, 0, 2}},
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "AUTH in mqttv311",
		version: ProtocolV311,
		raw:     unhex("f0 00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "PUBLISH at QoS 3",
		version: ProtocolV311,
		raw:     unhex("36 07 0001 74 0001 78"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "PUBLISH with DUP at QoS 0",
		version: ProtocolV5,
		raw:     unhex("38 04 0001 74 00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "SUBSCRIBE without its flags",
		version: ProtocolV311,
		raw:     unhex("80 06 0006 0001 61 00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "PINGREQ with a flag",
		version: ProtocolV311,
		raw:     unhex("c1 00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "a bad first byte fails before its length arrives",
		version: ProtocolV311,
		raw:     unhex("40 02 0001", "b1"), // PUBACK 1; UNSUBACK with flags
		want:    []wantFrame{{TypePuback, 0, 4}},
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "exactly the limit",
		version: ProtocolV5,
		maxSize: 200,
		raw:     bigPublish(200),
		want:    []wantFrame{{TypePublish, 0, 200}},
	},
	{
		name:    "one byte over the limit",
		version: ProtocolV5,
		maxSize: 199,
		raw:     unhex("c0 00", fmt.Sprintf("%x", bigPublish(200))),
		want:    []wantFrame{{TypePingreq, 0, 2}},
		wantErr: ErrTooLarge, wantCode: PacketTooLarge,
	},
	{
		// Only the fixed header exists: the refusal cannot wait for the body.
		name:    "mqttv311 over the limit, refused on the header",
		version: ProtocolV311,
		maxSize: 1 << 20,
		raw:     unhex("30 ff ff ff 7f"),
		wantErr: ErrTooLarge, wantCode: PacketTooLarge,
	},
	{
		name:         "stream ends inside a body",
		version:      ProtocolV311,
		raw:          unhex("c0 00", "32 0a 0003 612f62"),
		want:         []wantFrame{{TypePingreq, 0, 2}},
		wantBuffered: 7,
	},
	{
		name:         "stream ends inside a fixed header",
		version:      ProtocolV5,
		raw:          unhex("c0 00", "30 ff ff"),
		want:         []wantFrame{{TypePingreq, 0, 2}},
		wantBuffered: 3,
	},
}

// framed is what a Framer made of a stream.
type framed struct {
	frames   []Frame // Raw copied
	err      error
	buffered int
}

// frameChunks feeds chunks to f in turn and collects what it returns. The
// frames are checked as they come: a frame with an Offset must alias the
// chunk at that Offset.
func frameChunks(t testing.TB, f *Framer, chunks [][]byte) framed {
	t.Helper()
	var out framed
	for _, chunk := range chunks {
		f.Feed(chunk)
		for {
			fr, ok, err := f.Next()
			if err != nil {
				out.err = err
				return out
			}
			if !ok {
				break
			}
			if fr.Offset >= 0 && (fr.Offset+len(fr.Raw) > len(chunk) || &fr.Raw[0] != &chunk[fr.Offset]) {
				t.Fatalf("frame at offset %d does not alias the %d fed bytes", fr.Offset, len(chunk))
			}
			fr.Raw = bytes.Clone(fr.Raw)
			out.frames = append(out.frames, fr)
		}
	}
	out.buffered = f.Buffered()
	return out
}

// splits cuts raw at the given positions, which must ascend.
func splits(raw []byte, at ...int) [][]byte {
	var chunks [][]byte
	last := 0
	for _, cut := range at {
		chunks = append(chunks, raw[last:cut])
		last = cut
	}
	return append(chunks, raw[last:])
}

// feedings are the ways a test feeds a stream: whole, byte by byte, cut in
// two at every position, and in random pieces.
func feedings(raw []byte, rng *rand.Rand) map[string][][]byte {
	ways := map[string][][]byte{"whole": {raw}}
	bytewise := make([][]byte, len(raw))
	for i := range raw {
		bytewise[i] = raw[i : i+1]
	}
	ways["byte by byte"] = bytewise
	if len(raw) < 64 {
		for cut := 1; cut < len(raw); cut++ {
			ways[fmt.Sprintf("cut at %d", cut)] = splits(raw, cut)
		}
	}
	for try := range 8 {
		var at []int
		for pos := 0; ; {
			pos += 1 + rng.IntN(max(1, len(raw)/3))
			if pos >= len(raw) {
				break
			}
			at = append(at, pos)
		}
		ways[fmt.Sprintf("random %d", try)] = splits(raw, at...)
	}
	return ways
}

func TestFramer(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range frameCases {
		t.Run(tc.name, func(t *testing.T) {
			for way, chunks := range feedings(tc.raw, rng) {
				got := frameChunks(t, NewFramer(tc.version, tc.maxSize), chunks)
				if len(got.frames) != len(tc.want) {
					t.Fatalf("%s: %d frames, want %d (error %v)", way, len(got.frames), len(tc.want), got.err)
				}
				offset := 0
				for i, fr := range got.frames {
					want := tc.want[i]
					if fr.Type != want.typ || fr.Flags != want.flags || len(fr.Raw) != want.size {
						t.Errorf("%s: frame %d is %v flags 0x%X, %d bytes; want %v flags 0x%X, %d bytes",
							way, i, fr.Type, fr.Flags, len(fr.Raw), want.typ, want.flags, want.size)
					}
					if !bytes.Equal(fr.Raw, tc.raw[offset:offset+len(fr.Raw)]) {
						t.Errorf("%s: frame %d is not the stream's bytes at %d", way, i, offset)
					}
					if fr.HeaderLen != fixedHeaderLen(fr.Raw) {
						t.Errorf("%s: frame %d has HeaderLen %d, want %d", way, i, fr.HeaderLen, fixedHeaderLen(fr.Raw))
					}
					offset += len(fr.Raw)
				}
				if tc.wantErr == nil {
					if got.err != nil {
						t.Fatalf("%s: %v", way, got.err)
					}
					if got.buffered != tc.wantBuffered {
						t.Errorf("%s: %d bytes buffered at the end, want %d", way, got.buffered, tc.wantBuffered)
					}
					continue
				}
				checkRefusal(t, got.err, tc.wantErr, tc.wantCode, tc.version)
			}
		})
	}
}

// TestFramerErrorSticks: after a refusal, every call fails alike and holds
// nothing, whatever is fed.
func TestFramerErrorSticks(t *testing.T) {
	f := NewFramer(ProtocolV5, 100)
	f.Feed(unhex("30 ff 7f 00")) // declares 16,383 bytes
	_, _, first := f.Next()
	checkRefusal(t, first, ErrTooLarge, PacketTooLarge, ProtocolV5)
	f.Feed(unhex("c0 00"))
	if _, ok, err := f.Next(); ok || err != first {
		t.Errorf("after the refusal: ok %t, error %v; want the same error", ok, err)
	}
	if f.Buffered() != 0 || f.buf != nil || f.lent != nil {
		t.Errorf("a refused stream holds %d bytes", f.Buffered())
	}
}

// TestFramerZeroCopy: packets wholly inside the fed bytes come as slices of
// them, one after the other, and framing them allocates nothing.
func TestFramerZeroCopy(t *testing.T) {
	stream := publishStream(ProtocolV311, 64, 100)
	f := NewFramer(ProtocolV311, 0)
	next := 0
	f.Feed(stream)
	for {
		fr, ok, err := f.Next()
		if err != nil || !ok {
			if err != nil || next != len(stream) {
				t.Fatalf("stopped at %d of %d: %v", next, len(stream), err)
			}
			break
		}
		if fr.Offset != next || &fr.Raw[0] != &stream[next] {
			t.Fatalf("frame at offset %d, want %d, aliasing the fed bytes", fr.Offset, next)
		}
		next += len(fr.Raw)
	}
	allocs := testing.AllocsPerRun(100, func() {
		f.Feed(stream)
		for {
			if _, ok, _ := f.Next(); !ok {
				return
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations to frame %d bytes fed at once, want 0", allocs, len(stream))
	}
}

// TestFramerSplitPacket: a packet split across feeds is gathered into a
// pooled buffer that goes back once the next call is made, so that a
// session between packets holds no buffer.
func TestFramerSplitPacket(t *testing.T) {
	stream := publishStream(ProtocolV5, 64, 2)
	cut := len(stream)/2 + 3 // inside the second packet
	f := NewFramer(ProtocolV5, 0)
	f.Feed(stream[:cut])
	first, ok, err := f.Next()
	if !ok || err != nil || first.Offset != 0 {
		t.Fatalf("first frame: %t, %v, offset %d; want it at offset 0", ok, err, first.Offset)
	}
	if _, ok, err := f.Next(); ok || err != nil {
		t.Fatalf("a frame from the first half of the second packet: %t, %v", ok, err)
	}
	if f.buf == nil || f.Buffered() != cut-len(first.Raw) {
		t.Fatalf("%d bytes of the second packet held, want %d", f.Buffered(), cut-len(first.Raw))
	}
	f.Feed(stream[cut:])
	second, ok, err := f.Next()
	if !ok || err != nil || second.Offset != -1 || !bytes.Equal(second.Raw, stream[len(first.Raw):]) {
		t.Fatalf("second frame: %t, %v, offset %d; want the gathered packet", ok, err, second.Offset)
	}
	if f.lent == nil || f.buf != nil {
		t.Fatal("the gathered frame's buffer is not lent")
	}
	if _, ok, err := f.Next(); ok || err != nil {
		t.Fatalf("a third frame: %t, %v", ok, err)
	}
	if f.lent != nil || f.buf != nil || f.Buffered() != 0 {
		t.Errorf("between packets the Framer holds a buffer (lent %t, begun %t)", f.lent != nil, f.buf != nil)
	}
	if f.in != nil {
		t.Error("a Framer that waits keeps the fed bytes alive")
	}
}

// TestFramerHoldsWhatArrived: a packet that declares a megabyte and sends a
// few bytes costs a few bytes: the buffer grows with what arrives, at most
// doubling, and never past the limit.
func TestFramerHoldsWhatArrived(t *testing.T) {
	const declared = 1 << 20
	raw := rawPublish(ProtocolV311, "big", make([]byte, declared))
	f := NewFramer(ProtocolV311, len(raw))
	for fed := 0; fed < len(raw); {
		n := min(1+fed, len(raw)-fed) // a growing trickle
		f.Feed(raw[fed : fed+n])
		fed += n
		fr, ok, err := f.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if fed != len(raw) || !bytes.Equal(fr.Raw, raw) {
				t.Fatalf("a frame of %d bytes after %d fed", len(fr.Raw), fed)
			}
			break
		}
		if f.buf == nil {
			continue // the fixed header is not complete yet
		}
		if held := cap(*f.buf); held > max(minGatherBuffer, 2*fed) || held > len(raw) {
			t.Fatalf("%d bytes held after %d arrived", held, fed)
		}
	}
	run := func() {
		f := NewFramer(ProtocolV311, 0)
		f.Feed(raw[:10])
		f.Next()
		f.Release()
	}
	if perRun := bytesPerRun(run); perRun > 2*minGatherBuffer+512 {
		t.Errorf("%d bytes allocated for 10 bytes of a packet declaring %d", perRun, declared)
	}
}

// TestFramerRefusesBeforeBuffering: an oversize packet is refused on its
// fixed header, with nothing of its body kept.
func TestFramerRefusesBeforeBuffering(t *testing.T) {
	f := NewFramer(ProtocolV5, 1024)
	f.Feed(unhex("30 81 08")) // declares 1,025 bytes of body
	_, _, err := f.Next()
	checkRefusal(t, err, ErrTooLarge, PacketTooLarge, ProtocolV5)
	if !strings.Contains(err.Error(), "PUBLISH of 1028 bytes, limit 1024") {
		t.Errorf("error %q does not say what was refused", err)
	}
}

func TestFramerFeedBeforeFramedPanics(t *testing.T) {
	f := NewFramer(ProtocolV311, 0)
	f.Feed(unhex("c0 00 c0 00"))
	if _, ok, _ := f.Next(); !ok {
		t.Fatal("no first frame")
	}
	defer func() {
		if recover() == nil {
			t.Error("Feed with a frame still unread did not panic")
		}
	}()
	f.Feed(unhex("c0 00"))
}

// TestFramerRelease: a session that ends inside a packet gives its buffer
// back.
func TestFramerRelease(t *testing.T) {
	f := NewFramer(ProtocolV311, 0)
	f.Feed(bigPublish(300)[:100])
	if _, ok, err := f.Next(); ok || err != nil {
		t.Fatalf("%t, %v", ok, err)
	}
	if f.Buffered() != 100 {
		t.Fatalf("%d bytes buffered, want 100", f.Buffered())
	}
	f.Release()
	if f.buf != nil || f.Buffered() != 0 {
		t.Error("Release kept the buffer")
	}
}

func TestTakeBuffer(t *testing.T) {
	tests := []struct {
		need, total, limit int
		wantCap            int
	}{
		{1, 10, 100, 64},
		{64, 1000, 1000, 64},
		{65, 1000, 1000, 128},
		{70, 100, 100, 100}, // class 128 is over the limit: the packet's size
		{10, 40, 40, 40},    // a limit under the smallest class
		{100 << 10, 1 << 20, 2 << 20, 128 << 10},
	}
	for _, tc := range tests {
		b := takeBuffer(tc.need, tc.total, tc.limit)
		if len(*b) != 0 || cap(*b) != tc.wantCap {
			t.Errorf("takeBuffer(%d, %d, %d): len %d, cap %d; want 0, %d", tc.need, tc.total, tc.limit, len(*b), cap(*b), tc.wantCap)
		}
		giveBuffer(b)
	}
}

// publishStream is n PUBLISHes at QoS 0 to "sensors/42/temperature" with
// payloads of the given size.
func publishStream(version byte, payload, n int) []byte {
	var stream []byte
	for i := range n {
		stream = append(stream, rawPublish(version, "sensors/42/temperature", bytes.Repeat([]byte{byte(i)}, payload))...)
	}
	return stream
}

// streamSentinels are the causes a stream fails with, and their codes.
var streamSentinels = map[error]ReasonCode{
	ErrMalformed:         MalformedPacket,
	ErrProtocolViolation: ProtocolError,
	ErrTooLarge:          PacketTooLarge,
	ErrTopicAliasInvalid: TopicAliasInvalid,
}

// checkStreamRefusal checks that err refuses a stream of the given version:
// an *Error wrapping exactly one of streamSentinels, with its code.
func checkStreamRefusal(t *testing.T, err error, version byte) {
	t.Helper()
	var perr *Error
	if !errors.As(err, &perr) || perr.Version != version {
		t.Fatalf("error %v, want an *Error for version %d", err, version)
	}
	matched := 0
	for sentinel, code := range streamSentinels {
		if errors.Is(err, sentinel) {
			matched++
			if perr.Code != code {
				t.Fatalf("%v with code %v, want %v", err, perr.Code, code)
			}
		}
	}
	if matched != 1 {
		t.Fatalf("%v wraps %d sentinels, want 1", err, matched)
	}
}
