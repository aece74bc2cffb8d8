package packets

import (
	"fmt"
	"iter"

	paho "github.com/eclipse/paho.golang/packets"
)

// propertySet is the properties one part of a packet may carry, as a bit
// per property identifier; all identifiers MQTT 5 defines are below 64.
type propertySet struct {
	name string
	ids  uint64
}

func newPropertySet(name string, ids ...byte) propertySet {
	set := propertySet{name: name}
	for _, id := range ids {
		set.ids |= 1 << id
	}
	return set
}

func (s propertySet) allows(id byte) bool { return id < 64 && s.ids&(1<<id) != 0 }

var (
	// connectProperties are the CONNECT properties (5.0 §3.1.2.11).
	connectProperties = newPropertySet("CONNECT properties",
		paho.PropSessionExpiryInterval, paho.PropReceiveMaximum, paho.PropMaximumPacketSize,
		paho.PropTopicAliasMaximum, paho.PropRequestResponseInfo, paho.PropRequestProblemInfo,
		paho.PropUser, paho.PropAuthMethod, paho.PropAuthData)
	// willProperties are the will properties (5.0 §3.1.3.2).
	willProperties = newPropertySet("will properties",
		paho.PropWillDelayInterval, paho.PropPayloadFormat, paho.PropMessageExpiry,
		paho.PropContentType, paho.PropResponseTopic, paho.PropCorrelationData,
		paho.PropUser)
)

// properties reads a property length and the properties of set that it
// covers (5.0 §2.2.2). Paho's own Properties.Unpack is not used: it accepts
// a property of one set in the other, a length running past the packet and
// repeated properties.
func (d *decoder) properties(set propertySet) *paho.Properties {
	n := d.varint(set.name)
	sub := decoder{buf: d.next(n, set.name)}
	if d.err != nil {
		return nil
	}
	p := &paho.Properties{}
	var seen uint64
	for sub.err == nil && sub.off < len(sub.buf) {
		// An identifier is a variable byte integer, but every one defined
		// fits in a byte: a continuation bit is not in the set.
		id := sub.byte(set.name)
		switch {
		case !set.allows(id):
			// 5.0 §2.2.2.2: an identifier not valid for the packet is malformed.
			sub.err = fmt.Errorf("%w: %s: property 0x%02X not allowed", ErrMalformed, set.name, id)
			continue
		case seen&(1<<id) != 0 && id != paho.PropUser:
			// 5.0 §3.1.2.11 and §3.1.3.2: each property but the user
			// property may appear once; more is a protocol error.
			sub.err = fmt.Errorf("%w: %s: property 0x%02X repeated", ErrProtocolViolation, set.name, id)
			continue
		}
		seen |= 1 << id
		switch id {
		case paho.PropSessionExpiryInterval:
			p.SessionExpiryInterval = ptr(sub.uint32(set.name))
		case paho.PropWillDelayInterval:
			p.WillDelayInterval = ptr(sub.uint32(set.name))
		case paho.PropMessageExpiry:
			p.MessageExpiry = ptr(sub.uint32(set.name))
		case paho.PropMaximumPacketSize:
			p.MaximumPacketSize = ptr(sub.uint32(set.name))
		case paho.PropReceiveMaximum:
			p.ReceiveMaximum = ptr(sub.uint16(set.name))
		case paho.PropTopicAliasMaximum:
			p.TopicAliasMaximum = ptr(sub.uint16(set.name))
		case paho.PropRequestResponseInfo:
			p.RequestResponseInfo = ptr(sub.byte(set.name))
		case paho.PropRequestProblemInfo:
			p.RequestProblemInfo = ptr(sub.byte(set.name))
		case paho.PropPayloadFormat:
			p.PayloadFormat = ptr(sub.byte(set.name))
		case paho.PropAuthMethod:
			p.AuthMethod = sub.string(set.name)
		case paho.PropContentType:
			p.ContentType = sub.string(set.name)
		case paho.PropResponseTopic:
			p.ResponseTopic = sub.string(set.name)
		case paho.PropAuthData:
			p.AuthData = sub.binary(set.name)
		case paho.PropCorrelationData:
			p.CorrelationData = sub.binary(set.name)
		case paho.PropUser:
			key := sub.string(set.name)
			value := sub.string(set.name)
			p.User = append(p.User, paho.User{Key: key, Value: value})
		case paho.PropSubscriptionIdentifier:
			p.SubscriptionIdentifier = ptr(sub.varint(set.name))
		case paho.PropServerKeepAlive:
			p.ServerKeepAlive = ptr(sub.uint16(set.name))
		case paho.PropMaximumQOS:
			p.MaximumQOS = ptr(sub.byte(set.name))
		case paho.PropRetainAvailable:
			p.RetainAvailable = ptr(sub.byte(set.name))
		case paho.PropWildcardSubAvailable:
			p.WildcardSubAvailable = ptr(sub.byte(set.name))
		case paho.PropSubIDAvailable:
			p.SubIDAvailable = ptr(sub.byte(set.name))
		case paho.PropSharedSubAvailable:
			p.SharedSubAvailable = ptr(sub.byte(set.name))
		case paho.PropAssignedClientID:
			p.AssignedClientID = sub.string(set.name)
		case paho.PropResponseInfo:
			p.ResponseInfo = sub.string(set.name)
		case paho.PropServerReference:
			p.ServerReference = sub.string(set.name)
		case paho.PropReasonString:
			p.ReasonString = sub.string(set.name)
		}
	}
	d.err = sub.err
	return p
}

// propertyStrings yields p's string properties, user properties' keys and
// values included.
func propertyStrings(p *paho.Properties) iter.Seq[string] {
	return func(yield func(string) bool) {
		for _, s := range [...]string{p.AuthMethod, p.ContentType, p.ResponseTopic, p.AssignedClientID,
			p.ResponseInfo, p.ServerReference, p.ReasonString} {
			if !yield(s) {
				return
			}
		}
		for _, u := range p.User {
			if !yield(u.Key) || !yield(u.Value) {
				return
			}
		}
	}
}

// ptr returns a pointer to a copy of v, for paho's optional properties.
func ptr[T any](v T) *T { return &v }

// checkProperties applies the rules on property values (5.0 §3.1.2.11,
// §3.1.3.2, and for the packets after CONNECT §3.2.2.3, §3.8.2.1) to p,
// the properties of set, which may be nil.
func checkProperties(p *paho.Properties, set propertySet) error {
	if p == nil {
		return nil
	}
	// The strings are judged where they are, not gathered in a slice: a
	// CONNECT of many tiny user properties would make that slice several
	// times the packet's size.
	for s := range propertyStrings(p) {
		if problem := stringProblem(s); problem != "" {
			return fmt.Errorf("%w: %s: %q %s", ErrMalformed, set.name, s, problem)
		}
	}
	var violation string
	switch {
	case p.ReceiveMaximum != nil && *p.ReceiveMaximum == 0:
		violation = "receive maximum 0 (§3.1.2.11.3)"
	case p.MaximumPacketSize != nil && *p.MaximumPacketSize == 0:
		violation = "maximum packet size 0 (§3.1.2.11.4)"
	case p.RequestResponseInfo != nil && *p.RequestResponseInfo > 1:
		violation = "request response information not 0 or 1 (§3.1.2.11.6)"
	case p.RequestProblemInfo != nil && *p.RequestProblemInfo > 1:
		violation = "request problem information not 0 or 1 (§3.1.2.11.7)"
	case p.AuthData != nil && p.AuthMethod == "":
		violation = "authentication data without authentication method (§3.1.2.11.10)"
	case p.PayloadFormat != nil && *p.PayloadFormat > 1:
		violation = "payload format indicator not 0 or 1 (§3.1.3.2.3)"
	case p.SubscriptionIdentifier != nil && (*p.SubscriptionIdentifier < 1 || *p.SubscriptionIdentifier > maxRemainingLength):
		violation = "subscription identifier not from 1 to 268,435,455 (§3.8.2.1.2)"
	case p.MaximumQOS != nil && *p.MaximumQOS > 1:
		violation = "maximum QoS not 0 or 1 (§3.2.2.3.4)"
	case p.RetainAvailable != nil && *p.RetainAvailable > 1:
		violation = "retain available not 0 or 1 (§3.2.2.3.5)"
	case p.WildcardSubAvailable != nil && *p.WildcardSubAvailable > 1:
		violation = "wildcard subscription available not 0 or 1 (§3.2.2.3.11)"
	case p.SubIDAvailable != nil && *p.SubIDAvailable > 1:
		violation = "subscription identifiers available not 0 or 1 (§3.2.2.3.12)"
	case p.SharedSubAvailable != nil && *p.SharedSubAvailable > 1:
		violation = "shared subscription available not 0 or 1 (§3.2.2.3.13)"
	default:
		return nil
	}
	return fmt.Errorf("%w: %s: %s", ErrProtocolViolation, set.name, violation)
}

// properties writes the properties of set that p holds, preceded by their
// length; nil p writes an empty property list.
func (e *encoder) properties(p *paho.Properties, set propertySet) {
	var sub encoder
	if p != nil {
		if v := p.SessionExpiryInterval; v != nil && sub.property(set, paho.PropSessionExpiryInterval) {
			sub.uint32(*v)
		}
		if v := p.WillDelayInterval; v != nil && sub.property(set, paho.PropWillDelayInterval) {
			sub.uint32(*v)
		}
		if v := p.MessageExpiry; v != nil && sub.property(set, paho.PropMessageExpiry) {
			sub.uint32(*v)
		}
		if v := p.MaximumPacketSize; v != nil && sub.property(set, paho.PropMaximumPacketSize) {
			sub.uint32(*v)
		}
		if v := p.ReceiveMaximum; v != nil && sub.property(set, paho.PropReceiveMaximum) {
			sub.uint16(*v)
		}
		if v := p.TopicAliasMaximum; v != nil && sub.property(set, paho.PropTopicAliasMaximum) {
			sub.uint16(*v)
		}
		if v := p.RequestResponseInfo; v != nil && sub.property(set, paho.PropRequestResponseInfo) {
			sub.byte(*v)
		}
		if v := p.RequestProblemInfo; v != nil && sub.property(set, paho.PropRequestProblemInfo) {
			sub.byte(*v)
		}
		if v := p.PayloadFormat; v != nil && sub.property(set, paho.PropPayloadFormat) {
			sub.byte(*v)
		}
		if v := p.AuthMethod; v != "" && sub.property(set, paho.PropAuthMethod) {
			sub.string(v, "authentication method")
		}
		if v := p.ContentType; v != "" && sub.property(set, paho.PropContentType) {
			sub.string(v, "content type")
		}
		if v := p.ResponseTopic; v != "" && sub.property(set, paho.PropResponseTopic) {
			sub.string(v, "response topic")
		}
		if v := p.AuthData; v != nil && sub.property(set, paho.PropAuthData) {
			sub.binary(v, "authentication data")
		}
		if v := p.CorrelationData; v != nil && sub.property(set, paho.PropCorrelationData) {
			sub.binary(v, "correlation data")
		}
		if v := p.SubscriptionIdentifier; v != nil && sub.property(set, paho.PropSubscriptionIdentifier) {
			sub.varint(*v)
		}
		if v := p.ServerKeepAlive; v != nil && sub.property(set, paho.PropServerKeepAlive) {
			sub.uint16(*v)
		}
		for _, flag := range [...]struct {
			id byte
			v  *byte
		}{
			{paho.PropMaximumQOS, p.MaximumQOS},
			{paho.PropRetainAvailable, p.RetainAvailable},
			{paho.PropWildcardSubAvailable, p.WildcardSubAvailable},
			{paho.PropSubIDAvailable, p.SubIDAvailable},
			{paho.PropSharedSubAvailable, p.SharedSubAvailable},
		} {
			if flag.v != nil && sub.property(set, flag.id) {
				sub.byte(*flag.v)
			}
		}
		for _, text := range [...]struct {
			id       byte
			v, field string
		}{
			{paho.PropAssignedClientID, p.AssignedClientID, "assigned client identifier"},
			{paho.PropResponseInfo, p.ResponseInfo, "response information"},
			{paho.PropServerReference, p.ServerReference, "server reference"},
			{paho.PropReasonString, p.ReasonString, "reason string"},
		} {
			if text.v != "" && sub.property(set, text.id) {
				sub.string(text.v, text.field)
			}
		}
		for _, u := range p.User {
			if sub.property(set, paho.PropUser) {
				sub.string(u.Key, "user property key")
				sub.string(u.Value, "user property value")
			}
		}
	}
	if sub.err != nil {
		e.err = fmt.Errorf("%s: %w", set.name, sub.err)
	}
	e.varint(len(sub.buf))
	e.buf = append(e.buf, sub.buf...)
}

// property writes id if set allows it, and reports whether it did.
func (e *encoder) property(set propertySet, id byte) bool {
	if !set.allows(id) {
		return false
	}
	e.byte(id)
	return true
}
