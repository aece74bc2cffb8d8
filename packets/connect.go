// Package packets reads the first MQTT packet a client sends and writes the
// CONNACK and DISCONNECT packets a server answers with, for MQTT 3.1, 3.1.1
// and 5.0, and for the bridges of brokers, which mark their 3.1 and 3.1.1
// CONNECT (Connect.Bridge); after the CONNECT, it frames the stream of
// packets in each direction and decodes and writes those a proxy inspects
// or sends. It knows nothing of tokens or sockets: it reads an io.Reader or
// the bytes it is given, and writes an io.Writer or appends to a byte
// slice.
//
// Typical usage, with a read deadline already set on conn:
//
//	pk, err := packets.ReadConnect(conn, 0)
//	var perr *packets.Error
//	switch {
//	case errors.As(err, &perr):
//		// A bad packet. WriteConnack writes nothing when the client's
//		// version has no code for the failure.
//		packets.WriteConnack(conn, perr.Version, perr.Code)
//		conn.Close()
//	case err != nil:
//		conn.Close() // the client went silent, was too slow, or left
//	default:
//		// check pk.Password, then send pk.Raw upstream
//	}
//
// ReadConnect reads like a hardened parser: the fixed header a byte at a
// time, the size limit checked before any allocation that grows with what
// the client declares, and never a byte past the CONNECT, so whatever the
// client pipelined behind it stays in the reader for the upstream
// connection. Decoding and validation are separate steps; every rule the
// validation applies cites the clause of the specification it enforces, as
// [MQTT-x.y.z-n] (numbered in the 3.1.1 or 5.0 specification, as stated) or
// as a section (§x.y.z) where the rule has no number.
//
// Limits: ReadConnect does not enforce what a server decides for itself
// (client identifier length and characters, topic syntax of the will topic,
// which authentication methods it knows): Connect.Authentication gives the
// method for the server to judge, and the broker behind the proxy judges
// the rest.
//
// # After the CONNECT
//
// A Framer per direction finds whole packets in whatever bytes a
// non-blocking socket yields, under a size limit, holding no buffer between
// packets; the decoders (Publish, Subscribe, Suback, Unsubscribe, Unsuback,
// Ack, Disconnect, Auth, Connack) read a Frame as a view of its bytes, and
// their Append methods write packets. Typical usage, with version from the
// CONNECT and buf the engine's read buffer:
//
//	f := packets.NewFramer(version, maxPacketSize)
//	defer f.Release()
//	refuse := func(err error) error {
//		var perr *packets.Error
//		if errors.As(err, &perr) { // a broken stream
//			packets.WriteDisconnect(conn, perr.Version, perr.Code) // MQTT 5 only
//		}
//		return err
//	}
//	var p packets.Publish
//	for {
//		n, err := conn.Read(buf) // whatever has arrived
//		if err != nil {
//			return err
//		}
//		f.Feed(buf[:n])
//		for {
//			frame, ok, err := f.Next()
//			if err != nil {
//				return refuse(err)
//			}
//			if !ok {
//				break // f keeps the start of the next packet: buf is free
//			}
//			if frame.Type == packets.TypePublish {
//				if err := p.Decode(version, frame); err != nil {
//					return refuse(err)
//				}
//				// judge p.Topic
//			}
//			upstream.Write(frame.Raw)
//		}
//	}
//
// Decoding after the CONNECT applies the rules of each packet as ReadConnect
// applies those of the CONNECT, and refuses with the same *Error, whose Code
// is then the DISCONNECT reason code (0x81, 0x82, 0x94, 0x95). The Framer
// judges only fixed headers; which packet may travel in which direction, and
// packet identifiers in flight, are the session's to judge.
package packets

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
	"unsafe"

	paho "github.com/eclipse/paho.golang/packets"
)

// Protocol levels, as sent in the CONNECT variable header.
const (
	ProtocolV31  byte = 3 // MQTT 3.1, protocol name "MQIsdp"
	ProtocolV311 byte = 4 // MQTT 3.1.1, protocol name "MQTT"
	ProtocolV5   byte = 5 // MQTT 5.0, protocol name "MQTT"
)

// DefaultMaxConnectSize is the largest CONNECT ReadConnect accepts when its
// maxSize is 0 or less (1 MiB, EMQX's default max_packet_size): room for
// the largest will payload (65,535 bytes) beside a token of several
// kilobytes, which brokers accept by default. ReadConnect's buffer grows
// with the bytes that arrive, not to the declared length, so a crowd of
// clients that declare large CONNECTs holds what they sent; a server
// bounds that sum over its pending clients.
const DefaultMaxConnectSize = 1 << 20

// MinConnectSize is the size of the shortest CONNECT: a two-byte fixed
// header, the 3.1.1 variable header (protocol name, level, flags, keep
// alive) and an empty client identifier. A reader that must not read past
// a CONNECT may still ask for this many bytes before it knows the
// packet's length: a shorter packet is refused whatever follows it.
const MinConnectSize = minConnectSize

const (
	nameMQTT   = "MQTT"
	nameMQIsdp = "MQIsdp"

	// bridgeFlag is bit 7 of the protocol level, which a broker's bridge
	// sets (see Connect.Bridge).
	bridgeFlag = 0x80

	// maxVarintSize is the longest variable byte integer: four bytes
	// (3.1.1 §2.2.3, 5.0 §1.5.5).
	maxVarintSize = 4
	// maxRemainingLength is the largest value four bytes can carry.
	maxRemainingLength = 268_435_455
	// maxFixedHeaderSize is the type byte and the longest remaining length.
	maxFixedHeaderSize = 1 + maxVarintSize
	// versionProbeSize is the longest protocol name (length prefix and
	// "MQIsdp") and the level: all ReadConnect reads of an oversize
	// CONNECT behind its fixed header.
	versionProbeSize = 2 + len(nameMQIsdp) + 1
	// minConnectSize is the shortest CONNECT: a two-byte fixed header, the
	// 3.1.1 variable header (protocol name, level, flags, keep alive) and
	// an empty client identifier.
	minConnectSize = 2 + (2 + len(nameMQTT) + 1 + 1 + 2) + 2

	// Connect flags (3.1.1 §3.1.2.3, 5.0 §3.1.2.3).
	flagReserved   = 0x01
	flagCleanStart = 0x02
	flagWill       = 0x04
	flagWillQoS    = 0x18
	flagWillRetain = 0x20
	flagPassword   = 0x40
	flagUsername   = 0x80
	shiftWillQoS   = 3
)

// Connect is a decoded CONNECT packet.
//
// The byte slices of a Connect that ReadConnect returns, those inside
// Properties and WillProperties included, are sub-slices of Raw: Raw is
// kept anyway, and sharing it spares an allocation per field. Their
// capacity ends with the field, so appending to one cannot overwrite Raw.
//
// The zero value is no valid CONNECT: Encode needs at least ProtocolName
// and ProtocolVersion.
type Connect struct {
	// ProtocolName is "MQIsdp" for MQTT 3.1 and "MQTT" for later versions.
	ProtocolName string
	// ProtocolVersion is the protocol level without the bridge bit:
	// ProtocolV31, ProtocolV311 or ProtocolV5.
	ProtocolVersion byte
	// Bridge says the client is another broker's bridge: its protocol level
	// has bit 7 set, 0x83 for MQTT 3.1 and 0x84 for 3.1.1. The bit is no
	// part of the specification; mosquitto's bridges set it (try_private,
	// their default), mosquitto and EMQX accept it, and a broker that sees
	// it keeps the retain flag of the messages it forwards to the bridge
	// and does not send the bridge its own messages back. MQTT 5 has no
	// such bit (its bridges ask for both with subscription options), so
	// Bridge is false for ProtocolV5. Encode sets the bit when Bridge is
	// set.
	Bridge bool
	// CleanStart is Clean Session in MQTT 3.1 and 3.1.1.
	CleanStart bool
	// KeepAlive is the keep alive interval in seconds; 0 turns it off.
	KeepAlive uint16
	// ClientID is the client identifier; it may be empty.
	ClientID string
	// UsernameFlag says a user name is present; Username is meaningful only
	// when it is set.
	UsernameFlag bool
	Username     string
	// PasswordFlag says a password is present; Password is meaningful only
	// when it is set, and may then be empty but not nil.
	PasswordFlag bool
	Password     []byte
	// WillFlag says a will message is present; WillQoS, WillRetain,
	// WillTopic, WillPayload and WillProperties are meaningful only when it
	// is set.
	WillFlag    bool
	WillQoS     byte
	WillRetain  bool
	WillTopic   string
	WillPayload []byte
	// Properties are the MQTT 5 CONNECT properties: never nil from
	// ReadConnect for MQTT 5; nil for 3.1 and 3.1.1, for which Encode
	// ignores them. Encode writes
	// only the properties a CONNECT may carry (5.0 §3.1.2.11) and treats nil
	// as none. An empty string property reads the same as an absent one, so
	// Encode leaves it out.
	Properties *paho.Properties
	// WillProperties are the MQTT 5 will properties (5.0 §3.1.3.2): never
	// nil from ReadConnect when WillFlag is set on MQTT 5, else nil. Encode
	// treats them as it treats Properties.
	WillProperties *paho.Properties
	// Raw is the exact bytes of the packet as the client sent them, fixed
	// header included. Encode ignores it.
	Raw []byte
}

// Authentication returns the MQTT 5 Authentication Method and Data of the
// CONNECT (5.0 §3.1.2.11.9, §3.1.2.11.10): an empty method when the client
// named none, as in every MQTT 3.1 and 3.1.1 CONNECT, and nil data when it
// sent none. A client that names a method asks the server to authenticate
// it by that method rather than by its user name and password (5.0 §4.12).
func (c *Connect) Authentication() (method string, data []byte) {
	if c.Properties == nil {
		return "", nil
	}
	return c.Properties.AuthMethod, c.Properties.AuthData
}

// DecodedSize bounds the heap that c's decoded fields hold besides Raw,
// in bytes: the Connect itself, its strings (copies of Raw's bytes, where
// its byte slices share Raw) and its properties, user properties
// included. A CONNECT of many tiny user properties decodes to several
// times its size, since each, 5 bytes in the packet when empty, becomes a
// 32-byte paho.User in a slice that grew by appending: a server that
// bounds what pending CONNECTs hold counts this as well as Raw.
func (c *Connect) DecodedSize() int {
	n := int(unsafe.Sizeof(*c))
	for _, s := range [...]string{c.ProtocolName, c.ClientID, c.Username, c.WillTopic} {
		n += allocatedSize(len(s))
	}
	for _, p := range [...]*paho.Properties{c.Properties, c.WillProperties} {
		if p == nil {
			continue
		}
		n += int(unsafe.Sizeof(*p)) + numericPropertiesSize + cap(p.User)*int(unsafe.Sizeof(paho.User{}))
		for s := range propertyStrings(p) {
			n += allocatedSize(len(s))
		}
	}
	return n
}

// numericPropertiesSize bounds what paho's optional numeric properties
// take besides paho.Properties: each is a pointer to a value of at most 8
// bytes, and there are 18 of them.
const numericPropertiesSize = 18 * 8

// allocatedSize bounds what the allocator takes for a string of n bytes.
// Below 16 bytes, the tiny allocator packs strings into shared 16-byte
// blocks, which costs each less than twice its length (alignment or the
// end of a block); up to 32 KiB, size classes round up by at most an
// eighth; above, to whole 8 KiB pages.
func allocatedSize(n int) int {
	switch {
	case n == 0:
		return 0
	case n < 16:
		return 2 * n
	case n <= 32<<10:
		return n + n/8 + 16
	default:
		return (n + 8<<10 - 1) &^ (8<<10 - 1)
	}
}

// ReadConnect reads one packet from r and decodes it as CONNECT. It never
// reads past the end of a packet it accepts, so anything the client
// pipelined after CONNECT stays unread in r; it reads the packet with two
// Reads when r has it all. maxSize caps the whole packet size (fixed header
// included); maxSize <= 0 means DefaultMaxConnectSize.
//
// A packet that is not an acceptable CONNECT gives an *Error wrapping one of
// ErrNotConnect, ErrMalformed, ErrProtocolViolation, ErrUnsupportedVersion
// or ErrTooLarge. I/O errors from r (EOF, deadline exceeded) are returned
// wrapped with context and are not *Error, so callers can tell a silent or
// slow client (close) from a bad packet (answer). Once the first byte is in,
// a premature end of input is io.ErrUnexpectedEOF.
//
// For an oversize CONNECT, ReadConnect reads at most the fixed header and
// the protocol name and level, to learn which version to refuse in, and
// allocates nothing that grows with the declared length.
func ReadConnect(r io.Reader, maxSize int) (*Connect, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxConnectSize
	}
	// The first read asks for as many bytes as the shortest CONNECT has,
	// so it cannot go past the end of a packet that is accepted, and for a
	// typical CONNECT two reads take the whole packet. Past a packet too
	// short to be a CONNECT it may read a few bytes, which go nowhere: the
	// packet is refused.
	var buf [minConnectSize]byte
	n, err := io.ReadAtLeast(r, buf[:], 1)
	if err != nil {
		return nil, fmt.Errorf("packets: read first packet: %w", err)
	}
	if err := checkConnectByte(buf[0]); err != nil {
		return nil, err
	}

	headerLen := 1
	remaining, err := readVarint("remaining length", func() (byte, error) {
		if headerLen == n {
			m, err := io.ReadAtLeast(r, buf[n:], 1)
			n += m
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return 0, fmt.Errorf("packets: read remaining length: %w", err)
			}
		}
		headerLen++
		return buf[headerLen-1], nil
	})
	switch {
	case errors.Is(err, ErrMalformed):
		return nil, newError(0, err)
	case err != nil:
		return nil, err
	}

	total := headerLen + remaining
	body := buf[headerLen:min(n, total)] // what the first reads took of the body
	if total > maxSize {
		return nil, tooLarge(r, body, remaining, total, maxSize)
	}
	raw, err := readBody(r, buf[:headerLen], body, remaining)
	if err != nil {
		return nil, err
	}
	return parseConnect(raw, headerLen)
}

// checkConnectByte refuses a first packet whose type and flags byte is not
// a CONNECT's.
func checkConnectByte(b byte) *Error {
	if packetType := PacketType(b >> 4); packetType != TypeConnect {
		return newError(0, fmt.Errorf("%w: packet type %d [MQTT-3.1.0-1]", ErrNotConnect, packetType))
	}
	if b&0x0F != 0 {
		// Reserved fixed header flags: 3.1.1 [MQTT-2.2.2-2] closes, 5.0
		// §2.1.3 calls the packet malformed.
		return newError(0, fmt.Errorf("%w: fixed header flags 0x%X, want 0 [MQTT-2.2.2-2]", ErrMalformed, b&0x0F))
	}
	return nil
}

// parseConnect decodes and validates raw, a whole packet whose fixed
// header is headerLen bytes; the Connect keeps raw as its Raw.
func parseConnect(raw []byte, headerLen int) (*Connect, error) {
	c := &Connect{Raw: raw}
	reservedFlag, err := c.decode(raw[headerLen:])
	if err == nil {
		err = c.validate(reservedFlag)
	}
	if err != nil {
		return nil, newError(c.ProtocolVersion, err)
	}
	return c, nil
}

// bodyChunk is the most ReadConnect allocates for a CONNECT body before
// its bytes arrive.
const bodyChunk = 4 << 10

// readBody reads the rest of the packet whose fixed header is header and
// whose body starts with begun, and returns the whole packet. The buffer grows as the bytes
// arrive, at most doubling, rather than to the declared length at once: a
// client that declares the largest CONNECT allowed and trickles it holds
// about what it sent, not the limit. A packet whose body fits in
// bodyChunk takes one allocation of its exact size.
func readBody(r io.Reader, header, begun []byte, remaining int) ([]byte, error) {
	total := len(header) + remaining
	raw := make([]byte, 0, min(total, len(header)+bodyChunk))
	raw = append(append(raw, header...), begun...)
	for {
		end := cap(raw)
		if err := readFull(r, raw[len(raw):end], "CONNECT"); err != nil {
			return nil, err
		}
		raw = raw[:end]
		if end == total {
			return raw, nil
		}
		grown := make([]byte, end, min(total, 2*end))
		copy(grown, raw)
		raw = grown
	}
}

// readFull fills p from r for the named part of a packet that has begun,
// so an end of input is unexpected whether or not part of p arrived.
func readFull(r io.Reader, p []byte, part string) error {
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("packets: read %s: %w", part, err)
	}
	return nil
}

// readVarint decodes the named variable byte integer (3.1.1 §2.2.3, 5.0
// §1.5.5), taking its bytes one at a time from next: at most four, the last
// without the continuation bit. Non-minimal encodings are decoded, not
// refused.
func readVarint(field string, next func() (byte, error)) (int, error) {
	value := 0
	for i := range maxVarintSize {
		b, err := next()
		if err != nil {
			return 0, err
		}
		value |= int(b&0x7F) << (7 * i)
		if b&0x80 == 0 {
			return value, nil
		}
	}
	return 0, fmt.Errorf("%w: %s longer than %d bytes", ErrMalformed, field, maxVarintSize)
}

// tooLarge refuses an oversize CONNECT. It reads at most the protocol name
// and level, of which begun holds what has been read already, so the
// refusal can use the client's version, and never past the declared
// packet; an I/O failure there leaves Version 0.
func tooLarge(r io.Reader, begun []byte, remaining, total, maxSize int) *Error {
	cause := fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, total, maxSize)
	version, err := probeVersion(r, begun, remaining)
	if err != nil {
		cause = fmt.Errorf("%w (version unknown: %w)", cause, err)
	}
	return newError(version, cause)
}

// probeVersion reads the protocol name and level at the start of a CONNECT
// body of remaining bytes, which starts with begun. It returns the version
// when they name one this package speaks, else 0.
func probeVersion(r io.Reader, begun []byte, remaining int) (byte, error) {
	var probe [max(versionProbeSize, minConnectSize)]byte
	have := copy(probe[:], begun)
	for {
		need, version := versionProbe(probe[:have], remaining)
		if have >= need {
			return version, nil
		}
		part := "protocol name"
		if have < 2 {
			part = "protocol name length"
		}
		if err := readFull(r, probe[have:need], part); err != nil {
			return 0, err
		}
		have = need
	}
}

// versionProbe says how many bytes of a CONNECT body of remaining bytes
// the protocol name and level take, as far as body, its first bytes,
// tells (more once the name's length is in), and once body has them, the
// version they name when it is one this package speaks, else 0.
func versionProbe(body []byte, remaining int) (need int, version byte) {
	switch {
	case remaining < 2:
		return 0, 0
	case len(body) < 2:
		return 2, 0
	}
	nameLen := int(body[0])<<8 | int(body[1])
	if nameLen != len(nameMQTT) && nameLen != len(nameMQIsdp) || remaining < 2+nameLen+1 {
		return 2, 0
	}
	need = 2 + nameLen + 1
	if len(body) < need {
		return need, 0
	}
	if _, version, _, err := checkProtocol(body[2:2+nameLen], body[2+nameLen]); err == nil {
		return need, version
	}
	return need, 0
}

// checkProtocol accepts the protocol name and level pairs this package
// speaks, a 3.1 or 3.1.1 level with bridgeFlag included, and returns the
// name as a constant, so decoding allocates none, and the level without
// bridgeFlag. A wrong name may be refused outright [MQTT-3.1.2-1]. An
// unsupported level under a known name is answered with return code 1
// [MQTT-3.1.2-2], in the 3.1 CONNACK for MQIsdp and the 3.1.1 one for
// MQTT, whatever the level (0 and MQTT 5 with bridgeFlag included), as
// mosquitto answers: version is then ProtocolV31 or ProtocolV311, else 0.
func checkProtocol(name []byte, level byte) (canonicalName string, version byte, bridge bool, err error) {
	bridge = level&bridgeFlag != 0
	switch {
	case string(name) == nameMQIsdp && level&^bridgeFlag == ProtocolV31:
		return nameMQIsdp, ProtocolV31, bridge, nil
	case string(name) == nameMQTT && level&^bridgeFlag == ProtocolV311:
		return nameMQTT, ProtocolV311, bridge, nil
	case string(name) == nameMQTT && level == ProtocolV5:
		return nameMQTT, ProtocolV5, false, nil
	case string(name) == nameMQIsdp:
		// Not an MQTT 5 client whatever its level: answered as 3.1 is.
		return "", ProtocolV31, false, fmt.Errorf("%w: protocol %q level 0x%02X [MQTT-3.1.2-2]", ErrUnsupportedVersion, name, level)
	case string(name) == nameMQTT:
		return "", ProtocolV311, false, fmt.Errorf("%w: protocol %q level 0x%02X [MQTT-3.1.2-2]", ErrUnsupportedVersion, name, level)
	default:
		return "", 0, false, fmt.Errorf("%w: protocol name %q [MQTT-3.1.2-1]", ErrUnsupportedVersion, name)
	}
}

// decode parses body, the CONNECT variable header and payload, into c. It
// sets c.ProtocolVersion as soon as the level is known, so a failure can be
// answered in the client's version. It returns the reserved connect flag,
// which Connect has no field for, for validate to judge.
func (c *Connect) decode(body []byte) (reservedFlag bool, err error) {
	d := decoder{buf: body}
	name := d.binary("protocol name")
	level := d.byte("protocol level")
	if d.err != nil {
		return false, d.err
	}
	c.ProtocolName, c.ProtocolVersion, c.Bridge, err = checkProtocol(name, level)
	if err != nil {
		return false, err
	}
	v5 := c.ProtocolVersion == ProtocolV5

	flags := d.byte("connect flags")
	c.CleanStart = flags&flagCleanStart != 0
	c.WillFlag = flags&flagWill != 0
	c.WillQoS = (flags & flagWillQoS) >> shiftWillQoS
	c.WillRetain = flags&flagWillRetain != 0
	c.PasswordFlag = flags&flagPassword != 0
	c.UsernameFlag = flags&flagUsername != 0
	c.KeepAlive = d.uint16("keep alive")
	if v5 {
		c.Properties = d.properties(connectProperties)
	}

	// The payload's fields come in this order, each present when its flag
	// says so (3.1.1 §3.1.3, 5.0 §3.1.3).
	c.ClientID = d.string("client identifier")
	if c.WillFlag {
		if v5 {
			c.WillProperties = d.properties(willProperties)
		}
		c.WillTopic = d.string("will topic")
		c.WillPayload = d.binary("will payload")
	}
	if c.UsernameFlag {
		c.Username = d.string("user name")
	}
	if c.PasswordFlag {
		c.Password = d.binary("password")
	}
	if d.err == nil && d.off != len(d.buf) {
		// The remaining length counts exactly the fields the flags announce.
		return false, fmt.Errorf("%w: %d bytes after the last field", ErrMalformed, len(d.buf)-d.off)
	}
	return flags&flagReserved != 0, d.err
}

// validate applies the rules of a CONNECT that decoding does not, to a
// decoded Connect or to one about to be encoded.
func (c *Connect) validate(reservedFlag bool) error {
	v5 := c.ProtocolVersion == ProtocolV5
	switch {
	case reservedFlag:
		// [MQTT-3.1.2-3] in both: the reserved flag must be 0; 5.0 calls
		// the packet malformed.
		return fmt.Errorf("%w: reserved connect flag set [MQTT-3.1.2-3]", ErrMalformed)
	case c.WillQoS > 2:
		// 3.1.1 [MQTT-3.1.2-14], 5.0 [MQTT-3.1.2-12]: will QoS 3 is malformed.
		return fmt.Errorf("%w: will QoS %d [MQTT-3.1.2-14]", ErrMalformed, c.WillQoS)
	case !c.WillFlag && (c.WillQoS != 0 || c.WillRetain):
		// 3.1.1 [MQTT-3.1.2-13] and [MQTT-3.1.2-15], 5.0 [MQTT-3.1.2-11]
		// and [MQTT-3.1.2-13]: without a will, its QoS and retain are 0.
		return fmt.Errorf("%w: will QoS %d, retain %t without a will [MQTT-3.1.2-13]", ErrMalformed, c.WillQoS, c.WillRetain)
	case !v5 && c.PasswordFlag && !c.UsernameFlag:
		// 3.1.1 [MQTT-3.1.2-22], and MQTT 3.1 alike: a password needs a
		// user name. MQTT 5 drops the rule.
		return fmt.Errorf("%w: password without user name [MQTT-3.1.2-22]", ErrProtocolViolation)
	}

	// Fields the flags leave out are not on the wire, so not judged.
	fields := [...]struct {
		name, value string
		present     bool
	}{
		{"client identifier", c.ClientID, true},
		{"will topic", c.WillTopic, c.WillFlag},
		{"user name", c.Username, c.UsernameFlag},
	}
	for _, field := range fields {
		if problem := stringProblem(field.value); field.present && problem != "" {
			return fmt.Errorf("%w: %s %q %s", ErrMalformed, field.name, field.value, problem)
		}
	}
	if !v5 {
		return nil
	}
	if err := checkProperties(c.Properties, connectProperties); err != nil {
		return err
	}
	if c.WillFlag {
		return checkProperties(c.WillProperties, willProperties)
	}
	return nil
}

// stringProblem applies the rules of a UTF-8 encoded string to s and names
// what breaks them, or returns "". The string must be well-formed UTF-8,
// which excludes the surrogates U+D800 to U+DFFF (3.1.1 [MQTT-1.5.3-1], 5.0
// [MQTT-1.5.4-1]), and hold no U+0000 (3.1.1 [MQTT-1.5.3-2], 5.0
// [MQTT-1.5.4-2]). Either failure is malformed.
func stringProblem(s string) string {
	switch {
	case !utf8.ValidString(s):
		return "is not valid UTF-8 [MQTT-1.5.4-1]"
	case strings.IndexByte(s, 0) >= 0:
		return "contains U+0000 [MQTT-1.5.4-2]"
	default:
		return ""
	}
}

// decoder reads MQTT data types from a packet held whole in memory,
// checking each against what is left. The first failure sticks and later
// reads return zero values, so a run of fields reads straight and the
// caller checks err once.
type decoder struct {
	buf []byte
	off int
	err error
}

// next returns the next n bytes, capped so that appending to them cannot
// overwrite what follows.
func (d *decoder) next(n int, field string) []byte {
	if d.err != nil {
		return nil
	}
	if left := len(d.buf) - d.off; n > left {
		d.err = fmt.Errorf("%w: %s needs %d bytes, %d left", ErrMalformed, field, n, left)
		return nil
	}
	b := d.buf[d.off : d.off+n : d.off+n]
	d.off += n
	return b
}

func (d *decoder) byte(field string) byte {
	if b := d.next(1, field); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) uint16(field string) uint16 {
	if b := d.next(2, field); b != nil {
		return uint16(b[0])<<8 | uint16(b[1])
	}
	return 0
}

func (d *decoder) uint32(field string) uint32 {
	if b := d.next(4, field); b != nil {
		return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	}
	return 0
}

// binary reads binary data: a two-byte length, then that many bytes. It
// returns an empty, non-nil slice for length 0.
func (d *decoder) binary(field string) []byte {
	return d.next(int(d.uint16(field)), field)
}

// string reads a UTF-8 encoded string; validate judges its content.
func (d *decoder) string(field string) string {
	return string(d.binary(field))
}

// varint reads a variable byte integer inside the packet (an MQTT 5
// property length), which must be minimally encoded [MQTT-1.5.5-1], as
// mosquitto requires: a last byte of 0 after the first is refused.
func (d *decoder) varint(field string) int {
	start := d.off
	v, err := readVarint(field, func() (byte, error) {
		b := d.byte(field)
		return b, d.err
	})
	if err == nil && d.err == nil && d.off-start > 1 && d.buf[d.off-1] == 0 {
		err = fmt.Errorf("%w: %s not minimally encoded [MQTT-1.5.5-1]", ErrMalformed, field)
	}
	if d.err == nil {
		d.err = err
	}
	return v
}
