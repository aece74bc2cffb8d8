package filter

import (
	"fmt"
	"unsafe"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// fromClient filters the bytes the client sent.
func (s *Session) fromClient(in, fwd, back []byte) ([]byte, []byte, error) {
	if !s.brokerLimits && s.connack.Load() {
		s.applyBrokerLimits()
	}
	f := &s.framers[FromClient]
	out := output{in: in, buf: fwd}
	var last lastPublish
	f.Feed(in)
	for {
		fr, ok, err := f.Next()
		if err != nil {
			return out.done(), back, s.refuse(err)
		}
		if !ok {
			return out.done(), back, nil
		}
		if err := s.checkClientFrame(fr); err != nil {
			return out.done(), back, s.refuse(err)
		}
		if fr.Type == packets.TypeAuth && s.methodAuth != nil {
			if back, err = s.auth(fr, back); err != nil {
				return out.done(), back, err
			}
			continue
		}
		policy := s.policy.Load()
		if policy == nil {
			out.pass(fr)
			continue
		}
		switch fr.Type {
		case packets.TypePublish:
			back, err = s.publish(policy, fr, &out, back, &last)
		case packets.TypePubrel:
			back, err = s.pubrel(fr, &out, back)
		case packets.TypeSubscribe:
			back, err = s.subscribe(policy, fr, &out, back)
		case packets.TypeUnsubscribe:
			err = s.unsubscribe(fr, &out)
		default:
			out.pass(fr)
		}
		if err != nil {
			return out.done(), back, err
		}
	}
}

// applyBrokerLimits takes the limits the broker's CONNACK set on the
// client: its Topic Alias Maximum, and its Maximum Packet Size when smaller
// than the configured one.
func (s *Session) applyBrokerLimits() {
	s.brokerLimits = true
	s.aliases.Max = s.brokerAliasMax
	if s.brokerMaxPacket > 0 && s.brokerMaxPacket < s.clientLimit {
		s.clientLimit = s.brokerMaxPacket
	}
}

// checkClientFrame refuses a packet the client may not send, or one larger
// than the broker accepts (the Framer checked the configured limit).
func (s *Session) checkClientFrame(fr packets.Frame) error {
	if clientTypes&(1<<fr.Type) == 0 {
		return protocolError(s.version, "%v sent by the client", fr.Type)
	}
	if len(fr.Raw) > s.clientLimit {
		return &packets.Error{Code: packets.PacketTooLarge, Version: s.version,
			Err: fmt.Errorf("%w: %v of %d bytes, the broker's limit %d", packets.ErrTooLarge, fr.Type, len(fr.Raw), s.clientLimit)}
	}
	return nil
}

// publish judges a PUBLISH by policy: forwarded when allowed; else
// dropped, and answered as its QoS requires.
func (s *Session) publish(policy *acl.Policy, fr packets.Frame, out *output, back []byte, last *lastPublish) ([]byte, error) {
	var p packets.Publish
	if err := p.Decode(s.version, fr); err != nil {
		return back, s.refuse(err)
	}
	topic := p.Topic
	if s.version == packets.ProtocolV5 {
		// Every PUBLISH, dropped ones too, so that an alias always stands
		// for the topic the client last set it to.
		var err error
		if topic, err = s.aliases.Resolve(&p); err != nil {
			return back, s.refuse(err)
		}
	}
	if p.QoS > 0 && (s.pubrecs.n > 0 || s.pendingSubacks.Load() > 0) {
		if s.pubrecs.has(p.PacketID) {
			if p.QoS == 2 {
				// The denied PUBLISH again, before its PUBREL: the
				// receiver answers PUBREC again [MQTT-4.3.3-2].
				return appendAck(back, s.version, packets.TypePubrec, p.PacketID, packets.Success), nil
			}
			return back, s.idInUse(packets.TypePublish, p.PacketID)
		}
		if s.subackPending(p.PacketID) {
			return back, s.idInUse(packets.TypePublish, p.PacketID)
		}
	}
	d, known := last.decision(policy, topic, p.QoS, p.Retain)
	if !known {
		d = allow(policy, acl.Publish, topic, p.QoS, p.Retain)
		last.remember(policy, topic, p.QoS, p.Retain, d)
	}
	if s.onDecision != nil {
		s.onDecision(acl.Publish, topic, d)
	}
	if d.Allowed {
		if s.version == packets.ProtocolV5 && s.aliases.Forward(&p) {
			// The alias was set by a PUBLISH the broker never got: this
			// one carries the topic it was judged by, and sets the
			// broker's mapping alike.
			out.flush()
			p.Topic = topic
			start := len(out.buf)
			var err error
			if out.buf, err = p.Append(out.buf, s.version); err != nil {
				return back, s.refuse(err)
			}
			if n := len(out.buf) - start; n > s.clientLimit {
				out.buf = out.buf[:start]
				return back, s.refuse(&packets.Error{Code: packets.PacketTooLarge, Version: s.version,
					Err: fmt.Errorf("%w: PUBLISH by topic alias %d, of %d bytes with its topic name written in, the broker's limit %d",
						packets.ErrTooLarge, p.TopicAlias, n, s.clientLimit)})
			}
			return back, nil
		}
		out.pass(fr)
		return back, nil
	}
	if s.disconnectOnDeny {
		return back, s.denied(fmt.Errorf("PUBLISH to %q: %s", topic, d))
	}
	switch p.QoS {
	case 1:
		back = appendAck(back, s.version, packets.TypePuback, p.PacketID, packets.NotAuthorized)
	case 2:
		back = appendAck(back, s.version, packets.TypePubrec, p.PacketID, packets.NotAuthorized)
		if s.version != packets.ProtocolV5 {
			// MQTT 3's PUBREC has no reason: the client goes on with
			// PUBREL, which the proxy answers.
			s.pubrecs.add(p.PacketID)
		}
	}
	return back, nil
}

// pubrel answers the PUBREL of an MQTT 3 QoS 2 exchange the proxy answered
// with PUBREC, and forwards the others.
func (s *Session) pubrel(fr packets.Frame, out *output, back []byte) ([]byte, error) {
	if s.pubrecs.n == 0 {
		out.pass(fr)
		return back, nil
	}
	var a packets.Ack
	if err := a.Decode(s.version, fr); err != nil {
		return back, s.refuse(err)
	}
	if !s.pubrecs.has(a.PacketID) {
		out.pass(fr)
		return back, nil
	}
	s.pubrecs.remove(a.PacketID)
	return appendAck(back, s.version, packets.TypePubcomp, a.PacketID, packets.Success), nil
}

// subscribe judges each filter of a SUBSCRIBE by policy: all allowed, it
// is forwarded; some, it is forwarded without the others and its SUBACK
// awaited; none, it is answered. The filters are judged as they are read,
// with a bit per filter kept for the refused ones: a SUBSCRIBE of many
// short filters costs no more than a fraction of its size.
func (s *Session) subscribe(policy *acl.Policy, fr packets.Frame, out *output, back []byte) ([]byte, error) {
	var sub packets.Subscribe
	if err := sub.DecodeHead(s.version, fr); err != nil {
		return back, s.refuse(err)
	}
	if err := s.checkNewID(packets.TypeSubscribe, sub.PacketID); err != nil {
		return back, err
	}
	var refused bitset
	filters, denials := 0, 0
	var firstDenied []byte // a sub-slice of fr.Raw
	var firstDenial acl.Decision
	sub.Each(s.version, fr, func(i int, f packets.Subscription) {
		filters++
		d := allow(policy, acl.Subscribe, f.Filter, f.QoS, false)
		if s.onDecision != nil {
			s.onDecision(acl.Subscribe, f.Filter, d)
		}
		if d.Allowed {
			return
		}
		if denials == 0 {
			firstDenied, firstDenial = f.Filter, d
		}
		denials++
		refused.set(i)
	})
	switch {
	case denials == 0:
		out.pass(fr)
		return back, nil
	case s.disconnectOnDeny:
		return back, s.denied(fmt.Errorf("SUBSCRIBE to %q: %s", firstDenied, firstDenial))
	case denials == filters:
		codes := make([]packets.ReasonCode, filters)
		for i := range codes {
			codes[i] = packets.SubscriptionRefusal(s.version)
		}
		answer := packets.Suback{PacketID: sub.PacketID, Codes: codes}
		var err error
		if back, err = answer.Append(back, s.version); err != nil {
			return back, s.refuse(err)
		}
		return back, nil
	}
	if err := s.awaitSuback(sub.PacketID, pendingSuback{filters: filters, refusals: denials, refused: refused}); err != nil {
		return back, err
	}
	// Recorded before the SUBSCRIBE leaves: its SUBACK cannot come first.
	out.flush()
	var err error
	if out.buf, err = sub.AppendKeptOf(out.buf, s.version, fr, func(i int) bool { return !refused.has(i) }); err != nil {
		return back, s.refuse(err)
	}
	return back, nil
}

// unsubscribe checks an UNSUBSCRIBE and forwards it.
func (s *Session) unsubscribe(fr packets.Frame, out *output) error {
	var u packets.Unsubscribe
	if err := u.DecodeHead(s.version, fr); err != nil {
		return s.refuse(err)
	}
	if err := s.checkNewID(packets.TypeUnsubscribe, u.PacketID); err != nil {
		return err
	}
	out.pass(fr)
	return nil
}

// allow asks policy.
func allow(policy *acl.Policy, action acl.Action, topic []byte, qos byte, retain bool) acl.Decision {
	return policy.Allow(acl.Request{Action: action, Topic: lend(topic), QoS: qos, Retain: retain})
}

// allowDelivery asks policy whether the client may receive a PUBLISH the
// broker delivers to topic at qos.
func allowDelivery(policy *acl.Policy, topic []byte, qos byte) acl.Decision {
	return policy.Allow(acl.Request{Action: acl.Subscribe, Topic: lend(topic), QoS: qos, Delivery: true})
}

// lend returns topic as a string without a copy, for acl.Policy.Allow,
// which keeps nothing of its request: no allocation per packet.
func lend(topic []byte) string { return unsafe.String(unsafe.SliceData(topic), len(topic)) }

// maxRememberedTopic is the longest topic lastPublish keeps a copy of.
const maxRememberedTopic = 128

// lastPublish is the decision on the previous PUBLISH of one call, with a
// copy of what it was asked: a stream of PUBLISHes to one topic, the
// common case, asks the policy once per read rather than once per packet.
// It lives on the stack of the call, so an idle session keeps nothing, and
// a policy that expires between two reads is asked again. It is the
// decision of one policy: a re-authentication that replaces the policy
// within the read makes it unknown.
type lastPublish struct {
	policy *acl.Policy
	topic  [maxRememberedTopic]byte
	n      int // the length of topic; 0 when there is no decision
	qos    byte
	retain bool
	d      acl.Decision
}

// decision returns the decision on a PUBLISH with the same topic, QoS and
// retain flag as the previous one, if that is what is asked.
func (l *lastPublish) decision(policy *acl.Policy, topic []byte, qos byte, retain bool) (acl.Decision, bool) {
	if l.n == 0 || l.policy != policy || l.n != len(topic) || l.qos != qos || l.retain != retain || string(l.topic[:l.n]) != string(topic) {
		return acl.Decision{}, false
	}
	return l.d, true
}

// remember keeps d as policy's decision on a PUBLISH with topic, qos and
// retain, when the topic is short enough to copy.
func (l *lastPublish) remember(policy *acl.Policy, topic []byte, qos byte, retain bool, d acl.Decision) {
	if len(topic) > maxRememberedTopic {
		l.n = 0
		return
	}
	l.n = copy(l.topic[:], topic)
	l.policy, l.qos, l.retain, l.d = policy, qos, retain, d
}

// denied ends the session for a denial, with deny_action disconnect.
func (s *Session) denied(cause error) *End {
	return s.endClient(packets.NotAuthorized, fmt.Errorf("not authorized: %w", cause))
}

// checkNewID refuses the identifier of a new SUBSCRIBE or UNSUBSCRIBE when
// the proxy still holds an exchange with it.
func (s *Session) checkNewID(t packets.PacketType, id uint16) error {
	if s.pubrecs.has(id) || s.subackPending(id) {
		return s.idInUse(t, id)
	}
	return nil
}

// idInUse ends the session for a packet identifier reused while in flight.
func (s *Session) idInUse(t packets.PacketType, id uint16) *End {
	return s.refuse(protocolError(s.version, "%v with packet identifier %d, still in use [MQTT-2.2.1-3]", t, id))
}

// appendAck appends a PUBACK, PUBREC or PUBCOMP answering the client's
// packet id; code is left out in MQTT 3.
func appendAck(back []byte, version byte, t packets.PacketType, id uint16, code packets.ReasonCode) []byte {
	a := packets.Ack{Type: t, PacketID: id, ReasonCode: code}
	back, err := a.Append(back, version)
	if err != nil {
		// The identifier came from a decoded packet, and the codes are
		// those the type allows: the encoder cannot refuse.
		panic(fmt.Sprintf("filter: %v", err))
	}
	return back
}

// subackPending reports whether a SUBACK for id is awaited.
func (s *Session) subackPending(id uint16) bool {
	if s.pendingSubacks.Load() == 0 {
		return false
	}
	s.mu.Lock()
	_, pending := s.subacks[id]
	s.mu.Unlock()
	return pending
}

// awaitSuback records a SUBSCRIBE forwarded without its refused filters,
// within the session's budget for them.
func (s *Session) awaitSuback(id uint16, p pendingSuback) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cost := p.cost(); s.pendingBytes+cost > s.pendingBudget {
		return s.endClient(packets.QuotaExceeded, fmt.Errorf("SUBSCRIBE %d: the SUBSCRIBEs awaiting their SUBACK would hold more than %d bytes", id, s.pendingBudget))
	}
	if s.subacks == nil {
		s.subacks = make(map[uint16]pendingSuback)
	}
	s.subacks[id] = p
	s.pendingBytes += p.cost()
	s.pendingSubacks.Store(int32(len(s.subacks)))
	return nil
}
