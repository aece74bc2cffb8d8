package packets

import (
	"bytes"
	"testing"

	paho "github.com/eclipse/paho.golang/packets"
)

// controlCases are the acknowledgements of the QoS flows, DISCONNECT, AUTH
// and CONNACK. Those named after mosquitto are captured from mosquitto
// 2.0.11 and its clients, byte for byte.
var controlCases = []packetCase{
	{
		name:    "mosquitto PUBACK",
		version: ProtocolV311,
		raw:     unhex("40 02", "0001"),
		want:    &Ack{Type: TypePuback, PacketID: 1},
	},
	{
		name:    "mosquitto PUBACK mqttv5 success, short form",
		version: ProtocolV5,
		raw:     unhex("40 02", "0001"),
		want:    &Ack{Type: TypePuback, PacketID: 1},
	},
	{
		name:    "mosquitto PUBACK mqttv5 not authorized",
		version: ProtocolV5,
		raw:     unhex("40 03", "0001", "87"), // reason code, no property length
		want:    &Ack{Type: TypePuback, PacketID: 1, ReasonCode: NotAuthorized},
	},
	{
		name:    "mosquitto PUBREC mqttv5 not authorized",
		version: ProtocolV5,
		raw:     unhex("50 03", "0001", "87"),
		want:    &Ack{Type: TypePubrec, PacketID: 1, ReasonCode: NotAuthorized},
	},
	{
		name:    "mosquitto_pub PUBREL",
		version: ProtocolV5,
		raw:     unhex("62 02", "0001"),
		want:    &Ack{Type: TypePubrel, PacketID: 1},
	},
	{
		name:    "mosquitto PUBCOMP",
		version: ProtocolV311,
		raw:     unhex("70 02", "0001"),
		want:    &Ack{Type: TypePubcomp, PacketID: 1},
	},
	{
		name:    "mqttv5 PUBACK with reason string and user property",
		version: ProtocolV5,
		raw:     unhex("40 0f", "0005", "10", "0b 1f 0001 78 26 0001 6b 0001 76"),
		want: &Ack{Type: TypePuback, PacketID: 5, ReasonCode: NoMatchingSubscribers,
			Properties: &paho.Properties{ReasonString: "x", User: []paho.User{{Key: "k", Value: "v"}}}},
	},
	{
		name:    "mqttv5 PUBCOMP packet identifier not found, empty properties",
		version: ProtocolV5,
		raw:     unhex("70 04", "0005", "92 00"),
		want:    &Ack{Type: TypePubcomp, PacketID: 5, ReasonCode: PacketIdentifierNotFound},
	},
	{
		name:    "mqttv311 PUBACK with a reason code",
		version: ProtocolV311,
		raw:     unhex("40 03", "0001", "87"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "PUBACK packet identifier 0",
		version: ProtocolV311,
		raw:     unhex("40 02", "0000"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "PUBACK cut off",
		version: ProtocolV5,
		raw:     unhex("40 01", "00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 PUBREL with a PUBACK code",
		version: ProtocolV5,
		raw:     unhex("62 03", "0001", "87"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 PUBACK with a DISCONNECT code",
		version: ProtocolV5,
		raw:     unhex("40 03", "0001", "8b"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 PUBACK with a PUBLISH property",
		version: ProtocolV5,
		raw:     unhex("40 07", "0001", "00", "03 23 0001"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},

	{
		name:    "mosquitto_pub DISCONNECT",
		version: ProtocolV311,
		raw:     unhex("e0 00"),
		want:    &Disconnect{},
	},
	{
		name:    "mosquitto_pub DISCONNECT mqttv5",
		version: ProtocolV5,
		raw:     unhex("e0 00"),
		want:    &Disconnect{},
		pahoGap: "paho reads a reason code that the short form leaves out",
	},
	{
		name:    "mosquitto_sub DISCONNECT mqttv5 with will",
		version: ProtocolV5,
		raw:     unhex("e0 01", "04"), // reason code, no property length
		want:    &Disconnect{ReasonCode: DisconnectWithWill},
	},
	{
		name:    "mqttv5 DISCONNECT server shutting down, server reference",
		version: ProtocolV5,
		raw:     unhex("e0 0c", "8b", "0a 1c 0007 6f746865723a31"), // server reference "other:1"
		want:    &Disconnect{ReasonCode: ServerShuttingDown, Properties: &paho.Properties{ServerReference: "other:1"}},
	},
	{
		name:    "mqttv5 DISCONNECT session expiry interval",
		version: ProtocolV5,
		raw:     unhex("e0 07", "00", "05 11 00000000"),
		want:    &Disconnect{Properties: &paho.Properties{SessionExpiryInterval: ptr[uint32](0)}},
	},
	{
		name:    "mqttv311 DISCONNECT with a body",
		version: ProtocolV311,
		raw:     unhex("e0 01", "00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 DISCONNECT with a CONNACK code",
		version: ProtocolV5,
		raw:     unhex("e0 01", "86"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 DISCONNECT with bytes after its properties",
		version: ProtocolV5,
		raw:     unhex("e0 03", "00 00 00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},

	{
		name:    "mqttv5 AUTH re-authenticate with a token",
		version: ProtocolV5,
		raw: unhex("f0 1a", "19",
			"18",                                      // properties, 24 bytes:
			"15 0003 4a5754",                          //   authentication method "JWT"
			"16 000f 65794a2e65794a2e73696730313233"), // authentication data "eyJ.eyJ.sig0123"
		want: &Auth{ReasonCode: ReAuthenticate, Properties: &paho.Properties{AuthMethod: "JWT", AuthData: []byte("eyJ.eyJ.sig0123")}},
	},
	{
		name:    "mqttv5 AUTH success, short form",
		version: ProtocolV5,
		raw:     unhex("f0 00"),
		want:    &Auth{},
	},
	{
		name:    "mqttv5 AUTH success with method",
		version: ProtocolV5,
		raw:     unhex("f0 08", "00", "06 15 0003 4a5754"),
		want:    &Auth{Properties: &paho.Properties{AuthMethod: "JWT"}},
	},
	{
		name:    "mqttv5 AUTH continue with method",
		version: ProtocolV5,
		raw:     unhex("f0 08", "18", "06 15 0003 4a5754"),
		want:    &Auth{ReasonCode: ContinueAuthentication, Properties: &paho.Properties{AuthMethod: "JWT"}},
	},
	{
		name:    "mqttv5 AUTH continue without method",
		version: ProtocolV5,
		raw:     unhex("f0 02", "18 00"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 AUTH with a CONNACK code",
		version: ProtocolV5,
		raw:     unhex("f0 08", "87", "06 15 0003 4a5754"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 AUTH data without method",
		version: ProtocolV5,
		raw:     unhex("f0 06", "19", "04 16 0001 78"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv5 AUTH method twice",
		version: ProtocolV5,
		raw:     unhex("f0 0e", "19", "0c 15 0003 4a5754 15 0003 4a5754"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},

	{
		name:    "mosquitto CONNACK",
		version: ProtocolV311,
		raw:     unhex("20 02", "00 00"),
		want:    &Connack{},
	},
	{
		name:    "mosquitto CONNACK mqttv5",
		version: ProtocolV5,
		raw: unhex("20 09", "00 00",
			"06 22 000a 21 0014"), // properties: topic alias maximum 10, receive maximum 20
		want: &Connack{Properties: &paho.Properties{TopicAliasMaximum: ptr[uint16](10), ReceiveMaximum: ptr[uint16](20)}},
	},
	{
		name:    "mqttv5 CONNACK session present, limits",
		version: ProtocolV5,
		raw: unhex("20 15", "01 00",
			"12",                // properties, 18 bytes:
			"27 00010000",       //   maximum packet size 65536
			"24 01",             //   maximum QoS 1
			"25 00",             //   retain available 0
			"28 00 29 00 2a 01", // wildcard, identifiers, shared subscriptions available: 0, 0, 1
			"13 003c",           //   server keep alive 60
		),
		want: &Connack{SessionPresent: true, Properties: &paho.Properties{MaximumPacketSize: ptr[uint32](65536),
			MaximumQOS: ptr[byte](1), RetainAvailable: ptr[byte](0), WildcardSubAvailable: ptr[byte](0),
			SubIDAvailable: ptr[byte](0), SharedSubAvailable: ptr[byte](1), ServerKeepAlive: ptr[uint16](60)}},
	},
	{
		name:    "mqttv5 CONNACK with authentication method",
		version: ProtocolV5,
		raw: unhex("20 0f", "00 00",
			"0c 21 0014 22 000a 15 0003 4a5754"), // receive maximum 20, topic alias maximum 10, authentication method "JWT"
		want: &Connack{Properties: &paho.Properties{ReceiveMaximum: ptr[uint16](20), TopicAliasMaximum: ptr[uint16](10), AuthMethod: "JWT"}},
	},
	{
		name:    "mqttv311 CONNACK not authorized",
		version: ProtocolV311,
		raw:     unhex("20 02", "00 05"),
		want:    &Connack{ReasonCode: 5},
	},
	{
		name:    "mqttv311 CONNACK reserved return code",
		version: ProtocolV311,
		raw:     unhex("20 02", "00 06"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "mqttv311 CONNACK refusing with session present",
		version: ProtocolV311,
		raw:     unhex("20 02", "01 05"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
	{
		name:    "CONNACK reserved flag",
		version: ProtocolV311,
		raw:     unhex("20 02", "02 00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 CONNACK without property length",
		version: ProtocolV5,
		raw:     unhex("20 02", "00 00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "mqttv5 CONNACK maximum QoS 2",
		version: ProtocolV5,
		raw:     unhex("20 05", "00 00", "02 24 02"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError,
	},
}

func TestControlDecode(t *testing.T) { runPacketCases(t, controlCases) }

// TestWhatTheProxyWrites pins the bytes of the packets the proxy sends of
// its own: the answers to a PUBLISH it drops, the end of a QoS 2 exchange,
// DISCONNECT, AUTH, and the broker's CONNACK with the Authentication Method
// of a client the proxy authenticated by it. Where mosquitto answers
// alike, they are its bytes.
func TestWhatTheProxyWrites(t *testing.T) {
	tests := []struct {
		name    string
		version byte
		p       packet
		want    []byte
	}{
		{"PUBACK not authorized as mosquitto writes it", ProtocolV5, &Ack{Type: TypePuback, PacketID: 1, ReasonCode: NotAuthorized}, unhex("40 03 0001 87")},
		{"PUBREC not authorized as mosquitto writes it", ProtocolV5, &Ack{Type: TypePubrec, PacketID: 1, ReasonCode: NotAuthorized}, unhex("50 03 0001 87")},
		{"PUBACK to mqttv311, which has no reason", ProtocolV311, &Ack{Type: TypePuback, PacketID: 1, ReasonCode: NotAuthorized}, unhex("40 02 0001")},
		{"PUBCOMP", ProtocolV5, &Ack{Type: TypePubcomp, PacketID: 300}, unhex("70 02 012c")},
		{"PUBREL carries its flags", ProtocolV311, &Ack{Type: TypePubrel, PacketID: 2}, unhex("62 02 0002")},
		{"PUBACK with a reason string", ProtocolV5, &Ack{Type: TypePuback, PacketID: 1, ReasonCode: NotAuthorized,
			Properties: &paho.Properties{ReasonString: "denied"}}, unhex("40 0d 0001 87", "09 1f 0006 64656e696564")},
		{"DISCONNECT not authorized as WriteDisconnect writes it", ProtocolV5, &Disconnect{ReasonCode: NotAuthorized}, unhex("e0 02 87 00")},
		{"DISCONNECT maximum connect time", ProtocolV5, &Disconnect{ReasonCode: MaximumConnectTime}, unhex("e0 02 a0 00")},
		{"DISCONNECT normal", ProtocolV5, &Disconnect{}, unhex("e0 00")},
		{"AUTH success with the method", ProtocolV5, &Auth{Properties: &paho.Properties{AuthMethod: "JWT"}}, unhex("f0 08 00 06 15 0003 4a5754")},
		{"mosquitto's CONNACK with the authentication method added", ProtocolV5, &Connack{Properties: &paho.Properties{
			TopicAliasMaximum: ptr[uint16](10), ReceiveMaximum: ptr[uint16](20), AuthMethod: "JWT"}},
			unhex("20 0f 00 00", "0c 21 0014 22 000a 15 0003 4a5754")},
		{"SUBACK all refused", ProtocolV5, &Suback{PacketID: 4, Codes: []ReasonCode{NotAuthorized, NotAuthorized}}, unhex("90 05 0004 00 87 87")},
		{"SUBACK all refused, mqttv311", ProtocolV311, &Suback{PacketID: 4, Codes: []ReasonCode{0x80}}, unhex("90 03 0004 80")},
	}
	for _, tc := range tests {
		got, err := tc.p.Append(nil, tc.version)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: % x, %v; want % x", tc.name, got, err, tc.want)
		}
	}
	var buf bytes.Buffer
	if err := WriteDisconnect(&buf, ProtocolV5, NotAuthorized); err != nil || !bytes.Equal(buf.Bytes(), unhex("e0 02 87 00")) {
		t.Errorf("WriteDisconnect writes % x, %v", buf.Bytes(), err)
	}
}

// TestAppendRefuses: an encoder refuses what its decoder would.
func TestAppendRefuses(t *testing.T) {
	tests := []struct {
		name    string
		version byte
		p       packet
	}{
		{"PUBACK with a PUBREL code", ProtocolV5, &Ack{Type: TypePuback, PacketID: 1, ReasonCode: PacketIdentifierNotFound}},
		{"acknowledgement of type PUBLISH", ProtocolV5, &Ack{Type: TypePublish, PacketID: 1}},
		{"DISCONNECT with a SUBACK code", ProtocolV5, &Disconnect{ReasonCode: GrantedQoS1}},
		{"AUTH in mqttv311", ProtocolV311, &Auth{}},
		{"AUTH continue without method", ProtocolV5, &Auth{ReasonCode: ContinueAuthentication}},
		{"CONNACK properties in mqttv311", ProtocolV311, &Connack{Properties: &paho.Properties{}}},
		{"CONNACK refusing with session present", ProtocolV5, &Connack{SessionPresent: true, ReasonCode: NotAuthorized}},
		{"SUBSCRIBE with a bad filter", ProtocolV5, &Subscribe{PacketID: 1, Subscriptions: []Subscription{{Filter: []byte("a#")}}}},
		{"SUBSCRIBE with options of MQTT 5 in mqttv311", ProtocolV311, &Subscribe{PacketID: 1, Subscriptions: []Subscription{{Filter: []byte("a"), NoLocal: true}}}},
		{"SUBSCRIBE with a negative subscription identifier", ProtocolV5, &Subscribe{PacketID: 1,
			Properties: &paho.Properties{SubscriptionIdentifier: ptr(-1)}, Subscriptions: []Subscription{{Filter: []byte("a")}}}},
		{"UNSUBSCRIBE without a filter", ProtocolV5, &Unsubscribe{PacketID: 1}},
		{"UNSUBACK without a code", ProtocolV5, &Unsuback{PacketID: 1}},
		{"SUBACK without a code", ProtocolV5, &Suback{PacketID: 1}},
	}
	for _, tc := range tests {
		if got, err := tc.p.Append([]byte("dst"), tc.version); err == nil || string(got) != "dst" {
			t.Errorf("%s: % x, %v; want an error and dst unchanged", tc.name, got, err)
		}
	}
}
