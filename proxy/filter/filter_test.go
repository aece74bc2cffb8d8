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

// step is what one direction sends, whole packets, and what the filter
// must make of it: fwd for the direction's destination, back for its
// source.
type step struct {
	dir       int
	in        []byte
	fwd, back []byte
}

func fromClient(in, fwd, back []byte) step { return step{FromClient, in, fwd, back} }
func fromBroker(in, fwd []byte) step       { return step{FromBroker, in, fwd, nil} }

// filterCase is a session's traffic, step by step, under testRules
// (no_match deny) unless noPolicy.
type filterCase struct {
	name       string
	version    byte
	noPolicy   bool
	disconnect bool // deny_action: disconnect
	maxSize    [2]int
	// authMethod is the session's Authentication Method, its
	// re-authentications answered at once by testReauthenticate.
	authMethod string
	steps      []step
	// endCode is the code the last step ends the session with (the
	// client gets DISCONNECT with it in MQTT 5), and endReason its
	// Reason; 0 and "" when the session goes on.
	endCode   packets.ReasonCode
	endReason string
	// decisions are the policy's decisions, as "publish ok/a allow", in
	// order; nil is not checked.
	decisions []string
}

func versionName(v byte) string {
	switch v {
	case v5:
		return "mqttv5"
	case packets.ProtocolV31:
		return "mqttv31"
	}
	return "mqttv311"
}

// filterCases are the cases that run in every version (MQTT 3.1 as 3.1.1:
// the packets after CONNECT are the same), then those of one.
func filterCases() []filterCase {
	var cases []filterCase
	for _, v := range []byte{packets.ProtocolV31, v3, v5} {
		refusal := byte(0x80)
		if v == v5 {
			refusal = 0x87
		}
		for _, tc := range []filterCase{
			{
				name: "allowed publishes pass unchanged",
				steps: []step{
					fromBroker(connack(v), connack(v)),
					fromClient(cat(
						publish(v, pub{topic: "ok/a", payload: "hello"}),
						publish(v, pub{topic: "ok/b", qos: 1, id: 1}),
						publish(v, pub{topic: "ok/c", qos: 2, id: 2, retain: true}),
						publish(v, pub{topic: "r/t", qos: 1, id: 3}),
						publish(v, pub{topic: "q/t", qos: 1, id: 4, dup: true}),
					), cat(
						publish(v, pub{topic: "ok/a", payload: "hello"}),
						publish(v, pub{topic: "ok/b", qos: 1, id: 1}),
						publish(v, pub{topic: "ok/c", qos: 2, id: 2, retain: true}),
						publish(v, pub{topic: "r/t", qos: 1, id: 3}),
						publish(v, pub{topic: "q/t", qos: 1, id: 4, dup: true}),
					), nil),
					fromBroker(cat(ack(v, 0x40, 1, 0), ack(v, 0x50, 2, 0)), cat(ack(v, 0x40, 1, 0), ack(v, 0x50, 2, 0))),
				},
				decisions: []string{"publish ok/a allow", "publish ok/b allow", "publish ok/c allow", "publish r/t allow", "publish q/t allow"},
			},
			{
				name: "a denied QoS 0 PUBLISH is dropped",
				steps: []step{
					fromClient(cat(
						publish(v, pub{topic: "ok/a"}),
						publish(v, pub{topic: "no/x", payload: "secret"}),
						publish(v, pub{topic: "ok/b"}),
					), cat(publish(v, pub{topic: "ok/a"}), publish(v, pub{topic: "ok/b"})), nil),
				},
				decisions: []string{"publish ok/a allow", "publish no/x deny", "publish ok/b allow"},
			},
			{
				name: "a denied QoS 1 PUBLISH is answered PUBACK",
				steps: []step{
					fromClient(cat(publish(v, pub{topic: "no/x", qos: 1, id: 5}), publish(v, pub{topic: "ok/a", qos: 1, id: 6})),
						publish(v, pub{topic: "ok/a", qos: 1, id: 6}),
						ack(v, 0x40, 5, 0x87)),
					fromBroker(ack(v, 0x40, 6, 0), ack(v, 0x40, 6, 0)),
				},
			},
			{
				name: "the retain condition of a rule",
				steps: []step{
					fromClient(cat(publish(v, pub{topic: "r/t", qos: 1, id: 3, retain: true}), publish(v, pub{topic: "r/t", qos: 1, id: 4})),
						publish(v, pub{topic: "r/t", qos: 1, id: 4}),
						ack(v, 0x40, 3, 0x87)),
				},
				decisions: []string{"publish r/t deny", "publish r/t allow"},
			},
			{
				name: "the QoS condition of a rule",
				steps: []step{
					fromClient(cat(publish(v, pub{topic: "q/t", qos: 2, id: 4}), publish(v, pub{topic: "q/t", qos: 1, id: 5})),
						publish(v, pub{topic: "q/t", qos: 1, id: 5}),
						ack(v, 0x50, 4, 0x87)),
				},
				decisions: []string{"publish q/t deny", "publish q/t allow"},
			},
			{
				name: "a SUBSCRIBE with denied filters goes without them, and its SUBACK gets a refusal in each place",
				steps: []step{
					fromClient(subscribe(v, 10, nil,
						filterQoS{"ok/+", 1}, filterQoS{"no/x", 0}, filterQoS{"jobs/#", 2}, filterQoS{"a/#", 1}, filterQoS{"a/b", 0}),
						subscribe(v, 10, nil, filterQoS{"ok/+", 1}, filterQoS{"jobs/#", 2}, filterQoS{"a/#", 1}), nil),
					fromBroker(suback(v, 10, 1, 2, 1), suback(v, 10, 1, refusal, 2, 1, refusal)),
				},
				decisions: []string{"subscribe ok/+ allow", "subscribe no/x deny", "subscribe jobs/# allow", "subscribe a/# allow", "subscribe a/b deny"},
			},
			{
				name: "a SUBSCRIBE whose filters are all denied is answered by the proxy",
				steps: []step{
					fromClient(cat(subscribe(v, 11, nil, filterQoS{"no/x", 0}, filterQoS{"#", 1}), subscribe(v, 12, nil, filterQoS{"ok/#", 0})),
						subscribe(v, 12, nil, filterQoS{"ok/#", 0}),
						suback(v, 11, refusal, refusal)),
					fromBroker(suback(v, 12, 0), suback(v, 12, 0)),
				},
				decisions: []string{"subscribe no/x deny", "subscribe # deny", "subscribe ok/# allow"},
			},
			{
				name: "shared subscriptions are judged by their filter",
				steps: []step{
					fromClient(subscribe(v, 12, nil, filterQoS{"$share/g/jobs/+", 1}, filterQoS{"$share/g/no/x", 0}),
						subscribe(v, 12, nil, filterQoS{"$share/g/jobs/+", 1}), nil),
					fromBroker(suback(v, 12, 1), suback(v, 12, 1, refusal)),
				},
				decisions: []string{"subscribe $share/g/jobs/+ allow", "subscribe $share/g/no/x deny"},
			},
			{
				name: "eq names one filter literally",
				steps: []step{
					fromClient(subscribe(v, 13, nil, filterQoS{"a/b", 0}, filterQoS{"a/#", 0}),
						subscribe(v, 13, nil, filterQoS{"a/#", 0}), nil),
					fromBroker(suback(v, 13, 0), suback(v, 13, refusal, 0)),
				},
				decisions: []string{"subscribe a/b deny", "subscribe a/# allow"},
			},
			{
				name: "SUBACKs of other SUBSCRIBEs pass while one is awaited",
				steps: []step{
					fromClient(cat(subscribe(v, 1, nil, filterQoS{"ok/a", 0}), subscribe(v, 2, nil, filterQoS{"no/x", 0}, filterQoS{"ok/b", 1})),
						cat(subscribe(v, 1, nil, filterQoS{"ok/a", 0}), subscribe(v, 2, nil, filterQoS{"ok/b", 1})), nil),
					fromBroker(suback(v, 1, 0), suback(v, 1, 0)),
					fromBroker(cat(suback(v, 2, 1), suback(v, 3, 0)), cat(suback(v, 2, refusal, 1), suback(v, 3, 0))),
				},
			},
			{
				name: "UNSUBSCRIBE, PINGREQ and DISCONNECT pass",
				steps: []step{
					fromClient(cat(unsubscribe(v, 7, "no/x", "ok/#"), unhex("c0 00 e0 00")), cat(unsubscribe(v, 7, "no/x", "ok/#"), unhex("c0 00 e0 00")), nil),
					fromBroker(unhex("b0 02 0007 d0 00"), unhex("b0 02 0007 d0 00")),
				},
				decisions: []string{},
			},
			{
				name:     "without a policy the session is only framed",
				noPolicy: true,
				steps: []step{
					fromClient(cat(publish(v, pub{topic: "no/x", qos: 1, id: 1}), subscribe(v, 2, nil, filterQoS{"#", 0})),
						cat(publish(v, pub{topic: "no/x", qos: 1, id: 1}), subscribe(v, 2, nil, filterQoS{"#", 0})), nil),
					fromBroker(suback(v, 2, 0), suback(v, 2, 0)),
				},
			},
			{
				name:     "without a policy a reserved packet type still ends the session",
				noPolicy: true,
				steps: []step{
					fromClient(cat(publish(v, pub{topic: "no/x"}), unhex("00 00"), publish(v, pub{topic: "no/y"})), publish(v, pub{topic: "no/x"}), nil),
				},
				endCode: packets.MalformedPacket, endReason: "malformed_packet",
			},
			{
				name:       "deny_action disconnect ends the session at a denied PUBLISH",
				disconnect: true,
				steps: []step{
					fromClient(cat(publish(v, pub{topic: "ok/a"}), publish(v, pub{topic: "no/x", qos: 1, id: 2}), publish(v, pub{topic: "ok/b"})),
						publish(v, pub{topic: "ok/a"}), nil),
				},
				endCode: packets.NotAuthorized, endReason: "not_authorized",
				decisions: []string{"publish ok/a allow", "publish no/x deny"},
			},
			{
				name:       "deny_action disconnect ends the session at a denied filter",
				disconnect: true,
				steps: []step{
					fromClient(cat(subscribe(v, 3, nil, filterQoS{"ok/a", 0}), subscribe(v, 4, nil, filterQoS{"ok/b", 0}, filterQoS{"no/x", 0})),
						subscribe(v, 3, nil, filterQoS{"ok/a", 0}), nil),
				},
				endCode: packets.NotAuthorized, endReason: "not_authorized",
				decisions: []string{"subscribe ok/a allow", "subscribe ok/b allow", "subscribe no/x deny"},
			},
			{
				name: "a SUBSCRIBE reusing the identifier of an awaited SUBACK",
				steps: []step{
					fromClient(subscribe(v, 10, nil, filterQoS{"ok/a", 0}, filterQoS{"no/x", 0}), subscribe(v, 10, nil, filterQoS{"ok/a", 0}), nil),
					fromClient(subscribe(v, 10, nil, filterQoS{"ok/b", 0}), nil, nil),
				},
				endCode: packets.ProtocolError, endReason: "protocol_error",
			},
			{
				name: "a PUBLISH reusing the identifier of an awaited SUBACK",
				steps: []step{
					fromClient(subscribe(v, 10, nil, filterQoS{"ok/a", 0}, filterQoS{"no/x", 0}), subscribe(v, 10, nil, filterQoS{"ok/a", 0}), nil),
					fromClient(publish(v, pub{topic: "ok/a", qos: 1, id: 10}), nil, nil),
				},
				endCode: packets.ProtocolError, endReason: "protocol_error",
			},
			{
				name: "an UNSUBSCRIBE reusing the identifier of an awaited SUBACK",
				steps: []step{
					fromClient(subscribe(v, 10, nil, filterQoS{"ok/a", 0}, filterQoS{"no/x", 0}), subscribe(v, 10, nil, filterQoS{"ok/a", 0}), nil),
					fromClient(unsubscribe(v, 10, "ok/a"), nil, nil),
				},
				endCode: packets.ProtocolError, endReason: "protocol_error",
			},
			{
				name: "an identifier is free again once its SUBACK passed",
				steps: []step{
					fromClient(subscribe(v, 10, nil, filterQoS{"ok/a", 0}, filterQoS{"no/x", 0}), subscribe(v, 10, nil, filterQoS{"ok/a", 0}), nil),
					fromBroker(suback(v, 10, 0), suback(v, 10, 0, refusal)),
					fromClient(publish(v, pub{topic: "ok/a", qos: 1, id: 10}), publish(v, pub{topic: "ok/a", qos: 1, id: 10}), nil),
				},
			},
			{
				name:    "a packet over the configured limit",
				maxSize: [2]int{20, 0},
				steps: []step{
					fromClient(cat(publish(v, pub{topic: "ok/a", payload: "0123456789"}), publish(v, pub{topic: "ok/a", payload: strings.Repeat("x", 20)})),
						publish(v, pub{topic: "ok/a", payload: "0123456789"}), nil),
				},
				endCode: packets.PacketTooLarge, endReason: "packet_too_large",
			},
			{
				name: "a PUBLISH topic that is not UTF-8",
				steps: []step{
					fromClient(publish(v, pub{topic: "ok/\xff"}), nil, nil),
				},
				endCode: packets.MalformedPacket, endReason: "malformed_packet",
			},
			{
				name: "a PUBLISH topic with a wildcard",
				steps: []step{
					fromClient(publish(v, pub{topic: "ok/#"}), nil, nil),
				},
				endCode: packets.ProtocolError, endReason: "protocol_error",
			},
			{
				name: "a QoS 1 PUBLISH with packet identifier 0",
				steps: []step{
					fromClient(publish(v, pub{topic: "ok/a", qos: 1, id: 0}), nil, nil),
				},
				endCode: packets.ProtocolError, endReason: "protocol_error",
			},
			{
				name: "a SUBSCRIBE with a broken filter",
				steps: []step{
					fromClient(subscribe(v, 1, nil, filterQoS{"ok/#/a", 0}), nil, nil),
				},
				endCode: packets.MalformedPacket, endReason: "malformed_packet",
			},
			{
				name: "a SUBSCRIBE without a filter",
				steps: []step{
					fromClient(subscribe(v, 1, nil), nil, nil),
				},
				endCode: packets.ProtocolError, endReason: "protocol_error",
			},
			{
				name: "an UNSUBSCRIBE cut short",
				steps: []step{
					fromClient(packet(0xA2, u16(1), []byte{0, 9, 'a'}), nil, nil),
				},
				endCode: packets.MalformedPacket, endReason: "malformed_packet",
			},
			{
				name: "a packet the client may not send",
				steps: []step{
					fromClient(cat(unhex("c0 00"), suback(v, 1, 0)), unhex("c0 00"), nil),
				},
				endCode: packets.ProtocolError, endReason: "protocol_error",
			},
			{
				name: "a packet the broker may not send",
				steps: []step{
					fromBroker(cat(unhex("d0 00"), subscribe(v, 1, nil, filterQoS{"a", 0})), unhex("d0 00")),
				},
				endCode: packets.UnspecifiedError, endReason: "broker_protocol_error",
			},
			{
				name:    "a broker packet over the configured limit",
				maxSize: [2]int{0, 20},
				steps: []step{
					fromBroker(publish(v, pub{topic: "t", payload: strings.Repeat("x", 20)}), nil),
				},
				endCode: packets.UnspecifiedError, endReason: "broker_packet_too_large",
			},
			{
				name: "a SUBACK with a code too few for the filters forwarded",
				steps: []step{
					fromClient(subscribe(v, 10, nil, filterQoS{"ok/a", 0}, filterQoS{"ok/b", 0}, filterQoS{"no/x", 0}),
						subscribe(v, 10, nil, filterQoS{"ok/a", 0}, filterQoS{"ok/b", 0}), nil),
					fromBroker(cat(unhex("d0 00"), suback(v, 10, 0)), unhex("d0 00")),
				},
				endCode: packets.UnspecifiedError, endReason: "broker_protocol_error",
			},
		} {
			tc.name = versionName(v) + "/" + tc.name
			tc.version = v
			cases = append(cases, tc)
		}
	}
	return append(cases, versionCases()...)
}

// versionCases are the cases of one version: MQTT 3's QoS 2 exchange, MQTT
// 5's topic aliases, properties and limits.
func versionCases() []filterCase {
	return []filterCase{
		{
			name:    "mqttv5/a denied QoS 2 PUBLISH is answered PUBREC 0x87, which ends the exchange",
			version: v5,
			steps: []step{
				fromClient(publish(v5, pub{topic: "no/x", qos: 2, id: 6}), nil, unhex("50 03 0006 87")),
				// A client that sends PUBREL all the same: the broker
				// answers it (packet identifier not found).
				fromClient(unhex("62 02 0006"), unhex("62 02 0006"), nil),
			},
		},
		{
			name:    "mqttv5/answers byte for byte",
			version: v5,
			steps: []step{
				fromClient(cat(publish(v5, pub{topic: "no/x", qos: 1, id: 0x0102}), subscribe(v5, 0x0304, nil, filterQoS{"no/x", 2})),
					nil, unhex("40 03 0102 87", "90 04 0304 00 87")),
			},
		},
		{
			name:    "mqttv311/answers byte for byte",
			version: v3,
			steps: []step{
				fromClient(cat(publish(v3, pub{topic: "no/x", qos: 1, id: 0x0102}), subscribe(v3, 0x0304, nil, filterQoS{"no/x", 2}), publish(v3, pub{topic: "no/x", qos: 2, id: 9})),
					nil, unhex("40 02 0102", "90 03 0304 80", "50 02 0009")),
				fromClient(unhex("62 02 0009"), nil, unhex("70 02 0009")),
			},
		},
		{
			name:    "mqttv311/a denied QoS 2 PUBLISH is answered PUBREC, and its PUBREL PUBCOMP",
			version: v3,
			steps: []step{
				fromClient(cat(publish(v3, pub{topic: "no/x", qos: 2, id: 6}), publish(v3, pub{topic: "ok/a", qos: 2, id: 7})),
					publish(v3, pub{topic: "ok/a", qos: 2, id: 7}), unhex("50 02 0006")),
				// The denied PUBLISH again, before its PUBREL: PUBREC again,
				// not judged again.
				fromClient(publish(v3, pub{topic: "no/x", qos: 2, id: 6, dup: true}), nil, unhex("50 02 0006")),
				fromBroker(unhex("50 02 0007"), unhex("50 02 0007")),
				// The broker's exchange's PUBREL passes; the proxy's is
				// answered; a second one for 6 is no longer the proxy's.
				fromClient(cat(unhex("62 02 0007"), unhex("62 02 0006")), unhex("62 02 0007"), unhex("70 02 0006")),
				fromClient(unhex("62 02 0006"), unhex("62 02 0006"), nil),
				// The identifier is free again.
				fromClient(publish(v3, pub{topic: "ok/a", qos: 1, id: 6}), publish(v3, pub{topic: "ok/a", qos: 1, id: 6}), nil),
			},
			decisions: []string{"publish no/x deny", "publish ok/a allow", "publish ok/a allow"},
		},
		{
			name:    "mqttv311/a SUBSCRIBE reusing the identifier of a QoS 2 exchange the proxy answers",
			version: v3,
			steps: []step{
				fromClient(publish(v3, pub{topic: "no/x", qos: 2, id: 6}), nil, unhex("50 02 0006")),
				fromClient(subscribe(v3, 6, nil, filterQoS{"ok/a", 0}), nil, nil),
			},
			endCode: packets.ProtocolError, endReason: "protocol_error",
		},
		{
			name:    "mqttv311/a QoS 1 PUBLISH reusing the identifier of a QoS 2 exchange the proxy answers",
			version: v3,
			steps: []step{
				fromClient(publish(v3, pub{topic: "no/x", qos: 2, id: 6}), nil, unhex("50 02 0006")),
				fromClient(publish(v3, pub{topic: "ok/a", qos: 1, id: 6}), nil, nil),
			},
			endCode: packets.ProtocolError, endReason: "protocol_error",
		},
		{
			name:    "mqttv311/deny_action disconnect: no DISCONNECT in MQTT 3, and no PUBREC",
			version: v3, disconnect: true,
			steps: []step{
				fromClient(publish(v3, pub{topic: "no/x", qos: 2, id: 6}), nil, nil),
			},
			endCode: packets.NotAuthorized, endReason: "not_authorized",
		},
		{
			name:    "mqttv5/SUBSCRIBE properties are kept when filters are removed",
			version: v5,
			steps: []step{
				// Subscription Identifier 5 and a user property.
				fromClient(subscribe(v5, 20, props(0x0B, 0x05, 0x26, 0, 1, 'k', 0, 1, 'v'), filterQoS{"no/x", 0}, filterQoS{"ok/a", 1}),
					subscribe(v5, 20, props(0x0B, 0x05, 0x26, 0, 1, 'k', 0, 1, 'v'), filterQoS{"ok/a", 1}), nil),
				// The broker's reason string is kept too.
				fromBroker(packet(0x90, u16(20), props(0x1F, 0, 2, 'o', 'k'), []byte{1}),
					packet(0x90, u16(20), props(0x1F, 0, 2, 'o', 'k'), []byte{0x87, 1})),
			},
		},
		{
			name:    "mqttv5/subscription options are kept when filters are removed",
			version: v5,
			steps: []step{
				// No Local, Retain As Published, Retain Handling 2, QoS 1.
				fromClient(subscribe(v5, 21, nil, filterQoS{"ok/a", 0x2D}, filterQoS{"no/x", 0}),
					subscribe(v5, 21, nil, filterQoS{"ok/a", 0x2D}), nil),
			},
		},
		{
			name:    "mqttv5/topic aliases cannot smuggle a denied topic",
			version: v5,
			steps: []step{
				fromBroker(connackLimits(10, 0), connackLimits(10, 0)),
				fromClient(publish(v5, pub{topic: "ok/a", alias: 1, payload: "1"}), publish(v5, pub{topic: "ok/a", alias: 1, payload: "1"}), nil),
				// Alias 1 set to a denied topic: dropped, so the broker
				// still has alias 1 as ok/a...
				fromClient(publish(v5, pub{topic: "no/x", alias: 1, payload: "2"}), nil, nil),
				// ...but for the client it is no/x now: judged as no/x.
				fromClient(publish(v5, pub{alias: 1, qos: 1, id: 3, payload: "3"}), nil, unhex("40 03 0003 87")),
				fromClient(publish(v5, pub{alias: 1, payload: "4"}), nil, nil),
				// Set back to an allowed topic, it passes as sent.
				fromClient(cat(publish(v5, pub{topic: "ok/b", alias: 1, payload: "5"}), publish(v5, pub{alias: 1, payload: "6"})),
					cat(publish(v5, pub{topic: "ok/b", alias: 1, payload: "5"}), publish(v5, pub{alias: 1, payload: "6"})), nil),
			},
			decisions: []string{"publish ok/a allow", "publish no/x deny", "publish no/x deny", "publish no/x deny", "publish ok/b allow", "publish ok/b allow"},
		},
		{
			name:    "mqttv5/an alias set by a dropped PUBLISH carries its topic when a PUBLISH by it is forwarded",
			version: v5,
			steps: []step{
				fromBroker(connackLimits(10, 0), connackLimits(10, 0)),
				// r/t retained is denied, not retained allowed: the first
				// sets alias 2 and is dropped.
				fromClient(publish(v5, pub{topic: "r/t", alias: 2, retain: true, payload: "1"}), nil, nil),
				fromClient(publish(v5, pub{alias: 2, payload: "2"}), publish(v5, pub{topic: "r/t", alias: 2, payload: "2"}), nil),
				fromClient(publish(v5, pub{alias: 2, payload: "3"}), publish(v5, pub{alias: 2, payload: "3"}), nil),
			},
			decisions: []string{"publish r/t deny", "publish r/t allow", "publish r/t allow"},
		},
		{
			name:    "mqttv5/a PUBLISH by alias that its topic name written in makes too large for the broker",
			version: v5,
			steps: []step{
				fromBroker(connackLimits(10, 30), connackLimits(10, 30)),
				fromClient(publish(v5, pub{topic: "r/t", alias: 2, retain: true, payload: "1"}), nil, nil),
				// 30 bytes as sent, 35 with "r/t" written in.
				fromClient(publish(v5, pub{alias: 2, payload: strings.Repeat("x", 22)}), nil, nil),
			},
			endCode: packets.PacketTooLarge, endReason: "packet_too_large",
		},
		{
			name:    "mqttv5/a topic alias above the broker's maximum",
			version: v5,
			steps: []step{
				fromBroker(connackLimits(2, 0), connackLimits(2, 0)),
				fromClient(publish(v5, pub{topic: "ok/a", alias: 3}), nil, nil),
			},
			endCode: packets.TopicAliasInvalid, endReason: "topic_alias_invalid",
		},
		{
			name:    "mqttv5/a topic alias before the broker's CONNACK",
			version: v5,
			steps: []step{
				fromClient(publish(v5, pub{topic: "ok/a", alias: 1}), nil, nil),
			},
			endCode: packets.TopicAliasInvalid, endReason: "topic_alias_invalid",
		},
		{
			name:    "mqttv5/a topic alias never set",
			version: v5,
			steps: []step{
				fromBroker(connackLimits(10, 0), connackLimits(10, 0)),
				fromClient(publish(v5, pub{alias: 4}), nil, nil),
			},
			endCode: packets.ProtocolError, endReason: "protocol_error",
		},
		{
			name:    "mqttv5/a packet over the broker's Maximum Packet Size",
			version: v5,
			steps: []step{
				fromBroker(connackLimits(0, 30), connackLimits(0, 30)),
				fromClient(publish(v5, pub{topic: "ok/a", payload: strings.Repeat("x", 30-9)}), publish(v5, pub{topic: "ok/a", payload: strings.Repeat("x", 30-9)}), nil),
				fromClient(publish(v5, pub{topic: "ok/a", payload: strings.Repeat("x", 31-9)}), nil, nil),
			},
			endCode: packets.PacketTooLarge, endReason: "packet_too_large",
		},
		{
			name:    "mqttv5/the broker's CONNACK gets the client's Authentication Method",
			version: v5, authMethod: "JWT",
			steps: []step{
				// mosquitto's, with the method added in the encoder's
				// order of properties.
				fromBroker(unhex("20 09 00 00 06 22 000a 21 0014"), unhex("20 0f 00 00 0c 21 0014 22 000a 15 0003 4a5754")),
			},
		},
		{
			name:    "mqttv5/a refusing CONNACK passes without the method",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(unhex("20 03 00 87 00"), unhex("20 03 00 87 00")),
			},
		},
		{
			name:    "mqttv5/a re-authentication answered at once: AUTH success, and its rules for the next PUBLISH in the same read",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(connack(v5), connackMethod),
				// new/x denied, then allowed; ok/a allowed, then denied by
				// the same PUBLISH right after the AUTH: the decision the
				// read remembered is the old rules', not taken again.
				fromClient(cat(
					publish(v5, pub{topic: "new/x", qos: 1, id: 1}),
					publish(v5, pub{topic: "ok/a", qos: 1, id: 2}),
					auth(0x19, "JWT", []byte(tokenNewRules)),
					publish(v5, pub{topic: "ok/a", qos: 1, id: 3}),
					publish(v5, pub{topic: "new/x", qos: 1, id: 4}),
				), cat(
					publish(v5, pub{topic: "ok/a", qos: 1, id: 2}),
					publish(v5, pub{topic: "new/x", qos: 1, id: 4}),
				), cat(ack(v5, 0x40, 1, 0x87), authSuccess, ack(v5, 0x40, 3, 0x87))),
				// And again, keeping the rules.
				fromClient(cat(auth(0x19, "JWT", []byte(tokenSame)), subscribe(v5, 5, nil, filterQoS{"new/#", 0})),
					subscribe(v5, 5, nil, filterQoS{"new/#", 0}), authSuccess),
			},
			decisions: []string{"publish new/x deny", "publish ok/a allow", "publish ok/a deny", "publish new/x allow", "subscribe new/# allow"},
		},
		{
			name:    "mqttv5/a refused re-authentication ends the session with DISCONNECT 0x87",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(connack(v5), connackMethod),
				fromClient(cat(publish(v5, pub{topic: "ok/a"}), auth(0x19, "JWT", []byte(tokenForged)), publish(v5, pub{topic: "ok/b"})),
					publish(v5, pub{topic: "ok/a"}), nil),
			},
			endCode: packets.NotAuthorized, endReason: "not_authorized",
		},
		{
			name:    "mqttv5/an AUTH while a re-authentication awaits its answer",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(connack(v5), connackMethod),
				// The client's packets flow while the answer is awaited.
				fromClient(cat(auth(0x19, "JWT", []byte(tokenLater)), publish(v5, pub{topic: "ok/a"})), publish(v5, pub{topic: "ok/a"}), nil),
				fromClient(auth(0x19, "JWT", []byte(tokenSame)), nil, nil),
			},
			endCode: packets.ProtocolError, endReason: "protocol_error",
		},
		{
			name:    "mqttv5/an AUTH before the CONNACK",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromClient(auth(0x19, "JWT", []byte(tokenSame)), nil, nil),
			},
			endCode: packets.ProtocolError, endReason: "protocol_error",
		},
		{
			name:    "mqttv5/an AUTH continue the proxy did not ask for",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(connack(v5), connackMethod),
				fromClient(auth(0x18, "JWT", []byte(tokenSame)), nil, nil),
			},
			endCode: packets.ProtocolError, endReason: "protocol_error",
		},
		{
			name:    "mqttv5/an AUTH success from the client",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(connack(v5), connackMethod),
				fromClient(unhex("f0 00"), nil, nil),
			},
			endCode: packets.ProtocolError, endReason: "protocol_error",
		},
		{
			name:    "mqttv5/a re-authentication under another method",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(connack(v5), connackMethod),
				fromClient(auth(0x19, "SCRAM-SHA-1", []byte(tokenSame)), nil, nil),
			},
			endCode: packets.ProtocolError, endReason: "protocol_error",
		},
		{
			name:    "mqttv5/a broken AUTH",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(connack(v5), connackMethod),
				fromClient(unhex("f0 02 19 00"), nil, nil), // no method
			},
			endCode: packets.ProtocolError, endReason: "protocol_error",
		},
		{
			name:    "mqttv5/an AUTH from the broker of a session under a method",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(cat(connack(v5), auth(0x18, "JWT", nil)), connackMethod),
			},
			endCode: packets.UnspecifiedError, endReason: "broker_protocol_error",
		},
		{
			name:    "mqttv5/a CONNACK that names a method, to a session under one",
			version: v5, authMethod: "JWT",
			steps: []step{
				fromBroker(connackMethod, nil),
			},
			endCode: packets.UnspecifiedError, endReason: "broker_protocol_error",
		},
		{
			name:    "mqttv311/no method in MQTT 3",
			version: v3, authMethod: "JWT",
			steps: []step{
				fromBroker(connack(v3), connack(v3)),
			},
		},
		{
			// A session whose token came in the password: its AUTH is the
			// broker's to judge.
			name:    "mqttv5/AUTH passes",
			version: v5,
			steps: []step{
				// Re-authentication, method "JWT", data "t".
				fromClient(packet(0xF0, []byte{0x19}, props(0x15, 0, 3, 'J', 'W', 'T', 0x16, 0, 1, 't')),
					packet(0xF0, []byte{0x19}, props(0x15, 0, 3, 'J', 'W', 'T', 0x16, 0, 1, 't')), nil),
				fromBroker(packet(0xF0, []byte{0x00}, props(0x15, 0, 3, 'J', 'W', 'T')), packet(0xF0, []byte{0x00}, props(0x15, 0, 3, 'J', 'W', 'T'))),
			},
		},
		{
			name:    "mqttv5/a broken CONNACK",
			version: v5,
			steps: []step{
				// Property 0x01 (payload format) does not belong in a CONNACK.
				fromBroker(packet(0x20, []byte{0, 0}, props(0x01, 0x01)), nil),
			},
			endCode: packets.UnspecifiedError, endReason: "broker_malformed_packet",
		},
		{
			name:    "mqttv311/the CONNACK passes unread",
			version: v3,
			steps: []step{
				fromBroker(unhex("20 02 01 00"), unhex("20 02 01 00")),
			},
		},
	}
}

// splitter cuts step i's bytes into the reads the filter is called with.
type splitter func(i int, in []byte) [][]byte

func whole(_ int, in []byte) [][]byte { return [][]byte{in} }

// runCase runs tc, each step's bytes cut by split, and checks every call's
// output and the session's end.
func runCase(t *testing.T, tc filterCase, split splitter) {
	t.Helper()
	var decisions []string
	cfg := Config{
		Version:          tc.version,
		DisconnectOnDeny: tc.disconnect,
		MaxPacketSize:    tc.maxSize,
		AuthMethod:       tc.authMethod,
		Reauthenticate:   testReauthenticate(t),
		Link:             noLink{t},
		OnDecision: func(a acl.Action, topic []byte, d acl.Decision) {
			verdict := "deny"
			if d.Allowed {
				verdict = "allow"
			}
			decisions = append(decisions, fmt.Sprintf("%s %s %s", a, topic, verdict))
		},
	}
	if !tc.noPolicy {
		cfg.Policy = testPolicy(t)
	}
	s := New(cfg)
	defer s.Release()
	var err error
	for i, st := range tc.steps {
		var fwd, back []byte
		for _, chunk := range split(i, st.in) {
			// The engine's read buffer, scribbled over after the call: a
			// session that kept a reference to it would forward garbage.
			read := append([]byte(nil), chunk...)
			fwdBefore, backBefore := append([]byte(nil), fwd...), append([]byte(nil), back...)
			fwd, back, err = s.Filter(st.dir, read, fwd, back)
			for j := range read {
				read[j] = 0xEE
			}
			if !bytes.Equal(fwd[:min(len(fwd), len(fwdBefore))], fwdBefore) || !bytes.Equal(back[:min(len(back), len(backBefore))], backBefore) {
				t.Fatalf("step %d: the output before the call was changed", i)
			}
			if len(fwd) < len(fwdBefore) || len(back) < len(backBefore) {
				t.Fatalf("step %d: the output before the call was cut", i)
			}
			checkWhole(t, tc.version, fwd[len(fwdBefore):], fmt.Sprintf("step %d: a call's fwd", i))
			checkWhole(t, tc.version, back[len(backBefore):], fmt.Sprintf("step %d: a call's back", i))
			if err != nil {
				break
			}
		}
		if !bytes.Equal(fwd, st.fwd) {
			t.Errorf("step %d: fwd\n got % x\nwant % x", i, fwd, st.fwd)
		}
		if !bytes.Equal(back, st.back) {
			t.Errorf("step %d: back\n got % x\nwant % x", i, back, st.back)
		}
		if err != nil && i != len(tc.steps)-1 {
			t.Fatalf("step %d of %d ends the session: %v", i, len(tc.steps), err)
		}
	}
	switch {
	case tc.endCode == 0 && err != nil:
		t.Fatalf("the session ends: %v", err)
	case tc.endCode != 0:
		var end *End
		if !errors.As(err, &end) {
			t.Fatalf("err = %v, want an *End with %v", err, tc.endCode)
		}
		if end.Code != tc.endCode || end.Reason != tc.endReason {
			t.Errorf("End code %v reason %q, want %v %q (%v)", end.Code, end.Reason, tc.endCode, tc.endReason, err)
		}
		if want := disconnect(tc.version, byte(tc.endCode)); !bytes.Equal(end.ToClient, want) {
			t.Errorf("End.ToClient % x, want % x", end.ToClient, want)
		}
		if end.Err == nil || err.Error() == "" {
			t.Errorf("End without a cause: %#v", end)
		}
	}
	if tc.decisions != nil && strings.Join(decisions, "; ") != strings.Join(tc.decisions, "; ") {
		t.Errorf("decisions\n got %q\nwant %q", decisions, tc.decisions)
	}
}

// TestFilter runs every case with each step in one read: the bytes the
// filter forwards and answers, byte for byte, and how the session ends.
func TestFilter(t *testing.T) {
	for _, tc := range filterCases() {
		t.Run(tc.name, func(t *testing.T) { runCase(t, tc, whole) })
	}
}

// TestFilterSplitEverywhere cuts each step's bytes in two at every
// position, and then byte by byte: the output is the same, whatever the
// reads.
func TestFilterSplitEverywhere(t *testing.T) {
	for _, tc := range filterCases() {
		t.Run(tc.name, func(t *testing.T) {
			for i, st := range tc.steps {
				for at := 1; at < len(st.in); at++ {
					runCase(t, tc, func(j int, in []byte) [][]byte {
						if j != i {
							return [][]byte{in}
						}
						return [][]byte{in[:at], in[at:]}
					})
					if t.Failed() {
						t.Fatalf("step %d cut at %d", i, at)
					}
				}
			}
			runCase(t, tc, func(_ int, in []byte) [][]byte {
				reads := make([][]byte, len(in))
				for j := range in {
					reads[j] = in[j : j+1]
				}
				return reads
			})
		})
	}
}

// TestFilterRandomSplits cuts every step at random places, many times.
func TestFilterRandomSplits(t *testing.T) {
	rng := rand.New(rand.NewPCG(32, 2))
	for _, tc := range filterCases() {
		t.Run(tc.name, func(t *testing.T) {
			for range 50 {
				runCase(t, tc, func(_ int, in []byte) [][]byte {
					var reads [][]byte
					for len(in) > 0 {
						n := 1 + rng.IntN(len(in))
						reads = append(reads, in[:n])
						in = in[n:]
					}
					return reads
				})
				if t.Failed() {
					return
				}
			}
		})
	}
}
