package packets

import (
	"fmt"
	"testing"
)

// readSize is what one read of the relay takes at most: the size of the
// proxy's copy buffers.
const readSize = 16 << 10

// BenchmarkFramePublishStream frames a stream of PUBLISHes with 64-byte
// payloads, the pub/sub load of the proxy's side-by-side benchmark, fed as
// reads of 16 KiB, so that a packet is split at the end of each read. The
// copy case is the floor of any user-space relay: moving each read's bytes
// once. Framing, decoding and resolving topic aliases are measured on top.
func BenchmarkFramePublishStream(b *testing.B) {
	for _, version := range []byte{ProtocolV311, ProtocolV5} {
		stream := publishStream(version, 64, 4096)
		var reads [][]byte
		for off := 0; off < len(stream); off += readSize {
			reads = append(reads, stream[off:min(off+readSize, len(stream))])
		}
		run := func(name string, perRead func(f *Framer, read []byte, out []byte)) {
			b.Run(fmt.Sprintf("%s/%s", versionName(version), name), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(stream)))
				f := NewFramer(version, 1<<20)
				out := make([]byte, readSize)
				for b.Loop() {
					for _, read := range reads {
						perRead(f, read, out)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*4096), "ns/packet")
			})
		}
		run("copy", func(_ *Framer, read, out []byte) { copy(out, read) })
		run("frame", func(f *Framer, read, _ []byte) {
			f.Feed(read)
			for {
				if _, ok, err := f.Next(); !ok || err != nil {
					return
				}
			}
		})
		var p Publish
		aliases := TopicAliases{Max: 10}
		run("frame+decode+resolve", func(f *Framer, read, _ []byte) {
			f.Feed(read)
			for {
				fr, ok, err := f.Next()
				if !ok || err != nil {
					return
				}
				if err := p.Decode(version, fr); err != nil {
					b.Fatal(err)
				}
				if version == ProtocolV5 {
					if _, err := aliases.Resolve(&p); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkDecodePublish decodes the PUBLISHes mosquitto_pub sends.
func BenchmarkDecodePublish(b *testing.B) {
	for _, name := range []string{"mosquitto_pub mqttv311 QoS 1 retained", "mosquitto_pub mqttv5 QoS 2, topic alias and user property"} {
		var tc packetCase
		for _, c := range publishCases {
			if c.name == name {
				tc = c
			}
		}
		fr, err := frameOne(tc.version, tc.raw)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(versionName(tc.version), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.raw)))
			var p Publish
			for b.Loop() {
				if err := p.Decode(tc.version, fr); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSubscribeRewrite is the proxy's work on a SUBSCRIBE with one of
// two filters refused: decode it, write it without the refused filter,
// then expand the broker's SUBACK to the client's two filters.
func BenchmarkSubscribeRewrite(b *testing.B) {
	for _, tc := range []struct {
		subscribe, suback string
	}{
		{"mosquitto_sub mqttv311 two filters", "mosquitto SUBACK mqttv311"},
		{"mosquitto_sub mqttv5 shared subscription, subscription identifier", "mosquitto SUBACK mqttv5"},
	} {
		sub := subscribeCase(tc.subscribe)
		subFrame, err := frameOne(sub.version, sub.raw)
		if err != nil {
			b.Fatal(err)
		}
		version := sub.version
		ackFrame, err := frameOne(version, subscribeCase(tc.suback).raw)
		if err != nil {
			b.Fatal(err)
		}
		keep := []bool{true, false}
		inserts := []Insertion{{1, SubscriptionRefusal(version)}}
		b.Run(versionName(version), func(b *testing.B) {
			b.ReportAllocs()
			var s Subscribe
			var ack Suback
			buf := make([]byte, 0, 256)
			for b.Loop() {
				if err := s.Decode(version, subFrame); err != nil {
					b.Fatal(err)
				}
				if _, err := s.AppendKept(buf[:0], version, keep); err != nil {
					b.Fatal(err)
				}
				if err := ack.Decode(version, ackFrame); err != nil {
					b.Fatal(err)
				}
				ack.Codes = ack.Codes[:1] // the broker answered the one filter kept
				if _, err := ack.AppendExpanded(buf[:0], version, inserts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
