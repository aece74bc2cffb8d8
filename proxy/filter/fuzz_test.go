package filter

import (
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// fuzzPolicies are the policies FuzzFilter picks from.
var fuzzPolicies = [][]acl.Rule{
	testRules,
	{{Permission: acl.Allow, Action: acl.All, Topics: []string{"#"}}},
	{{Permission: acl.Deny, Action: acl.Publish, Topics: []string{"+/x"}}, {Permission: acl.Allow, Action: acl.All, Topics: []string{"#"}}},
	{{Permission: acl.Allow, Action: acl.Subscribe, Topics: []string{"eq a/#", "nothing"}}},
}

// Fuzz configuration bits.
const (
	fuzzV5 = 1 << iota
	fuzzDisconnect
	fuzzNoPolicy
	fuzzSmallPackets
	fuzzPolicyShift = 4      // two bits: the index in fuzzPolicies
	fuzzAuthMethod  = 1 << 6 // the client authenticated under the method "JWT"
)

// fuzzReauthenticate answers a re-authentication at once, keeping the
// session's rules (so that what the broker got can be judged by them), or
// refuses it, or never answers, by the token as testReauthenticate does.
func fuzzReauthenticate(token []byte, answer func(Reauth)) {
	switch string(token) {
	case tokenForged:
		answer(Reauth{Err: errForged})
	case tokenLater:
	default:
		answer(Reauth{})
	}
}

// FuzzFilter feeds a session random client and broker streams, cut into
// reads and interleaved as cuts says, under a random policy, its client
// authenticated under a method or not. Whatever the bytes: no panic; each
// call's outputs are whole packets; the broker never gets a PUBLISH or
// filter the policy denies, judged by the topic its own alias table
// resolves, nor, under a method, an AUTH; and the session's memory stays
// within its caps.
func FuzzFilter(f *testing.F) {
	for _, tc := range filterCases() {
		var client, broker, cuts []byte
		for _, st := range tc.steps {
			if st.dir == FromClient {
				client = append(client, st.in...)
			} else {
				broker = append(broker, st.in...)
			}
			cuts = append(cuts, byte(len(st.in)<<1|st.dir))
		}
		config := byte(0)
		if tc.version == v5 {
			config |= fuzzV5
		}
		if tc.disconnect {
			config |= fuzzDisconnect
		}
		if tc.noPolicy {
			config |= fuzzNoPolicy
		}
		if tc.authMethod != "" {
			config |= fuzzAuthMethod
		}
		f.Add(config, client, broker, cuts)
	}
	// Re-authentications cut across reads, between the broker's packets:
	// one answered, one refused.
	for _, token := range []string{tokenSame, tokenForged} {
		client := cat(auth(0x19, "JWT", []byte(token)), publish(v5, pub{topic: "ok/a", qos: 1, id: 1}))
		broker := cat(connack(v5), publish(v5, pub{topic: "ok/b"}), ack(v5, 0x40, 1, 0))
		f.Add(byte(fuzzV5|fuzzAuthMethod), client, broker, []byte{byte(len(connack(v5)))<<1 | FromBroker, 5 << 1, 40 << 1, 0<<1 | FromBroker})
	}
	f.Fuzz(func(t *testing.T, config byte, client, broker, cuts []byte) {
		version := byte(v3)
		if config&fuzzV5 != 0 {
			version = v5
		}
		cfg := Config{Version: version, DisconnectOnDeny: config&fuzzDisconnect != 0}
		if config&fuzzAuthMethod != 0 {
			cfg.AuthMethod, cfg.Reauthenticate, cfg.Link = "JWT", fuzzReauthenticate, noLink{t}
		}
		if config&fuzzSmallPackets != 0 {
			cfg.MaxPacketSize = [2]int{64, 48}
		}
		var policy *acl.Policy
		if config&fuzzNoPolicy == 0 {
			rules, err := acl.New(fuzzPolicies[config>>fuzzPolicyShift&3], acl.Deny)
			if err != nil {
				t.Fatal(err)
			}
			if policy, err = rules.Compile(acl.Client{}); err != nil {
				t.Fatal(err)
			}
			cfg.Policy = policy
		}
		s := New(cfg)
		defer s.Release()

		var toBroker []byte
		streams := [2][]byte{client, broker}
		for i := 0; len(streams[0])+len(streams[1]) > 0; i++ {
			// Each cut byte names a direction (its low bit) and a read
			// size; when the cuts run out, the rest goes in one read each.
			dir, n := i%2, len(streams[i%2])
			if i < len(cuts) {
				dir, n = int(cuts[i]&1), int(cuts[i]>>1)+1
			}
			n = min(n, len(streams[dir]))
			read := append([]byte(nil), streams[dir][:n]...)
			streams[dir] = streams[dir][n:]
			fwdBefore := len(toBroker)
			var fwd, back []byte
			if dir == FromClient {
				fwd = toBroker
			}
			fwd, back, err := s.Filter(dir, read, fwd, back)
			for j := range read {
				read[j] = 0xEE // the engine reuses its buffer
			}
			if dir == FromClient {
				checkWhole(t, version, fwd[fwdBefore:], "fwd to the broker")
				toBroker = fwd
			} else {
				checkWhole(t, version, fwd, "fwd to the client")
			}
			checkWhole(t, version, back, "back")
			checkCaps(t, s, cfg)
			if err != nil {
				if _, ok := err.(*End); !ok {
					t.Fatalf("error %T %v, want an *End", err, err)
				}
				break
			}
		}
		if policy != nil {
			checkForwarded(t, version, policy, toBroker)
		}
		if s.methodAuth != nil {
			checkNoAuth(t, version, toBroker)
		}
	})
}

// checkCaps fails when the session holds more than its limits allow.
func checkCaps(t *testing.T, s *Session, cfg Config) {
	t.Helper()
	for dir := range s.framers {
		limit := cfg.MaxPacketSize[dir]
		if limit == 0 {
			limit = packets.MaxPacketSize
		}
		if held := s.framers[dir].Buffered(); held > limit {
			t.Fatalf("direction %d holds %d bytes of a packet, limit %d", dir, held, limit)
		}
	}
	if s.pubrecs.n > 65535 || (s.pubrecs.n == 0) != (s.pubrecs.bits == nil) {
		t.Fatalf("%d QoS 2 exchanges held (%v)", s.pubrecs.n, s.pubrecs.bits != nil)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pendingBytes > s.pendingBudget || len(s.subacks) > 65535 {
		t.Fatalf("%d bytes in %d SUBACKs awaited, budget %d", s.pendingBytes, len(s.subacks), s.pendingBudget)
	}
	charged := 0
	for _, p := range s.subacks {
		charged += p.cost()
	}
	if charged != s.pendingBytes || int(s.pendingSubacks.Load()) != len(s.subacks) {
		t.Fatalf("the counts of awaited SUBACKs are off: %d bytes counted, %d held; %d SUBACKs counted, %d held",
			s.pendingBytes, charged, s.pendingSubacks.Load(), len(s.subacks))
	}
}
