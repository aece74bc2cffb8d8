package filter

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// checkForwarded fails unless every PUBLISH and SUBSCRIBE filter in
// stream, what the broker got, is one the policy allows: PUBLISHes are
// judged by the topic the broker resolves, through the aliases it was
// sent. It returns the packets in the stream.
func checkForwarded(tb testing.TB, version byte, policy *acl.Policy, stream []byte) []packets.Frame {
	tb.Helper()
	f := packets.NewFramer(version, 0)
	defer f.Release()
	f.Feed(stream)
	brokerView := packets.TopicAliases{Max: 65535}
	var frames []packets.Frame
	for {
		fr, ok, err := f.Next()
		if err != nil {
			tb.Fatalf("the broker got a broken stream: %v", err)
		}
		if !ok {
			break
		}
		frames = append(frames, fr)
		switch fr.Type {
		case packets.TypePublish:
			var p packets.Publish
			if err := p.Decode(version, fr); err != nil {
				tb.Fatalf("the broker got a broken PUBLISH: %v\n% x", err, fr.Raw)
			}
			topic := p.Topic
			if version == v5 {
				if topic, err = brokerView.Resolve(&p); err != nil {
					tb.Fatalf("the broker got a PUBLISH it cannot resolve: %v\n% x", err, fr.Raw)
				}
			}
			if d := policy.Allow(acl.Request{Action: acl.Publish, Topic: string(topic), QoS: p.QoS, Retain: p.Retain}); !d.Allowed {
				tb.Fatalf("the broker got a denied PUBLISH to %q (QoS %d, retain %v): %s", topic, p.QoS, p.Retain, d)
			}
		case packets.TypeSubscribe:
			var sub packets.Subscribe
			if err := sub.Decode(version, fr); err != nil {
				tb.Fatalf("the broker got a broken SUBSCRIBE: %v", err)
			}
			for _, s := range sub.Subscriptions {
				if d := policy.Allow(acl.Request{Action: acl.Subscribe, Topic: string(s.Filter), QoS: s.QoS}); !d.Allowed {
					tb.Fatalf("the broker got a denied filter %q: %s", s.Filter, d)
				}
			}
		}
	}
	return frames
}

// TestFilterBothDirectionsConcurrently filters a client and its broker
// from two goroutines, as the engine does, under -race: the client
// publishes allowed and denied topics by topic aliases and subscribes with
// mixed filters, while the broker publishes to it and answers each
// SUBSCRIBE once the filter has forwarded it. Every read is cut at random.
func TestFilterBothDirectionsConcurrently(t *testing.T) {
	const rounds = 300
	policy := testPolicy(t)
	s := New(Config{Version: v5, Policy: policy})
	defer s.Release()

	connackDone := make(chan struct{})
	forwarded := make(chan uint16, rounds) // identifiers of SUBSCRIBEs the broker got
	type result struct {
		fwd, back []byte
		err       error
	}
	results := make(chan result, 2)
	feed := func(rng *rand.Rand, dir int, stream []byte, fwd, back []byte) ([]byte, []byte, error) {
		for len(stream) > 0 {
			n := 1 + rng.IntN(len(stream))
			var err error
			if fwd, back, err = s.Filter(dir, append([]byte(nil), stream[:n]...), fwd, back); err != nil {
				return fwd, back, err
			}
			stream = stream[n:]
		}
		return fwd, back, nil
	}

	go func() { // the client
		rng := rand.New(rand.NewPCG(1, 2))
		<-connackDone // a client uses aliases once it has the CONNACK
		var fwd, back []byte
		var err error
		for i := range rounds {
			id := uint16(2*i + 1)
			stream := cat(
				publish(v5, pub{topic: "ok/" + fmt.Sprint(i%3), alias: 1, payload: "a"}),
				publish(v5, pub{topic: "no/x", alias: 2, qos: 1, id: id}),
				publish(v5, pub{alias: 2, payload: "smuggled"}),
				publish(v5, pub{alias: 1, payload: "b"}),
				subscribe(v5, id+1, nil, filterQoS{"no/" + fmt.Sprint(i), 0}, filterQoS{"ok/#", 1}, filterQoS{"#", 0}),
			)
			if fwd, back, err = feed(rng, FromClient, stream, fwd, back); err != nil {
				break
			}
			forwarded <- id + 1
		}
		close(forwarded)
		results <- result{fwd, back, err}
	}()
	go func() { // the broker
		rng := rand.New(rand.NewPCG(3, 4))
		fwd, back, err := feed(rng, FromBroker, connackLimits(2, 0), nil, nil)
		close(connackDone)
		for id := range forwarded {
			if err != nil {
				continue
			}
			stream := cat(publish(v5, pub{topic: "ok/0", payload: "to the client"}), suback(v5, id, 1), unhex("d0 00"))
			fwd, back, err = feed(rng, FromBroker, stream, fwd, back)
		}
		results <- result{fwd, back, err}
	}()

	var toBroker, toClient, answers []byte
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatalf("the session ended: %v", r.err)
		}
		if len(r.fwd) > 0 && r.fwd[0]>>4 == byte(packets.TypeConnack) {
			toClient = r.fwd
			if len(r.back) != 0 {
				t.Errorf("the proxy wrote % x to the broker", r.back)
			}
		} else {
			toBroker, answers = r.fwd, r.back
		}
	}

	frames := checkForwarded(t, v5, policy, toBroker)
	if want := rounds * 3; len(frames) != want {
		t.Errorf("the broker got %d packets, want %d", len(frames), want)
	}
	var wantAnswers, wantToClient []byte
	wantToClient = connackLimits(2, 0)
	for i := range rounds {
		id := uint16(2*i + 1)
		wantAnswers = append(wantAnswers, ack(v5, 0x40, id, 0x87)...)
		wantToClient = cat(wantToClient, publish(v5, pub{topic: "ok/0", payload: "to the client"}), suback(v5, id+1, 0x87, 1, 0x87), unhex("d0 00"))
	}
	if !bytes.Equal(answers, wantAnswers) {
		t.Errorf("the client's answers\n got % x\nwant % x", answers, wantAnswers)
	}
	if !bytes.Equal(toClient, wantToClient) {
		t.Errorf("what the client got differs from what the broker sent with its SUBACKs expanded")
	}
	if s.pendingSubacks.Load() != 0 || s.subacks != nil {
		t.Errorf("%d SUBACKs still awaited", s.pendingSubacks.Load())
	}
}

// TestFilterRefusalsAwaitingSubacksAreCapped: a client that keeps more
// SUBSCRIBEs with refused filters waiting for their SUBACK than its budget
// (its packet limit, at least minPendingBudget) holds ends its session
// with quota exceeded, rather than growing the proxy's memory.
func TestFilterRefusalsAwaitingSubacksAreCapped(t *testing.T) {
	for _, v := range []byte{v3, v5} {
		t.Run(versionName(v), func(t *testing.T) {
			s := New(Config{Version: v, Policy: testPolicy(t), MaxPacketSize: [2]int{1024, 1024}})
			defer s.Release()
			fits := minPendingBudget / (pendingEntryCost + 8) // one word of bits each
			for id := 1; id <= fits; id++ {
				fwd, _, err := s.Filter(FromClient, subscribe(v, uint16(id), nil, filterQoS{"ok/a", 0}, filterQoS{"no", 0}), nil, nil)
				if err != nil {
					t.Fatalf("SUBSCRIBE %d of %d within the budget: %v", id, fits, err)
				}
				if want := subscribe(v, uint16(id), nil, filterQoS{"ok/a", 0}); !bytes.Equal(fwd, want) {
					t.Fatalf("fwd % x, want % x", fwd, want)
				}
			}
			_, _, err := s.Filter(FromClient, subscribe(v, uint16(fits+1), nil, filterQoS{"ok/a", 0}, filterQoS{"no", 0}), nil, nil)
			var end *End
			if !errors.As(err, &end) || end.Code != packets.QuotaExceeded || end.Reason != "quota_exceeded" {
				t.Fatalf("one more: err = %v, want an End with quota exceeded", err)
			}
			if want := disconnect(v, 0x97); !bytes.Equal(end.ToClient, want) {
				t.Errorf("ToClient % x, want % x", end.ToClient, want)
			}
			if !strings.Contains(err.Error(), "awaiting their SUBACK") {
				t.Errorf("error %q does not say why", err)
			}
		})
	}
}

// TestDisconnect checks the packets the proxy ends a session with.
func TestDisconnect(t *testing.T) {
	for _, tc := range []struct {
		version byte
		code    packets.ReasonCode
		want    []byte
	}{
		{v5, packets.ServerShuttingDown, unhex("e0 02 8b 00")},
		{v5, packets.MaximumConnectTime, unhex("e0 02 a0 00")},
		{v5, packets.AdministrativeAction, unhex("e0 02 98 00")},
		{v5, packets.NotAuthorized, unhex("e0 02 87 00")},
		{v5, packets.Success, unhex("e0 00")},
		{v5, packets.GrantedQoS1, unhex("e0 02 80 00")}, // no DISCONNECT code
		{v3, packets.ServerShuttingDown, nil},
		{packets.ProtocolV31, packets.NotAuthorized, nil},
	} {
		if got := Disconnect(tc.version, tc.code); !bytes.Equal(got, tc.want) {
			t.Errorf("Disconnect(%d, %v) = % x, want % x", tc.version, tc.code, got, tc.want)
		}
	}
}
