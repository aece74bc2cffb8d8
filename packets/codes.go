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

// Reason codes of the packets after CONNECT (MQTT 5 §2.4): acknowledgements,
// SUBACK and UNSUBACK, DISCONNECT and AUTH. 0x00 is also Normal
// disconnection and Granted QoS 0; 0x80 is also the failure return code of
// an MQTT 3.1.1 SUBACK.
const (
	GrantedQoS1                         ReasonCode = 0x01
	GrantedQoS2                         ReasonCode = 0x02
	DisconnectWithWill                  ReasonCode = 0x04
	NoMatchingSubscribers               ReasonCode = 0x10
	NoSubscriptionExisted               ReasonCode = 0x11
	ContinueAuthentication              ReasonCode = 0x18
	ReAuthenticate                      ReasonCode = 0x19
	ImplementationSpecificError         ReasonCode = 0x83
	BadAuthenticationMethod             ReasonCode = 0x8C
	KeepAliveTimeout                    ReasonCode = 0x8D
	SessionTakenOver                    ReasonCode = 0x8E
	TopicFilterInvalid                  ReasonCode = 0x8F
	TopicNameInvalid                    ReasonCode = 0x90
	PacketIdentifierInUse               ReasonCode = 0x91
	PacketIdentifierNotFound            ReasonCode = 0x92
	ReceiveMaximumExceeded              ReasonCode = 0x93
	TopicAliasInvalid                   ReasonCode = 0x94
	MessageRateTooHigh                  ReasonCode = 0x96
	AdministrativeAction                ReasonCode = 0x98
	PayloadFormatInvalid                ReasonCode = 0x99
	RetainNotSupported                  ReasonCode = 0x9A
	QoSNotSupported                     ReasonCode = 0x9B
	UseAnotherServer                    ReasonCode = 0x9C
	ServerMoved                         ReasonCode = 0x9D
	SharedSubscriptionsNotSupported     ReasonCode = 0x9E
	MaximumConnectTime                  ReasonCode = 0xA0
	SubscriptionIdentifiersNotSupported ReasonCode = 0xA1
	WildcardSubscriptionsNotSupported   ReasonCode = 0xA2
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
	case GrantedQoS1:
		return "granted QoS 1"
	case GrantedQoS2:
		return "granted QoS 2"
	case DisconnectWithWill:
		return "disconnect with will message"
	case NoMatchingSubscribers:
		return "no matching subscribers"
	case NoSubscriptionExisted:
		return "no subscription existed"
	case ContinueAuthentication:
		return "continue authentication"
	case ReAuthenticate:
		return "re-authenticate"
	case ImplementationSpecificError:
		return "implementation specific error"
	case BadAuthenticationMethod:
		return "bad authentication method"
	case KeepAliveTimeout:
		return "keep alive timeout"
	case SessionTakenOver:
		return "session taken over"
	case TopicFilterInvalid:
		return "topic filter invalid"
	case TopicNameInvalid:
		return "topic name invalid"
	case PacketIdentifierInUse:
		return "packet identifier in use"
	case PacketIdentifierNotFound:
		return "packet identifier not found"
	case ReceiveMaximumExceeded:
		return "receive maximum exceeded"
	case TopicAliasInvalid:
		return "topic alias invalid"
	case MessageRateTooHigh:
		return "message rate too high"
	case AdministrativeAction:
		return "administrative action"
	case PayloadFormatInvalid:
		return "payload format invalid"
	case RetainNotSupported:
		return "retain not supported"
	case QoSNotSupported:
		return "QoS not supported"
	case UseAnotherServer:
		return "use another server"
	case ServerMoved:
		return "server moved"
	case SharedSubscriptionsNotSupported:
		return "shared subscriptions not supported"
	case MaximumConnectTime:
		return "maximum connect time"
	case SubscriptionIdentifiersNotSupported:
		return "subscription identifiers not supported"
	case WildcardSubscriptionsNotSupported:
		return "wildcard subscriptions not supported"
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
