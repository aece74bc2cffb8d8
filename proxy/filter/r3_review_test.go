package filter

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	paho "github.com/eclipse/paho.golang/packets"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// TestTopicAliasesBounded: an MQTT 5 client whose broker announced a large
// Topic Alias Maximum (EMQX's default is 65,535) is told at most
// maxTopicAliases in its CONNACK, and max_packet_size as its Maximum
// Packet Size; aliases it sets on denied PUBLISHes, which the broker never
// sees, each with a long topic, hold no more than one packet's worth of
// topics: the alias that would take them beyond ends the session with
// quota exceeded (0x97), and one above the announced maximum with topic
// alias invalid (0x94).
func TestTopicAliasesBounded(t *testing.T) {
	const maxPacket = 64<<10 + 64
	s := New(Config{Version: v5, Policy: testPolicy(t), MaxPacketSize: [2]int{maxPacket, maxPacket}})
	defer s.Release()
	fwd, _, err := s.Filter(FromBroker, connackLimits(65535, 0), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := paho.ReadPacket(bytes.NewReader(fwd))
	if err != nil {
		t.Fatalf("the CONNACK forwarded, % X: %v", fwd, err)
	}
	if p := cp.Content.(*paho.Connack).Properties; p == nil || p.TopicAliasMaximum == nil || *p.TopicAliasMaximum != maxTopicAliases ||
		p.MaximumPacketSize == nil || *p.MaximumPacketSize != maxPacket {
		t.Fatalf("the CONNACK forwarded, % X, does not announce Topic Alias Maximum %d and Maximum Packet Size %d", fwd, maxTopicAliases, maxPacket)
	}

	over := New(Config{Version: v5, Policy: testPolicy(t), MaxPacketSize: [2]int{maxPacket, maxPacket}})
	defer over.Release()
	over.Filter(FromBroker, connackLimits(65535, 0), nil, nil)
	var end *End
	if _, _, err := over.Filter(FromClient, publish(v5, pub{topic: "denied/x", alias: maxTopicAliases + 1}), nil, nil); !errors.As(err, &end) || end.Code != packets.TopicAliasInvalid {
		t.Fatalf("alias %d, over the maximum announced: %v; want the session ended with topic alias invalid", maxTopicAliases+1, err)
	}

	long := "denied/" + strings.Repeat("x", 60000) + "/"
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var back []byte
	for alias := uint16(1); alias <= maxTopicAliases; alias++ {
		fwd, back, err = s.Filter(FromClient, publish(v5, pub{topic: fmt.Sprint(long, alias), alias: alias}), fwd[:0], back[:0])
		if err != nil {
			if !errors.As(err, &end) || end.Code != packets.QuotaExceeded || alias != 2 {
				t.Fatalf("alias %d: %v; want the second long topic to end the session with quota exceeded", alias, err)
			}
			break
		}
		if len(fwd) != 0 {
			t.Fatalf("alias %d: forwarded %d bytes; want a denied QoS 0 PUBLISH dropped", alias, len(fwd))
		}
	}
	if err == nil {
		t.Fatalf("%d aliases of 60 KB topics each, and the session goes on", maxTopicAliases)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	if held := int64(after.HeapAlloc) - int64(before.HeapAlloc); held > 8*maxPacket {
		t.Fatalf("one session holds %.1f MB after denied PUBLISHes that set topic aliases; its hard cap, max_packet_size, is %d bytes", float64(held)/1e6, maxPacket)
	}
}

// TestSubscribeManyFiltersAllocation: one SUBSCRIBE at the packet cap
// (1 MiB) made of the shortest filters, all denied, is judged filter by
// filter: the filter allocates less than three times the packet for it
// (its answer, one code per filter, and a bit per filter), not a
// Subscription of 32 bytes per 4-byte filter.
func TestSubscribeManyFiltersAllocation(t *testing.T) {
	const maxPacket = 1 << 20
	s := New(Config{Version: v5, Policy: testPolicy(t), MaxPacketSize: [2]int{maxPacket, maxPacket}})
	defer s.Release()
	if _, _, err := s.Filter(FromBroker, connackLimits(10, 0), nil, nil); err != nil {
		t.Fatal(err)
	}
	filters := make([]filterQoS, (maxPacket-16)/4)
	for i := range filters {
		filters[i] = filterQoS{filter: "d"}
	}
	in := subscribe(v5, 1, nil, filters...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, back, err := s.Filter(FromClient, in, nil, nil)
	runtime.ReadMemStats(&after)
	if err != nil || len(back) == 0 {
		t.Fatalf("a SUBSCRIBE of denied filters: %v, answered %d bytes", err, len(back))
	}
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 3*uint64(len(in)) {
		t.Fatalf("one SUBSCRIBE of %d bytes (%d filters) made the filter allocate %.1f MB, %.1f times the packet",
			len(in), len(filters), float64(allocated)/1e6, float64(allocated)/float64(len(in)))
	}
}

// TestPendingAnswersBoundedByPacketCap: a client that does not read (so
// that the broker's SUBACKs wait behind it) pipelines SUBSCRIBEs of one
// allowed and one denied filter: the SUBSCRIBEs awaiting their SUBACK hold
// no more than max_packet_size, the one beyond ends the session with quota
// exceeded (0x97). And an MQTT 3.1.1 client's 65,535 denied QoS 2
// PUBLISHes awaiting their PUBREL hold a bit each.
func TestPendingAnswersBoundedByPacketCap(t *testing.T) {
	const maxPacket = 1 << 20
	s := New(Config{Version: v5, Policy: testPolicy(t), MaxPacketSize: [2]int{maxPacket, maxPacket}})
	defer s.Release()
	if _, _, err := s.Filter(FromBroker, connackLimits(10, 0), nil, nil); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var fwd, back []byte
	var err error
	id := 1
	for ; id <= 65535 && err == nil; id++ {
		in := subscribe(v5, uint16(id), nil, filterQoS{filter: "ok/a"}, filterQoS{filter: "d"})
		fwd, back, err = s.Filter(FromClient, in, fwd[:0], back[:0])
	}
	var end *End
	if !errors.As(err, &end) || end.Code != packets.QuotaExceeded {
		t.Fatalf("after %d SUBSCRIBEs awaiting their SUBACK: %v; want the session ended with quota exceeded", id-1, err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	if held := int64(after.HeapAlloc) - int64(before.HeapAlloc); held > 2*maxPacket {
		t.Fatalf("one session holds %.1f MB of SUBSCRIBEs awaiting their SUBACK; its hard cap, max_packet_size, is %d bytes", float64(held)/1e6, maxPacket)
	}
	t.Logf("the session ended at SUBSCRIBE %d", id-1)

	s3 := New(Config{Version: v3, Policy: testPolicy(t), MaxPacketSize: [2]int{maxPacket, maxPacket}})
	defer s3.Release()
	runtime.GC()
	runtime.ReadMemStats(&before)
	for id := 1; id <= 65535; id++ {
		in := publish(v3, pub{topic: "denied/x", qos: 2, id: uint16(id)})
		if fwd, back, err = s3.Filter(FromClient, in, fwd[:0], back[:0]); err != nil || len(fwd) != 0 || len(back) == 0 {
			t.Fatalf("denied QoS 2 PUBLISH %d: forwarded %d bytes, answered %d, %v", id, len(fwd), len(back), err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s3)
	if held := int64(after.HeapAlloc) - int64(before.HeapAlloc); held > 64<<10 {
		t.Fatalf("one MQTT 3.1.1 session holds %.1f KB for 65,535 QoS 2 exchanges awaiting their PUBREL", float64(held)/1e3)
	}
}

// TestDeliveriesJudged: a PUBLISH from the broker is judged as a
// subscription to its topic: one the client may subscribe to reaches it;
// another is dropped and answered to the broker with the broker's packet
// identifier (PUBACK; PUBREC 0x87 in MQTT 5, which ends the exchange;
// PUBREC then PUBCOMP for the broker's PUBREL in MQTT 3, whose PUBREL
// never reaches the client), and an MQTT 5 alias set by a dropped one
// reaches the client with its topic written in.
func TestDeliveriesJudged(t *testing.T) {
	for _, v := range []byte{v3, v5} {
		t.Run(versionName(v), func(t *testing.T) {
			s := New(Config{Version: v, Policy: testPolicy(t), ClientAliasMax: 4})
			defer s.Release()
			step := func(in, wantFwd, wantBack []byte) {
				t.Helper()
				fwd, back, err := s.Filter(FromBroker, in, nil, nil)
				if err != nil || !bytes.Equal(fwd, wantFwd) || !bytes.Equal(back, wantBack) {
					t.Fatalf("% X: fwd % X, back % X, %v; want fwd % X, back % X", in, fwd, back, err, wantFwd, wantBack)
				}
			}
			step(connack(v), connack(v), nil)
			allowed := publish(v, pub{topic: "jobs/1", qos: 1, id: 7})
			step(allowed, allowed, nil)
			step(publish(v, pub{topic: "secret/x"}), nil, nil)
			step(publish(v, pub{topic: "secret/x", qos: 1, id: 8}), nil, ack(v, 0x40, 8, 0x87))
			step(publish(v, pub{topic: "secret/x", qos: 2, id: 9}), nil, ack(v, 0x50, 9, 0x87))
			if v == v3 {
				step(publish(v, pub{topic: "secret/x", qos: 2, id: 9, dup: true}), nil, ack(v, 0x50, 9, 0))
				step(ack(v, 0x62, 9, 0), nil, ack(v, 0x70, 9, 0))
			}
			other := ack(v, 0x62, 10, 0) // a PUBREL of a delivery the client got
			step(other, other, nil)
			if v == v5 {
				step(publish(v, pub{topic: "secret/x", alias: 1}), nil, nil)
				step(publish(v, pub{topic: "jobs/2", alias: 1}), publish(v, pub{topic: "jobs/2", alias: 1}), nil)
				step(publish(v, pub{topic: "secret/y", alias: 2}), nil, nil)
				step(publish(v, pub{alias: 2}), nil, nil) // still secret/y
				step(publish(v, pub{topic: "jobs/3", alias: 2}), publish(v, pub{topic: "jobs/3", alias: 2}), nil)
				step(publish(v, pub{alias: 2}), publish(v, pub{alias: 2}), nil)
			}
		})
	}
}

// BenchmarkFilterDeliveryStream is the per-packet cost of the broker's
// PUBLISHes to a framed subscriber, 64-byte payloads read 16 KiB at a
// time: "framed" without a policy (framing only, as before deliveries
// were judged), "judged" with one that allows them, one topic, and
// "judged, 16 topics" a topic per packet in turn, each asking the policy.
func BenchmarkFilterDeliveryStream(b *testing.B) {
	const n = 4096
	one := []string{"devices/dev-000001/telemetry"}
	var sixteen []string
	for i := range 16 {
		sixteen = append(sixteen, fmt.Sprint("devices/dev-000001/sensor/", i))
	}
	for _, version := range []byte{v3, v5} {
		for _, bc := range []struct {
			name   string
			topics []string
			policy bool
		}{
			{"framed", one, false},
			{"judged", one, true},
			{"judged, 16 topics", sixteen, true},
		} {
			reads := publishReads(version, bc.topics, 1, n)
			b.Run(fmt.Sprintf("%s/%s", versionName(version), bc.name), func(b *testing.B) {
				cfg := Config{Version: version}
				if bc.policy {
					cfg.Policy = fleetPolicy(b, "dev-000001")
				}
				s := New(cfg)
				defer s.Release()
				fwd, back := make([]byte, 0, readSize+1024), make([]byte, 0, 1024)
				var err error
				if fwd, back, err = s.Filter(FromBroker, connack(version), fwd, back); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for b.Loop() {
					for _, read := range reads {
						if fwd, back, err = s.Filter(FromBroker, read, fwd[:0], back[:0]); err != nil {
							b.Fatal(err)
						}
						if len(back) != 0 {
							b.Fatalf("deliveries answered: % X", back)
						}
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/packet")
			})
		}
	}
}
