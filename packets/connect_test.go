package packets

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	paho "github.com/eclipse/paho.golang/packets"
)

// sentinels maps each cause to the code it answers with.
var sentinels = map[error]ReasonCode{
	ErrNotConnect:         ProtocolError,
	ErrMalformed:          MalformedPacket,
	ErrProtocolViolation:  ProtocolError,
	ErrUnsupportedVersion: UnsupportedProtocolVersion,
	ErrTooLarge:           PacketTooLarge,
}

// equalConnect compares two packets field by field, Raw aside.
func equalConnect(a, b *Connect) bool {
	x, y := *a, *b
	x.Raw, y.Raw = nil, nil
	return reflect.DeepEqual(x, y)
}

// describe prints a Connect with its properties' values, not addresses.
func describe(c *Connect) string {
	x := *c
	x.Raw, x.Properties, x.WillProperties = nil, nil, nil
	return fmt.Sprintf("%+v\nproperties: %v\nwill properties: %v", x, c.Properties, c.WillProperties)
}

// checkRefusal checks that err is an *Error wrapping want, with the code and
// version given.
func checkRefusal(t *testing.T, err error, want error, code ReasonCode, version byte) {
	t.Helper()
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("error %v (%T), want *Error", err, err)
	}
	if !errors.Is(err, want) {
		t.Errorf("error %v, want %v", err, want)
	}
	if perr.Code != code || perr.Version != version {
		t.Errorf("Code %v, Version %d; want %v, %d", perr.Code, perr.Version, code, version)
	}
}

func TestReadConnect(t *testing.T) {
	for _, tc := range allCases() {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.raw)
			c, err := ReadConnect(r, tc.maxSize)
			if tc.want == nil {
				checkRefusal(t, err, tc.wantErr, tc.wantCode, tc.wantVersion)
				if c != nil {
					t.Errorf("got a Connect with the error: %s", describe(c))
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadConnect: %v", err)
			}
			if !equalConnect(c, tc.want) {
				t.Errorf("got\n%s\nwant\n%s", describe(c), describe(tc.want))
			}
			if !bytes.Equal(c.Raw, tc.raw) {
				t.Errorf("Raw % x, want % x", c.Raw, tc.raw)
			}
			if r.Len() != 0 {
				t.Errorf("%d bytes left unread", r.Len())
			}
		})
	}
}

func TestReadConnectLeavesPipelinedBytes(t *testing.T) {
	// What a client may send right behind its CONNECT without waiting for
	// the CONNACK: a PUBLISH and a PINGREQ.
	pipelined := unhex("30 06 0003 612f62 6869", "c0 00")
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"whole", func(r io.Reader) io.Reader { return r }},
		{"one byte per read", iotest.OneByteReader},
		{"half per read", iotest.HalfReader},
	}
	for _, tc := range validCases {
		for _, reader := range readers {
			t.Run(tc.name+"/"+reader.name, func(t *testing.T) {
				input := bytes.NewReader(append(bytes.Clone(tc.raw), pipelined...))
				c, err := ReadConnect(reader.wrap(input), 0)
				if err != nil {
					t.Fatalf("ReadConnect: %v", err)
				}
				rest, _ := io.ReadAll(input)
				if !bytes.Equal(rest, pipelined) {
					t.Errorf("left % x, want % x", rest, pipelined)
				}
				if !bytes.Equal(c.Raw, tc.raw) {
					t.Errorf("Raw % x, want % x", c.Raw, tc.raw)
				}
			})
		}
	}
}

// TestReadConnectTwoReads: a socket read costs a system call, so a
// CONNECT that has arrived whole takes two, whatever its size, and the
// shortest CONNECT is read without touching what follows it.
func TestReadConnectTwoReads(t *testing.T) {
	shortest := unhex("10 0c 0004 4d515454 04 02 003c 0000")
	pipelined := unhex("c0 00")
	for _, raw := range [][]byte{shortest, validCase("mosquitto_pub mqttv311 token in password").raw, validCases[len(validCases)-1].raw} {
		input := bytes.NewReader(append(bytes.Clone(raw), pipelined...))
		r := &countingReader{r: input}
		c, err := ReadConnect(r, 0)
		if err != nil {
			t.Fatalf("ReadConnect(% x): %v", raw, err)
		}
		if r.reads > 2 || !bytes.Equal(c.Raw, raw) || input.Len() != len(pipelined) {
			t.Errorf("%d-byte CONNECT: %d reads, Raw %d bytes, %d bytes left; want at most 2, %d, %d",
				len(raw), r.reads, len(c.Raw), input.Len(), len(raw), len(pipelined))
		}
	}
}

// errAfterReader returns data, then err.
type errAfterReader struct {
	data []byte
	err  error
}

func (r *errAfterReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestReadConnectIOErrors(t *testing.T) {
	whole := validCase("mosquitto_pub mqttv311 token in password").raw
	tests := []struct {
		name   string
		reader io.Reader
		want   error
	}{
		{"nothing sent", bytes.NewReader(nil), io.EOF},
		{"remaining length cut", bytes.NewReader(unhex("10 80")), io.ErrUnexpectedEOF},
		{"body missing", bytes.NewReader(unhex("10 0c")), io.ErrUnexpectedEOF},
		{"body cut", bytes.NewReader(whole[:len(whole)-1]), io.ErrUnexpectedEOF},
		{"deadline before the first byte", &errAfterReader{err: os.ErrDeadlineExceeded}, os.ErrDeadlineExceeded},
		{"deadline in the body", &errAfterReader{data: whole[:40], err: os.ErrDeadlineExceeded}, os.ErrDeadlineExceeded},
		{"timeout in the remaining length", iotest.TimeoutReader(bytes.NewReader(whole)), iotest.ErrTimeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ReadConnect(tc.reader, 0)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			var perr *Error
			if errors.As(err, &perr) {
				t.Errorf("I/O failure reported as *Error: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "packets: ") {
				t.Errorf("error %q lacks context", err)
			}
			if c != nil {
				t.Errorf("got a Connect with the error")
			}
		})
	}
}

// trickleReader is a client that declares a huge CONNECT and then sends it
// a byte per read, for as long as it is read: prefix, then 'x' forever.
type trickleReader struct {
	prefix []byte
	read   int
}

func (r *trickleReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = 'x'
	if r.read < len(r.prefix) {
		p[0] = r.prefix[r.read]
	}
	r.read++
	return 1, nil
}

func TestReadConnectOversize(t *testing.T) {
	tests := []struct {
		name        string
		prefix      []byte
		maxSize     int
		wantVersion byte
		wantRead    int
	}{
		// 268,435,455 bytes declared, the most four bytes can say.
		{"256 MB mqttv5", unhex("10 ffffff7f", mqtt5), 0, 5, 5 + 7},
		{"256 MB mqttv311", unhex("10 ffffff7f", mqtt311), 0, 4, 5 + 7},
		{"256 MB mqttv31", unhex("10 ffffff7f", mqisdp), 0, 3, 5 + 9},
		{"256 MB long protocol name", unhex("10 ffffff7f", "0100"), 0, 0, 5 + 2},
		{"just over the limit", unhex("10 8180 04", mqtt5), 65536, 5, 4 + 7},
		{"limit of 2 bytes", unhex("10 0b", mqtt311), 2, 4, 2 + 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &trickleReader{prefix: tc.prefix}
			_, err := ReadConnect(r, tc.maxSize)
			checkRefusal(t, err, ErrTooLarge, PacketTooLarge, tc.wantVersion)
			if r.read != tc.wantRead {
				t.Errorf("read %d bytes, want %d", r.read, tc.wantRead)
			}
		})
	}

	t.Run("client leaves during the version probe", func(t *testing.T) {
		_, err := ReadConnect(bytes.NewReader(unhex("10 ffffff7f 0004 4d51")), 0)
		checkRefusal(t, err, ErrTooLarge, PacketTooLarge, 0)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("error %v does not keep the I/O cause", err)
		}
	})
}

func TestReadConnectOversizeMemory(t *testing.T) {
	r := &trickleReader{prefix: unhex("10 ffffff7f", mqtt5)}
	var err error
	run := func() {
		r.read = 0
		_, err = ReadConnect(r, 0)
	}

	// The header buffer, the error chain and the *Error; nothing sized by
	// the declared length.
	if allocs := testing.AllocsPerRun(100, run); allocs > 8 {
		t.Errorf("%.0f allocations per oversize CONNECT, want at most 8", allocs)
	}
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("error %v, want ErrTooLarge", err)
	}

	// TotalAlloc counts every goroutine's allocations (the race detector's
	// too): the bound leaves room, and is still nothing next to 256 MB.
	if perRun := bytesPerRun(func() { run() }); perRun > 4096 {
		t.Errorf("%d bytes allocated per 256 MB CONNECT, want at most 4096", perRun)
	}
}

func TestReadConnectAllocations(t *testing.T) {
	// The header buffer, Raw, the Connect, client id and user name; for
	// MQTT 5 also the properties and the receive maximum.
	tests := []struct {
		name string
		raw  []byte
		max  float64
	}{
		{"mqttv311", validCase("mosquitto_pub mqttv311 token in password").raw, 5},
		{"mqttv5", validCase("mosquitto_pub mqttv5 token in password").raw, 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.raw)
			allocs := testing.AllocsPerRun(100, func() {
				r.Reset(tc.raw)
				ReadConnect(r, 0)
			})
			if allocs > tc.max {
				t.Errorf("%.0f allocations, want at most %.0f", allocs, tc.max)
			}
		})
	}
}

// fullV5 is a CONNECT with every field and every property MQTT 5 allows.
func fullV5() *Connect {
	return &Connect{
		ProtocolName: "MQTT", ProtocolVersion: ProtocolV5, CleanStart: true, KeepAlive: 600,
		ClientID: "device-ü", UsernameFlag: true, Username: "carol", PasswordFlag: true, Password: []byte(tokenSecret),
		Properties: &paho.Properties{
			SessionExpiryInterval: ptr[uint32](7200), ReceiveMaximum: ptr[uint16](10),
			MaximumPacketSize: ptr[uint32](1 << 20), TopicAliasMaximum: ptr[uint16](5),
			RequestResponseInfo: ptr[byte](1), RequestProblemInfo: ptr[byte](0),
			User:       []paho.User{{Key: "k", Value: "v"}, {Key: "k", Value: "w"}},
			AuthMethod: "jwt", AuthData: []byte{1, 2, 3},
		},
		WillFlag: true, WillQoS: 2, WillRetain: true, WillTopic: "status/device", WillPayload: []byte("offline"),
		WillProperties: &paho.Properties{
			WillDelayInterval: ptr[uint32](30), PayloadFormat: ptr[byte](1), MessageExpiry: ptr[uint32](3600),
			ContentType: "text/plain", ResponseTopic: "replies", CorrelationData: []byte("id-7"),
			User: []paho.User{{Key: "reason", Value: "lost"}},
		},
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		connect *Connect
	}{
		{"mqttv31", &Connect{ProtocolName: "MQIsdp", ProtocolVersion: ProtocolV31, CleanStart: true, KeepAlive: 30,
			ClientID: "old", UsernameFlag: true, Username: "u", PasswordFlag: true, Password: []byte("p")}},
		{"mqttv311 will", &Connect{ProtocolName: "MQTT", ProtocolVersion: ProtocolV311, KeepAlive: 60, ClientID: "c",
			WillFlag: true, WillQoS: 1, WillTopic: "t", WillPayload: []byte{}}},
		{"mqttv311 long password", &Connect{ProtocolName: "MQTT", ProtocolVersion: ProtocolV311, ClientID: "c",
			UsernameFlag: true, PasswordFlag: true, Password: bytes.Repeat([]byte("a"), 65535)}},
		{"mqttv31 bridge", &Connect{ProtocolName: "MQIsdp", ProtocolVersion: ProtocolV31, Bridge: true, ClientID: "edge"}},
		{"mqttv311 bridge", &Connect{ProtocolName: "MQTT", ProtocolVersion: ProtocolV311, Bridge: true, ClientID: "edge",
			UsernameFlag: true, Username: "edge", PasswordFlag: true, Password: []byte(tokenSecret)}},
		{"mqttv5 everything", fullV5()},
		{"mqttv5 bare", &Connect{ProtocolName: "MQTT", ProtocolVersion: ProtocolV5, Properties: &paho.Properties{}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := tc.connect.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			c, err := ReadConnect(bytes.NewReader(raw), 1<<20)
			if err != nil {
				t.Fatalf("ReadConnect(Encode()): %v", err)
			}
			if !equalConnect(c, tc.connect) {
				t.Errorf("got\n%s\nwant\n%s", describe(c), describe(tc.connect))
			}
		})
	}
}

func TestEncodeFixtures(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ReadConnect(bytes.NewReader(tc.raw), 0)
			if err != nil {
				t.Fatalf("ReadConnect: %v", err)
			}
			raw, err := c.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			again, err := ReadConnect(bytes.NewReader(raw), 0)
			if err != nil {
				t.Fatalf("ReadConnect(Encode()): %v", err)
			}
			if !equalConnect(again, c) {
				t.Errorf("got\n%s\nwant\n%s", describe(again), describe(c))
			}
			// Without properties, whose order is free, and with a minimal
			// remaining length, the encoding is the client's own.
			if c.ProtocolVersion != ProtocolV5 && tc.raw[1]&0x80 == 0 && !bytes.Equal(raw, tc.raw) {
				t.Errorf("Encode\n% x\nwant\n% x", raw, tc.raw)
			}
		})
	}
}

// TestConnectAuthentication reads the Authentication Method and Data of
// CONNECTs with and without them, and re-encodes the one paho.golang
// sends with its token in them without both, as the proxy forwards it.
func TestConnectAuthentication(t *testing.T) {
	tests := []struct {
		fixture string
		method  string
		data    []byte
	}{
		{"paho mqttv5 token in authentication data", "JWT", []byte("eyJ.eyJ.sig0123")},
		{"mqttv5 repeated user property, authentication", "jwt", []byte{}},
		{"mosquitto_pub mqttv5 token in password", "", nil},
		{"mosquitto_pub mqttv311 token in password", "", nil},
	}
	for _, tc := range tests {
		c, err := ReadConnect(bytes.NewReader(validCase(tc.fixture).raw), 0)
		if err != nil {
			t.Fatalf("%s: %v", tc.fixture, err)
		}
		method, data := c.Authentication()
		if method != tc.method || !bytes.Equal(data, tc.data) || (data == nil) != (tc.data == nil) {
			t.Errorf("%s: Authentication() = %q, %q; want %q, %q", tc.fixture, method, data, tc.method, tc.data)
		}
	}

	c, err := ReadConnect(bytes.NewReader(validCase("paho mqttv5 token in authentication data").raw), 0)
	if err != nil {
		t.Fatal(err)
	}
	props := *c.Properties
	props.AuthMethod, props.AuthData = "", nil
	c.Properties = &props
	raw, err := c.Encode()
	want := unhex(
		"10 14",            // CONNECT, remaining length 20
		"0004 4d515454 05", // "MQTT", level 5
		"02 001e",          // flags: clean start; keep alive 30
		"02 17 00",         // properties: request problem information 0
		"0005 6465762d31",  // client id "dev-1"
	)
	if err != nil || !bytes.Equal(raw, want) {
		t.Errorf("without its authentication properties: % x, %v; want % x", raw, err, want)
	}
}

func TestEncodeRefuses(t *testing.T) {
	v311 := func(change func(*Connect)) *Connect {
		c := &Connect{ProtocolName: "MQTT", ProtocolVersion: ProtocolV311, ClientID: "c"}
		change(c)
		return c
	}
	v5 := func(change func(*Connect)) *Connect {
		c := fullV5()
		change(c)
		return c
	}
	tests := []struct {
		name    string
		connect *Connect
		want    error // nil for failures of size, which have no sentinel
		field   string
	}{
		{"no protocol name", &Connect{ProtocolVersion: ProtocolV311}, ErrUnsupportedVersion, ""},
		{"level 6", v311(func(c *Connect) { c.ProtocolVersion = 6 }), ErrUnsupportedVersion, ""},
		{"MQIsdp level 4", v311(func(c *Connect) { c.ProtocolName = "MQIsdp" }), ErrUnsupportedVersion, ""},
		{"level 0", v311(func(c *Connect) { c.ProtocolVersion = 0 }), ErrUnsupportedVersion, ""},
		{"bridge on MQTT 5", v5(func(c *Connect) { c.Bridge = true }), ErrUnsupportedVersion, ""},
		{"bridge bit in ProtocolVersion", v311(func(c *Connect) { c.ProtocolVersion = 0x84 }), ErrUnsupportedVersion, "bridge"},
		{"will QoS 3", v311(func(c *Connect) { c.WillFlag, c.WillQoS = true, 3 }), ErrMalformed, ""},
		{"will retain without will", v311(func(c *Connect) { c.WillRetain = true }), ErrMalformed, ""},
		{"password without user name", v311(func(c *Connect) { c.PasswordFlag = true }), ErrProtocolViolation, ""},
		{"client id not UTF-8", v311(func(c *Connect) { c.ClientID = "\xff" }), ErrMalformed, ""},
		{"user property not UTF-8", v5(func(c *Connect) { c.WillProperties.User[0].Value = "\xc3" }), ErrMalformed, ""},
		{"receive maximum 0", v5(func(c *Connect) { c.Properties.ReceiveMaximum = ptr[uint16](0) }), ErrProtocolViolation, ""},
		{"user name too long", v311(func(c *Connect) {
			c.UsernameFlag, c.Username = true, strings.Repeat("u", 65536)
		}), nil, "user name"},
		{"will payload too long", v311(func(c *Connect) {
			c.WillFlag, c.WillTopic, c.WillPayload = true, "t", make([]byte, 65536)
		}), nil, "will payload"},
		{"correlation data too long", v5(func(c *Connect) {
			c.WillProperties.CorrelationData = make([]byte, 65536)
		}), nil, "correlation data"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := tc.connect.Encode()
			if err == nil {
				t.Fatalf("Encode gave % x, want an error", raw)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name %q", err, tc.field)
			}
		})
	}
}

func TestEncodeWritesOnlyAllowedProperties(t *testing.T) {
	c := &Connect{ProtocolName: "MQTT", ProtocolVersion: ProtocolV5, Properties: &paho.Properties{
		SessionExpiryInterval: ptr[uint32](1),
		ContentType:           "will only",      // a will property
		TopicAlias:            ptr[uint16](3),   // a PUBLISH property
		ReasonString:          "CONNACK and on", // a server's property
	}}
	raw, err := c.Encode()
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	got, err := ReadConnect(bytes.NewReader(raw), 0)
	if err != nil {
		t.Fatalf("ReadConnect(Encode()): %v", err)
	}
	want := &paho.Properties{SessionExpiryInterval: ptr[uint32](1)}
	if !reflect.DeepEqual(got.Properties, want) {
		t.Errorf("properties %v, want %v", got.Properties, want)
	}
}

// toPaho converts c to paho's CONNECT, field for field.
func toPaho(c *Connect) *paho.Connect {
	return &paho.Connect{
		ProtocolName: c.ProtocolName, ProtocolVersion: c.ProtocolVersion, CleanStart: c.CleanStart,
		KeepAlive: c.KeepAlive, ClientID: c.ClientID,
		UsernameFlag: c.UsernameFlag, Username: c.Username, PasswordFlag: c.PasswordFlag, Password: c.Password,
		WillFlag: c.WillFlag, WillQOS: c.WillQoS, WillRetain: c.WillRetain, WillTopic: c.WillTopic,
		WillMessage: c.WillPayload, Properties: c.Properties, WillProperties: c.WillProperties,
	}
}

// pahoDecode decodes an MQTT 5 CONNECT with paho.
func pahoDecode(raw []byte, headerLen int) (*paho.Connect, error) {
	decoded := &paho.Connect{Properties: &paho.Properties{}}
	err := decoded.Unpack(bytes.NewBuffer(bytes.Clone(raw[headerLen:])))
	return decoded, err
}

// headerLen is the length of the fixed header of a well-formed packet.
func headerLen(raw []byte) int {
	n := 2
	for n < len(raw) && raw[n-1]&0x80 != 0 {
		n++
	}
	return n
}

// TestPahoAgrees checks the decoding of every accepted MQTT 5 fixture
// against paho's decoder.
func TestPahoAgrees(t *testing.T) {
	for _, tc := range validCases {
		if tc.want.ProtocolVersion != ProtocolV5 {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			c, err := ReadConnect(bytes.NewReader(tc.raw), 0)
			if err != nil {
				t.Fatalf("ReadConnect: %v", err)
			}
			theirs, err := pahoDecode(tc.raw, headerLen(tc.raw))
			if err != nil {
				t.Fatalf("paho Unpack: %v", err)
			}
			if ours := toPaho(c); !reflect.DeepEqual(ours, theirs) {
				t.Errorf("ours\n%v\npaho's\n%v", ours, theirs)
			}
		})
	}
}

// TestLongPropertiesRead: property lengths of two bytes and more, minimally
// encoded, are read; only a non-minimal encoding is refused.
func TestLongPropertiesRead(t *testing.T) {
	c := fullV5()
	c.Properties.User = append(c.Properties.User, paho.User{Key: "long", Value: strings.Repeat("x", 300)})
	raw, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadConnect(bytes.NewReader(raw), 4096)
	if err != nil {
		t.Fatalf("ReadConnect of properties over 128 bytes: %v", err)
	}
	if n := len(got.Properties.User); n != 3 {
		t.Errorf("%d user properties, want 3", n)
	}
}

// TestDecodedSizeBoundsHeld: what a decoded CONNECT holds besides Raw,
// measured as the live heap after a collection, is within DecodedSize,
// and DecodedSize is within twice it, for CONNECTs of many user
// properties of each string length that rounds differently, and a typical
// one.
func TestDecodedSizeBoundsHeld(t *testing.T) {
	users := func(n int, key, value string) []paho.User {
		u := make([]paho.User, n)
		for i := range u {
			u[i] = paho.User{Key: key, Value: value}
		}
		return u
	}
	for _, tc := range []struct {
		name  string
		props *paho.Properties
		will  *paho.Properties
	}{
		{"200,000 empty user properties", &paho.Properties{User: users(200_000, "", "")}, nil},
		{"100,000 one-byte user properties", &paho.Properties{User: users(100_000, "k", "v")}, nil},
		{"15,000 user properties of 17 and 33 bytes", &paho.Properties{User: users(15_000, strings.Repeat("k", 17), strings.Repeat("v", 33))},
			&paho.Properties{User: users(1_000, "", strings.Repeat("w", 40_000/1_000))}},
		{"a typical CONNECT", &paho.Properties{SessionExpiryInterval: ptr[uint32](3600), ReceiveMaximum: ptr[uint16](10),
			User: users(2, "region", "eu-west")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Connect{ProtocolName: "MQTT", ProtocolVersion: ProtocolV5, ClientID: "device-0001", Properties: tc.props,
				UsernameFlag: true, Username: "user", PasswordFlag: true, Password: []byte("eyJ.eyJ.sig")}
			if tc.will != nil {
				c.WillFlag, c.WillTopic, c.WillPayload, c.WillProperties = true, "will/device-0001", []byte("gone"), tc.will
			}
			raw, err := c.Encode()
			if err != nil {
				t.Fatal(err)
			}
			c, tc.props, tc.will = nil, nil, nil
			held := func() uint64 {
				runtime.GC()
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				return m.HeapAlloc
			}
			before := held()
			pk, err := ParseConnect(raw, 0)
			grown := int(held() - before)
			if err != nil {
				t.Fatal(err)
			}
			size := pk.DecodedSize()
			t.Logf("%d bytes of CONNECT: %d bytes held besides, DecodedSize %d (%.1f times the packet)", len(raw), grown, size, float64(size)/float64(len(raw)))
			// The heap moves by a few KiB of its own (the test framework's,
			// the runtime's) meanwhile: a small CONNECT's allocations are
			// lost in it, a large one's are held to the bound within it.
			const noise = 16 << 10
			if grown > size+noise {
				t.Errorf("decoded CONNECT holds %d bytes besides Raw, over DecodedSize %d", grown, size)
			}
			if grown > noise && size > 2*grown {
				t.Errorf("DecodedSize %d is over twice the %d bytes held", size, grown)
			}
			runtime.KeepAlive(pk)
		})
	}
}
