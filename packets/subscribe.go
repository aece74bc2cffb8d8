package packets

import (
	"bytes"
	"fmt"

	paho "github.com/eclipse/paho.golang/packets"
)

// Subscription is one topic filter of a SUBSCRIBE with its options (3.1.1
// §3.8.3, 5.0 §3.8.3.1).
type Subscription struct {
	// Filter is the topic filter as sent: a shared subscription keeps its
	// "$share/NAME/" prefix.
	Filter []byte
	// QoS is the maximum QoS the subscriber accepts.
	QoS byte
	// The MQTT 5 options; false and 0 in MQTT 3.
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
}

// The subscription options byte (5.0 §3.8.3.1; MQTT 3 has the QoS alone).
const (
	optionQoS               = 0x03
	optionNoLocal           = 0x04
	optionRetainAsPublished = 0x08
	optionRetainHandling    = 0x30
	shiftRetainHandling     = 4
	optionsReservedV5       = 0xC0
)

// Subscribe is a decoded SUBSCRIBE (3.1.1 §3.8, 5.0 §3.8). Decode makes
// the filters sub-slices of the frame's Raw.
type Subscribe struct {
	PacketID uint16
	// Properties are the MQTT 5 properties (Subscription Identifier, User
	// Properties): nil when there are none.
	Properties *paho.Properties
	// Subscriptions are the filters in the order sent. Decode reuses the
	// slice's capacity.
	Subscriptions []Subscription
}

var subscribeProperties = newPropertySet("SUBSCRIBE properties", paho.PropSubscriptionIdentifier, paho.PropUser)

// Decode decodes fr, a SUBSCRIBE, into s.
//
// Besides the rules of the packet, it applies those of topic filters
// (§4.7) and of shared subscriptions (5.0 §4.8.2) to each filter, as
// brokers do, so that whoever judges a filter sees a well-formed one. A
// "$share/" prefix is read as a shared subscription in MQTT 3 too, as
// brokers that offer them to MQTT 3 clients read it.
func (s *Subscribe) Decode(version byte, fr Frame) error {
	return s.walk(version, fr, true, nil)
}

// DecodeHead decodes and checks fr, a SUBSCRIBE, as Decode does, but
// keeps none of its subscriptions: s gets its packet identifier and
// properties, and Subscriptions is left empty. Each then visits the
// subscriptions, and AppendKeptOf writes the packet without some: a
// SUBSCRIBE of many filters is judged filter by filter, without a slice
// of them all.
func (s *Subscribe) DecodeHead(version byte, fr Frame) error {
	return s.walk(version, fr, false, nil)
}

// Each calls visit with each subscription of fr, a SUBSCRIBE that
// DecodeHead accepted, and its index, in order. sub is valid during the
// call only: its Filter is a sub-slice of fr.Raw.
func (s *Subscribe) Each(version byte, fr Frame, visit func(i int, sub Subscription)) {
	var again Subscribe
	again.walk(version, fr, false, visit) // accepted once: no error
}

// AppendKeptOf appends to dst fr, a SUBSCRIBE that DecodeHead accepted
// into s, without the subscriptions for whose index keep is false, as
// AppendKept does; at least one must be kept.
func (s *Subscribe) AppendKeptOf(dst []byte, version byte, fr Frame, keep func(i int) bool) ([]byte, error) {
	w := beginPacket(dst)
	w.uint16(s.PacketID)
	if version == ProtocolV5 {
		w.properties(s.Properties, subscribeProperties)
	}
	kept := 0
	s.Each(version, fr, func(i int, sub Subscription) {
		if keep(i) {
			kept++
			w.subscription(&sub)
		}
	})
	if kept == 0 {
		return dst, fmt.Errorf("packets: encode SUBSCRIBE: %w: SUBSCRIBE without a topic filter (§3.8.3)", ErrProtocolViolation)
	}
	return w.finish(byte(TypeSubscribe)<<4|0x02, TypeSubscribe)
}

// walk decodes fr, a SUBSCRIBE, into s's packet identifier and
// properties, checks it whole, and, as each subscription is read, appends
// it to s.Subscriptions (reusing its capacity) when collect is set, and
// calls visit with it when not nil: a caller that must not act on a
// refused packet walks it twice. Without collect, s.Subscriptions is
// left empty.
func (s *Subscribe) walk(version byte, fr Frame, collect bool, visit func(i int, sub Subscription)) error {
	if err := checkFrame(version, fr, TypeSubscribe); err != nil {
		return err
	}
	subs := s.Subscriptions[:0]
	if !collect {
		subs = nil
	}
	defer func() { s.Subscriptions = subs }()
	*s = Subscribe{}
	d := decoder{buf: fr.Body()}
	s.PacketID = d.uint16("SUBSCRIBE packet identifier")
	if version == ProtocolV5 {
		s.Properties = d.optionalProperties(subscribeProperties)
	}
	n := 0
	for d.err == nil && d.off < len(d.buf) {
		filter := d.binary("SUBSCRIBE topic filter")
		options := d.byte("SUBSCRIBE options")
		if d.err != nil {
			break
		}
		sub, err := decodeOptions(version, options)
		if err != nil {
			return newError(version, err)
		}
		sub.Filter = filter
		if err := sub.check(version); err != nil {
			return newError(version, err)
		}
		if collect {
			subs = append(subs, sub)
		}
		if visit != nil {
			visit(n, sub)
		}
		n++
	}
	err := d.err
	if err == nil {
		err = s.checkHead(version, n)
	}
	if err != nil {
		return newError(version, err)
	}
	return nil
}

// decodeOptions reads a subscription options byte, whose reserved bits
// must be 0: 3.1.1 [MQTT-3-8.3-4], 5.0 [MQTT-3.8.3-5].
func decodeOptions(version, options byte) (Subscription, error) {
	reserved, clause := byte(optionsReservedV5), "MQTT-3.8.3-5"
	if version != ProtocolV5 {
		reserved, clause = ^byte(optionQoS), "MQTT-3-8.3-4" // sic, in 3.1.1
	}
	if options&reserved != 0 {
		return Subscription{}, fmt.Errorf("%w: SUBSCRIBE options 0x%02X with reserved bits [%s]", ErrMalformed, options, clause)
	}
	return Subscription{
		QoS:               options & optionQoS,
		NoLocal:           options&optionNoLocal != 0,
		RetainAsPublished: options&optionRetainAsPublished != 0,
		RetainHandling:    (options & optionRetainHandling) >> shiftRetainHandling,
	}, nil
}

// options packs sub's options into their byte.
func (sub *Subscription) options() byte {
	b := sub.QoS | sub.RetainHandling<<shiftRetainHandling
	if sub.NoLocal {
		b |= optionNoLocal
	}
	if sub.RetainAsPublished {
		b |= optionRetainAsPublished
	}
	return b
}

// Append appends s, encoded for the given version, to dst.
func (s *Subscribe) Append(dst []byte, version byte) ([]byte, error) {
	return s.append(dst, version, nil)
}

// AppendKept appends to dst the SUBSCRIBE s without the subscriptions whose
// entry in keep is false: the same packet identifier and properties, and
// the kept subscriptions in their order. keep has an entry per
// subscription, and at least one must be true, for a SUBSCRIBE carries at
// least one filter (§3.8.3): when none is kept, the proxy answers the
// client itself.
func (s *Subscribe) AppendKept(dst []byte, version byte, keep []bool) ([]byte, error) {
	if len(keep) != len(s.Subscriptions) {
		return dst, fmt.Errorf("packets: encode SUBSCRIBE: %d keep entries for %d subscriptions", len(keep), len(s.Subscriptions))
	}
	return s.append(dst, version, keep)
}

// append writes the subscriptions that keep keeps, all of them when keep
// is nil.
func (s *Subscribe) append(dst []byte, version byte, keep []bool) ([]byte, error) {
	if err := s.check(version, keep); err != nil {
		return dst, fmt.Errorf("packets: encode SUBSCRIBE: %w", err)
	}
	w := beginPacket(dst)
	w.uint16(s.PacketID)
	if version == ProtocolV5 {
		w.properties(s.Properties, subscribeProperties)
	}
	for i := range s.Subscriptions {
		if keep == nil || keep[i] {
			w.subscription(&s.Subscriptions[i])
		}
	}
	return w.finish(byte(TypeSubscribe)<<4|0x02, TypeSubscribe)
}

// subscription writes sub's filter and options.
func (w *packetWriter) subscription(sub *Subscription) {
	w.binary(sub.Filter, "topic filter")
	w.byte(sub.options())
}

// check applies the rules of SUBSCRIBE to s, as far as keep keeps its
// subscriptions (all of them when keep is nil).
func (s *Subscribe) check(version byte, keep []bool) error {
	kept := 0
	for i := range s.Subscriptions {
		if keep != nil && !keep[i] {
			continue
		}
		kept++
		if err := s.Subscriptions[i].check(version); err != nil {
			return err
		}
	}
	return s.checkHead(version, kept)
}

// checkHead applies the rules of SUBSCRIBE to s's packet identifier and
// properties, for a packet of n subscriptions.
func (s *Subscribe) checkHead(version byte, n int) error {
	if s.PacketID == 0 {
		return fmt.Errorf("%w: SUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]", ErrProtocolViolation)
	}
	if version != ProtocolV5 && s.Properties != nil {
		return fmt.Errorf("%w: SUBSCRIBE properties in MQTT %s", ErrMalformed, versionName(version))
	}
	if n == 0 {
		return fmt.Errorf("%w: SUBSCRIBE without a topic filter (§3.8.3)", ErrProtocolViolation)
	}
	return checkProperties(s.Properties, subscribeProperties)
}

func (sub *Subscription) check(version byte) error {
	if problem := filterProblem(sub.Filter); problem != "" {
		return fmt.Errorf("%w: SUBSCRIBE topic filter %q %s", ErrMalformed, sub.Filter, problem)
	}
	switch {
	case sub.QoS > 2:
		// 3.1.1 [MQTT-3-8.3-4] calls it malformed, 5.0 §3.8.3.1 a protocol
		// error.
		if version != ProtocolV5 {
			return fmt.Errorf("%w: SUBSCRIBE with QoS %d [MQTT-3-8.3-4]", ErrMalformed, sub.QoS)
		}
		return fmt.Errorf("%w: SUBSCRIBE with QoS %d (§3.8.3.1)", ErrProtocolViolation, sub.QoS)
	case version != ProtocolV5 && (sub.NoLocal || sub.RetainAsPublished || sub.RetainHandling != 0):
		return fmt.Errorf("%w: MQTT 5 subscription options in MQTT %s", ErrMalformed, versionName(version))
	case sub.RetainHandling > 2:
		return fmt.Errorf("%w: SUBSCRIBE with retain handling %d (§3.8.3.1)", ErrProtocolViolation, sub.RetainHandling)
	case sub.NoLocal && bytes.HasPrefix(sub.Filter, sharePrefix):
		return fmt.Errorf("%w: no local on shared subscription %q [MQTT-3.8.3-4]", ErrProtocolViolation, sub.Filter)
	}
	return nil
}

// sharePrefix starts a shared subscription's filter (5.0 §4.8.2).
var sharePrefix = []byte("$share/")

// filterProblem names what makes filter no topic filter, or returns "". A
// filter is at least one character long [MQTT-4.7.3-1], a wildcard is a
// level of its own and '#' only the last (§4.7.1), and a shared
// subscription's share name is not empty and holds no wildcard, and a
// filter follows it ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
func filterProblem(filter []byte) string {
	if len(filter) == 0 {
		return "is empty [MQTT-4.7.3-1]"
	}
	if problem := textProblem(filter); problem != "" {
		return problem
	}
	if rest, ok := bytes.CutPrefix(filter, sharePrefix); ok {
		name, slash := rest, bytes.IndexByte(rest, '/')
		if slash >= 0 {
			name = rest[:slash]
		}
		switch {
		case len(name) == 0:
			return "has an empty share name [MQTT-4.8.2-1]"
		case bytes.ContainsAny(name, "+#"):
			return "has a wildcard in its share name [MQTT-4.8.2-2]"
		case slash < 0 || slash == len(rest)-1:
			return "has no topic filter after its share name [MQTT-4.8.2-2]"
		}
		filter = rest[slash+1:]
	}
	for rest := filter; ; {
		level := rest
		slash := bytes.IndexByte(rest, '/')
		if slash >= 0 {
			level = rest[:slash]
		}
		if bytes.IndexByte(level, '#') >= 0 && (len(level) != 1 || slash >= 0) {
			return "has '#' other than as its whole last level (§4.7.1.2)"
		}
		if bytes.IndexByte(level, '+') >= 0 && len(level) != 1 {
			return "has '+' sharing a level (§4.7.1.3)"
		}
		if slash < 0 {
			return ""
		}
		rest = rest[slash+1:]
	}
}

// Insertion is a code to place at Index of a list of reason codes.
type Insertion struct {
	Index int
	Code  ReasonCode
}

// SubscriptionRefusal is the SUBACK code that refuses a subscription as
// not authorized: 0x87 in MQTT 5, and the failure return code 0x80 in
// MQTT 3, which has no reasons.
func SubscriptionRefusal(version byte) ReasonCode {
	if version == ProtocolV5 {
		return NotAuthorized
	}
	return UnspecifiedError
}

// Suback is a decoded SUBACK (3.1.1 §3.9, 5.0 §3.9).
type Suback struct {
	PacketID uint16
	// Properties are the MQTT 5 properties (Reason String, User
	// Properties): nil when there are none.
	Properties *paho.Properties
	// Codes has a code per filter of the SUBSCRIBE answered, in order:
	// reason codes in MQTT 5, return codes (0, 1, 2 or 0x80 for failure)
	// in MQTT 3. Decode reuses the slice's capacity.
	Codes []ReasonCode
}

var (
	subackProperties = newPropertySet("SUBACK properties", paho.PropReasonString, paho.PropUser)
	// subackCodes are the reason codes of an MQTT 5 SUBACK (§3.9.3), and
	// subackCodesV3 the return codes of MQTT 3 [MQTT-3.9.3-2].
	subackCodes = newReasonSet(Success, GrantedQoS1, GrantedQoS2, UnspecifiedError, ImplementationSpecificError,
		NotAuthorized, TopicFilterInvalid, PacketIdentifierInUse, QuotaExceeded, SharedSubscriptionsNotSupported,
		SubscriptionIdentifiersNotSupported, WildcardSubscriptionsNotSupported)
	subackCodesV3 = newReasonSet(Success, GrantedQoS1, GrantedQoS2, UnspecifiedError)
)

// Decode decodes fr, a SUBACK, into s.
func (s *Suback) Decode(version byte, fr Frame) error {
	if err := checkFrame(version, fr, TypeSuback); err != nil {
		return err
	}
	codes := s.Codes[:0]
	*s = Suback{}
	d := decoder{buf: fr.Body()}
	s.PacketID = d.uint16("SUBACK packet identifier")
	if version == ProtocolV5 {
		s.Properties = d.optionalProperties(subackProperties)
	}
	if d.err == nil {
		for _, c := range d.buf[d.off:] {
			codes = append(codes, ReasonCode(c))
		}
	}
	s.Codes = codes
	err := d.err
	if err == nil {
		err = checkCodes(TypeSuback, s.PacketID, codes, nil, subackCodeSet(version))
	}
	if err == nil {
		err = checkVersionProperties(version, s.Properties, subackProperties)
	}
	if err != nil {
		return newError(version, err)
	}
	return nil
}

// Append appends s, encoded for the given version, to dst.
func (s *Suback) Append(dst []byte, version byte) ([]byte, error) {
	return s.AppendExpanded(dst, version, nil)
}

// AppendExpanded appends to dst the SUBACK s with codes inserted: how the
// broker's SUBACK, which answers a SUBSCRIBE from which the proxy removed
// filters, becomes the SUBACK for the client's own SUBSCRIBE, with a code
// per filter it sent. Each insertion puts its Code at its Index of the
// result, so inserts ascend by Index; the codes of s fill the other places
// in their order. The proxy inserts SubscriptionRefusal(version) where it
// removed a filter.
func (s *Suback) AppendExpanded(dst []byte, version byte, inserts []Insertion) ([]byte, error) {
	err := checkCodes(TypeSuback, s.PacketID, s.Codes, inserts, subackCodeSet(version))
	if err == nil {
		err = checkVersionProperties(version, s.Properties, subackProperties)
	}
	if err != nil {
		return dst, fmt.Errorf("packets: encode SUBACK: %w", err)
	}
	w := beginPacket(dst)
	w.uint16(s.PacketID)
	if version == ProtocolV5 {
		w.properties(s.Properties, subackProperties)
	}
	w.codes(s.Codes, inserts)
	return w.finish(byte(TypeSuback)<<4, TypeSuback)
}

func subackCodeSet(version byte) *reasonSet {
	if version == ProtocolV5 {
		return &subackCodes
	}
	return &subackCodesV3
}

// Unsubscribe is a decoded UNSUBSCRIBE (3.1.1 §3.10, 5.0 §3.10). Decode
// makes the filters sub-slices of the frame's Raw.
type Unsubscribe struct {
	PacketID uint16
	// Properties are the MQTT 5 User Properties: nil when there are none.
	Properties *paho.Properties
	// Filters are the topic filters in the order sent. Decode reuses the
	// slice's capacity.
	Filters [][]byte
}

var unsubscribeProperties = newPropertySet("UNSUBSCRIBE properties", paho.PropUser)

// Decode decodes fr, an UNSUBSCRIBE, into u. It applies the rules of topic
// filters as SUBSCRIBE's Decode does.
func (u *Unsubscribe) Decode(version byte, fr Frame) error {
	return u.walk(version, fr, true)
}

// DecodeHead decodes and checks fr, an UNSUBSCRIBE, as Decode does, but
// keeps none of its filters: u gets its packet identifier and properties,
// and Filters is left empty, so that an UNSUBSCRIBE of many filters is
// checked without a slice of them all.
func (u *Unsubscribe) DecodeHead(version byte, fr Frame) error {
	return u.walk(version, fr, false)
}

// walk decodes fr, an UNSUBSCRIBE, into u's packet identifier and
// properties and checks it whole, appending each filter to u.Filters
// (reusing its capacity) when collect is set.
func (u *Unsubscribe) walk(version byte, fr Frame, collect bool) error {
	if err := checkFrame(version, fr, TypeUnsubscribe); err != nil {
		return err
	}
	filters := u.Filters[:0]
	if !collect {
		filters = nil
	}
	defer func() { u.Filters = filters }()
	*u = Unsubscribe{}
	d := decoder{buf: fr.Body()}
	u.PacketID = d.uint16("UNSUBSCRIBE packet identifier")
	if version == ProtocolV5 {
		u.Properties = d.optionalProperties(unsubscribeProperties)
	}
	n := 0
	for d.err == nil && d.off < len(d.buf) {
		filter := d.binary("UNSUBSCRIBE topic filter")
		if d.err != nil {
			break
		}
		if err := checkUnsubscribeFilter(filter); err != nil {
			return newError(version, err)
		}
		if collect {
			filters = append(filters, filter)
		}
		n++
	}
	err := d.err
	if err == nil {
		err = u.checkHead(version, n)
	}
	if err != nil {
		return newError(version, err)
	}
	return nil
}

// Append appends u, encoded for the given version, to dst.
func (u *Unsubscribe) Append(dst []byte, version byte) ([]byte, error) {
	if err := u.check(version); err != nil {
		return dst, fmt.Errorf("packets: encode UNSUBSCRIBE: %w", err)
	}
	w := beginPacket(dst)
	w.uint16(u.PacketID)
	if version == ProtocolV5 {
		w.properties(u.Properties, unsubscribeProperties)
	}
	for _, filter := range u.Filters {
		w.binary(filter, "topic filter")
	}
	return w.finish(byte(TypeUnsubscribe)<<4|0x02, TypeUnsubscribe)
}

func (u *Unsubscribe) check(version byte) error {
	for _, filter := range u.Filters {
		if err := checkUnsubscribeFilter(filter); err != nil {
			return err
		}
	}
	return u.checkHead(version, len(u.Filters))
}

// checkHead applies the rules of UNSUBSCRIBE to u's packet identifier and
// properties, for a packet of n filters.
func (u *Unsubscribe) checkHead(version byte, n int) error {
	switch {
	case u.PacketID == 0:
		return fmt.Errorf("%w: UNSUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]", ErrProtocolViolation)
	case n == 0:
		return fmt.Errorf("%w: UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]", ErrProtocolViolation)
	}
	return checkVersionProperties(version, u.Properties, unsubscribeProperties)
}

func checkUnsubscribeFilter(filter []byte) error {
	if problem := filterProblem(filter); problem != "" {
		return fmt.Errorf("%w: UNSUBSCRIBE topic filter %q %s", ErrMalformed, filter, problem)
	}
	return nil
}

// Unsuback is a decoded UNSUBACK (3.1.1 §3.11, 5.0 §3.11).
type Unsuback struct {
	PacketID uint16
	// Properties are the MQTT 5 properties (Reason String, User
	// Properties): nil when there are none.
	Properties *paho.Properties
	// Codes are the MQTT 5 reason codes, one per filter of the
	// UNSUBSCRIBE answered. MQTT 3 has none: Decode leaves Codes empty,
	// and Append leaves them out, as it leaves out Properties. Decode
	// reuses the slice's capacity.
	Codes []ReasonCode
}

var (
	unsubackProperties = newPropertySet("UNSUBACK properties", paho.PropReasonString, paho.PropUser)
	// unsubackCodes are the reason codes of UNSUBACK (5.0 §3.11.3).
	unsubackCodes = newReasonSet(Success, NoSubscriptionExisted, UnspecifiedError, ImplementationSpecificError,
		NotAuthorized, TopicFilterInvalid, PacketIdentifierInUse)
)

// Decode decodes fr, an UNSUBACK, into u.
func (u *Unsuback) Decode(version byte, fr Frame) error {
	if err := checkFrame(version, fr, TypeUnsuback); err != nil {
		return err
	}
	codes := u.Codes[:0]
	*u = Unsuback{}
	d := decoder{buf: fr.Body()}
	u.PacketID = d.uint16("UNSUBACK packet identifier")
	var err error
	if version == ProtocolV5 {
		u.Properties = d.optionalProperties(unsubackProperties)
		if d.err == nil {
			for _, c := range d.buf[d.off:] {
				codes = append(codes, ReasonCode(c))
			}
		}
		if err = d.err; err == nil {
			err = checkCodes(TypeUnsuback, u.PacketID, codes, nil, &unsubackCodes)
		}
	} else if err = d.end(TypeUnsuback); err == nil && u.PacketID == 0 {
		err = fmt.Errorf("%w: UNSUBACK with packet identifier 0 [MQTT-2.2.1-3]", ErrProtocolViolation)
	}
	u.Codes = codes
	if err == nil {
		err = checkVersionProperties(version, u.Properties, unsubackProperties)
	}
	if err != nil {
		return newError(version, err)
	}
	return nil
}

// Append appends u, encoded for the given version, to dst.
func (u *Unsuback) Append(dst []byte, version byte) ([]byte, error) {
	var err error
	if version == ProtocolV5 {
		if err = checkCodes(TypeUnsuback, u.PacketID, u.Codes, nil, &unsubackCodes); err == nil {
			err = checkProperties(u.Properties, unsubackProperties)
		}
	} else if u.PacketID == 0 {
		err = fmt.Errorf("%w: UNSUBACK with packet identifier 0 [MQTT-2.2.1-3]", ErrProtocolViolation)
	}
	if err != nil {
		return dst, fmt.Errorf("packets: encode UNSUBACK: %w", err)
	}
	w := beginPacket(dst)
	w.uint16(u.PacketID)
	if version == ProtocolV5 {
		w.properties(u.Properties, unsubackProperties)
		w.codes(u.Codes, nil)
	}
	return w.finish(byte(TypeUnsuback)<<4, TypeUnsuback)
}

// checkCodes applies the rules of the codes of a SUBACK or UNSUBACK of type
// t: a non-zero packet identifier, at least one code, each from valid,
// with inserts, if any, at ascending places within the list they make.
func checkCodes(t PacketType, packetID uint16, codes []ReasonCode, inserts []Insertion, valid *reasonSet) error {
	total := len(codes) + len(inserts)
	switch {
	case packetID == 0:
		return fmt.Errorf("%w: %v with packet identifier 0 [MQTT-2.2.1-3]", ErrProtocolViolation, t)
	case total == 0:
		// One code per filter, and a SUBSCRIBE or UNSUBSCRIBE has one
		// at least (§3.9.3, §3.11.3).
		return fmt.Errorf("%w: %v without a code", ErrProtocolViolation, t)
	}
	for i, ins := range inserts {
		if ins.Index < 0 || ins.Index >= total || i > 0 && ins.Index <= inserts[i-1].Index {
			return fmt.Errorf("insertion %d at index %d: not ascending within the %d codes", i, ins.Index, total)
		}
		if !valid.has(ins.Code) {
			return fmt.Errorf("%w: %v with code 0x%02X", ErrProtocolViolation, t, byte(ins.Code))
		}
	}
	for _, c := range codes {
		if !valid.has(c) {
			return fmt.Errorf("%w: %v with code 0x%02X", ErrProtocolViolation, t, byte(c))
		}
	}
	return nil
}

// checkVersionProperties applies checkProperties in MQTT 5, and refuses
// properties in MQTT 3, which has none.
func checkVersionProperties(version byte, p *paho.Properties, set propertySet) error {
	if version != ProtocolV5 {
		if p != nil {
			return fmt.Errorf("%w: %s in MQTT %s", ErrMalformed, set.name, versionName(version))
		}
		return nil
	}
	return checkProperties(p, set)
}

// codes writes codes with inserts placed among them.
func (w *packetWriter) codes(codes []ReasonCode, inserts []Insertion) {
	next := 0
	for i := range len(codes) + len(inserts) {
		if len(inserts) > 0 && inserts[0].Index == i {
			w.byte(byte(inserts[0].Code))
			inserts = inserts[1:]
			continue
		}
		w.byte(byte(codes[next]))
		next++
	}
}
