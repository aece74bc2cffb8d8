// Package filter enforces a client's topic authorization on the MQTT stream
// of one session, after its CONNECT: it frames the bytes an engine reads in
// each direction, judges every PUBLISH and SUBSCRIBE the client sends by
// its acl.Policy, answers denials itself as EMQX does, and hands the engine
// whole packets to write. It holds no socket: bytes in, bytes out.
//
// Typical usage, by an engine that reads a direction into buf and writes
// to that direction's destination and source:
//
//	s := filter.New(filter.Config{
//		Version:       connect.ProtocolVersion,
//		Policy:        policy, // nil: framing only, no authorization
//		MaxPacketSize: [2]int{limit, limit},
//		OnDecision:    countAndSample,
//		// For a client whose token came under an Authentication Method:
//		AuthMethod:     identity.AuthMethod,
//		Reauthenticate: verifyInBackground, // see Re-authentication
//		Link:           link,               // the engine's ToClient and End
//	})
//	defer s.Release()
//	// For each read of direction dir (filter.FromClient or filter.FromBroker):
//	fwd, back, err := s.Filter(dir, buf[:n], fwd[:0], back[:0])
//	write(destination(dir), fwd) // whole packets
//	write(source(dir), back)     // the proxy's own answers, whole packets
//	var end *filter.End
//	if errors.As(err, &end) {
//		write(client, end.ToClient) // MQTT 5: DISCONNECT(end.Code); MQTT 3: nothing
//		closeBoth()
//	}
//
// The engine's part:
//
//   - the client direction is filtered from the first byte after the
//     CONNECT, bytes read along with the CONNECT included, and the broker
//     direction from the broker's first byte, its CONNACK, which the
//     filter reads for the limits it sets on the client;
//   - the client's socket gets bytes from both directions (the broker's
//     packets as fwd, the proxy's answers as the client direction's back):
//     each output is whole packets, so finishing the write of one before
//     starting the next on the same socket keeps the stream whole;
//   - a direction is not read while its fwd or back output is unwritten, so
//     that a client that sends denied PUBLISHes without reading its answers
//     is held back like one that floods the broker;
//   - on an *End, the call's outputs are written, then End.ToClient, then
//     both sockets are closed.
//
// And for a session with AuthMethod, the Link, whose methods are called
// from the goroutine that verifies a re-authentication's token, at any
// time, concurrently with Filter calls of either direction:
//
//   - ToClient(b) must not block and must not wait for a Filter call: it
//     queues b, whole packets, for the client, and wakes the engine, which
//     writes it between two whole outputs (never inside a fwd or back
//     being written), after every output of the Filter calls that
//     returned before it, even when neither socket has anything to read;
//   - End(e) must not block either: the engine writes what the client was
//     to get before it (outputs returned, bytes queued), then e.ToClient,
//     then closes both sockets. The Filter calls under way or made later
//     return e: the engine ends the link once, at the first of the two;
//   - after the link has ended (or Release), ToClient and End are
//     ignored: an answer may come after its session is gone;
//   - what ToClient queues is an AUTH of a few bytes per
//     re-authentication, and a client has one re-authentication under way
//     at a time, so the queue stays small without a cap of its own.
//
// # What the client sees
//
// From the client to the broker, a PUBLISH is judged by its topic (its
// MQTT 5 topic alias resolved), QoS and retain flag, and a SUBSCRIBE filter
// by filter and QoS. With DisconnectOnDeny unset (deny_action: ignore, the
// default, as in EMQX):
//
//   - a denied PUBLISH never reaches the broker. At QoS 0 it is dropped; at
//     QoS 1 the proxy answers PUBACK, with reason 0x87 (not authorized) in
//     MQTT 5 and a plain PUBACK in MQTT 3, which has no reasons; at QoS 2 it
//     answers PUBREC, with 0x87 in MQTT 5, which ends the exchange, and a
//     plain PUBREC in MQTT 3, after which it answers the client's PUBREL
//     with PUBCOMP itself, so the client's flow completes. A PUBLISH with
//     the identifier of such an MQTT 3 exchange is a retransmission and is
//     answered with PUBREC again, unjudged [MQTT-4.3.3-2].
//   - a SUBSCRIBE with some denied filters reaches the broker without them,
//     and the broker's SUBACK reaches the client with a refusal put back in
//     each of their places (0x87 in MQTT 5, the failure code 0x80 in MQTT
//     3), so the client sees one code per filter it sent, in its order. A
//     SUBSCRIBE whose filters are all denied is answered by the proxy.
//
// From the broker to the client, a PUBLISH is judged by its topic (its
// MQTT 5 topic alias resolved, up to Config.ClientAliasMax) and QoS, as a
// delivery (acl.Request.Delivery: would a subscription the rules allow
// receive it?): a session the broker resumed may hold subscriptions made
// under rules that allowed more. A denied one never reaches the client and
// is answered to the broker as a denied PUBLISH of the client's is, with
// the broker's packet identifier: PUBACK, PUBREC (0x87 in MQTT 5), and in
// MQTT 3 PUBCOMP for the broker's PUBREL, which the client never sees.
// Denied deliveries are not counted by OnDecision, and never end the
// session.
//
// With DisconnectOnDeny set (deny_action: disconnect), the first denial ends
// the session: an MQTT 5 client gets DISCONNECT 0x87, an MQTT 3 client a
// close. UNSUBSCRIBE and the rest pass, and AUTH too, unless the client
// authenticated under an Authentication Method.
//
// # Re-authentication
//
// An MQTT 5 client that presented its token under an Authentication
// Method (Config.AuthMethod) is authenticated by the proxy, and the broker
// got its CONNECT without the method. So the proxy speaks for the method:
// the broker's CONNACK reaches the client with the method added, as a
// server that accepts a client under a method must send it
// [MQTT-4.12.0-5] (a refusing CONNACK passes as it is), and no AUTH of the
// client's reaches the broker. The client may then re-authenticate with a
// fresh token [MQTT-4.12.1-1]: an AUTH with reason 0x19 (re-authenticate),
// the session's method, and the token as Authentication Data. The filter
// hands the token to Config.Reauthenticate and goes on: until the answer,
// the client's other packets flow, judged by the session's policy, as the
// specification allows. The answer is written to the client between whole
// packets: on success an AUTH 0x00 with the method, the answer's policy
// judging the client's packets from then on; on refusal a DISCONNECT 0x87
// (not authorized), after which both sockets close [MQTT-4.12.1-2]. An
// answer given before the hook returns comes back in the Filter call's
// back, or its *End; a later one through the Link.
//
// Any other AUTH from such a client is a protocol error (0x82): one before
// the CONNACK, one with reason 0x18 (continue; the proxy never asks to
// continue, its method takes one step) or 0x00, one under another method,
// and one while a re-authentication awaits its answer. An AUTH from the
// broker, or a CONNACK that names a method, ends the session as a broken
// broker stream: the broker got no method and must not use one
// [MQTT-4.12.0-6].
//
// Packets the filter decodes (PUBLISH, SUBSCRIBE and UNSUBSCRIBE from the
// client, with a policy; AUTH from a client under a method) are checked against the rules of their type, and a
// broken one ends the session with the packets package's reason code:
// malformed packet (0x81), protocol error (0x82), topic alias invalid
// (0x94), packet too large (0x95); a packet type the client may not send
// is a protocol error. The others are only framed, and the broker judges
// them. From the broker, the filter frames every packet, reads the CONNACK
// for the limits it sets on the client (Topic Alias Maximum, Maximum Packet
// Size), tells an MQTT 5 client in that CONNACK the limits the proxy holds
// it to (a Topic Alias Maximum of at most 16, its MaxPacketSize as Maximum
// Packet Size), and rewrites the SUBACKs it must; a broken broker stream ends the
// session with DISCONNECT 0x80 (unspecified error) to an MQTT 5 client.
//
// # Packet identifiers
//
// The proxy writes to the client only answers to the client's own packets,
// with their identifiers, and to the broker only answers to the deliveries
// it drops, with the broker's. It remembers the identifiers of the SUBSCRIBEs whose SUBACK it must rewrite
// and of the MQTT 3 QoS 2 exchanges it answers itself until they complete:
// a client that reuses one of those before then breaks [MQTT-2.2.1-3] and
// the session ends with a protocol error. Identifiers of packets forwarded
// unchanged are the broker's to check.
//
// # Memory
//
// Between packets a Session holds no buffer: a packet split across reads is
// gathered in a pooled buffer that grows with what arrives, up to the
// direction's MaxPacketSize. Its other state is the client's topic aliases
// (at most 16 topics, of at most the client's MaxPacketSize together: an
// alias that would take more ends the session with quota exceeded, 0x97),
// and the identifiers above: the MQTT 3 QoS 2 exchanges as a bit each (8
// KiB while there are any), and the SUBSCRIBEs awaiting their SUBACK as a
// bit per filter plus a record each, within the client's MaxPacketSize (at
// least 64 KiB), beyond which the session ends with quota exceeded (0x97).
// A SUBSCRIBE's filters are judged as they are read, without a slice of
// them. A session under an Authentication Method holds the AUTH
// that answers a re-authentication well (a few dozen bytes), and a copy of
// the token of the one that awaits its answer, until the hook lets go of
// it.
package filter

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// The directions of a session, matching the engine's flows: the index of
// Config.MaxPacketSize and the dir of Filter.
const (
	FromClient = 0
	FromBroker = 1
)

// minPendingBudget is the least a session may hold for the SUBSCRIBEs
// awaiting their SUBACK, whatever the client's packet limit: a small
// max_packet_size must not make a few pipelined SUBSCRIBEs a quota
// violation.
const minPendingBudget = 64 << 10

// pendingEntryCost is what one SUBSCRIBE awaiting its SUBACK is charged
// beyond its bits: its map entry and record, rounded up.
const pendingEntryCost = 64

// maxTopicAliases caps the Topic Alias Maximum an MQTT 5 client is told
// (the broker's, when smaller): the session keeps a copy of the topic of
// each alias the client sets, to judge the PUBLISHes that name it by its
// alias alone, and a client gains little from more aliases than the few
// topics it publishes to most (mosquitto announces 10 by default, EMQX
// 65,535). Together the topics are bounded by the client's packet limit
// (TopicAliases.MaxBytes).
const maxTopicAliases = 16

// Config is what a Session needs to know of its client. The zero value
// frames an MQTT 3.1.1 session without authorization, at the protocol's
// largest packet size.
type Config struct {
	// Version is the protocol level of the client's CONNECT:
	// packets.ProtocolV31, ProtocolV311 or ProtocolV5; 0 means
	// ProtocolV311.
	Version byte
	// Policy decides the client's PUBLISHes and SUBSCRIBE filters. Nil
	// means no authorization: the session is only framed, for the proxy to
	// place its own packets (a DISCONNECT at the end of a drain) between
	// whole ones. A policy that is acl.Policy.Unrestricted is consulted all
	// the same; pass nil to skip the checks.
	Policy *acl.Policy
	// DisconnectOnDeny ends the session at the first denial
	// (authorization.deny_action: disconnect); unset, denials are answered
	// and the session goes on (ignore, the default).
	DisconnectOnDeny bool
	// ClientAliasMax is the Topic Alias Maximum of an MQTT 5 client's
	// CONNECT: the aliases the broker may set on its PUBLISHes to the
	// client, which the filter follows to judge them.
	ClientAliasMax uint16
	// MaxPacketSize is the largest packet, fixed header included, accepted
	// from each direction, indexed by FromClient and FromBroker: the
	// configured limit. From the client, the broker's Maximum Packet Size,
	// read from its CONNACK, applies too when it is smaller. 0 means
	// packets.MaxPacketSize.
	MaxPacketSize [2]int
	// OnDecision, if set, is called with every decision the policy makes,
	// allowed or denied: once per PUBLISH and once per SUBSCRIBE filter, in
	// the client direction's goroutine. topic is the PUBLISH's topic (its
	// alias resolved) or the filter as sent; it is valid only during the
	// call (copy it to keep it, as a log line does). It must not block.
	OnDecision func(action acl.Action, topic []byte, d acl.Decision)

	// AuthMethod is the Authentication Method of an MQTT 5 client that
	// presented its token under one (authn.Identity.AuthMethod, as its
	// CONNECT carried it); empty for a token in the password or user name,
	// and ignored for MQTT 3. When set, the proxy answers for the method
	// (see Re-authentication): the broker's successful CONNACK gets it
	// added, the client's AUTH packets are the proxy's, and an AUTH or a
	// method from the broker, which got a CONNECT without one, ends the
	// session.
	AuthMethod string
	// Reauthenticate is handed the token of each re-authentication (a
	// copy, the callee's to keep), and answer, to call once with the
	// outcome, from any goroutine. It is called in the client direction's
	// Filter call and must not block: it starts the verification, which
	// may wait for a JWKS fetch, and returns; it may answer before it
	// returns when the outcome is at hand. On success it moves the
	// session's expiry to the new token's before it answers. Nil, with
	// AuthMethod set, refuses every re-authentication.
	Reauthenticate func(token []byte, answer func(Reauth))
	// Link is the engine's side of answers that come after the Filter
	// call that asked for them: required with Reauthenticate, which is
	// otherwise refused every time.
	Link Link
}

// Session is the filter of one authenticated session. Filter may be called
// for the two directions concurrently; everything else about a direction,
// one call at a time.
type Session struct {
	version byte
	// policy is read by the client direction for each packet it judges,
	// and replaced by a re-authentication's answer.
	policy           atomic.Pointer[acl.Policy]
	disconnectOnDeny bool
	onDecision       func(acl.Action, []byte, acl.Decision)
	framers          [2]packets.Framer
	// methodAuth is the state of a client authenticated under an
	// Authentication Method; nil for the others.
	methodAuth *methodAuth

	// Owned by the client direction.
	clientLimit  int                  // the largest packet the client may send
	clientMax    int                  // the configured clientLimit, before the broker's: set once, read by both directions
	brokerLimits bool                 // the broker's CONNACK limits are applied
	aliases      packets.TopicAliases // the client's topic aliases
	// pubrecs are the MQTT 3 QoS 2 exchanges the proxy answered with
	// PUBREC for a denied PUBLISH, awaiting the client's PUBREL.
	pubrecs idSet

	// Owned by the broker direction.
	connackSeen bool
	// deliveryAliases are the topic aliases the broker sets on its
	// PUBLISHes to an MQTT 5 client, up to the client's Topic Alias
	// Maximum.
	deliveryAliases packets.TopicAliases
	// deliveryPubrecs are the MQTT 3 QoS 2 deliveries the proxy dropped
	// and answered with PUBREC, awaiting the broker's PUBREL.
	deliveryPubrecs idSet

	// Shared. brokerAliasMax and brokerMaxPacket are written by the broker
	// direction before it sets connack, and read by the client direction
	// after it sees it set.
	connack         atomic.Bool
	brokerAliasMax  uint16
	brokerMaxPacket int
	// pendingSubacks is len(subacks), read without mu so that a session
	// with none takes no lock.
	pendingSubacks atomic.Int32
	mu             sync.Mutex // guards subacks and pendingBytes
	// subacks are the SUBSCRIBEs forwarded without some filters, by packet
	// identifier, whose SUBACK must get the refusals back; nil when there
	// are none.
	subacks      map[uint16]pendingSuback
	pendingBytes int // what subacks are charged (pendingSuback.cost)
	// pendingBudget bounds pendingBytes: the client's packet limit, at
	// least minPendingBudget. Set once.
	pendingBudget int
}

// pendingSuback is a SUBSCRIBE forwarded without its refused filters.
type pendingSuback struct {
	filters  int    // the filters the client sent
	refusals int    // how many of them were refused
	refused  bitset // which: a bit per filter index
}

// cost is what p is charged against the session's budget.
func (p *pendingSuback) cost() int { return pendingEntryCost + 8*len(p.refused) }

// bitset is a set of small integers, a bit each.
type bitset []uint64

func (b *bitset) set(i int) {
	for len(*b) <= i/64 {
		*b = append(*b, 0)
	}
	(*b)[i/64] |= 1 << (i % 64)
}

func (b bitset) has(i int) bool { return i/64 < len(b) && b[i/64]&(1<<(i%64)) != 0 }

// idSet is a set of packet identifiers: a bit each, 8 KiB while it holds
// any, nothing when empty, so that it never holds more whatever the client
// does.
type idSet struct {
	bits *[1 << 16 / 64]uint64
	n    int
}

func (s *idSet) has(id uint16) bool { return s.bits != nil && s.bits[id/64]&(1<<(id%64)) != 0 }

func (s *idSet) add(id uint16) {
	if s.bits == nil {
		s.bits = new([1 << 16 / 64]uint64)
	}
	if !s.has(id) {
		s.bits[id/64] |= 1 << (id % 64)
		s.n++
	}
}

func (s *idSet) remove(id uint16) {
	if !s.has(id) {
		return
	}
	s.bits[id/64] &^= 1 << (id % 64)
	if s.n--; s.n == 0 {
		s.bits = nil
	}
}

// New returns the filter of a session.
func New(cfg Config) *Session {
	version := cfg.Version
	if version == 0 {
		version = packets.ProtocolV311
	}
	s := &Session{
		version:          version,
		disconnectOnDeny: cfg.DisconnectOnDeny,
		onDecision:       cfg.OnDecision,
	}
	s.policy.Store(cfg.Policy)
	if cfg.AuthMethod != "" && version == packets.ProtocolV5 {
		s.methodAuth = newMethodAuth(cfg, version)
	}
	for dir := range s.framers {
		s.framers[dir] = *packets.NewFramer(version, cfg.MaxPacketSize[dir])
	}
	s.clientLimit = cfg.MaxPacketSize[FromClient]
	if s.clientLimit <= 0 || s.clientLimit > packets.MaxPacketSize {
		s.clientLimit = packets.MaxPacketSize
	}
	s.clientMax = s.clientLimit
	// The aliases' topics are the client's, held for the session's life:
	// together, no more than one packet of its.
	s.aliases.MaxBytes = s.clientMax
	s.pendingBudget = max(s.clientMax, minPendingBudget)
	s.deliveryAliases.Max = cfg.ClientAliasMax
	s.deliveryAliases.MaxBytes = max(cfg.MaxPacketSize[FromBroker], 0)
	return s
}

// Filter is called with the bytes read from direction dir (FromClient or
// FromBroker), in order, one call at a time per direction; the two
// directions may be called concurrently. in is valid only during the call:
// the Session keeps no reference to it, and copies what it must keep of a
// packet split across reads.
//
// It appends to fwd what dir's destination gets, whole packets only, so
// that every call's output ends on a packet boundary, and to back what
// dir's source gets: the answers the proxy writes itself, also whole
// packets, which the engine writes between whole packets of the other
// direction. fwd and back must not share memory with in.
//
// A non-nil error is an *End: the session is over. fwdOut and backOut then
// hold the packets that came before the one that ended it, whole, to be
// written as usual, before End.ToClient and the close. After an error,
// Filter must not be called again. A session ended between calls (a
// refused re-authentication, which Link.End reports too) returns its *End
// at once, with fwd and back as given.
func (s *Session) Filter(dir int, in, fwd, back []byte) (fwdOut, backOut []byte, err error) {
	if s.methodAuth != nil {
		if end := s.methodAuth.ended.Load(); end != nil {
			return fwd, back, end
		}
	}
	if dir == FromClient {
		return s.fromClient(in, fwd, back)
	}
	return s.fromBroker(in, fwd, back)
}

// Release gives back the buffers the Session holds; called once, when the
// link ends and neither direction is being filtered.
func (s *Session) Release() {
	if s.methodAuth != nil {
		s.methodAuth.released.Store(true)
	}
	for dir := range s.framers {
		s.framers[dir].Release()
	}
	s.pubrecs, s.deliveryPubrecs = idSet{}, idSet{}
	s.mu.Lock()
	s.subacks, s.pendingBytes = nil, 0
	s.pendingSubacks.Store(0)
	s.mu.Unlock()
}

// Disconnect returns what to write to the client to end its session with
// code: in MQTT 5 a DISCONNECT with that reason code (0x8B at the end of a
// drain, 0xA0 when its token expires, 0x98 for an administrator's kick);
// in MQTT 3, which has no server DISCONNECT, nothing. A code that is no
// DISCONNECT reason code gives one with unspecified error (0x80).
func Disconnect(version byte, code packets.ReasonCode) []byte {
	if version != packets.ProtocolV5 {
		return nil
	}
	b, err := (&packets.Disconnect{ReasonCode: code}).Append(nil, version)
	if err != nil {
		b, _ = (&packets.Disconnect{ReasonCode: packets.UnspecifiedError}).Append(nil, version)
	}
	return b
}

// End is the error that ends a session: what to tell the client, and why.
type End struct {
	// ToClient is what to write to the client before closing: an MQTT 5
	// DISCONNECT with Code; nil for MQTT 3, which has no server
	// DISCONNECT, so the client just sees the close.
	ToClient []byte
	// Reason names the cause in a few words fit for a metric label:
	// the reason code's name in snake case ("not_authorized",
	// "malformed_packet", "protocol_error", "packet_too_large",
	// "topic_alias_invalid", "quota_exceeded"), prefixed with "broker_"
	// when the broker's stream broke ("broker_malformed_packet").
	Reason string
	// Code is the reason code the session ends with: the one ToClient
	// carries in MQTT 5.
	Code packets.ReasonCode
	// Err is the cause in detail: a *packets.Error for a broken packet.
	Err error
}

// Error returns the reason and the cause.
func (e *End) Error() string { return "filter: session ended: " + e.Reason + ": " + e.Err.Error() }

// Unwrap returns the cause, so that errors.Is(err, packets.ErrMalformed)
// works through an *End.
func (e *End) Unwrap() error { return e.Err }

// FinalBytes returns ToClient: an engine that knows no MQTT finds what to
// write before the close through it.
func (e *End) FinalBytes() []byte { return e.ToClient }

// endClient ends the session for a fault of the client's: err is a
// *packets.Error, or carries code.
func (s *Session) endClient(code packets.ReasonCode, err error) *End {
	s.framers[FromClient].Release() // let go of the caller's bytes
	return &End{ToClient: Disconnect(s.version, code), Reason: reasonLabel(code), Code: code, Err: err}
}

// endBroker ends the session for a broken broker stream: the client did
// nothing wrong, and is told no more than unspecified error.
func (s *Session) endBroker(err error) *End {
	s.framers[FromBroker].Release()
	reason := "broker_" + reasonLabel(codeOf(err, packets.ProtocolError))
	return &End{ToClient: Disconnect(s.version, packets.UnspecifiedError), Reason: reason, Code: packets.UnspecifiedError,
		Err: fmt.Errorf("from the broker: %w", err)}
}

// refuse ends the session for err, a *packets.Error from the client's
// stream.
func (s *Session) refuse(err error) *End {
	return s.endClient(codeOf(err, packets.MalformedPacket), err)
}

// codeOf is err's reason code when it is a *packets.Error, else fallback.
func codeOf(err error, fallback packets.ReasonCode) packets.ReasonCode {
	if perr, ok := err.(*packets.Error); ok {
		return perr.Code
	}
	return fallback
}

// reasonLabel names code in snake case: "not_authorized".
func reasonLabel(code packets.ReasonCode) string {
	return strings.ReplaceAll(code.String(), " ", "_")
}

// protocolError is a fault of the stream that the packets' own rules do not
// catch, wrapped as the packets package wraps its own.
func protocolError(version byte, format string, args ...any) error {
	return &packets.Error{Code: packets.ProtocolError, Version: version,
		Err: fmt.Errorf("%w: "+format, append([]any{packets.ErrProtocolViolation}, args...)...)}
}

// The packet types each side may send, a bit per type.
const (
	clientTypes = 1<<packets.TypePublish | 1<<packets.TypePuback | 1<<packets.TypePubrec | 1<<packets.TypePubrel |
		1<<packets.TypePubcomp | 1<<packets.TypeSubscribe | 1<<packets.TypeUnsubscribe | 1<<packets.TypePingreq |
		1<<packets.TypeDisconnect | 1<<packets.TypeAuth
	brokerTypes = 1<<packets.TypeConnack | 1<<packets.TypePublish | 1<<packets.TypePuback | 1<<packets.TypePubrec |
		1<<packets.TypePubrel | 1<<packets.TypePubcomp | 1<<packets.TypeSuback | 1<<packets.TypeUnsuback |
		1<<packets.TypePingresp | 1<<packets.TypeDisconnect | 1<<packets.TypeAuth
)

// output gathers what one call forwards. Frames forwarded unchanged that
// follow each other in the fed bytes are appended as one run, with one
// copy.
type output struct {
	in               []byte
	buf              []byte
	runStart, runEnd int // the run of fed bytes not appended yet
}

// pass forwards fr unchanged.
func (o *output) pass(fr packets.Frame) {
	if fr.Offset < 0 {
		// Gathered across reads: the frame is in the Framer's buffer,
		// valid until the next call to Next.
		o.flush()
		o.buf = append(o.buf, fr.Raw...)
		return
	}
	if fr.Offset != o.runEnd {
		o.flush()
		o.runStart = fr.Offset
	}
	o.runEnd = fr.Offset + len(fr.Raw)
}

// flush appends the pending run, before anything else is appended.
func (o *output) flush() {
	o.buf = append(o.buf, o.in[o.runStart:o.runEnd]...)
	o.runStart = o.runEnd
}

// done returns the output, its last run appended.
func (o *output) done() []byte {
	o.flush()
	return o.buf
}
