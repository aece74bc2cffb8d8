package filter

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// TestR3AliasTableBoundedByPacketCap: an MQTT 5 client whose broker
// announced a large Topic Alias Maximum (EMQX's default is 65,535) sets
// aliases on denied PUBLISHes, which the broker never sees, each with a
// long topic: the session keeps a copy of every topic, so one connection
// makes the proxy hold far more than its hard cap, max_packet_size (here
// 1,000 aliases of 60 KB: about 60 MB; all 65,535 would be 4 GB).
func TestR3AliasTableBoundedByPacketCap(t *testing.T) {
	const maxPacket = 64<<10 + 64
	s := New(Config{Version: v5, Policy: testPolicy(t), MaxPacketSize: [2]int{maxPacket, maxPacket}})
	defer s.Release()
	if _, _, err := s.Filter(FromBroker, connackLimits(65535, 0), nil, nil); err != nil {
		t.Fatal(err)
	}
	long := "denied/" + strings.Repeat("x", 60000) + "/"
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var fwd, back []byte
	for alias := uint16(1); alias <= 1000; alias++ {
		var err error
		fwd, back, err = s.Filter(FromClient, publish(v5, pub{topic: fmt.Sprint(long, alias), alias: alias}), fwd[:0], back[:0])
		if err != nil || len(fwd) != 0 {
			t.Fatalf("alias %d: forwarded %d bytes, %v; want a denied QoS 0 PUBLISH dropped", alias, len(fwd), err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	if held := int64(after.HeapAlloc) - int64(before.HeapAlloc); held > 8*maxPacket {
		t.Fatalf("one session holds %.1f MB after denied PUBLISHes that set topic aliases; its hard cap, max_packet_size, is %d bytes", float64(held)/1e6, maxPacket)
	}
}

// TestR3SubscribeManyFiltersAmplification: one SUBSCRIBE at the packet
// cap (1 MiB) made of the shortest filters, all denied, makes the filter
// allocate about ten times the cap for that one packet (a Subscription of
// 32 bytes per 4-byte filter, plus the flags and indexes), and a client
// may send one after another on each of its connections.
func TestR3SubscribeManyFiltersAmplification(t *testing.T) {
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

// TestR3PendingSubacksBeyondPacketCap: a client that does not read (so
// that the broker's SUBACKs wait behind it) pipelines 65,535 SUBSCRIBEs of
// one allowed and one denied filter, about 1 MB in all: the session holds
// a pending SUBACK for each, several times max_packet_size, for as long
// as the client likes.
func TestR3PendingSubacksBeyondPacketCap(t *testing.T) {
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
	for id := 1; id <= 65535; id++ {
		var err error
		in := subscribe(v5, uint16(id), nil, filterQoS{filter: "ok/a"}, filterQoS{filter: "d"})
		if fwd, back, err = s.Filter(FromClient, in, fwd[:0], back[:0]); err != nil {
			t.Fatalf("SUBSCRIBE %d: %v", id, err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	if held := int64(after.HeapAlloc) - int64(before.HeapAlloc); held > 2*maxPacket {
		t.Fatalf("one session holds %.1f MB of SUBSCRIBEs awaiting their SUBACK; its hard cap, max_packet_size, is %d bytes", float64(held)/1e6, maxPacket)
	}
}
