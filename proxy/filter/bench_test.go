package filter

import (
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
)

// readSize is what one read of the engine takes at most.
const readSize = 16 << 10

// fleetPolicy is a realistic policy: a fleet's configured rules with a
// placeholder, compiled for one device, as the proxy compiles it at
// CONNECT.
func fleetPolicy(tb testing.TB, clientID string) *acl.Policy {
	tb.Helper()
	cfg, err := acl.New([]acl.Rule{
		{Permission: acl.Deny, Action: acl.Publish, Topics: []string{"devices/+/config"}},
		{Permission: acl.Allow, Action: acl.All, Topics: []string{"devices/${clientid}/#"}},
		{Permission: acl.Allow, Action: acl.Subscribe, Topics: []string{"eq firmware/#", "firmware/latest"}, QoS: []byte{0, 1}},
	}, acl.Deny)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := cfg.Compile(acl.Client{Request: &authn.Request{ClientID: clientID}})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// publishReads is n PUBLISHes at qos with 64-byte payloads to topics in
// turn, cut into reads of readSize, so that a packet is split at the end
// of each.
func publishReads(version byte, topics []string, qos byte, n int) [][]byte {
	var stream []byte
	for i := range n {
		id := uint16(0)
		if qos > 0 {
			id = uint16(i%65535) + 1
		}
		stream = append(stream, publish(version, pub{topic: topics[i%len(topics)], qos: qos, id: id, payload: string(make([]byte, 64))})...)
	}
	var reads [][]byte
	for off := 0; off < len(stream); off += readSize {
		reads = append(reads, stream[off:min(off+readSize, len(stream))])
	}
	return reads
}

// BenchmarkFilterPublishStream is the per-packet cost of a framed session
// carrying the pub/sub load of the side-by-side benchmark: PUBLISHes with
// 64-byte payloads, read 16 KiB at a time, through Filter with a policy
// that allows them and a decision hook that counts, as the metrics do.
// "copy" is the floor of any user-space relay, moving each read once;
// "framed" a session without a policy; "allowed" one topic, as a device
// sends its telemetry; "allowed, 16 topics" a topic per packet in turn, so
// that every PUBLISH asks the policy.
func BenchmarkFilterPublishStream(b *testing.B) {
	const packets = 4096
	one := []string{"devices/dev-000001/telemetry"}
	var sixteen []string
	for i := range 16 {
		sixteen = append(sixteen, "devices/dev-000001/sensor/"+strconv.Itoa(i))
	}
	for _, version := range []byte{v3, v5} {
		var count atomic.Int64
		counting := func(acl.Action, []byte, acl.Decision) { count.Add(1) }
		for _, bc := range []struct {
			name   string
			topics []string
			cfg    *Config // nil: copy only
		}{
			{"copy", one, nil},
			{"framed", one, &Config{Version: version}},
			{"allowed", one, &Config{Version: version, Policy: fleetPolicy(b, "dev-000001"), OnDecision: counting}},
			{"allowed, 16 topics", sixteen, &Config{Version: version, Policy: fleetPolicy(b, "dev-000001"), OnDecision: counting}},
		} {
			reads := publishReads(version, bc.topics, 1, packets)
			b.Run(fmt.Sprintf("%s/%s", versionName(version), bc.name), func(b *testing.B) {
				fwd, back := make([]byte, 0, readSize+1024), make([]byte, 0, 1024)
				var s *Session
				if bc.cfg != nil {
					s = New(*bc.cfg)
					defer s.Release()
				}
				b.ReportAllocs()
				for b.Loop() {
					for _, read := range reads {
						if s == nil {
							fwd = append(fwd[:0], read...)
							continue
						}
						var err error
						if fwd, back, err = s.Filter(FromClient, read, fwd[:0], back[:0]); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*packets), "ns/packet")
			})
		}
	}
}

// BenchmarkFilterDenied is the cost of a denied QoS 1 PUBLISH: dropped and
// answered with PUBACK.
func BenchmarkFilterDenied(b *testing.B) {
	const packets = 4096
	for _, version := range []byte{v3, v5} {
		reads := publishReads(version, []string{"devices/dev-000002/telemetry"}, 1, packets)
		b.Run(versionName(version), func(b *testing.B) {
			s := New(Config{Version: version, Policy: fleetPolicy(b, "dev-000001")})
			defer s.Release()
			fwd, back := make([]byte, 0, readSize+1024), make([]byte, 0, readSize)
			b.ReportAllocs()
			for b.Loop() {
				for _, read := range reads {
					var err error
					if fwd, back, err = s.Filter(FromClient, read, fwd[:0], back[:0]); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*packets), "ns/packet")
		})
	}
}

// BenchmarkIdleSession reports the heap an idle session holds, with the
// fleet's policy compiled for its device: the filter alone (B/session)
// and with its policy (B/session+policy). Each session has filtered its
// CONNACK, a SUBSCRIBE with a refused filter and its SUBACK, and
// PUBLISHes with a topic alias, one of them split across reads: the state
// it keeps between packets.
func BenchmarkIdleSession(b *testing.B) {
	const n = 10_000
	for _, version := range []byte{v3, v5} {
		b.Run(versionName(version), func(b *testing.B) {
			var perSession, perSessionAndPolicy float64
			for b.Loop() {
				perSession, perSessionAndPolicy = idleSessionBytes(b, version, n)
			}
			b.ReportMetric(perSession, "B/session")
			b.ReportMetric(perSessionAndPolicy, "B/session+policy")
		})
	}
}

// idleSessionBytes makes n idle sessions and returns the heap each holds,
// without and with its policy.
func idleSessionBytes(tb testing.TB, version byte, n int) (perSession, perSessionAndPolicy float64) {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "dev-" + strconv.Itoa(100000+i)
	}
	var connackIn []byte
	if version == v5 {
		connackIn = connackLimits(10, 0)
	} else {
		connackIn = connack(v3)
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	start := heap()
	policies := make([]*acl.Policy, n)
	for i := range policies {
		policies[i] = fleetPolicy(tb, ids[i])
	}
	withPolicies := heap()
	sessions := make([]*Session, n)
	fwd, back := make([]byte, 0, 4096), make([]byte, 0, 4096)
	for i := range sessions {
		s := New(Config{Version: version, Policy: policies[i], MaxPacketSize: [2]int{1 << 20, 1 << 20}})
		own := "devices/" + ids[i] + "/telemetry"
		stream := cat(
			subscribe(version, 1, nil, filterQoS{"devices/" + ids[i] + "/cmd/#", 1}, filterQoS{"firmware/#", 0}),
			publish(version, pub{topic: own, alias: aliasIf(version, 1), payload: "20.5"}),
			publish(version, pub{topic: own, alias: aliasIf(version, 1), qos: 1, id: 2, payload: "20.6"}),
		)
		for _, st := range []struct {
			dir int
			in  []byte
		}{
			{FromBroker, connackIn},
			{FromClient, stream[:len(stream)-3]},
			{FromClient, stream[len(stream)-3:]},
			{FromBroker, suback(version, 1, 1)},
		} {
			var err error
			if fwd, back, err = s.Filter(st.dir, st.in, fwd[:0], back[:0]); err != nil {
				tb.Fatal(err)
			}
		}
		sessions[i] = s
	}
	end := heap()
	runtime.KeepAlive(sessions)
	runtime.KeepAlive(policies)
	return float64(end-withPolicies) / float64(n), float64(end-start) / float64(n)
}

func aliasIf(version byte, alias uint16) uint16 {
	if version == v5 {
		return alias
	}
	return 0
}
