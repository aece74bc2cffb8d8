package packets

import "fmt"

// ReasonCode is an MQTT 5 reason code. Its v3 CONNACK return code comes
// from V3ReturnCode. The zero value is Success.
type ReasonCode byte

// Reason codes a server sends in CONNACK or DISCONNECT (MQTT 5 §2.4).
const (
	Success                    ReasonCode = 0x00
	UnspecifiedError           ReasonCode = 0x80
	MalformedPacket            ReasonCode = 0x81
	ProtocolError              ReasonCode = 0x82
	UnsupportedProtocolVersion ReasonCode = 0x84
	ClientIdentifierNotValid   ReasonCode = 0x85
	BadUserNameOrPassword      ReasonCode = 0x86
	NotAuthorized              ReasonCode = 0x87
	ServerUnavailable          ReasonCode = 0x88
	ServerBusy                 ReasonCode = 0x89
	Banned                     ReasonCode = 0x8A
	ServerShuttingDown         ReasonCode = 0x8B
	PacketTooLarge             ReasonCode = 0x95
	QuotaExceeded              ReasonCode = 0x97
	ConnectionRateExceeded     ReasonCode = 0x9F
)

// String returns the code's name as the MQTT 5 specification writes it, in
// lower case: "bad user name or password". Codes without a constant in this
// package read "reason code 0xNN".
func (c ReasonCode) String() string {
	switch c {
	case Success:
		return "success"
	case UnspecifiedError:
		return "unspecified error"
	case MalformedPacket:
		return "malformed packet"
	case ProtocolError:
		return "protocol error"
	case UnsupportedProtocolVersion:
		return "unsupported protocol version"
	case ClientIdentifierNotValid:
		return "client identifier not valid"
	case BadUserNameOrPassword:
		return "bad user name or password"
	case NotAuthorized:
		return "not authorized"
	case ServerUnavailable:
		return "server unavailable"
	case ServerBusy:
		return "server busy"
	case Banned:
		return "banned"
	case ServerShuttingDown:
		return "server shutting down"
	case PacketTooLarge:
		return "packet too large"
	case QuotaExceeded:
		return "quota exceeded"
	case ConnectionRateExceeded:
		return "connection rate exceeded"
	default:
		return fmt.Sprintf("reason code 0x%02X", byte(c))
	}
}

// V3ReturnCode maps c to the MQTT 3.1/3.1.1 CONNACK return code; ok is false
// when v3 has no such code and the server must just close (malformed packet,
// packet too large, protocol error). The mapping is the one MQTT brokers
// use for clients of both generations:
// 0x00 -> 0 accepted; 0x84 -> 1 unacceptable protocol version;
// 0x85 -> 2 identifier rejected; 0x80, 0x88, 0x89, 0x8B, 0x97, 0x9F -> 3
// server unavailable; 0x86 -> 4 bad user name or password; 0x87, 0x8A -> 5
// not authorized.
func (c ReasonCode) V3ReturnCode() (code byte, ok bool) {
	switch c {
	case Success:
		return 0, true
	case UnsupportedProtocolVersion:
		return 1, true
	case ClientIdentifierNotValid:
		return 2, true
	case UnspecifiedError, ServerUnavailable, ServerBusy, ServerShuttingDown, QuotaExceeded, ConnectionRateExceeded:
		return 3, true
	case BadUserNameOrPassword:
		return 4, true
	case NotAuthorized, Banned:
		return 5, true
	default:
		return 0, false
	}
}
