package packets

import (
	"fmt"
	"io"
	"math"
)

// Encode encodes c as a CONNECT packet of its ProtocolVersion, fixed header
// included: the inverse of ReadConnect, for tests and for rewriting a
// client's CONNECT before it goes upstream. Flags come from the fields:
// UsernameFlag, PasswordFlag and WillFlag decide which fields are written,
// Bridge sets bit 7 of the protocol level. It refuses, with an error
// wrapping the sentinel ReadConnect would, a Connect that ReadConnect would
// not accept (Bridge on MQTT 5 included), and fields too long for the wire.
func (c *Connect) Encode() ([]byte, error) {
	level := c.level()
	_, version, _, err := checkProtocol([]byte(c.ProtocolName), level)
	if err == nil && version != c.ProtocolVersion {
		// The bit belongs in Bridge: ProtocolVersion 0x84 would come back
		// from ReadConnect as 4.
		err = fmt.Errorf("%w: ProtocolVersion 0x%02X has the bridge bit set", ErrUnsupportedVersion, c.ProtocolVersion)
	}
	if err == nil {
		err = c.validate(false)
	}
	if err != nil {
		return nil, fmt.Errorf("packets: encode CONNECT: %w", err)
	}
	v5 := c.ProtocolVersion == ProtocolV5

	// The body goes behind room for the longest fixed header, which is
	// then written right before it: one allocation when the hint holds.
	sizeHint := maxFixedHeaderSize + 16 + len(c.ProtocolName) + len(c.ClientID) +
		len(c.WillTopic) + len(c.WillPayload) + len(c.Username) + len(c.Password)
	if v5 {
		sizeHint += 64
	}
	e := encoder{buf: make([]byte, maxFixedHeaderSize, sizeHint)}
	e.string(c.ProtocolName, "protocol name")
	e.byte(level)
	e.byte(c.flags())
	e.uint16(c.KeepAlive)
	if v5 {
		e.properties(c.Properties, connectProperties)
	}
	e.string(c.ClientID, "client identifier")
	if c.WillFlag {
		if v5 {
			e.properties(c.WillProperties, willProperties)
		}
		e.string(c.WillTopic, "will topic")
		e.binary(c.WillPayload, "will payload")
	}
	if c.UsernameFlag {
		e.string(c.Username, "user name")
	}
	if c.PasswordFlag {
		e.binary(c.Password, "password")
	}
	remaining := len(e.buf) - maxFixedHeaderSize
	if e.err == nil && remaining > maxRemainingLength {
		e.err = fmt.Errorf("%d bytes, more than the %d a packet holds", remaining, maxRemainingLength)
	}
	if e.err != nil {
		return nil, fmt.Errorf("packets: encode CONNECT: %w", e.err)
	}

	header := encoder{buf: make([]byte, 0, maxFixedHeaderSize)}
	header.byte(byte(TypeConnect) << 4)
	header.varint(remaining)
	start := maxFixedHeaderSize - len(header.buf)
	copy(e.buf[start:], header.buf)
	return e.buf[start:], nil
}

// level is the protocol level on the wire: ProtocolVersion, with the
// bridge bit when Bridge is set.
func (c *Connect) level() byte {
	if c.Bridge {
		return c.ProtocolVersion | bridgeFlag
	}
	return c.ProtocolVersion
}

// flags packs the connect flags (3.1.1 §3.1.2.3, 5.0 §3.1.2.3).
func (c *Connect) flags() byte {
	var f byte
	if c.CleanStart {
		f |= flagCleanStart
	}
	if c.WillFlag {
		f |= flagWill | (c.WillQoS<<shiftWillQoS)&flagWillQoS
		if c.WillRetain {
			f |= flagWillRetain
		}
	}
	if c.PasswordFlag {
		f |= flagPassword
	}
	if c.UsernameFlag {
		f |= flagUsername
	}
	return f
}

// WriteConnack writes a CONNACK refusing or accepting a client of the given
// protocol version, with session present 0 (a refusal must have it 0
// [MQTT-3.2.2-4]; an acceptance here starts nothing): Connack.Append's
// packet, with code mapped for the version.
//
// For ProtocolV5 it writes the reason code and empty properties. For any
// other version, unsupported levels included, it writes the 4-byte MQTT
// 3.1/3.1.1 packet with the mapped return code: how a 3.1.1 server answers
// a level it does not speak [MQTT-3.1.2-2]. It writes nothing and returns an
// error when the client cannot be answered: version 0 (unknown), a code
// with no v3 return code for a v3 client, or a v5 code that is no CONNACK
// reason code (5.0 §3.2.2.2).
func WriteConnack(w io.Writer, version byte, code ReasonCode) error {
	connack := Connack{ReasonCode: code}
	switch version {
	case 0:
		return fmt.Errorf("packets: no CONNACK for %v: protocol version unknown", code)
	case ProtocolV5:
	default:
		returnCode, ok := code.V3ReturnCode()
		if !ok {
			return fmt.Errorf("packets: no MQTT 3 CONNACK return code for %v", code)
		}
		connack.ReasonCode = ReasonCode(returnCode)
	}
	packet, err := connack.Append(nil, version)
	if err != nil {
		return err
	}
	return writePacket(w, "CONNACK", packet)
}

// WriteDisconnect writes an MQTT 5 DISCONNECT with the reason code,
// Disconnect.Append's packet; for any other version (MQTT 3 has no server
// DISCONNECT) it writes nothing and returns nil. A code that is no
// DISCONNECT reason code (5.0 §3.14.2.1), or one only a client sends
// (under 0x80 other than Success), gives an error.
func WriteDisconnect(w io.Writer, version byte, code ReasonCode) error {
	if version != ProtocolV5 {
		return nil
	}
	if code != Success && code < 0x80 {
		// Under 0x80 only Success is a server's (5.0 §2.4); 0x04,
		// disconnect with will, is a client's.
		return fmt.Errorf("packets: %v is no reason code a server disconnects with", code)
	}
	packet, err := (&Disconnect{ReasonCode: code}).Append(nil, version)
	if err != nil {
		return err
	}
	return writePacket(w, "DISCONNECT", packet)
}

func writePacket(w io.Writer, name string, packet []byte) error {
	if _, err := w.Write(packet); err != nil {
		return fmt.Errorf("packets: write %s: %w", name, err)
	}
	return nil
}

// encoder appends MQTT data types to buf. The first failure sticks and
// later writes are dropped.
type encoder struct {
	buf []byte
	err error
}

func (e *encoder) byte(b byte) { e.buf = append(e.buf, b) }

func (e *encoder) uint16(v uint16) { e.buf = append(e.buf, byte(v>>8), byte(v)) }

func (e *encoder) uint32(v uint32) {
	e.buf = append(e.buf, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func (e *encoder) binary(b []byte, field string) { appendLengthPrefixed(e, b, field) }

func (e *encoder) string(s string, field string) { appendLengthPrefixed(e, s, field) }

// appendLengthPrefixed writes a two-byte length and v: binary data or a
// UTF-8 encoded string. Longer than 65,535 bytes is an error, not a silent
// cut as in paho.
func appendLengthPrefixed[T string | []byte](e *encoder, v T, field string) {
	if len(v) > math.MaxUint16 {
		if e.err == nil {
			e.err = fmt.Errorf("%s is %d bytes, more than the %d a field holds", field, len(v), math.MaxUint16)
		}
		return
	}
	e.uint16(uint16(len(v)))
	e.buf = append(e.buf, v...)
}

// varint writes v as a variable byte integer, in the fewest bytes. v is at
// most maxRemainingLength where it matters; a larger v only makes the
// packet longer than that, which Encode refuses.
func (e *encoder) varint(v int) {
	for {
		b := byte(v & 0x7F)
		v >>= 7
		if v == 0 {
			e.buf = append(e.buf, b)
			return
		}
		e.buf = append(e.buf, b|0x80)
	}
}
