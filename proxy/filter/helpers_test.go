package filter

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// The packets of the tests are written by hand, byte by byte, so that the
// filter's output is compared with bytes that no encoder of the packets
// package made.

const (
	v3 = packets.ProtocolV311
	v5 = packets.ProtocolV5
)

// unhex decodes hex written in parts, spaces allowed.
func unhex(parts ...string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(strings.Join(parts, ""), " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// cat joins packets into one stream.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// packet is a fixed header with first byte first before body, the remaining
// length in its minimal encoding.
func packet(first byte, body ...[]byte) []byte {
	b := cat(body...)
	out := []byte{first}
	n := len(b)
	for {
		c := byte(n & 0x7F)
		n >>= 7
		if n > 0 {
			c |= 0x80
		}
		out = append(out, c)
		if n == 0 {
			break
		}
	}
	return append(out, b...)
}

// str is an MQTT string or binary data: a two-byte length, then s.
func str(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

func u16(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }

// props is an MQTT 5 property section: its length, then the properties.
func props(raw ...byte) []byte { return append([]byte{byte(len(raw))}, raw...) }

// aliasProp is a Topic Alias property.
func aliasProp(alias uint16) []byte { return []byte{0x23, byte(alias >> 8), byte(alias)} }

// pub describes a PUBLISH.
type pub struct {
	topic   string
	qos     byte
	id      uint16
	retain  bool
	dup     bool
	alias   uint16 // MQTT 5 Topic Alias; 0 for none
	payload string
}

// publish writes p for the version.
func publish(version byte, p pub) []byte {
	first := byte(0x30) | p.qos<<1
	if p.retain {
		first |= 0x01
	}
	if p.dup {
		first |= 0x08
	}
	body := str(p.topic)
	if p.qos > 0 {
		body = append(body, u16(p.id)...)
	}
	if version == v5 {
		if p.alias != 0 {
			body = append(body, props(aliasProp(p.alias)...)...)
		} else {
			body = append(body, 0)
		}
	}
	return packet(first, body, []byte(p.payload))
}

// filterQoS is one filter of a SUBSCRIBE.
type filterQoS struct {
	filter string
	qos    byte
}

// subscribe writes a SUBSCRIBE; properties is the MQTT 5 property section
// (nil: none).
func subscribe(version byte, id uint16, properties []byte, filters ...filterQoS) []byte {
	body := u16(id)
	if version == v5 {
		if properties == nil {
			properties = []byte{0}
		}
		body = append(body, properties...)
	}
	for _, f := range filters {
		body = append(append(body, str(f.filter)...), f.qos)
	}
	return packet(0x82, body)
}

// suback writes a SUBACK with codes.
func suback(version byte, id uint16, codes ...byte) []byte {
	body := u16(id)
	if version == v5 {
		body = append(body, 0)
	}
	return packet(0x90, body, codes)
}

// unsubscribe writes an UNSUBSCRIBE.
func unsubscribe(version byte, id uint16, filters ...string) []byte {
	body := u16(id)
	if version == v5 {
		body = append(body, 0)
	}
	for _, f := range filters {
		body = append(body, str(f)...)
	}
	return packet(0xA2, body)
}

// ack writes a PUBACK (0x40), PUBREC (0x50), PUBREL (0x62) or PUBCOMP
// (0x70); an MQTT 5 one with code when code is not 0.
func ack(version, first byte, id uint16, code byte) []byte {
	if version == v5 && code != 0 {
		return packet(first, u16(id), []byte{code})
	}
	return packet(first, u16(id))
}

// connack writes a CONNACK accepting the client; an MQTT 5 one with the
// given raw properties.
func connack(version byte, properties ...byte) []byte {
	if version != v5 {
		return unhex("20 02 00 00")
	}
	return packet(0x20, []byte{0, 0}, props(properties...))
}

// connackLimits is an MQTT 5 CONNACK with a Topic Alias Maximum and, when
// not 0, a Maximum Packet Size.
func connackLimits(aliasMax uint16, maxPacket uint32) []byte {
	p := []byte{0x22, byte(aliasMax >> 8), byte(aliasMax)}
	if maxPacket != 0 {
		p = append(p, 0x27, byte(maxPacket>>24), byte(maxPacket>>16), byte(maxPacket>>8), byte(maxPacket))
	}
	return connack(v5, p...)
}

// disconnect is the server's DISCONNECT with code for the version: MQTT 3
// has none.
func disconnect(version, code byte) []byte {
	if version != v5 {
		return nil
	}
	return []byte{0xE0, 0x02, code, 0x00}
}

// auth writes an AUTH with reason code under method, with data as its
// Authentication Data unless data is nil.
func auth(code byte, method string, data []byte) []byte {
	p := append([]byte{0x15}, str(method)...)
	if data != nil {
		p = append(append(p, 0x16), str(string(data))...)
	}
	return packet(0xF0, []byte{code}, props(p...))
}

// connackMethod is a CONNACK accepting the client, with no properties but
// the Authentication Method "JWT": what an MQTT 5 session under that
// method gets for connack(v5).
var connackMethod = unhex("20 09 00 00 06 15 0003 4a5754")

// authSuccess is the AUTH that ends a re-authentication under "JWT" well.
var authSuccess = unhex("f0 08 00 06 15 0003 4a5754")

// The tokens of testReauthenticate.
const (
	tokenNewRules = "new-rules"  // accepted, with reauthRules
	tokenSame     = "same-rules" // accepted, the session's rules kept
	tokenLater    = "later"      // not answered
	tokenForged   = "forged"     // refused
)

// errForged is testReauthenticate's refusal.
var errForged = errors.New("bad_signature: the token is forged")

// testReauthenticate answers a re-authentication at once, as a hook with
// a verified token at hand does, by the token: tokenNewRules with
// reauthRules, tokenSame with the session's rules; tokenLater never;
// anything else is refused with errForged.
func testReauthenticate(tb testing.TB) func(token []byte, answer func(Reauth)) {
	newRules := compile(tb, reauthRules)
	return func(token []byte, answer func(Reauth)) {
		switch string(token) {
		case tokenNewRules:
			answer(Reauth{Policy: newRules})
		case tokenSame:
			answer(Reauth{})
		case tokenLater:
		default:
			answer(Reauth{Err: errForged})
		}
	}
}

// reauthRules are the rules of a re-authentication's new token: ok/a is
// no longer allowed, new/ is.
var reauthRules = []acl.Rule{
	{Permission: acl.Deny, Action: acl.Publish, Topics: []string{"ok/a"}},
	{Permission: acl.Allow, Action: acl.All, Topics: []string{"ok/#", "new/#"}},
}

// noLink is the Link of sessions whose answers all come at once: it fails
// the test when used.
type noLink struct{ tb testing.TB }

func (l noLink) ToClient(b []byte) { l.tb.Errorf("Link.ToClient(% x) for an answer given at once", b) }
func (l noLink) End(e *End)        { l.tb.Errorf("Link.End(%v) for an answer given at once", e) }

// testRules are the rules most cases run under, with no_match deny.
var testRules = []acl.Rule{
	{Permission: acl.Deny, Action: acl.Publish, Topics: []string{"r/t"}, Retain: ptr(true)},
	{Permission: acl.Allow, Action: acl.Publish, Topics: []string{"r/#"}},
	{Permission: acl.Allow, Action: acl.Publish, Topics: []string{"q/t"}, QoS: []byte{0, 1}},
	{Permission: acl.Allow, Action: acl.All, Topics: []string{"ok/#"}},
	{Permission: acl.Allow, Action: acl.Subscribe, Topics: []string{"jobs/#", "eq a/#"}},
}

func ptr[T any](v T) *T { return &v }

// testPolicy compiles testRules.
func testPolicy(tb testing.TB) *acl.Policy { return compile(tb, testRules) }

// compile compiles rules with no_match deny.
func compile(tb testing.TB, rules []acl.Rule) *acl.Policy {
	tb.Helper()
	cfg, err := acl.New(rules, acl.Deny)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := cfg.Compile(acl.Client{})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// checkWhole fails unless b is whole packets of the version.
func checkWhole(tb testing.TB, version byte, b []byte, what string) {
	tb.Helper()
	f := packets.NewFramer(version, 0)
	defer f.Release()
	f.Feed(b)
	for {
		_, ok, err := f.Next()
		if err != nil {
			tb.Fatalf("%s is not whole packets: %v\n% x", what, err, b)
		}
		if !ok {
			break
		}
	}
	if f.Buffered() != 0 {
		tb.Fatalf("%s ends with %d bytes of a packet\n% x", what, f.Buffered(), b)
	}
}
