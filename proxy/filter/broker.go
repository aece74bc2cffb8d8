package filter

import (
	"encoding/binary"
	"fmt"

	paho "github.com/eclipse/paho.golang/packets"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// fromBroker filters the bytes the broker sent: every packet framed, the
// first CONNACK read (and given the client's Authentication Method), the
// SUBACKs of SUBSCRIBEs forwarded without some filters rewritten.
func (s *Session) fromBroker(in, fwd, back []byte) ([]byte, []byte, error) {
	f := &s.framers[FromBroker]
	out := output{in: in, buf: fwd}
	var last lastPublish
	f.Feed(in)
	for {
		fr, ok, err := f.Next()
		if err != nil {
			return out.done(), back, s.endBroker(err)
		}
		if !ok {
			return out.done(), back, nil
		}
		if brokerTypes&(1<<fr.Type) == 0 {
			return out.done(), back, s.endBroker(protocolError(s.version, "%v sent by the broker", fr.Type))
		}
		switch {
		case fr.Type == packets.TypeConnack && !s.connackSeen:
			err = s.firstConnack(fr, &out)
		case fr.Type == packets.TypeAuth && s.methodAuth != nil:
			err = protocolError(s.version, "AUTH from the broker, which got a CONNECT without an Authentication Method [MQTT-4.12.0-6]")
		case fr.Type == packets.TypeSuback && s.pendingSubacks.Load() > 0:
			err = s.suback(fr, &out)
		case fr.Type == packets.TypePublish && s.policy.Load() != nil:
			back, err = s.delivery(s.policy.Load(), fr, &out, back, &last)
		case fr.Type == packets.TypePubrel && s.deliveryPubrecs.n > 0:
			back, err = s.deliveryPubrel(fr, &out, back)
		default:
			out.pass(fr)
		}
		if err != nil {
			return out.done(), back, s.endBroker(err)
		}
	}
}

// firstConnack reads the broker's first CONNACK for the limits it sets on
// the client, hands them to the client direction, and forwards it. An
// MQTT 5 client's successful CONNACK is rewritten where it must say more
// than the broker's: the limits the proxy holds the client to (a Topic
// Alias Maximum of at most maxTopicAliases, the Maximum Packet Size of
// the client direction), and the client's Authentication Method when the
// proxy authenticated the client under one [MQTT-4.12.0-5].
func (s *Session) firstConnack(fr packets.Frame, out *output) error {
	s.connackSeen = true
	if s.version != packets.ProtocolV5 {
		out.pass(fr) // MQTT 3 has neither topic aliases nor a packet size limit
		return nil
	}
	var c packets.Connack
	if err := c.Decode(s.version, fr); err != nil {
		return err
	}
	p := c.Properties
	if p == nil {
		p = &paho.Properties{}
	}
	if p.TopicAliasMaximum != nil {
		s.brokerAliasMax = *p.TopicAliasMaximum
	}
	if p.MaximumPacketSize != nil {
		s.brokerMaxPacket = int(min(*p.MaximumPacketSize, packets.MaxPacketSize))
	}
	if s.methodAuth != nil && (p.AuthMethod != "" || p.AuthData != nil) {
		return protocolError(s.version, "CONNACK with an Authentication Method or Data, to a CONNECT without one [MQTT-4.12.0-6]")
	}
	rewrite := false
	if s.brokerAliasMax > maxTopicAliases {
		s.brokerAliasMax = maxTopicAliases
		p.TopicAliasMaximum = &s.brokerAliasMax
		rewrite = true
	}
	if s.clientMax < packets.MaxPacketSize && (s.brokerMaxPacket == 0 || s.brokerMaxPacket > s.clientMax) {
		limit := uint32(s.clientMax)
		p.MaximumPacketSize = &limit
		rewrite = true
	}
	if s.methodAuth != nil {
		p.AuthMethod = s.methodAuth.method
		rewrite = true
	}
	s.connack.Store(true)
	if !rewrite || c.ReasonCode != packets.Success {
		out.pass(fr) // a refusal need not say more: the connection ends
		return nil
	}
	c.Properties = p
	out.flush()
	var err error
	out.buf, err = c.Append(out.buf, s.version)
	return err
}

// suback rewrites the SUBACK of a SUBSCRIBE forwarded without its refused
// filters, with a refusal in each of their places; another SUBACK passes.
func (s *Session) suback(fr packets.Frame, out *output) error {
	body := fr.Body()
	if len(body) < 2 {
		out.pass(fr) // no identifier: not one of ours, and the client judges it
		return nil
	}
	id := binary.BigEndian.Uint16(body)
	s.mu.Lock()
	p, pending := s.subacks[id]
	if pending {
		delete(s.subacks, id)
		s.pendingBytes -= p.cost()
		if len(s.subacks) == 0 {
			s.subacks = nil // an idle session holds no map
		}
		s.pendingSubacks.Store(int32(len(s.subacks)))
	}
	s.mu.Unlock()
	if !pending {
		out.pass(fr)
		return nil
	}
	var ack packets.Suback
	if err := ack.Decode(s.version, fr); err != nil {
		return err
	}
	if kept := p.filters - p.refusals; len(ack.Codes) != kept {
		return protocolError(s.version, "SUBACK %d with %d codes for the %d filters forwarded", id, len(ack.Codes), kept)
	}
	refusal := packets.SubscriptionRefusal(s.version)
	inserts := make([]packets.Insertion, 0, p.refusals)
	for index := range p.filters {
		if p.refused.has(index) {
			inserts = append(inserts, packets.Insertion{Index: index, Code: refusal})
		}
	}
	out.flush()
	var err error
	if out.buf, err = ack.AppendExpanded(out.buf, s.version, inserts); err != nil {
		return fmt.Errorf("SUBACK %d: %w", id, err)
	}
	return nil
}

// delivery judges a PUBLISH from the broker by policy: forwarded when a
// subscription the client may make receives it (acl.Request.Delivery); else
// dropped, and answered to the broker as its QoS requires, with the
// broker's packet identifier. A session resumed by the broker may hold
// subscriptions made under rules that allowed more than the client's
// rules do now: what they deliver stops here.
func (s *Session) delivery(policy *acl.Policy, fr packets.Frame, out *output, back []byte, last *lastPublish) ([]byte, error) {
	var p packets.Publish
	if err := p.Decode(s.version, fr); err != nil {
		return back, err
	}
	topic := p.Topic
	if s.version == packets.ProtocolV5 {
		var err error
		if topic, err = s.deliveryAliases.Resolve(&p); err != nil {
			return back, err
		}
	}
	if p.QoS == 2 && s.deliveryPubrecs.has(p.PacketID) {
		// A retransmission of a dropped one, before its PUBREL: PUBREC
		// again [MQTT-4.3.3-2].
		return appendAck(back, s.version, packets.TypePubrec, p.PacketID, packets.Success), nil
	}
	d, known := last.decision(policy, topic, p.QoS, false)
	if !known {
		d = allowDelivery(policy, topic, p.QoS)
		last.remember(policy, topic, p.QoS, false, d)
	}
	if d.Allowed {
		if s.version == packets.ProtocolV5 && s.deliveryAliases.Forward(&p) {
			// The alias was set by a delivery the client never got.
			out.flush()
			p.Topic = topic
			var err error
			out.buf, err = p.Append(out.buf, s.version)
			return back, err
		}
		out.pass(fr)
		return back, nil
	}
	switch p.QoS {
	case 1:
		back = appendAck(back, s.version, packets.TypePuback, p.PacketID, packets.NotAuthorized)
	case 2:
		back = appendAck(back, s.version, packets.TypePubrec, p.PacketID, packets.NotAuthorized)
		if s.version != packets.ProtocolV5 {
			s.deliveryPubrecs.add(p.PacketID) // the broker goes on with PUBREL
		}
	}
	return back, nil
}

// deliveryPubrel answers the broker's PUBREL of an MQTT 3 QoS 2 delivery
// the proxy dropped, and forwards the others.
func (s *Session) deliveryPubrel(fr packets.Frame, out *output, back []byte) ([]byte, error) {
	var a packets.Ack
	if err := a.Decode(s.version, fr); err != nil {
		return back, err
	}
	if !s.deliveryPubrecs.has(a.PacketID) {
		out.pass(fr)
		return back, nil
	}
	s.deliveryPubrecs.remove(a.PacketID)
	return appendAck(back, s.version, packets.TypePubcomp, a.PacketID, packets.Success), nil
}
