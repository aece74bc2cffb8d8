package packets

import "errors"

// The causes of an *Error. Every failure to accept a CONNECT, or a packet
// after it, wraps exactly one of them, so errors.Is tells them apart.
var (
	// ErrNotConnect: the first packet is not a CONNECT. The server closes
	// without a CONNACK [MQTT-3.1.0-1].
	ErrNotConnect = errors.New("packets: first packet is not CONNECT")
	// ErrMalformed: the packet cannot be parsed, or breaks a rule the
	// specification calls malformed. Code MalformedPacket (0x81).
	ErrMalformed = errors.New("packets: malformed packet")
	// ErrProtocolViolation: the packet parses but carries values the
	// specification forbids. Code ProtocolError (0x82).
	ErrProtocolViolation = errors.New("packets: packet violates the protocol")
	// ErrUnsupportedVersion: the protocol name or level is not one of MQTT
	// 3.1, 3.1.1 or 5.0. Code UnsupportedProtocolVersion (0x84).
	ErrUnsupportedVersion = errors.New("packets: unsupported protocol name or level")
	// ErrTooLarge: the packet is longer than the size limit. Code
	// PacketTooLarge (0x95).
	ErrTooLarge = errors.New("packets: packet exceeds the size limit")
	// ErrTopicAliasInvalid: an MQTT 5 PUBLISH carries a topic alias of 0
	// or one above the receiver's Topic Alias Maximum. Code
	// TopicAliasInvalid (0x94).
	ErrTopicAliasInvalid = errors.New("packets: topic alias invalid")
	// ErrQuotaExceeded: a packet would make the receiver hold more than
	// it allows, such as topic aliases beyond TopicAliases.MaxBytes. Code
	// QuotaExceeded (0x97).
	ErrQuotaExceeded = errors.New("packets: quota exceeded")
)

// Error is a failure to read or accept a packet. Code says how to answer.
// For the first packet the proxy sends CONNACK(Code) when Version is known
// and Code maps for that version, and otherwise closes without a CONNACK;
// WriteConnack follows the same rule, so writing the CONNACK it allows is
// enough. For a later packet an MQTT 5 peer gets DISCONNECT(Code) before
// the close and an MQTT 3 peer just the close, as WriteDisconnect does.
//
// ReadConnect, the Framer and the decoders fill every field; the zero value
// describes nothing.
type Error struct {
	// Code is the reason code to refuse the client with.
	Code ReasonCode
	// Version is the protocol version to answer in: the client's (without
	// the bridge bit) if it was read before the failure, else 0. For an
	// unsupported level under a known protocol name it is ProtocolV31 for
	// MQIsdp and ProtocolV311 for MQTT, so the client gets a CONNACK with
	// return code 1 [MQTT-3.1.2-2], as mosquitto answers; Err names the
	// level.
	Version byte
	// Err is the cause: one of the sentinels of this package, possibly
	// wrapped with detail.
	Err error
}

// Error returns the cause's message, or names the code when there is none.
func (e *Error) Error() string {
	if e.Err == nil {
		return "packets: CONNECT refused: " + e.Code.String()
	}
	return e.Err.Error()
}

// Unwrap returns the cause, so errors.Is(err, ErrMalformed) and friends
// work through an *Error.
func (e *Error) Unwrap() error { return e.Err }

// newError wraps cause, which wraps one of the sentinels, with the reason
// code that sentinel answers with.
func newError(version byte, cause error) *Error {
	return &Error{Code: reasonFor(cause), Version: version, Err: cause}
}

func reasonFor(cause error) ReasonCode {
	switch {
	case errors.Is(cause, ErrTooLarge):
		return PacketTooLarge
	case errors.Is(cause, ErrUnsupportedVersion):
		return UnsupportedProtocolVersion
	case errors.Is(cause, ErrTopicAliasInvalid):
		return TopicAliasInvalid
	case errors.Is(cause, ErrQuotaExceeded):
		return QuotaExceeded
	// A first packet that is not CONNECT is a protocol error in MQTT 5
	// terms; Version is 0 then, so it is never answered.
	case errors.Is(cause, ErrProtocolViolation), errors.Is(cause, ErrNotConnect):
		return ProtocolError
	default:
		return MalformedPacket
	}
}
