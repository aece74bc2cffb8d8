package filter_test

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/filter"
)

func ExampleSession_Filter() {
	cfg, err := acl.New([]acl.Rule{
		{Permission: acl.Allow, Action: acl.All, Topics: []string{"devices/${clientid}/#"}},
	}, acl.Deny)
	if err != nil {
		panic(err)
	}
	policy, err := cfg.Compile(acl.Client{Request: &authn.Request{ClientID: "c1"}})
	if err != nil {
		panic(err)
	}
	s := filter.New(filter.Config{
		Version: packets.ProtocolV5,
		Policy:  policy,
		OnDecision: func(action acl.Action, topic []byte, d acl.Decision) {
			fmt.Printf("%s %s: %s\n", action, topic, d)
		},
	})
	defer s.Release()

	// An MQTT 5 client's read: a PUBLISH to "devices/c1/t", then a QoS 1
	// PUBLISH to "t" with packet identifier 1; each with payload "x".
	read, _ := hex.DecodeString("3010" + "000c646576696365732f63312f74" + "00" + "78" +
		"3207" + "000174" + "0001" + "00" + "78")
	fwd, back, err := s.Filter(filter.FromClient, read, nil, nil)
	fmt.Printf("to the broker: % x\nto the client: % x\nerr: %v\n", fwd, back, err)

	// With deny_action disconnect, the same PUBLISH ends the session.
	s2 := filter.New(filter.Config{Version: packets.ProtocolV5, Policy: policy, DisconnectOnDeny: true})
	defer s2.Release()
	_, _, err = s2.Filter(filter.FromClient, read, nil, nil)
	var end *filter.End
	if errors.As(err, &end) {
		fmt.Printf("ended: %s, then write % x and close\n", end.Reason, end.ToClient)
	}
	// Output:
	// publish devices/c1/t: allow: config rule 0: allow all "devices/${clientid}/#" (for this client: "devices/c1/#")
	// publish t: deny: no rule applies (no_match: deny)
	// to the broker: 30 10 00 0c 64 65 76 69 63 65 73 2f 63 31 2f 74 00 78
	// to the client: 40 03 00 01 87
	// err: <nil>
	// ended: not_authorized, then write e0 02 87 00 and close
}

// printLink stands for an engine's Link: it would queue b for the client,
// or end the link.
type printLink struct{}

func (printLink) ToClient(b []byte)   { fmt.Printf("later, to the client: % x\n", b) }
func (printLink) End(end *filter.End) { fmt.Printf("later, the end: %s\n", end.Reason) }

func ExampleConfig_reauthenticate() {
	rules := func(topic string) *acl.Policy {
		cfg, err := acl.New([]acl.Rule{{Permission: acl.Allow, Action: acl.All, Topics: []string{topic}}}, acl.Deny)
		if err != nil {
			panic(err)
		}
		p, err := cfg.Compile(acl.Client{})
		if err != nil {
			panic(err)
		}
		return p
	}
	s := filter.New(filter.Config{
		Version:    packets.ProtocolV5,
		Policy:     rules("old/#"),
		AuthMethod: "JWT",
		// A token verified before is at hand: the answer comes at once,
		// in the Filter call's outputs. Otherwise the hook starts the
		// verification and returns, and the answer goes through the Link.
		Reauthenticate: func(token []byte, answer func(filter.Reauth)) {
			if string(token) != "a fresh token" {
				answer(filter.Reauth{Err: errors.New("bad_signature")})
				return
			}
			answer(filter.Reauth{Policy: rules("new/#")})
		},
		Link: printLink{}, // the engine's, for answers that come later
	})
	defer s.Release()

	// The broker's CONNACK, with no properties, reaches the client with
	// the method the client authenticated under.
	connack, _ := hex.DecodeString("2003000000")
	fwd, _, _ := s.Filter(filter.FromBroker, connack, nil, nil)
	fmt.Printf("CONNACK to the client: % x\n", fwd)

	// AUTH 0x19 under "JWT" with "a fresh token", then a PUBLISH to
	// "new/t", which the new token's rules allow.
	read, _ := hex.DecodeString("f018" + "19" + "16" + "1500034a5754" + "16000d" + hex.EncodeToString([]byte("a fresh token")) +
		"3008" + "00056e65772f74" + "00")
	fwd, back, err := s.Filter(filter.FromClient, read, nil, nil)
	fmt.Printf("to the broker: % x\nto the client: % x\nerr: %v\n", fwd, back, err)
	// Output:
	// CONNACK to the client: 20 09 00 00 06 15 00 03 4a 57 54
	// to the broker: 30 08 00 05 6e 65 77 2f 74 00
	// to the client: f0 08 00 06 15 00 03 4a 57 54
	// err: <nil>
}
