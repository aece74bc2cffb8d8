package packets

import (
	"bytes"
	"fmt"

	paho "github.com/eclipse/paho.golang/packets"
)

// Publish is a decoded PUBLISH packet (3.1.1 §3.3, 5.0 §3.3), read as a
// view: Decode makes its byte slices sub-slices of the frame's Raw and
// allocates nothing, so a Publish is valid while those bytes are. Copy
// what you keep.
type Publish struct {
	Dup    bool
	QoS    byte
	Retain bool
	// Topic is the Topic Name as sent. An MQTT 5 sender may leave it
	// empty and name the topic by its TopicAlias alone: TopicAliases
	// resolves it then.
	Topic []byte
	// PacketID is the packet identifier: 0 at QoS 0, which has none.
	PacketID uint16
	// TopicAlias is the MQTT 5 Topic Alias property, 0 when there is none.
	// Decode takes it from Properties; Append refuses a Publish whose
	// TopicAlias is not the alias its Properties carry.
	TopicAlias uint16
	// Properties is the MQTT 5 property section as sent, without its
	// length: nil for MQTT 3. Decode checks it (5.0 §3.3.2.3); Append
	// applies the same checks and writes it as it is.
	Properties []byte
	Payload    []byte
}

// publishProperties are the PUBLISH properties (5.0 §3.3.2.3).
var publishProperties = newPropertySet("PUBLISH properties",
	paho.PropPayloadFormat, paho.PropMessageExpiry, paho.PropTopicAlias, paho.PropResponseTopic,
	paho.PropCorrelationData, paho.PropUser, paho.PropSubscriptionIdentifier, paho.PropContentType)

// Decode decodes fr, a PUBLISH of a session of the given version, into p.
// A PUBLISH that breaks the rules gives an *Error; a frame of another type
// a plain error.
func (p *Publish) Decode(version byte, fr Frame) error {
	if err := checkFrame(version, fr, TypePublish); err != nil {
		return err
	}
	flags, body := fr.Flags, fr.Body()
	*p = Publish{Dup: flags&flagDup != 0, QoS: (flags & flagQoS) >> shiftQoS, Retain: flags&flagRetain != 0}
	d := decoder{buf: body}
	p.Topic = d.binary("PUBLISH topic name")
	if p.QoS > 0 {
		p.PacketID = d.uint16("PUBLISH packet identifier")
	}
	if version == ProtocolV5 {
		p.Properties = d.next(d.varint("PUBLISH property length"), "PUBLISH properties")
	}
	if d.err != nil {
		return newError(version, d.err)
	}
	p.Payload = body[d.off:len(body):len(body)]
	alias, err := p.check(version)
	if err != nil {
		return newError(version, err)
	}
	p.TopicAlias = alias
	return nil
}

// Append appends p, encoded as a PUBLISH for the given version, to dst.
// Flags come from Dup, QoS and Retain. It refuses, returning dst as it
// was, a Publish that Decode would refuse.
func (p *Publish) Append(dst []byte, version byte) ([]byte, error) {
	alias, err := p.check(version)
	if err == nil && alias != p.TopicAlias {
		err = fmt.Errorf("TopicAlias %d, but the properties carry %d", p.TopicAlias, alias)
	}
	if err != nil {
		return dst, fmt.Errorf("packets: encode PUBLISH: %w", err)
	}
	first := byte(TypePublish)<<4 | p.QoS<<shiftQoS
	if p.Dup {
		first |= flagDup
	}
	if p.Retain {
		first |= flagRetain
	}
	w := beginPacket(dst)
	w.binary(p.Topic, "topic name")
	if p.QoS > 0 {
		w.uint16(p.PacketID)
	}
	if version == ProtocolV5 {
		w.varint(len(p.Properties))
		w.buf = append(w.buf, p.Properties...)
	}
	w.buf = append(w.buf, p.Payload...)
	return w.finish(first, TypePublish)
}

// check applies the rules of a PUBLISH to p and returns the topic alias its
// properties carry.
func (p *Publish) check(version byte) (alias uint16, err error) {
	switch {
	case p.QoS > 2:
		return 0, fmt.Errorf("%w: PUBLISH with QoS %d [MQTT-3.3.1-4]", ErrMalformed, p.QoS)
	case p.QoS == 0 && p.Dup:
		return 0, fmt.Errorf("%w: PUBLISH with DUP set at QoS 0 [MQTT-3.3.1-2]", ErrMalformed)
	case p.QoS == 0 && p.PacketID != 0:
		return 0, fmt.Errorf("%w: PUBLISH at QoS 0 with packet identifier %d (§3.3.2.2)", ErrMalformed, p.PacketID)
	case p.QoS > 0 && p.PacketID == 0:
		return 0, fmt.Errorf("%w: PUBLISH at QoS %d with packet identifier 0 [MQTT-2.2.1-3]", ErrProtocolViolation, p.QoS)
	case version != ProtocolV5 && p.Properties != nil:
		return 0, fmt.Errorf("%w: PUBLISH properties in MQTT %s", ErrMalformed, versionName(version))
	}
	kinds := scanText(p.Topic)
	if problem := textProblemOf(p.Topic, kinds); problem != "" {
		return 0, fmt.Errorf("%w: PUBLISH topic name %q %s", ErrMalformed, p.Topic, problem)
	}
	if kinds&byteWildcard != 0 {
		// A protocol error, as mosquitto answers it: the name is well
		// formed, but no topic.
		return 0, fmt.Errorf("%w: PUBLISH topic name %q has a wildcard [MQTT-3.3.2-2]", ErrProtocolViolation, p.Topic)
	}
	if version == ProtocolV5 {
		if alias, err = checkPublishProperties(p.Properties); err != nil {
			return 0, err
		}
	}
	if len(p.Topic) == 0 && alias == 0 {
		// MQTT 5 allows an empty topic name only with a topic alias
		// (§3.3.2.1); MQTT 3 never [MQTT-4.7.3-1].
		return 0, fmt.Errorf("%w: PUBLISH with an empty topic name and no topic alias [MQTT-4.7.3-1]", ErrProtocolViolation)
	}
	return alias, nil
}

// checkPublishProperties walks raw, the PUBLISH properties, without
// allocating, applies their rules (5.0 §3.3.2.3) and returns the topic
// alias, 0 when there is none.
func checkPublishProperties(raw []byte) (alias uint16, err error) {
	const name = "PUBLISH properties"
	d := decoder{buf: raw}
	var seen uint64
	for d.err == nil && d.off < len(d.buf) {
		id := d.byte(name)
		switch {
		case !publishProperties.allows(id):
			return 0, fmt.Errorf("%w: %s: property 0x%02X not allowed", ErrMalformed, name, id)
		case seen&(1<<id) != 0 && id != paho.PropUser && id != paho.PropSubscriptionIdentifier:
			return 0, fmt.Errorf("%w: %s: property 0x%02X repeated", ErrProtocolViolation, name, id)
		}
		seen |= 1 << id
		switch id {
		case paho.PropPayloadFormat:
			if v := d.byte(name); v > 1 {
				return 0, fmt.Errorf("%w: %s: payload format indicator %d, not 0 or 1 (§3.3.2.3.2)", ErrProtocolViolation, name, v)
			}
		case paho.PropMessageExpiry:
			d.uint32(name)
		case paho.PropTopicAlias:
			if alias = d.uint16(name); alias == 0 && d.err == nil {
				return 0, fmt.Errorf("%w: topic alias 0 [MQTT-3.3.2-8]", ErrTopicAliasInvalid)
			}
		case paho.PropSubscriptionIdentifier:
			if v := d.varint(name); v == 0 && d.err == nil {
				return 0, fmt.Errorf("%w: %s: subscription identifier 0 (§3.3.2.3.8)", ErrProtocolViolation, name)
			}
		case paho.PropCorrelationData:
			d.binary(name)
		case paho.PropResponseTopic:
			topic := d.binary(name)
			if err := checkText(name, topic); err != nil {
				return 0, err
			}
			if scanText(topic)&byteWildcard != 0 {
				return 0, fmt.Errorf("%w: %s: response topic %q has a wildcard (§3.3.2.3.5)", ErrProtocolViolation, name, topic)
			}
		case paho.PropContentType:
			if err := checkText(name, d.binary(name)); err != nil {
				return 0, err
			}
		case paho.PropUser:
			if err := checkText(name, d.binary(name), d.binary(name)); err != nil {
				return 0, err
			}
		}
	}
	return alias, d.err
}

// TopicAliases tracks the topic aliases of one direction of an MQTT 5
// session (5.0 §3.3.2.3.4) for a proxy between sender and receiver: the
// topic each alias the sender set stands for, for aliases 1 to the Topic
// Alias Maximum the receiver announced (the broker in its CONNACK for
// PUBLISHes from the client, the client in its CONNECT for those from the
// broker), and whether the receiver knows that mapping too. The proxy
// keeps one per direction, for the connection's life only [MQTT-3.3.2-7].
//
// Every PUBLISH of the direction goes through Resolve, which gives the
// topic to judge it by; those the proxy forwards then go through Forward.
// A mapping set by a PUBLISH the proxy dropped is the sender's but not the
// receiver's, which still knows the alias's former topic, if any: Forward
// says when a PUBLISH by that alias alone must carry its topic name, so
// that the receiver delivers it where the proxy judged it, and an alias
// cannot carry a PUBLISH to a topic it was not judged by.
//
// The zero value accepts no alias, as a receiver that announced none. It
// holds one copy of each topic set, so at most Max topics, of at most
// MaxBytes together.
type TopicAliases struct {
	// Max is the Topic Alias Maximum: aliases 1 to Max are valid.
	Max uint16
	// MaxBytes bounds the bytes of the topics held, all aliases
	// together: a PUBLISH whose alias would take them beyond it is an
	// *Error wrapping ErrQuotaExceeded (0x97). 0 means no bound.
	MaxBytes int
	aliases  map[uint16]aliasMapping
	held     int // the bytes of the topics in aliases
}

type aliasMapping struct {
	topic []byte
	// forwarded says the receiver knows the mapping: a PUBLISH that set
	// it, or one by the alias with its topic written in, was forwarded.
	forwarded bool
}

// Resolve returns the topic p, decoded for MQTT 5, is published to, and
// records the alias p sets. The topic is p.Topic, or, when p names none,
// the topic its alias stands for: then a copy the TopicAliases owns, which
// the caller must not change. An alias above Max is an *Error wrapping
// ErrTopicAliasInvalid (0x94); an alias that was never set, on a PUBLISH
// with no topic name, one wrapping ErrProtocolViolation (0x82), as §3.3.4
// says; one that would take the topics held beyond MaxBytes, one wrapping
// ErrQuotaExceeded (0x97).
func (a *TopicAliases) Resolve(p *Publish) ([]byte, error) {
	alias := p.TopicAlias
	switch {
	case alias == 0 && len(p.Topic) == 0:
		return nil, newError(ProtocolV5, fmt.Errorf("%w: PUBLISH with an empty topic name and no topic alias (§3.3.2.1)", ErrProtocolViolation))
	case alias == 0:
		return p.Topic, nil
	case alias > a.Max:
		// [MQTT-3.3.2-9] for a client, [MQTT-3.3.2-11] for a server.
		return nil, newError(ProtocolV5, fmt.Errorf("%w: topic alias %d, maximum %d [MQTT-3.3.2-9]", ErrTopicAliasInvalid, alias, a.Max))
	case len(p.Topic) == 0:
		m, ok := a.aliases[alias]
		if !ok {
			return nil, newError(ProtocolV5, fmt.Errorf("%w: PUBLISH with topic alias %d, which was never set, and no topic name (§3.3.4)", ErrProtocolViolation, alias))
		}
		return m.topic, nil
	}
	if m, ok := a.aliases[alias]; !ok || !bytes.Equal(m.topic, p.Topic) {
		held := a.held - len(m.topic) + len(p.Topic)
		if a.MaxBytes > 0 && held > a.MaxBytes {
			return nil, newError(ProtocolV5, fmt.Errorf("%w: topic alias %d set to a topic of %d bytes: the aliases would hold %d bytes of topics, over %d",
				ErrQuotaExceeded, alias, len(p.Topic), held, a.MaxBytes))
		}
		if a.aliases == nil {
			a.aliases = make(map[uint16]aliasMapping)
		}
		a.aliases[alias] = aliasMapping{topic: bytes.Clone(p.Topic)}
		a.held = held
	}
	return p.Topic, nil
}

// Forward records that p, resolved, is forwarded to the receiver, and
// reports whether p names its topic by an alias whose mapping the receiver
// lacks, because the PUBLISH that set it was dropped. The proxy then
// forwards p with Topic set to the topic Resolve returned: written with
// its alias, it sets the receiver's mapping alike.
func (a *TopicAliases) Forward(p *Publish) (writeTopic bool) {
	m, ok := a.aliases[p.TopicAlias]
	if p.TopicAlias == 0 || !ok || m.forwarded {
		return false
	}
	m.forwarded = true
	a.aliases[p.TopicAlias] = m
	return len(p.Topic) == 0
}
