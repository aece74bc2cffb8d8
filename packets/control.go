package packets

import (
	"fmt"

	paho "github.com/eclipse/paho.golang/packets"
)

// Ack is a decoded PUBACK, PUBREC, PUBREL or PUBCOMP: the answers of the
// QoS 1 and QoS 2 flows (3.1.1 and 5.0 §3.4 to §3.7).
type Ack struct {
	// Type is TypePuback, TypePubrec, TypePubrel or TypePubcomp.
	Type     PacketType
	PacketID uint16
	// ReasonCode is the MQTT 5 reason code. MQTT 3 has none: Decode sets
	// Success, and Append leaves it out, as it leaves out Properties.
	ReasonCode ReasonCode
	// Properties are the MQTT 5 properties (Reason String, User
	// Properties): nil when there are none.
	Properties *paho.Properties
}

var (
	ackProperties = newPropertySet("acknowledgement properties", paho.PropReasonString, paho.PropUser)
	// Reason codes of PUBACK and PUBREC (5.0 §3.4.2.1, §3.5.2.1), and of
	// PUBREL and PUBCOMP (§3.6.2.1, §3.7.2.1).
	publishAckCodes = newReasonSet(Success, NoMatchingSubscribers, UnspecifiedError, ImplementationSpecificError,
		NotAuthorized, TopicNameInvalid, PacketIdentifierInUse, QuotaExceeded, PayloadFormatInvalid)
	releaseAckCodes = newReasonSet(Success, PacketIdentifierNotFound)
)

// Decode decodes fr, one of the four acknowledgements, into a.
func (a *Ack) Decode(version byte, fr Frame) error {
	if fr.Type < TypePuback || fr.Type > TypePubcomp {
		return fmt.Errorf("packets: decode acknowledgement: frame is %v", fr.Type)
	}
	if err := checkFrame(version, fr, fr.Type); err != nil {
		return err
	}
	*a = Ack{Type: fr.Type}
	body := fr.Body()
	d := decoder{buf: body}
	a.PacketID = d.uint16(fr.Type.String() + " packet identifier")
	if version == ProtocolV5 {
		// The reason code and the property length may be left out: a
		// Remaining Length of 2 means Success, of 3 no properties
		// (§3.4.2.1, §3.4.2.2.1).
		if len(body) > 2 {
			a.ReasonCode = ReasonCode(d.byte(fr.Type.String() + " reason code"))
		}
		if len(body) > 3 {
			a.Properties = d.optionalProperties(ackProperties)
		}
	}
	err := d.end(fr.Type)
	if err == nil {
		err = a.check(version)
	}
	if err != nil {
		return newError(version, err)
	}
	return nil
}

// Append appends a, encoded for the given version, to dst, in the shortest
// form, as mosquitto writes it: for MQTT 5 without reason code for Success
// without properties, and without property length when there are none.
func (a *Ack) Append(dst []byte, version byte) ([]byte, error) {
	if a.Type < TypePuback || a.Type > TypePubcomp {
		return dst, fmt.Errorf("packets: encode acknowledgement: type %v", a.Type)
	}
	if err := a.check(version); err != nil {
		return dst, fmt.Errorf("packets: encode %v: %w", a.Type, err)
	}
	first := byte(a.Type) << 4
	if a.Type == TypePubrel {
		first |= 0x02
	}
	w := beginPacket(dst)
	w.uint16(a.PacketID)
	if version == ProtocolV5 {
		w.reasonAndProperties(a.ReasonCode, a.Properties, ackProperties, true)
	}
	return w.finish(first, a.Type)
}

func (a *Ack) check(version byte) error {
	if a.PacketID == 0 {
		// It answers a PUBLISH or PUBREL, whose identifier is not 0
		// [MQTT-2.2.1-3].
		return fmt.Errorf("%w: %v with packet identifier 0 [MQTT-2.2.1-3]", ErrProtocolViolation, a.Type)
	}
	if version != ProtocolV5 {
		return nil
	}
	codes := publishAckCodes
	if a.Type == TypePubrel || a.Type == TypePubcomp {
		codes = releaseAckCodes
	}
	if !codes.has(a.ReasonCode) {
		return fmt.Errorf("%w: %v with reason code 0x%02X", ErrProtocolViolation, a.Type, byte(a.ReasonCode))
	}
	return checkProperties(a.Properties, ackProperties)
}

// Disconnect is a decoded DISCONNECT (3.1.1 §3.14, 5.0 §3.14).
type Disconnect struct {
	// ReasonCode is the MQTT 5 reason code. MQTT 3 has none: Decode sets
	// Success, and Append leaves it out, as it leaves out Properties.
	ReasonCode ReasonCode
	// Properties are the MQTT 5 properties (Session Expiry Interval,
	// Reason String, User Properties, Server Reference): nil when there
	// are none.
	Properties *paho.Properties
}

var (
	disconnectProperties = newPropertySet("DISCONNECT properties",
		paho.PropSessionExpiryInterval, paho.PropReasonString, paho.PropUser, paho.PropServerReference)
	// disconnectCodes are the reason codes of DISCONNECT (5.0 §3.14.2.1).
	disconnectCodes = newReasonSet(Success, DisconnectWithWill, UnspecifiedError, MalformedPacket,
		ProtocolError, ImplementationSpecificError, NotAuthorized, ServerBusy, ServerShuttingDown,
		KeepAliveTimeout, SessionTakenOver, TopicFilterInvalid, TopicNameInvalid, ReceiveMaximumExceeded,
		TopicAliasInvalid, PacketTooLarge, MessageRateTooHigh, QuotaExceeded, AdministrativeAction,
		PayloadFormatInvalid, RetainNotSupported, QoSNotSupported, UseAnotherServer, ServerMoved,
		SharedSubscriptionsNotSupported, ConnectionRateExceeded, MaximumConnectTime,
		SubscriptionIdentifiersNotSupported, WildcardSubscriptionsNotSupported)
)

// Decode decodes fr, a DISCONNECT, into d.
func (p *Disconnect) Decode(version byte, fr Frame) error {
	if err := checkFrame(version, fr, TypeDisconnect); err != nil {
		return err
	}
	*p = Disconnect{}
	body := fr.Body()
	d := decoder{buf: body}
	if version == ProtocolV5 {
		// A Remaining Length of 0 means Normal disconnection, of 1 no
		// properties (§3.14.2.1, §3.14.2.2.1).
		if len(body) > 0 {
			p.ReasonCode = ReasonCode(d.byte("DISCONNECT reason code"))
		}
		if len(body) > 1 {
			p.Properties = d.optionalProperties(disconnectProperties)
		}
	}
	err := d.end(TypeDisconnect)
	if err == nil {
		err = p.check(version)
	}
	if err != nil {
		return newError(version, err)
	}
	return nil
}

// Append appends p, encoded for the given version, to dst: for MQTT 5 the
// two bytes of header alone for Normal disconnection without properties,
// else the reason code and the properties, as WriteDisconnect writes them.
func (p *Disconnect) Append(dst []byte, version byte) ([]byte, error) {
	if err := p.check(version); err != nil {
		return dst, fmt.Errorf("packets: encode DISCONNECT: %w", err)
	}
	w := beginPacket(dst)
	if version == ProtocolV5 {
		w.reasonAndProperties(p.ReasonCode, p.Properties, disconnectProperties, false)
	}
	return w.finish(byte(TypeDisconnect)<<4, TypeDisconnect)
}

func (p *Disconnect) check(version byte) error {
	if version != ProtocolV5 {
		return nil
	}
	if !disconnectCodes.has(p.ReasonCode) {
		return fmt.Errorf("%w: DISCONNECT with reason code 0x%02X (§3.14.2.1)", ErrProtocolViolation, byte(p.ReasonCode))
	}
	return checkProperties(p.Properties, disconnectProperties)
}

// Auth is a decoded AUTH, which exists in MQTT 5 only (5.0 §3.15): the
// steps of an extended authentication, and re-authentication.
type Auth struct {
	// ReasonCode is Success, ContinueAuthentication or ReAuthenticate.
	ReasonCode ReasonCode
	// Properties are the Authentication Method and Data, Reason String
	// and User Properties; nil only for the short form, Success without
	// properties.
	Properties *paho.Properties
}

var (
	authProperties = newPropertySet("AUTH properties",
		paho.PropAuthMethod, paho.PropAuthData, paho.PropReasonString, paho.PropUser)
	authCodes = newReasonSet(Success, ContinueAuthentication, ReAuthenticate)
)

// Decode decodes fr, an AUTH, into p.
func (p *Auth) Decode(version byte, fr Frame) error {
	if err := checkFrame(version, fr, TypeAuth); err != nil {
		return err
	}
	*p = Auth{}
	body := fr.Body()
	d := decoder{buf: body}
	// A Remaining Length of 0 means Success without properties
	// (§3.15.2.1). Any other AUTH carries the Authentication Method, so
	// one of 1, a reason code alone, is refused for the lack of it.
	if len(body) > 0 {
		p.ReasonCode = ReasonCode(d.byte("AUTH reason code"))
	}
	if len(body) > 1 {
		p.Properties = d.optionalProperties(authProperties)
	}
	err := d.end(TypeAuth)
	if err == nil {
		err = p.check(len(body) == 0)
	}
	if err != nil {
		return newError(version, err)
	}
	return nil
}

// Append appends p to dst as an AUTH, which only MQTT 5 has: the short
// form for Success without properties, else with the reason code and the
// properties.
func (p *Auth) Append(dst []byte, version byte) ([]byte, error) {
	short := p.ReasonCode == Success && p.Properties == nil
	err := p.check(short)
	if version != ProtocolV5 {
		err = fmt.Errorf("%w: AUTH in MQTT %s", ErrProtocolViolation, versionName(version))
	}
	if err != nil {
		return dst, fmt.Errorf("packets: encode AUTH: %w", err)
	}
	w := beginPacket(dst)
	if !short {
		w.byte(byte(p.ReasonCode))
		w.properties(p.Properties, authProperties)
	}
	return w.finish(byte(TypeAuth)<<4, TypeAuth)
}

// check applies the rules of AUTH; short is the form without reason code
// and properties, where the Authentication Method is absent too.
func (p *Auth) check(short bool) error {
	switch {
	case !authCodes.has(p.ReasonCode):
		return fmt.Errorf("%w: AUTH with reason code 0x%02X (§3.15.2.1)", ErrProtocolViolation, byte(p.ReasonCode))
	case !short && (p.Properties == nil || p.Properties.AuthMethod == ""):
		return fmt.Errorf("%w: AUTH without authentication method (§3.15.2.2.2)", ErrProtocolViolation)
	}
	return checkProperties(p.Properties, authProperties)
}

// Connack is a decoded CONNACK (3.1.1 §3.2, 5.0 §3.2): the proxy reads the
// broker's to learn the limits it sets for the session, such as the Topic
// Alias Maximum and the Maximum Packet Size.
type Connack struct {
	SessionPresent bool
	// ReasonCode is the MQTT 5 reason code, or for MQTT 3.1 and 3.1.1 the
	// return code (0 to 5) as sent.
	ReasonCode ReasonCode
	// Properties are the MQTT 5 properties: nil when there are none.
	Properties *paho.Properties
}

var (
	connackProperties = newPropertySet("CONNACK properties",
		paho.PropSessionExpiryInterval, paho.PropReceiveMaximum, paho.PropMaximumQOS,
		paho.PropRetainAvailable, paho.PropMaximumPacketSize, paho.PropAssignedClientID,
		paho.PropTopicAliasMaximum, paho.PropReasonString, paho.PropUser, paho.PropWildcardSubAvailable,
		paho.PropSubIDAvailable, paho.PropSharedSubAvailable, paho.PropServerKeepAlive,
		paho.PropResponseInfo, paho.PropServerReference, paho.PropAuthMethod, paho.PropAuthData)
	// connackCodes are the reason codes of an MQTT 5 CONNACK (§3.2.2.2).
	connackCodes = newReasonSet(Success, UnspecifiedError, MalformedPacket, ProtocolError,
		ImplementationSpecificError, UnsupportedProtocolVersion, ClientIdentifierNotValid,
		BadUserNameOrPassword, NotAuthorized, ServerUnavailable, ServerBusy, Banned, BadAuthenticationMethod,
		TopicNameInvalid, PacketTooLarge, QuotaExceeded, PayloadFormatInvalid, RetainNotSupported,
		QoSNotSupported, UseAnotherServer, ServerMoved, ConnectionRateExceeded)
)

// maxV3ReturnCode is the last return code MQTT 3.1.1 defines, 5 (not
// authorized); the rest are reserved (§3.2.2.3).
const maxV3ReturnCode = 5

// Decode decodes fr, a CONNACK, into p.
func (p *Connack) Decode(version byte, fr Frame) error {
	if err := checkFrame(version, fr, TypeConnack); err != nil {
		return err
	}
	*p = Connack{}
	d := decoder{buf: fr.Body()}
	flags := d.byte("CONNACK flags")
	p.ReasonCode = ReasonCode(d.byte("CONNACK reason code"))
	if version == ProtocolV5 {
		p.Properties = d.optionalProperties(connackProperties)
	}
	err := d.end(TypeConnack)
	if err == nil && flags&^0x01 != 0 {
		// The flags but Session Present are reserved (3.1.1 and 5.0
		// §3.2.2.1).
		err = fmt.Errorf("%w: CONNACK flags 0x%02X", ErrMalformed, flags)
	}
	if err == nil {
		p.SessionPresent = flags&0x01 != 0
		err = p.check(version)
	}
	if err != nil {
		return newError(version, err)
	}
	return nil
}

// Append appends p, encoded for the given version, to dst.
func (p *Connack) Append(dst []byte, version byte) ([]byte, error) {
	if err := p.check(version); err != nil {
		return dst, fmt.Errorf("packets: encode CONNACK: %w", err)
	}
	w := beginPacket(dst)
	if p.SessionPresent {
		w.byte(1)
	} else {
		w.byte(0)
	}
	w.byte(byte(p.ReasonCode))
	if version == ProtocolV5 {
		w.properties(p.Properties, connackProperties)
	}
	return w.finish(byte(TypeConnack)<<4, TypeConnack)
}

func (p *Connack) check(version byte) error {
	switch {
	case p.SessionPresent && p.ReasonCode != Success:
		return fmt.Errorf("%w: CONNACK refusing with session present [MQTT-3.2.2-4]", ErrProtocolViolation)
	case version != ProtocolV5 && p.ReasonCode > maxV3ReturnCode:
		return fmt.Errorf("%w: CONNACK with reserved return code %d (§3.2.2.3)", ErrProtocolViolation, byte(p.ReasonCode))
	case version != ProtocolV5 && p.Properties != nil:
		return fmt.Errorf("%w: CONNACK properties in MQTT %s", ErrMalformed, versionName(version))
	case version == ProtocolV5 && !connackCodes.has(p.ReasonCode):
		return fmt.Errorf("%w: CONNACK with reason code 0x%02X (§3.2.2.2)", ErrProtocolViolation, byte(p.ReasonCode))
	}
	return checkProperties(p.Properties, connackProperties)
}
