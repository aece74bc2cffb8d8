package packets

import (
	"bytes"
	"testing"

	paho "github.com/eclipse/paho.golang/packets"
)

// Topic filters of the captures below.
const (
	filterTemperatures = "0015 73656e736f72732f2b2f74656d7065726174757265" // "sensors/+/temperature"
	filterAlerts       = "0008 616c657274732f23"                           // "alerts/#"
	filterSharedAlerts = "0012 2473686172652f67312f616c657274732f23"       // "$share/g1/alerts/#"
	filterSensorsX     = "0009 73656e736f72732f78"                         // "sensors/x"
)

// subscribeCases are SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK packets.
// The first of each are captured from mosquitto_sub 2.0.11 and mosquitto
// 2.0.11, byte for byte.
var subscribeCases = []packetCase{
	{
		name:    "mosquitto_sub mqttv311 two filters",
		version: ProtocolV311,
		raw: unhex(
			"82 25",                  // SUBSCRIBE, remaining length 37
			"0001",                   // packet identifier 1
			filterTemperatures, "01", // QoS 1
			filterAlerts, "01",
		),
		want: &Subscribe{PacketID: 1, Subscriptions: []Subscription{
			{Filter: []byte("sensors/+/temperature"), QoS: 1}, {Filter: []byte("alerts/#"), QoS: 1}}},
	},
	{
		name:    "mosquitto_sub mqttv5 shared subscription, subscription identifier",
		version: ProtocolV5,
		raw: unhex(
			"82 32",                  // SUBSCRIBE, remaining length 50
			"0001",                   // packet identifier 1
			"02 0b 07",               // properties, 2 bytes: subscription identifier 7
			filterTemperatures, "02", // QoS 2
			filterSharedAlerts, "02",
		),
		want: &Subscribe{PacketID: 1, Properties: &paho.Properties{SubscriptionIdentifier: ptr(7)},
			Subscriptions: []Subscription{{Filter: []byte("sensors/+/temperature"), QoS: 2},
				{Filter: []byte("$share/g1/alerts/#"), QoS: 2}}},
	},
	{
		name:    "mqttv5 every option, user property",
		version: ProtocolV5,
		raw: unhex("82 12", "0009",
			"07 26 0001 6b 0001 76", // properties: user property k=v
			"0001 61", "2d",         // "a": retain handling 2, retain as published, no local, QoS 1
			"0001 62", "10"), // "b": retain handling 1, QoS 0
		want: &Subscribe{PacketID: 9, Properties: &paho.Properties{User: []paho.User{{Key: "k", Value: "v"}}},
			Subscriptions: []Subscription{
				{Filter: []byte("a"), QoS: 1, NoLocal: true, RetainAsPublished: true, RetainHandling: 2},
				{Filter: []byte("b"), RetainHandling: 1}}},
	},
	{
		name:    "mqttv311 wildcards in whole levels",
		version: ProtocolV311,
		raw: unhex("82 1e", "0002",
			"0001 23", "00", // "#"
			"0001 2b", "02", // "+" at QoS 2
			"0004 2b2f2b2f", "00", // "+/+/"
			"0001 2f", "00", // "/"
			"0006 245359532f23", "00"), // "$SYS/#"
		want: &Subscribe{PacketID: 2, Subscriptions: []Subscription{{Filter: []byte("#")}, {Filter: []byte("+"), QoS: 2},
			{Filter: []byte("+/+/")}, {Filter: []byte("/")}, {Filter: []byte("$SYS/#")}}},
	},
	{
		name:    "mqttv311 no filter",
		version: ProtocolV311,
		raw:     unhex("82 02", "0001"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 no filter",
		version: ProtocolV5,
		raw:     unhex("82 03", "0001", "00"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "packet identifier 0",
		version: ProtocolV311,
		raw:     unhex("82 06", "0000", "0001 61", "00"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv311 no local, a reserved bit there",
		version: ProtocolV311,
		raw:     unhex("82 06", "0001", "0001 61", "04"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 reserved option bit",
		version: ProtocolV5,
		raw:     unhex("82 07", "0001", "00", "0001 61", "40"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv311 QoS 3",
		version: ProtocolV311,
		raw:     unhex("82 06", "0001", "0001 61", "03"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 QoS 3",
		version: ProtocolV5,
		raw:     unhex("82 07", "0001", "00", "0001 61", "03"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 retain handling 3",
		version: ProtocolV5,
		raw:     unhex("82 07", "0001", "00", "0001 61", "30"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 no local on a shared subscription",
		version: ProtocolV5,
		raw:     unhex("82 10", "0001", "00", "000a 2473686172652f672f61", "04"), // "$share/g/a"
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "empty filter",
		version: ProtocolV311,
		raw:     unhex("82 05", "0001", "0000", "00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "multi-level wildcard before the last level",
		version: ProtocolV311,
		raw:     unhex("82 08", "0001", "0003 232f61", "00"), // "#/a"
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "multi-level wildcard sharing a level",
		version: ProtocolV5,
		raw:     unhex("82 0a", "0001", "00", "0004 612f6223", "00"), // "a/b#"
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "single-level wildcard sharing a level",
		version: ProtocolV311,
		raw:     unhex("82 09", "0001", "0004 612b2f62", "00"), // "a+/b"
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "shared subscription without a share name",
		version: ProtocolV5,
		raw:     unhex("82 0f", "0001", "00", "0009 2473686172652f2f61", "00"), // "$share//a"
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "filter not UTF-8",
		version: ProtocolV311,
		raw:     unhex("82 06", "0001", "0001 ff", "00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 topic alias among SUBSCRIBE properties",
		version: ProtocolV5,
		raw:     unhex("82 0a", "0001", "03 23 0001", "0001 61", "00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 subscription identifier 0",
		version: ProtocolV5,
		raw:     unhex("82 09", "0001", "02 0b 00", "0001 61", "00"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 subscription identifier twice",
		version: ProtocolV5,
		raw:     unhex("82 0b", "0001", "04 0b 01 0b 02", "0001 61", "00"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "options cut off",
		version: ProtocolV311,
		raw:     unhex("82 05", "0001", "0001 61"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mosquitto SUBACK mqttv311",
		version: ProtocolV311,
		raw:     unhex("90 04", "0001", "01 01"), // granted QoS 1, QoS 1
		want:    &Suback{PacketID: 1, Codes: []ReasonCode{GrantedQoS1, GrantedQoS1}},
	},
	{
		name:    "mosquitto SUBACK mqttv5",
		version: ProtocolV5,
		raw:     unhex("90 05", "0001", "00", "02 02"), // no properties; granted QoS 2, QoS 2
		want:    &Suback{PacketID: 1, Codes: []ReasonCode{GrantedQoS2, GrantedQoS2}},
	},
	{
		name:    "mqttv5 SUBACK refusing, with a reason string",
		version: ProtocolV5,
		raw:     unhex("90 0a", "0007", "04 1f 0001 78", "00 87 9e"),
		want: &Suback{PacketID: 7, Properties: &paho.Properties{ReasonString: "x"},
			Codes: []ReasonCode{Success, NotAuthorized, SharedSubscriptionsNotSupported}},
	},
	{
		name:    "mqttv311 SUBACK failure",
		version: ProtocolV311,
		raw:     unhex("90 03", "0002", "80"),
		want:    &Suback{PacketID: 2, Codes: []ReasonCode{0x80}},
	},
	{
		name:    "mqttv311 SUBACK with an MQTT 5 code",
		version: ProtocolV311,
		raw:     unhex("90 03", "0002", "87"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 SUBACK with no such code",
		version: ProtocolV5,
		raw:     unhex("90 04", "0002", "00", "03"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "SUBACK without a code",
		version: ProtocolV311,
		raw:     unhex("90 02", "0002"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mosquitto_sub UNSUBSCRIBE mqttv5",
		version: ProtocolV5,
		raw:     unhex("a2 0e", "0002", "00", filterSensorsX),
		want:    &Unsubscribe{PacketID: 2, Filters: [][]byte{[]byte("sensors/x")}},
	},
	{
		name:    "mqttv311 UNSUBSCRIBE two filters",
		version: ProtocolV311,
		raw:     unhex("a2 0a", "0003", "0001 23", "0003 612f2b"), // "#", "a/+"
		want:    &Unsubscribe{PacketID: 3, Filters: [][]byte{[]byte("#"), []byte("a/+")}},
	},
	{
		name:    "UNSUBSCRIBE without a filter",
		version: ProtocolV311,
		raw:     unhex("a2 02", "0003"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "UNSUBSCRIBE of a bad filter",
		version: ProtocolV5,
		raw:     unhex("a2 08", "0003", "00", "0003 23 2f 61"), // "#/a"
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "UNSUBSCRIBE filter cut off",
		version: ProtocolV311,
		raw:     unhex("a2 05", "0003", "0002 61"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mosquitto UNSUBACK mqttv5",
		version: ProtocolV5,
		raw:     unhex("b0 04", "0002", "00", "00"),
		want:    &Unsuback{PacketID: 2, Codes: []ReasonCode{Success}},
	},
	{
		name:    "mosquitto UNSUBACK mqttv5, no subscription existed",
		version: ProtocolV5,
		raw:     unhex("b0 04", "0003", "00", "11"),
		want:    &Unsuback{PacketID: 3, Codes: []ReasonCode{NoSubscriptionExisted}},
	},
	{
		name:    "mqttv311 UNSUBACK",
		version: ProtocolV311,
		raw:     unhex("b0 02", "0004"),
		want:    &Unsuback{PacketID: 4},
	},
	{
		name:    "mqttv311 UNSUBACK with a code",
		version: ProtocolV311,
		raw:     unhex("b0 03", "0004", "00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 UNSUBACK with a SUBACK code",
		version: ProtocolV5,
		raw:     unhex("b0 04", "0004", "00", "01"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 UNSUBACK without a code",
		version: ProtocolV5,
		raw:     unhex("b0 03", "0004", "00"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
}

func TestSubscribeDecode(t *testing.T) { runPacketCases(t, subscribeCases) }

// TestFilterProblem applies the rules of topic filters (§4.7, §4.8.2).
func TestFilterProblem(t *testing.T) {
	valid := []string{"#", "+", "/", "a", "a/b", "a/#", "+/+", "/+/", "a//b", "$SYS/#", "$share/g/#",
		"$share/g/a/+/c", "$share/group-1//", "$sharex", "$share", "a/b/c/d/e/f", "é/ü"}
	invalid := []string{"", "#/a", "a#", "a/#/b", "a/b#", "a+", "+a/b", "a/b+", "$share/", "$share//a",
		"$share/g", "$share/g/", "$share/g+/a", "$share/#/a", "a\x00b", "\xc3"}
	for _, f := range valid {
		if problem := filterProblem([]byte(f)); problem != "" {
			t.Errorf("filter %q %s", f, problem)
		}
	}
	for _, f := range invalid {
		if filterProblem([]byte(f)) == "" {
			t.Errorf("filter %q accepted", f)
		}
	}
}

// TestSubscribeAppendKept removes filters from mosquitto_sub's MQTT 5
// SUBSCRIBE: the packet identifier, the properties and the kept filters
// with their options stay as they were.
func TestSubscribeAppendKept(t *testing.T) {
	pk, err := decodeRaw(ProtocolV5, subscribeCase("mosquitto_sub mqttv5 shared subscription, subscription identifier").raw)
	if err != nil {
		t.Fatal(err)
	}
	s := pk.(*Subscribe)
	tests := []struct {
		keep []bool
		want []byte
	}{
		{[]bool{true, false}, unhex("82 1d", "0001", "02 0b 07", filterTemperatures, "02")},
		{[]bool{false, true}, unhex("82 1a", "0001", "02 0b 07", filterSharedAlerts, "02")},
		{[]bool{true, true}, subscribeCase("mosquitto_sub mqttv5 shared subscription, subscription identifier").raw},
	}
	for _, tc := range tests {
		got, err := s.AppendKept(nil, ProtocolV5, tc.keep)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("keep %v: % x, %v; want % x", tc.keep, got, err, tc.want)
		}
	}
	for _, keep := range [][]bool{{false, false}, {true}, {true, true, true}} {
		if got, err := s.AppendKept([]byte("dst"), ProtocolV5, keep); err == nil || string(got) != "dst" {
			t.Errorf("keep %v: % x, %v; want an error and dst unchanged", keep, got, err)
		}
	}

	pk, err = decodeRaw(ProtocolV311, subscribeCase("mosquitto_sub mqttv311 two filters").raw)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pk.(*Subscribe).AppendKept(nil, ProtocolV311, []bool{false, true})
	if want := unhex("82 0d", "0001", filterAlerts, "01"); err != nil || !bytes.Equal(got, want) {
		t.Errorf("mqttv311: % x, %v; want % x", got, err, want)
	}
}

// TestSubackAppendExpanded turns the broker's SUBACK for a SUBSCRIBE the
// proxy shortened into the SUBACK for the client's own.
func TestSubackAppendExpanded(t *testing.T) {
	tests := []struct {
		name    string
		version byte
		broker  []byte // the broker's SUBACK
		inserts []Insertion
		want    []byte // nil when an error is expected
	}{
		{
			name:    "mqttv5, the second of two filters refused",
			version: ProtocolV5,
			broker:  unhex("90 04", "0001", "00", "02"),
			inserts: []Insertion{{1, SubscriptionRefusal(ProtocolV5)}},
			want:    unhex("90 05", "0001", "00", "02 87"),
		},
		{
			name:    "mqttv311, the first and third of four refused",
			version: ProtocolV311,
			broker:  unhex("90 04", "0009", "01 00"),
			inserts: []Insertion{{0, SubscriptionRefusal(ProtocolV311)}, {2, SubscriptionRefusal(ProtocolV311)}},
			want:    unhex("90 06", "0009", "80 01 80 00"),
		},
		{
			name:    "mqttv5, the broker's properties kept, the last refused",
			version: ProtocolV5,
			broker:  unhex("90 08", "0003", "04 1f 0001 78", "01"),
			inserts: []Insertion{{1, NotAuthorized}},
			want:    unhex("90 09", "0003", "04 1f 0001 78", "01 87"),
		},
		{
			name:    "insertions out of order",
			version: ProtocolV5,
			broker:  unhex("90 04", "0001", "00", "02"),
			inserts: []Insertion{{2, NotAuthorized}, {0, NotAuthorized}},
		},
		{
			name:    "insertion past the end",
			version: ProtocolV5,
			broker:  unhex("90 04", "0001", "00", "02"),
			inserts: []Insertion{{2, NotAuthorized}},
		},
		{
			name:    "an MQTT 5 code for mqttv311",
			version: ProtocolV311,
			broker:  unhex("90 03", "0001", "01"),
			inserts: []Insertion{{0, NotAuthorized}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pk, err := decodeRaw(tc.version, tc.broker)
			if err != nil {
				t.Fatal(err)
			}
			got, err := pk.(*Suback).AppendExpanded([]byte{}, tc.version, tc.inserts)
			if tc.want == nil {
				if err == nil || len(got) != 0 {
					t.Errorf("% x, %v; want an error and nothing written", got, err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Errorf("% x, %v; want % x", got, err, tc.want)
			}
		})
	}
}

// TestSubscriptionRefusal: the codes the issue names, 0x87 in MQTT 5 and
// 0x80 in 3.1.1.
func TestSubscriptionRefusal(t *testing.T) {
	if got := SubscriptionRefusal(ProtocolV5); got != 0x87 {
		t.Errorf("MQTT 5: 0x%02X", byte(got))
	}
	for _, v := range []byte{ProtocolV31, ProtocolV311} {
		if got := SubscriptionRefusal(v); got != 0x80 {
			t.Errorf("level %d: 0x%02X", v, byte(got))
		}
	}
}

// TestSubscribeDecodeReuses: decoding into the same Subscribe reuses its
// slice, so a session decoding SUBSCRIBEs allocates only for properties.
func TestSubscribeDecodeReuses(t *testing.T) {
	fr, err := frameOne(ProtocolV311, subscribeCase("mosquitto_sub mqttv311 two filters").raw)
	if err != nil {
		t.Fatal(err)
	}
	var s Subscribe
	if err := s.Decode(ProtocolV311, fr); err != nil {
		t.Fatal(err)
	}
	if allocs := testing.AllocsPerRun(100, func() { s.Decode(ProtocolV311, fr) }); allocs != 0 {
		t.Errorf("%v allocations", allocs)
	}
}

func subscribeCase(name string) packetCase {
	for _, tc := range subscribeCases {
		if tc.name == name {
			return tc
		}
	}
	panic("no fixture " + name)
}
