package packets

import (
	"bytes"
	"testing"
)

// Topic names of the captures below.
const (
	topicTemperature = "0016 73656e736f72732f34322f74656d7065726174757265" // "sensors/42/temperature"
	topicSensors1    = "0009 73656e736f72732f31"                           // "sensors/1"
)

// publishCases are PUBLISH packets. The first ones are captured from
// mosquitto_pub 2.0.11 and from mosquitto 2.0.11 delivering to
// mosquitto_sub, byte for byte.
var publishCases = []packetCase{
	{
		name:    "mosquitto_pub mqttv311 QoS 1 retained",
		version: ProtocolV311,
		raw: unhex(
			"33 1e",          // PUBLISH QoS 1, retain; remaining length 30
			topicTemperature, // topic name
			"0001",           // packet identifier 1
			"32312e35",       // payload "21.5"
		),
		want: &Publish{QoS: 1, Retain: true, Topic: []byte("sensors/42/temperature"), PacketID: 1, Payload: []byte("21.5")},
	},
	{
		name:    "mosquitto_pub mqttv5 QoS 2, topic alias and user property",
		version: ProtocolV5,
		raw: unhex(
			"34 32",                                // PUBLISH QoS 2; remaining length 50
			topicTemperature,                       // topic name
			"0001",                                 // packet identifier 1
			"13",                                   // properties, 19 bytes:
			"23 0003",                              //   topic alias 3
			"26 0004 756e6974 0007 63656c73697573", // user property unit=celsius
			"32312e35",                             // payload "21.5"
		),
		want: &Publish{QoS: 2, Topic: []byte("sensors/42/temperature"), PacketID: 1, TopicAlias: 3,
			Properties: unhex("23 0003", "26 0004 756e6974 0007 63656c73697573"), Payload: []byte("21.5")},
	},
	{
		name:    "mosquitto_pub mqttv5 repeat by topic alias alone",
		version: ProtocolV5,
		raw: unhex(
			"34 1c", // PUBLISH QoS 2; remaining length 28
			"0000",  // empty topic name
			"0002",  // packet identifier 2
			"13",    // properties, 19 bytes:
			"23 0003",
			"26 0004 756e6974 0007 63656c73697573",
			"32312e35",
		),
		want: &Publish{QoS: 2, Topic: []byte{}, PacketID: 2, TopicAlias: 3,
			Properties: unhex("23 0003", "26 0004 756e6974 0007 63656c73697573"), Payload: []byte("21.5")},
	},
	{
		name:    "mosquitto to an mqttv5 subscriber, subscription identifier",
		version: ProtocolV5,
		raw: unhex(
			"32 13",       // PUBLISH QoS 1; remaining length 19
			topicSensors1, // topic name
			"0001",        // packet identifier 1
			"02 0b 09",    // properties, 2 bytes: subscription identifier 9
			"6f6e65",      // payload "one"
		),
		want: &Publish{QoS: 1, Topic: []byte("sensors/1"), PacketID: 1, Properties: unhex("0b 09"), Payload: []byte("one")},
	},
	{
		name:    "mosquitto to an mqttv311 subscriber",
		version: ProtocolV311,
		raw:     unhex("32 10", topicSensors1, "0001", "6f6e65"),
		want:    &Publish{QoS: 1, Topic: []byte("sensors/1"), PacketID: 1, Payload: []byte("one")},
	},
	{
		name:    "mqttv5 QoS 0, every property",
		version: ProtocolV5,
		raw: unhex("30 36", "0001 74", // PUBLISH QoS 0 to "t"
			"30",                           // properties, 48 bytes:
			"01 01",                        //   payload format indicator 1
			"02 0000003c",                  //   message expiry interval 60
			"03 000a 746578742f706c61696e", // content type "text/plain"
			"08 0005 7265706c79",           //   response topic "reply"
			"09 0002 abcd",                 //   correlation data abcd
			"0b 01", "0b 8001",             //   subscription identifiers 1 and 128
			"23 0001",            //   topic alias 1
			"26 0001 6b 0001 76", //   user property k=v
			"6869"),              // payload "hi"
		want: &Publish{Topic: []byte("t"), TopicAlias: 1, Payload: []byte("hi"), Properties: unhex(
			"01 01", "02 0000003c", "03 000a 746578742f706c61696e", "08 0005 7265706c79", "09 0002 abcd",
			"0b 01", "0b 8001", "23 0001", "26 0001 6b 0001 76")},
	},
	{
		name:    "mqttv311 empty payload, dup",
		version: ProtocolV311,
		raw:     unhex("3a 05", "0001 74", "0009"), // PUBLISH DUP QoS 1 to "t", packet identifier 9
		want:    &Publish{Dup: true, QoS: 1, Topic: []byte("t"), PacketID: 9},
	},
	{
		name:    "mqttv5 QoS 0 without properties",
		version: ProtocolV5,
		raw:     unhex("30 06", "0001 74", "00", "6869"),
		want:    &Publish{Topic: []byte("t"), Properties: []byte{}, Payload: []byte("hi")},
	},
	{
		name:    "mqttv311 topic with a single-level wildcard",
		version: ProtocolV311,
		raw:     unhex("30 05", "0003 612f2b"), // "a/+"
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 topic with a multi-level wildcard",
		version: ProtocolV5,
		raw:     unhex("30 06", "0003 612f23", "00"), // "a/#"
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv311 empty topic",
		version: ProtocolV311,
		raw:     unhex("30 04", "0000", "6869"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 empty topic without topic alias",
		version: ProtocolV5,
		raw:     unhex("30 03", "0000", "00"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 topic alias 0",
		version: ProtocolV5,
		raw:     unhex("30 06", "0000", "03 23 0000"),
		wantErr: ErrTopicAliasInvalid, wantCode: TopicAliasInvalid,
	},
	{
		name:    "mqttv311 QoS 1 with packet identifier 0",
		version: ProtocolV311,
		raw:     unhex("32 05", "0001 74", "0000"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv311 topic not UTF-8",
		version: ProtocolV311,
		raw:     unhex("30 04", "0002 c328"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 topic with U+0000",
		version: ProtocolV5,
		raw:     unhex("30 06", "0003 610062", "00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "topic longer than the packet",
		version: ProtocolV311,
		raw:     unhex("30 04", "0005 6162"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "packet identifier cut off",
		version: ProtocolV311,
		raw:     unhex("32 04", "0001 74", "00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 properties longer than the packet",
		version: ProtocolV5,
		raw:     unhex("30 06", "0001 74", "05 2300"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 property length not minimally encoded",
		version: ProtocolV5,
		raw:     unhex("30 05", "0001 74", "8000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 CONNECT property in a PUBLISH",
		version: ProtocolV5,
		raw:     unhex("30 09", "0001 74", "05 11 0000003c"), // session expiry interval
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 topic alias twice",
		version: ProtocolV5,
		raw:     unhex("30 0a", "0001 74", "06 23 0001 23 0002"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 payload format indicator 2",
		version: ProtocolV5,
		raw:     unhex("30 06", "0001 74", "02 01 02"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 subscription identifier 0",
		version: ProtocolV5,
		raw:     unhex("30 06", "0001 74", "02 0b 00"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 response topic with a wildcard",
		version: ProtocolV5,
		raw:     unhex("30 09", "0001 74", "05 08 0002 612b"), // "a+"
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 user property not UTF-8",
		version: ProtocolV5,
		raw:     unhex("30 0b", "0001 74", "07 26 0001 ff 0001 76"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 property value cut off",
		version: ProtocolV5,
		raw:     unhex("30 06", "0001 74", "02 23 00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
}

func TestPublishDecode(t *testing.T) { runPacketCases(t, publishCases) }

// TestPublishAppendIsExact: encoding a decoded PUBLISH gives back its
// bytes, and Append refuses what Decode would.
func TestPublishAppendIsExact(t *testing.T) {
	for _, tc := range publishCases {
		if tc.want == nil {
			continue
		}
		raw, err := tc.want.Append(nil, tc.version)
		if err != nil || !bytes.Equal(raw, tc.raw) {
			t.Errorf("%s: Append gives % x, %v; want % x", tc.name, raw, err, tc.raw)
		}
	}
	refused := []struct {
		name    string
		version byte
		p       Publish
	}{
		{"QoS 3", ProtocolV311, Publish{QoS: 3, Topic: []byte("t"), PacketID: 1}},
		{"packet identifier at QoS 0", ProtocolV311, Publish{Topic: []byte("t"), PacketID: 1}},
		{"properties in mqttv311", ProtocolV311, Publish{Topic: []byte("t"), Properties: []byte{}}},
		{"TopicAlias not in the properties", ProtocolV5, Publish{Topic: []byte("t"), TopicAlias: 2}},
		{"topic longer than a field", ProtocolV311, Publish{Topic: bytes.Repeat([]byte("t"), 1<<16)}},
	}
	for _, tc := range refused {
		if raw, err := tc.p.Append([]byte{1}, tc.version); err == nil || len(raw) != 1 {
			t.Errorf("%s: Append gives % x, %v; want an error and dst unchanged", tc.name, raw, err)
		}
	}
}

// TestPublishDecodeAllocatesNothing: a PUBLISH is read as a view of its
// bytes, MQTT 5 properties included.
func TestPublishDecodeAllocatesNothing(t *testing.T) {
	for _, tc := range publishCases {
		if tc.want == nil {
			continue
		}
		fr, err := frameOne(tc.version, tc.raw)
		if err != nil {
			t.Fatal(err)
		}
		var p Publish
		if allocs := testing.AllocsPerRun(100, func() { p.Decode(tc.version, fr) }); allocs != 0 {
			t.Errorf("%s: %v allocations", tc.name, allocs)
		}
	}
}

// TestTopicAliases follows one direction of an MQTT 5 session through the
// cases of 5.0 §3.3.4.
func TestTopicAliases(t *testing.T) {
	publish := func(topic string, alias uint16) *Publish {
		p := &Publish{Topic: []byte(topic), TopicAlias: alias}
		if alias != 0 {
			p.Properties = []byte{0x23, byte(alias >> 8), byte(alias)}
		}
		raw, err := p.Append(nil, ProtocolV5)
		if err != nil {
			t.Fatal(err)
		}
		fr, err := frameOne(ProtocolV5, raw)
		if err != nil {
			t.Fatal(err)
		}
		var decoded Publish
		if err := decoded.Decode(ProtocolV5, fr); err != nil {
			t.Fatal(err)
		}
		return &decoded
	}
	aliases := TopicAliases{Max: 10}
	steps := []struct {
		name string
		p    *Publish
		want string
		// forward says the proxy forwards the PUBLISH; writeTopic is what
		// Forward then answers.
		forward, writeTopic bool
		wantErr             error
		wantCode            ReasonCode
	}{
		{name: "a topic without alias", p: publish("plain", 0), want: "plain", forward: true},
		{name: "a topic sets alias 1", p: publish("sensors/1", 1), want: "sensors/1", forward: true},
		{name: "alias 1 alone", p: publish("", 1), want: "sensors/1", forward: true},
		// A PUBLISH the proxy drops sets the alias for the client, not
		// for the broker: a later one by the alias alone is judged by the
		// new topic, and carries it to the broker when forwarded.
		{name: "alias 1 set again, dropped", p: publish("sensors/2", 1), want: "sensors/2"},
		{name: "alias 1 alone, re-mapped", p: publish("", 1), want: "sensors/2", forward: true, writeTopic: true},
		{name: "alias 1 alone, the broker knows it now", p: publish("", 1), want: "sensors/2", forward: true},
		{name: "alias 2 first set by a dropped PUBLISH", p: publish("secret/1", 2), want: "secret/1"},
		{name: "alias 2 alone, dropped", p: publish("", 2), want: "secret/1"},
		{name: "alias 2 set again alike, forwarded", p: publish("secret/1", 2), want: "secret/1", forward: true},
		{name: "alias 2 alone after", p: publish("", 2), want: "secret/1", forward: true},
		{name: "the largest alias", p: publish("last", 10), want: "last", forward: true},
		{name: "an alias above the maximum", p: publish("x", 11), wantErr: ErrTopicAliasInvalid, wantCode: TopicAliasInvalid},
		{name: "an alias never set, alone", p: publish("", 3), wantErr: ErrProtocolViolation, wantCode: ProtocolError},
	}
	for _, step := range steps {
		topic, err := aliases.Resolve(step.p)
		if step.wantErr != nil {
			checkRefusal(t, err, step.wantErr, step.wantCode, ProtocolV5)
			continue
		}
		if err != nil || string(topic) != step.want {
			t.Errorf("%s: %q, %v; want %q", step.name, topic, err, step.want)
		}
		if step.forward {
			if got := aliases.Forward(step.p); got != step.writeTopic {
				t.Errorf("%s: Forward says write the topic: %t, want %t", step.name, got, step.writeTopic)
			}
		}
		if step.writeTopic {
			// The PUBLISH as the proxy forwards it: topic and alias.
			step.p.Topic = topic
			raw, err := step.p.Append(nil, ProtocolV5)
			if err != nil {
				t.Fatal(err)
			}
			pk, err := decodeRaw(ProtocolV5, raw)
			if err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			if got := pk.(*Publish); string(got.Topic) != step.want || got.TopicAlias != step.p.TopicAlias {
				t.Errorf("%s: forwarded as %s", step.name, describePacket(pk))
			}
		}
	}

	// What the tracker returns is its own copy, not the packet's bytes,
	// which the engine reuses for the next read.
	raw := publish("copy/me", 3)
	aliases.Resolve(raw)
	copy(raw.Topic, "XXXX")
	if topic, err := aliases.Resolve(publish("", 3)); err != nil || string(topic) != "copy/me" {
		t.Errorf("alias 3 stands for %q, %v after the packet's bytes changed", topic, err)
	}

	var none TopicAliases
	if _, err := none.Resolve(publish("t", 1)); err == nil {
		t.Error("the zero TopicAliases accepts an alias")
	}
}

// TestTopicAliasesCapture resolves the two PUBLISHes mosquitto_pub sent
// with -D publish topic-alias 3 --repeat 2.
func TestTopicAliasesCapture(t *testing.T) {
	aliases := TopicAliases{Max: 10}
	for _, name := range []string{"mosquitto_pub mqttv5 QoS 2, topic alias and user property", "mosquitto_pub mqttv5 repeat by topic alias alone"} {
		var raw []byte
		for _, tc := range publishCases {
			if tc.name == name {
				raw = tc.raw
			}
		}
		pk, err := decodeRaw(ProtocolV5, raw)
		if err != nil {
			t.Fatal(err)
		}
		topic, err := aliases.Resolve(pk.(*Publish))
		if err != nil || string(topic) != "sensors/42/temperature" {
			t.Errorf("%s: topic %q, %v", name, topic, err)
		}
	}
}
