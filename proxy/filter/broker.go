package filter

import (
	"encoding/binary"
	"fmt"

	paho "github.com/eclipse/paho.golang/packets"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// fromBroker filters the bytes the broker sent: every packet framed, the
// first CONNACK read (and given the client's Authentication Method), the
// SUBACKs of SUBSCRIBEs forwarded without some filters rewritten.
func (s *Session) fromBroker(in, fwd, back []byte) ([]byte, []byte, error) {
	f := &s.framers[FromBroker]
	out := output{in: in, buf: fwd}
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
