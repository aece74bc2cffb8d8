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
