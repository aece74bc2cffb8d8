package packets

import (
	"encoding/hex"
	"strings"

	paho "github.com/eclipse/paho.golang/packets"
)

// The example tokens of the EMQX JWT documentation: HS256 with the secrets
// "secret" and "emqxsecret".
const (
	tokenSecret     = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkVNUVggQ2xvdWQiLCJpYXQiOjE1MTYyMzkwMjJ9.wGxZTwkCZtYPzkS854aQ9WCnP8YGIQ_erFh5RIznhYk"
	tokenEMQXSecret = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJkYXRhIjp7ImF1dGhvciI6IndpdndpdiIsInNpdGUiOiJodHRwczovL3dpdndpdi5jb20ifSwiZXhwIjoxNTgyMjU1MzYwNjQyMDAwMCwiaWF0IjoxNTgyMjU1MzYwfQ.FdyAx2fYahm6h3g47m88ttyINzptzKy_speimyUcma4"

	// The same tokens as they appear on the wire in the captures below.
	tokenSecretHex     = "65794a68624763694f694a49557a49314e694973496e523563434936496b705856434a392e65794a7a645749694f6949784d6a4d304e5459334f446b7749697769626d46745a534936496b564e5556676751327876645751694c434a70595851694f6a45314d5459794d7a6b774d6a4a392e7747785a54776b435a7459507a6b5338353461513957436e5038594749515f657246683552497a6e68596b"
	tokenEMQXSecretHex = "65794a68624763694f694a49557a49314e694973496e523563434936496b705856434a392e65794a6b59585268496a7037496d46316447687663694936496e6470646e647064694973496e4e70644755694f694a6f64485277637a6f764c336470646e64706469356a62323069665377695a586877496a6f784e5467794d6a55314d7a59774e6a51794d4441774d43776961574630496a6f784e5467794d6a55314d7a597766512e466479417832665961686d3668336734376d3838747479494e7a70747a4b795f737065696d7955636d6134"
)

// connectCase is one first packet as bytes and what ReadConnect makes of it.
type connectCase struct {
	name string
	raw  []byte
	// maxSize is ReadConnect's limit; 0 means the default.
	maxSize int
	// want is the decoded packet, Raw aside; nil when an error is expected.
	want *Connect
	// wantErr is the sentinel the *Error wraps; wantCode and wantVersion
	// are its Code and Version.
	wantErr     error
	wantCode    ReasonCode
	wantVersion byte
}

// unhex decodes hex written in parts (one per field, so each can carry a
// comment), spaces allowed.
func unhex(parts ...string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(strings.Join(parts, ""), " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// connectPacket is unhex behind a CONNECT fixed header with the minimal
// remaining length, for cases about the variable header and payload.
func connectPacket(parts ...string) []byte {
	body := unhex(parts...)
	e := encoder{buf: []byte{byte(TypeConnect) << 4}}
	e.varint(len(body))
	return append(e.buf, body...)
}

// Field encodings shared by the hand-written cases.
const (
	mqtt311 = "0004 4d515454 04" // "MQTT", level 4
	mqtt5   = "0004 4d515454 05" // "MQTT", level 5
	mqisdp  = "0006 4d5149736470 03"

	// The will topic of a mosquitto bridge named edge-1.
	bridgeWill    = "$SYS/broker/connection/edge-1/state"
	bridgeWillHex = "2453 59532f62726f6b65722f636f6e6e656374696f6e2f656467652d312f7374617465"
)

// validCases are CONNECTs ReadConnect accepts. The first ones are
// captured from real clients: mosquitto_pub 2.0.11, paho.golang v0.23.0
// and mosquitto 2.0.11's bridge, byte for byte.
var validCases = []connectCase{
	{
		name: "mosquitto_pub mqttv31 user and password",
		raw: unhex(
			"10 26",                   // CONNECT, remaining length 38
			"0006 4d5149736470 03",    // "MQIsdp", level 3
			"c2 001e",                 // flags: user name, password, clean session; keep alive 30
			"0009 73656e736f722d3331", // client id "sensor-31"
			"0005 616c696365",         // user name "alice"
			"0006 736563726574",       // password "secret"
		),
		want: &Connect{ProtocolName: "MQIsdp", ProtocolVersion: 3, CleanStart: true, KeepAlive: 30,
			ClientID: "sensor-31", UsernameFlag: true, Username: "alice", PasswordFlag: true, Password: []byte("secret")},
	},
	{
		name: "mosquitto_pub mqttv31 anonymous",
		raw: unhex(
			"10 12",                // CONNECT, remaining length 18
			"0006 4d5149736470 03", // "MQIsdp", level 3
			"02 003c",              // flags: clean session; keep alive 60
			"0004 616e6f6e",        // client id "anon"
		),
		want: &Connect{ProtocolName: "MQIsdp", ProtocolVersion: 3, CleanStart: true, KeepAlive: 60, ClientID: "anon"},
	},
	{
		name: "mosquitto_pub mqttv311 token in password",
		raw: unhex(
			"10 bc01",                   // CONNECT, remaining length 188
			"0004 4d515454 04",          // "MQTT", level 4
			"c2 003c",                   // flags: user name, password, clean session; keep alive 60
			"000a 73656e736f722d333131", // client id "sensor-311"
			"0005 616c696365",           // user name "alice"
			"009d", tokenSecretHex,      // password: a 157-byte token
		),
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 4, CleanStart: true, KeepAlive: 60,
			ClientID: "sensor-311", UsernameFlag: true, Username: "alice", PasswordFlag: true, Password: []byte(tokenSecret)},
	},
	{
		name: "mosquitto_pub mqttv311 will",
		raw: unhex(
			"10 33",                 // CONNECT, remaining length 51
			"0004 4d515454 04",      // "MQTT", level 4
			"ec 003c",               // flags: user name, password, will retain, will QoS 1, will; keep alive 60
			"0008 77696c6c2d333131", // client id "will-311"
			"0008 646561642f333131", // will topic "dead/311"
			"0004 676f6e65",         // will payload "gone"
			"0005 616c696365",       // user name "alice"
			"0006 736563726574",     // password "secret"
		),
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 4, KeepAlive: 60, ClientID: "will-311",
			WillFlag: true, WillQoS: 1, WillRetain: true, WillTopic: "dead/311", WillPayload: []byte("gone"),
			UsernameFlag: true, Username: "alice", PasswordFlag: true, Password: []byte("secret")},
	},
	{
		name: "mosquitto_pub mqttv5 token in password",
		raw: unhex(
			"10 be01",               // CONNECT, remaining length 190
			"0004 4d515454 05",      // "MQTT", level 5
			"c2 003c",               // flags: user name, password, clean start; keep alive 60
			"03 21 0014",            // properties (3 bytes): receive maximum 20
			"0008 73656e736f722d35", // client id "sensor-5"
			"0005 616c696365",       // user name "alice"
			"009d", tokenSecretHex,  // password: a 157-byte token
		),
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 5, CleanStart: true, KeepAlive: 60,
			Properties: &paho.Properties{ReceiveMaximum: ptr[uint16](20)},
			ClientID:   "sensor-5", UsernameFlag: true, Username: "alice", PasswordFlag: true, Password: []byte(tokenSecret)},
	},
	{
		name: "mosquitto_pub mqttv5 properties and will",
		raw: unhex(
			"10 73",            // CONNECT, remaining length 115
			"0004 4d515454 05", // "MQTT", level 5
			"d6 003c",          // flags: user name, password, will QoS 2, will, clean start; keep alive 60
			"21",               // properties, 33 bytes:
			"21 0014",          //   receive maximum 20
			"26 0006 726567696f6e 0007 65752d77657374", // user property region=eu-west
			"27 00010000",                        //   maximum packet size 65536
			"17 01",                              //   request problem information 1
			"11 00000e10",                        //   session expiry interval 3600
			"0007 70726f70732d35",                // client id "props-5"
			"21",                                 // will properties, 33 bytes:
			"03 000a 746578742f706c61696e",       //   content type "text/plain"
			"18 0000000a",                        //   will delay interval 10
			"26 0003 776879 0007 74696d656f7574", // user property why=timeout
			"0006 646561642f35",                  // will topic "dead/5"
			"0003 627965",                        // will payload "bye"
			"0005 616c696365",                    // user name "alice"
			"0006 736563726574",                  // password "secret"
		),
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 5, CleanStart: true, KeepAlive: 60,
			Properties: &paho.Properties{ReceiveMaximum: ptr[uint16](20), MaximumPacketSize: ptr[uint32](65536),
				RequestProblemInfo: ptr[byte](1), SessionExpiryInterval: ptr[uint32](3600),
				User: []paho.User{{Key: "region", Value: "eu-west"}}},
			ClientID: "props-5",
			WillFlag: true, WillQoS: 2,
			WillProperties: &paho.Properties{ContentType: "text/plain", WillDelayInterval: ptr[uint32](10),
				User: []paho.User{{Key: "why", Value: "timeout"}}},
			WillTopic: "dead/5", WillPayload: []byte("bye"),
			UsernameFlag: true, Username: "alice", PasswordFlag: true, Password: []byte("secret")},
	},
	{
		name: "paho mqttv5 will and properties",
		raw: unhex(
			"10 9a02",                      // CONNECT, remaining length 282
			"0004 4d515454 05",             // "MQTT", level 5
			"ce 002d",                      // flags: user name, password, will QoS 1, will, clean start; keep alive 45
			"13",                           // properties, 19 bytes:
			"17 00",                        //   request problem information 0
			"11 0000012c",                  //   session expiry interval 300
			"26 0003 617070 0004 64656d6f", //   user property app=demo
			"0006 7061686f2d35",            // client id "paho-5"
			"05 18 0000012c",               // will properties, 5 bytes: will delay interval 300
			"0009 646561642f7061686f",      // will topic "dead/paho"
			"0007 6f66666c696e65",          // will payload "offline"
			"0003 626f62",                  // user name "bob"
			"00d3", tokenEMQXSecretHex,     // password: a 211-byte token
		),
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 5, CleanStart: true, KeepAlive: 45,
			Properties: &paho.Properties{RequestProblemInfo: ptr[byte](0), SessionExpiryInterval: ptr[uint32](300),
				User: []paho.User{{Key: "app", Value: "demo"}}},
			ClientID: "paho-5",
			WillFlag: true, WillQoS: 1,
			WillProperties: &paho.Properties{WillDelayInterval: ptr[uint32](300)},
			WillTopic:      "dead/paho", WillPayload: []byte("offline"),
			UsernameFlag: true, Username: "bob", PasswordFlag: true, Password: []byte(tokenEMQXSecret)},
	},
	{
		// What paho.golang v0.23.0 writes for a client with its token in
		// the Authentication Data, under the method "JWT".
		name: "paho mqttv5 token in authentication data",
		raw: unhex(
			"10 2c",                                  // CONNECT, remaining length 44
			"0004 4d515454 05",                       // "MQTT", level 5
			"02 001e",                                // flags: clean start; keep alive 30
			"1a",                                     // properties, 26 bytes:
			"17 00",                                  //   request problem information 0
			"15 0003 4a5754",                         //   authentication method "JWT"
			"16 000f 65794a2e65794a2e73696730313233", //   authentication data "eyJ.eyJ.sig0123"
			"0005 6465762d31",                        // client id "dev-1"
		),
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 5, CleanStart: true, KeepAlive: 30, ClientID: "dev-1",
			Properties: &paho.Properties{RequestProblemInfo: ptr[byte](0), AuthMethod: "JWT", AuthData: []byte("eyJ.eyJ.sig0123")}},
	},
	{
		// A bridge of mosquitto 2.0.11 (try_private, its default) with
		// bridge_protocol_version mqttv311: level 0x84, and the will
		// mosquitto gives every bridge.
		name: "mosquitto bridge mqttv311",
		raw: unhex(
			"10 4a",               // CONNECT, remaining length 74
			"0004 4d515454 84",    // "MQTT", level 4 with the bridge bit
			"ec 003c",             // flags: user name, password, will retain, will QoS 1, will; keep alive 60
			"0006 656467652d31",   // client id "edge-1"
			"0023", bridgeWillHex, // will topic "$SYS/broker/connection/edge-1/state"
			"0001 30",           // will payload "0"
			"0006 656467652d31", // user name "edge-1"
			"0006 736563726574", // password "secret"
		),
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 4, Bridge: true, KeepAlive: 60, ClientID: "edge-1",
			WillFlag: true, WillQoS: 1, WillRetain: true, WillTopic: bridgeWill, WillPayload: []byte("0"),
			UsernameFlag: true, Username: "edge-1", PasswordFlag: true, Password: []byte("secret")},
	},
	{
		name: "mosquitto bridge mqttv31",
		raw: unhex(
			"10 4c",                // CONNECT, remaining length 76
			"0006 4d5149736470 83", // "MQIsdp", level 3 with the bridge bit
			"ec 003c",              // flags: user name, password, will retain, will QoS 1, will; keep alive 60
			"0006 656467652d31",    // client id "edge-1"
			"0023", bridgeWillHex,  // will topic "$SYS/broker/connection/edge-1/state"
			"0001 30",           // will payload "0"
			"0006 656467652d31", // user name "edge-1"
			"0006 736563726574", // password "secret"
		),
		want: &Connect{ProtocolName: "MQIsdp", ProtocolVersion: 3, Bridge: true, KeepAlive: 60, ClientID: "edge-1",
			WillFlag: true, WillQoS: 1, WillRetain: true, WillTopic: bridgeWill, WillPayload: []byte("0"),
			UsernameFlag: true, Username: "edge-1", PasswordFlag: true, Password: []byte("secret")},
	},
	{
		name: "mqttv311 empty client id, no flags",
		raw:  connectPacket(mqtt311, "00 0000", "0000"),
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 4},
	},
	{
		name: "mqttv311 non-minimal remaining length",
		raw: unhex(
			"10 8e80 8000",     // CONNECT, remaining length 14 in four bytes
			"0004 4d515454 04", // "MQTT", level 4
			"02 000a",          // flags: clean session; keep alive 10
			"0002 6331",        // client id "c1"
		),
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 4, CleanStart: true, KeepAlive: 10, ClientID: "c1"},
	},
	{
		name: "mqttv311 empty password",
		raw:  connectPacket(mqtt311, "c0 0000", "0000", "0001 75", "0000"), // user name "u", password ""
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 4, UsernameFlag: true, Username: "u",
			PasswordFlag: true, Password: []byte{}},
	},
	{
		name: "mqttv5 password without user name",
		raw:  connectPacket(mqtt5, "42 0000 00", "0000", "0003 746f6b"), // password "tok"
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 5, CleanStart: true, Properties: &paho.Properties{},
			PasswordFlag: true, Password: []byte("tok")},
	},
	{
		name: "mqttv5 repeated user property, authentication",
		raw: connectPacket(mqtt5, "00 0000",
			"17",                 // properties, 23 bytes:
			"26 0001 61 0001 31", //   user property a=1
			"26 0001 61 0001 32", //   user property a=2
			"15 0003 6a7774",     //   authentication method "jwt"
			"16 0000",            //   authentication data, empty
			"0000"),              // client id ""
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 5,
			Properties: &paho.Properties{User: []paho.User{{Key: "a", Value: "1"}, {Key: "a", Value: "2"}},
				AuthMethod: "jwt", AuthData: []byte{}}},
	},
	{
		name: "mqttv5 will properties, all of them",
		raw: connectPacket(mqtt5, "04 0000", "00", "0000",
			"19",               // will properties, 25 bytes:
			"01 01",            //   payload format indicator 1
			"02 0000003c",      //   message expiry interval 60
			"03 0001 74",       //   content type "t"
			"08 0001 72",       //   response topic "r"
			"09 0002 abcd",     //   correlation data abcd
			"18 00000005",      //   will delay interval 5
			"0001 77", "0000"), // will topic "w", empty will payload
		want: &Connect{ProtocolName: "MQTT", ProtocolVersion: 5, Properties: &paho.Properties{}, WillFlag: true,
			WillProperties: &paho.Properties{PayloadFormat: ptr[byte](1), MessageExpiry: ptr[uint32](60),
				ContentType: "t", ResponseTopic: "r", CorrelationData: []byte{0xab, 0xcd}, WillDelayInterval: ptr[uint32](5)},
			WillTopic: "w", WillPayload: []byte{}},
	},
}

// invalidCases are first packets ReadConnect refuses, one rule each.
var invalidCases = []connectCase{
	{
		name:    "PUBLISH first",
		raw:     unhex("30 05", "0003 612f62"), // PUBLISH QoS 0 to "a/b"
		wantErr: ErrNotConnect, wantCode: ProtocolError,
	},
	{
		name:    "CONNECT with fixed header flags",
		raw:     unhex("12 0c", mqtt311, "02 003c 0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "remaining length of five bytes",
		raw:     unhex("10 ff ff ff ff 7f"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "empty body",
		raw:     unhex("10 00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	{
		name:    "protocol name longer than the packet",
		raw:     connectPacket("0010 4d515454 05"),
		wantErr: ErrMalformed, wantCode: MalformedPacket,
	},
	// An unsupported level under MQTT gets the 3.1.1 CONNACK with return
	// code 1, whatever the level, as mosquitto 2.0.11 answers each of them.
	{
		name:    "level 0 under MQTT",
		raw:     connectPacket("0004 4d515454 00", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 4,
	},
	{
		name:    "level 3 under MQTT",
		raw:     connectPacket("0004 4d515454 03", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 4,
	},
	{
		name:    "level 6 under MQTT",
		raw:     connectPacket("0004 4d515454 06", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 4,
	},
	{
		name:    "level 0x80 under MQTT",
		raw:     connectPacket("0004 4d515454 80", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 4,
	},
	{
		name:    "bridge level 0x83 under MQTT",
		raw:     connectPacket("0004 4d515454 83", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 4,
	},
	{
		// MQTT 5 has no bridge bit: mosquitto takes 0x85 for 5 but then
		// reads no properties, so it misreads the packet.
		name:    "bridge level 0x85 under MQTT",
		raw:     connectPacket("0004 4d515454 85", "02 003c 00 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 4,
	},
	{
		name:    "level 0xFF under MQTT",
		raw:     connectPacket("0004 4d515454 ff", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 4,
	},
	{
		name:    "level 4 under MQIsdp",
		raw:     connectPacket("0006 4d5149736470 04", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 3,
	},
	{
		// A client calling itself MQIsdp is no MQTT 5 client: it gets the
		// 3.1 CONNACK (return code 1), not a five-byte MQTT 5 one.
		name:    "level 5 under MQIsdp",
		raw:     connectPacket("0006 4d5149736470 05", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 3,
	},
	{
		name:    "bridge level 0x84 under MQIsdp",
		raw:     connectPacket("0006 4d5149736470 84", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 3,
	},
	{
		name:    "level 0 under MQIsdp",
		raw:     connectPacket("0006 4d5149736470 00", "02 003c 0000"),
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion, wantVersion: 3,
	},
	{
		name:    "unknown protocol name",
		raw:     connectPacket("0004 4d515458 04", "02 003c 0000"), // "MQTX"
		wantErr: ErrUnsupportedVersion, wantCode: UnsupportedProtocolVersion,
	},
	{
		name:    "mqttv311 flags cut off",
		raw:     connectPacket(mqtt311),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 4,
	},
	{
		name:    "mqttv311 reserved flag",
		raw:     connectPacket(mqtt311, "03 003c 0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 4,
	},
	{
		// A bridge is refused in its version's terms: 3.1.1 closes.
		name:    "mqttv311 bridge reserved flag",
		raw:     connectPacket("0004 4d515454 84", "03 003c 0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 4,
	},
	{
		name:    "mqttv5 reserved flag",
		raw:     connectPacket(mqtt5, "03 003c 00 0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv311 will QoS 3",
		raw:     connectPacket(mqtt311, "1e 003c", "0000", "0001 74", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 4,
	},
	{
		name:    "mqttv5 will QoS 3",
		raw:     connectPacket(mqtt5, "1e 003c 00", "0000", "00", "0001 74", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv311 will QoS without will",
		raw:     connectPacket(mqtt311, "0a 003c", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 4,
	},
	{
		name:    "mqttv5 will retain without will",
		raw:     connectPacket(mqtt5, "22 003c 00", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv311 password without user name",
		raw:     connectPacket(mqtt311, "42 003c", "0000", "0001 70"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError, wantVersion: 4,
	},
	{
		name:    "mqttv31 password without user name",
		raw:     connectPacket(mqisdp, "42 003c", "0001 63", "0001 70"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError, wantVersion: 3,
	},
	{
		name:    "mqttv311 trailing byte",
		raw:     connectPacket(mqtt311, "02 003c", "0000", "00"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 4,
	},
	{
		name:    "mqttv311 password longer than the packet",
		raw:     connectPacket(mqtt311, "c2 003c", "0000", "0001 75", "0010 70"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 4,
	},
	{
		name:    "mqttv311 user name flag without user name",
		raw:     connectPacket(mqtt311, "82 003c", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 4,
	},
	{
		name:    "mqttv311 client id not UTF-8",
		raw:     connectPacket(mqtt311, "02 003c", "0002 c328"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 4,
	},
	{
		name:    "mqttv31 client id with U+0000",
		raw:     connectPacket(mqisdp, "02 003c", "0003 610062"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 3,
	},
	{
		name:    "mqttv5 user name with U+0000",
		raw:     connectPacket(mqtt5, "82 003c 00", "0000", "0002 6100"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv5 will topic with a surrogate",
		raw:     connectPacket(mqtt5, "06 003c 00", "0000", "00", "0003 eda080", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv5 user property not UTF-8",
		raw:     connectPacket(mqtt5, "02 003c", "07 26 0001 ff 0001 61", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv5 properties longer than the packet",
		raw:     connectPacket(mqtt5, "02 003c", "10 21 0014", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv5 property length of five bytes",
		raw:     connectPacket(mqtt5, "02 003c", "80 80 80 80 00", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		// mosquitto closes such a CONNECT: the proxy must not let it
		// through to be refused there, after the broker was dialed.
		name:    "mqttv5 property length not minimally encoded",
		raw:     connectPacket(mqtt5, "02 003c", "80 00", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv5 property value cut off",
		raw:     connectPacket(mqtt5, "02 003c", "03 11 0000", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv5 unknown property",
		raw:     connectPacket(mqtt5, "02 003c", "02 7f 00", "0000"),
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv5 will property among CONNECT properties",
		raw:     connectPacket(mqtt5, "02 003c", "04 03 0001 74", "0000"), // content type "t"
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv5 CONNECT property among will properties",
		raw:     connectPacket(mqtt5, "06 003c 00", "0000", "05 11 0000003c", "0001 74", "0000"), // session expiry
		wantErr: ErrMalformed, wantCode: MalformedPacket, wantVersion: 5,
	},
	{
		name:    "mqttv5 session expiry interval twice",
		raw:     connectPacket(mqtt5, "02 003c", "0a 11 0000003c 11 0000003c", "0000"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError, wantVersion: 5,
	},
	{
		name:    "mqttv5 receive maximum 0",
		raw:     connectPacket(mqtt5, "02 003c", "03 21 0000", "0000"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError, wantVersion: 5,
	},
	{
		name:    "mqttv5 maximum packet size 0",
		raw:     connectPacket(mqtt5, "02 003c", "05 27 00000000", "0000"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError, wantVersion: 5,
	},
	{
		name:    "mqttv5 request response information 2",
		raw:     connectPacket(mqtt5, "02 003c", "02 19 02", "0000"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError, wantVersion: 5,
	},
	{
		name:    "mqttv5 request problem information 2",
		raw:     connectPacket(mqtt5, "02 003c", "02 17 02", "0000"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError, wantVersion: 5,
	},
	{
		name:    "mqttv5 authentication data without method",
		raw:     connectPacket(mqtt5, "02 003c", "04 16 0001 61", "0000"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError, wantVersion: 5,
	},
	{
		name:    "mqttv5 payload format indicator 2",
		raw:     connectPacket(mqtt5, "06 003c 00", "0000", "02 01 02", "0001 74", "0000"),
		wantErr: ErrProtocolViolation, wantCode: ProtocolError, wantVersion: 5,
	},
	{
		name: "mqttv5 over the limit",
		// Only the fixed header and the start of the variable header
		// exist: ReadConnect must not read further.
		raw:     unhex("10 ffff7f", mqtt5),
		wantErr: ErrTooLarge, wantCode: PacketTooLarge, wantVersion: 5,
	},
	{
		name:    "mqttv311 over a small limit",
		raw:     connectPacket(mqtt311, "02 003c", "0010 30313233343536373839616263646566"),
		maxSize: 20,
		wantErr: ErrTooLarge, wantCode: PacketTooLarge, wantVersion: 4,
	},
	{
		name:    "mqttv311 bridge over the limit",
		raw:     unhex("10 ffff7f", "0004 4d515454 84"),
		wantErr: ErrTooLarge, wantCode: PacketTooLarge, wantVersion: 4,
	},
	{
		name:    "unknown protocol over the limit",
		raw:     unhex("10 ffff7f", "0004 4d515458 05"),
		wantErr: ErrTooLarge, wantCode: PacketTooLarge,
	},
	{
		name:    "over a limit smaller than the protocol name",
		raw:     unhex("10 06", mqtt5),
		maxSize: 4,
		wantErr: ErrTooLarge, wantCode: PacketTooLarge,
	},
}

// allCases is every fixture, for seeding the fuzzer.
func allCases() []connectCase { return append(append([]connectCase{}, validCases...), invalidCases...) }

// validCase returns the valid fixture of that name.
func validCase(name string) connectCase {
	for _, tc := range validCases {
		if tc.name == name {
			return tc
		}
	}
	panic("no fixture " + name)
}
