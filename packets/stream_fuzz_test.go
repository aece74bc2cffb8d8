package packets

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// fuzzLimits are the size limits FuzzFramer picks from: none, under the
// smallest buffer class, tiny, and ordinary.
var fuzzLimits = [...]int{0, 2, 5, 40, 64, 100, 1000}

// FuzzFramer feeds a stream to a Framer whole and in random pieces, and
// checks: no panic; every frame a whole packet, as its fixed header
// declares it, with the stream's bytes at its place; never more held than
// the limit, nor more than twice what has arrived of the packet begun
// (64 bytes at least), nor the fed bytes once all are taken; and the same
// frames, error and leftover however the stream is cut.
func FuzzFramer(f *testing.F) {
	for _, tc := range frameCases {
		config := byte(0)
		if tc.version == ProtocolV5 {
			config = 1
		}
		f.Add(tc.raw, uint64(1), config)
		f.Add(tc.raw, uint64(2), config|2<<1)
	}
	for _, tc := range allPacketCases() {
		f.Add(tc.raw, uint64(3), byte(0))
		f.Add(append(bytes.Clone(tc.raw), tc.raw...), uint64(4), byte(1))
	}
	f.Add(publishStream(ProtocolV5, 64, 20), uint64(5), byte(1|5<<1))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64, config byte) {
		version := ProtocolV311
		if config&1 != 0 {
			version = ProtocolV5
		}
		limit := fuzzLimits[int(config>>1)%len(fuzzLimits)]
		whole := frameChecked(t, version, limit, data, [][]byte{data})
		rng := rand.New(rand.NewPCG(seed, uint64(len(data))))
		for range 4 {
			var at []int
			for pos := 0; ; {
				pos += 1 + rng.IntN(1+len(data)/2)
				if pos >= len(data) {
					break
				}
				at = append(at, pos)
			}
			compareFramed(t, whole, frameChecked(t, version, limit, data, splits(data, at...)))
		}
		if len(data) <= 512 {
			bytewise := make([][]byte, len(data))
			for i := range data {
				bytewise[i] = data[i : i+1]
			}
			compareFramed(t, whole, frameChecked(t, version, limit, data, bytewise))
		}
	})
}

// frameChecked frames data, fed as chunks, checking each frame and the
// memory held after each call.
func frameChecked(t *testing.T, version byte, limit int, data []byte, chunks [][]byte) framed {
	t.Helper()
	f := NewFramer(version, limit)
	if limit <= 0 {
		limit = MaxPacketSize
	}
	var out framed
	offset := 0
	for _, chunk := range chunks {
		f.Feed(chunk)
		for {
			fr, ok, err := f.Next()
			checkHeld(t, f, limit)
			if err != nil {
				checkStreamRefusal(t, err, version)
				out.err = err
				return out
			}
			if !ok {
				if f.in != nil {
					t.Fatal("a Framer that waits keeps the fed bytes alive")
				}
				break
			}
			headerLen, remaining, err := parseFixedHeader(version, fr.Raw)
			switch {
			case err != nil || headerLen == 0:
				t.Fatalf("frame % x has no fixed header: %v", fr.Raw, err)
			case headerLen != fr.HeaderLen || headerLen+remaining != len(fr.Raw) || len(fr.Raw) > limit:
				t.Fatalf("frame of %d bytes, header %d (HeaderLen %d) declaring %d, limit %d",
					len(fr.Raw), headerLen, fr.HeaderLen, remaining, limit)
			case PacketType(fr.Raw[0]>>4) != fr.Type || fr.Raw[0]&0x0F != fr.Flags:
				t.Fatalf("frame %v flags 0x%X for first byte 0x%02X", fr.Type, fr.Flags, fr.Raw[0])
			case !bytes.Equal(fr.Raw, data[offset:offset+len(fr.Raw)]):
				t.Fatalf("frame at %d is not the stream's bytes", offset)
			case cap(fr.Raw) != len(fr.Raw):
				t.Fatalf("frame of %d bytes with capacity %d", len(fr.Raw), cap(fr.Raw))
			}
			offset += len(fr.Raw)
			fr.Raw = bytes.Clone(fr.Raw)
			out.frames = append(out.frames, fr)
		}
	}
	out.buffered = f.Buffered()
	if out.buffered != len(data)-offset {
		t.Fatalf("%d bytes buffered, %d left after the last frame", out.buffered, len(data)-offset)
	}
	f.Release()
	checkHeld(t, f, limit)
	return out
}

// checkHeld checks the memory f holds against the limit and what has
// arrived of the packet it has begun.
func checkHeld(t *testing.T, f *Framer, limit int) {
	t.Helper()
	if f.buf != nil {
		held, arrived := cap(*f.buf), len(*f.buf)
		if held > limit || held > max(minGatherBuffer, 2*arrived) {
			t.Fatalf("%d bytes held for %d arrived, limit %d", held, arrived, limit)
		}
	}
	if f.lent != nil && cap(*f.lent) > limit {
		t.Fatalf("a gathered frame's buffer of %d bytes, limit %d", cap(*f.lent), limit)
	}
	if f.headLen > maxFixedHeaderSize {
		t.Fatalf("%d bytes of fixed header held", f.headLen)
	}
}

func compareFramed(t *testing.T, want, got framed) {
	t.Helper()
	if len(got.frames) != len(want.frames) {
		t.Fatalf("%d frames cut, %d whole", len(got.frames), len(want.frames))
	}
	for i := range want.frames {
		if !bytes.Equal(got.frames[i].Raw, want.frames[i].Raw) {
			t.Fatalf("frame %d differs when cut", i)
		}
	}
	if (got.err == nil) != (want.err == nil) || got.err != nil && got.err.Error() != want.err.Error() {
		t.Fatalf("error %v cut, %v whole", got.err, want.err)
	}
	if got.buffered != want.buffered {
		t.Fatalf("%d bytes buffered cut, %d whole", got.buffered, want.buffered)
	}
}

// FuzzDecode frames a stream and decodes each packet with its decoder, and
// checks: no panic; every refusal an *Error wrapping exactly one sentinel,
// with its code; every packet accepted encoded again and decoded alike;
// and, for MQTT 5, read alike by paho, for MQTT 3.1.1 by mochi-mqtt.
func FuzzDecode(f *testing.F) {
	for _, tc := range allPacketCases() {
		f.Add(tc.raw, tc.version == ProtocolV5)
	}
	f.Fuzz(func(t *testing.T, data []byte, v5 bool) {
		version := ProtocolV311
		if v5 {
			version = ProtocolV5
		}
		fr := NewFramer(version, 1<<16)
		fr.Feed(data)
		for {
			frame, ok, err := fr.Next()
			if err != nil || !ok {
				return
			}
			pk := newPacket(frame.Type)
			if pk == nil {
				continue
			}
			if err := pk.Decode(version, frame); err != nil {
				checkStreamRefusal(t, err, version)
				continue
			}
			raw, err := pk.Append(nil, version)
			if err != nil {
				t.Fatalf("Append of a decoded packet: %v\n%s", err, describePacket(pk))
			}
			again, err := decodeRaw(version, raw)
			if err != nil {
				t.Fatalf("Decode(Append()): %v\n% x", err, raw)
			}
			if !equalPackets(again, pk) {
				t.Fatalf("round trip changed\n%s\ninto\n%s", describePacket(pk), describePacket(again))
			}
			switch {
			case version == ProtocolV5 && !pahoGap(pk, frame):
				checkPaho(t, pk, frame.Raw)
			case version == ProtocolV311:
				checkMochi(t, pk, frame.Raw)
			}
		}
	})
}

// pahoGap tells the packets paho cannot read: a DISCONNECT without reason
// code, which paho takes for a truncated one.
func pahoGap(pk packet, fr Frame) bool {
	_, ok := pk.(*Disconnect)
	return ok && len(fr.Body()) == 0
}
