package packets

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"

	paho "github.com/eclipse/paho.golang/packets"
	mochi "github.com/mochi-mqtt/server/v2/packets"
)

// packet is what the decoders of the packets after CONNECT have in common.
type packet interface {
	Decode(version byte, fr Frame) error
	Append(dst []byte, version byte) ([]byte, error)
}

// newPacket returns an empty packet of the type that decodes t, or nil for
// the types without a decoder here (CONNECT, PINGREQ, PINGRESP).
func newPacket(t PacketType) packet {
	switch t {
	case TypeConnack:
		return &Connack{}
	case TypePublish:
		return &Publish{}
	case TypePuback, TypePubrec, TypePubrel, TypePubcomp:
		return &Ack{}
	case TypeSubscribe:
		return &Subscribe{}
	case TypeSuback:
		return &Suback{}
	case TypeUnsubscribe:
		return &Unsubscribe{}
	case TypeUnsuback:
		return &Unsuback{}
	case TypeDisconnect:
		return &Disconnect{}
	case TypeAuth:
		return &Auth{}
	}
	return nil
}

// packetCase is one packet after CONNECT as bytes and what its decoder
// makes of it.
type packetCase struct {
	name    string
	version byte
	raw     []byte
	// want is the decoded packet; nil when an error is expected.
	want packet
	// wantErr is the sentinel of the *Error expected, with its code.
	wantErr  error
	wantCode ReasonCode
	// pahoGap says why paho, the oracle for MQTT 5, reads this valid
	// packet otherwise or not at all.
	pahoGap string
}

// frameOne frames raw, which holds one packet, for a session of version.
func frameOne(version byte, raw []byte) (Frame, error) {
	f := NewFramer(version, 0)
	f.Feed(raw)
	fr, ok, err := f.Next()
	switch {
	case err != nil:
		return Frame{}, err
	case !ok || len(fr.Raw) != len(raw):
		return Frame{}, fmt.Errorf("no packet of %d bytes in % x", len(raw), raw)
	}
	return fr, nil
}

// decodeRaw frames and decodes raw, a packet of a session of version.
func decodeRaw(version byte, raw []byte) (packet, error) {
	fr, err := frameOne(version, raw)
	if err != nil {
		return nil, err
	}
	pk := newPacket(fr.Type)
	if pk == nil {
		return nil, fmt.Errorf("no decoder for %v", fr.Type)
	}
	return pk, pk.Decode(version, fr)
}

// runPacketCases checks each case's decoding, and for a valid one that
// Append writes what Decode reads back alike.
func runPacketCases(t *testing.T, cases []packetCase) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeRaw(tc.version, tc.raw)
			if tc.want == nil {
				checkRefusal(t, err, tc.wantErr, tc.wantCode, tc.version)
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !equalPackets(got, tc.want) {
				t.Fatalf("decoded\n%s\nwant\n%s", describePacket(got), describePacket(tc.want))
			}
			raw, err := got.Append(nil, tc.version)
			if err != nil {
				t.Fatalf("Append of a decoded packet: %v", err)
			}
			again, err := decodeRaw(tc.version, raw)
			if err != nil {
				t.Fatalf("Decode(Append()): %v", err)
			}
			if !equalPackets(again, got) {
				t.Fatalf("round trip changed\n%s\ninto\n%s", describePacket(got), describePacket(again))
			}
		})
	}
}

// equalPackets compares decoded packets, an empty slice equal to nil.
func equalPackets(a, b packet) bool {
	return reflect.DeepEqual(normalized(a), normalized(b))
}

func normalized(pk packet) packet {
	empty := func(b []byte) []byte {
		if len(b) == 0 {
			return nil
		}
		return b
	}
	switch p := pk.(type) {
	case *Publish:
		c := *p
		c.Topic, c.Payload = empty(c.Topic), empty(c.Payload)
		if c.Properties != nil {
			c.Properties = append([]byte{}, c.Properties...) // empty but present in MQTT 5
		}
		return &c
	case *Subscribe:
		c := *p
		c.Subscriptions = nil
		for _, sub := range p.Subscriptions {
			sub.Filter = empty(sub.Filter)
			c.Subscriptions = append(c.Subscriptions, sub)
		}
		return &c
	case *Unsubscribe:
		c := *p
		c.Filters = nil
		for _, filter := range p.Filters {
			c.Filters = append(c.Filters, empty(filter))
		}
		return &c
	case *Suback:
		c := *p
		if len(c.Codes) == 0 {
			c.Codes = nil
		}
		return &c
	case *Unsuback:
		c := *p
		if len(c.Codes) == 0 {
			c.Codes = nil
		}
		return &c
	}
	return pk
}

// describePacket prints a packet with its properties' values, not their
// addresses.
func describePacket(pk packet) string {
	v := reflect.ValueOf(pk).Elem()
	var b bytes.Buffer
	fmt.Fprintf(&b, "%T{", pk)
	for i := range v.NumField() {
		f := v.Field(i)
		if !f.CanInterface() {
			continue
		}
		switch x := f.Interface().(type) {
		case *paho.Properties:
			if x != nil {
				fmt.Fprintf(&b, " %s: {%s}", v.Type().Field(i).Name, x)
				continue
			}
		case []byte:
			fmt.Fprintf(&b, " %s: %q", v.Type().Field(i).Name, x)
			continue
		case []Subscription:
			fmt.Fprintf(&b, " %s: [", v.Type().Field(i).Name)
			for _, sub := range x {
				fmt.Fprintf(&b, "{%q %+v}", sub.Filter, Subscription{QoS: sub.QoS, NoLocal: sub.NoLocal,
					RetainAsPublished: sub.RetainAsPublished, RetainHandling: sub.RetainHandling})
			}
			b.WriteString("]")
			continue
		case [][]byte:
			fmt.Fprintf(&b, " %s: %q", v.Type().Field(i).Name, x)
			continue
		}
		fmt.Fprintf(&b, " %s: %v", v.Type().Field(i).Name, f.Interface())
	}
	b.WriteString(" }")
	return b.String()
}

// TestPahoAgreesAfterConnect checks the decoding of every valid MQTT 5
// packet of the fixtures against paho's reader.
func TestPahoAgreesAfterConnect(t *testing.T) {
	for _, tc := range allPacketCases() {
		if tc.want == nil || tc.version != ProtocolV5 || tc.pahoGap != "" {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			checkPaho(t, tc.want, tc.raw)
		})
	}
}

// TestMochiAgreesAfterConnect checks the decoding of every valid MQTT 3.1.1
// packet of the fixtures against mochi-mqtt's reader: paho's reads MQTT 5
// only.
func TestMochiAgreesAfterConnect(t *testing.T) {
	for _, tc := range allPacketCases() {
		if tc.want == nil || tc.version != ProtocolV311 {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			checkMochi(t, tc.want, tc.raw)
		})
	}
}

// checkPaho reads raw, an MQTT 5 packet, with paho and compares it with
// ours, the packet decoded.
func checkPaho(t testing.TB, ours packet, raw []byte) {
	t.Helper()
	cp, err := paho.ReadPacket(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("paho refuses what Decode accepts: %v", err)
	}
	props := func(p *paho.Properties) *paho.Properties {
		if p == nil {
			return &paho.Properties{}
		}
		return p
	}
	var want any
	switch p := ours.(type) {
	case *Publish:
		pp := &paho.Properties{}
		if err := pp.Unpack(bytes.NewBuffer(append(appendVarint(nil, len(p.Properties)), p.Properties...)), paho.PUBLISH); err != nil {
			t.Fatalf("paho refuses the PUBLISH properties Decode found: %v", err)
		}
		want = &paho.Publish{Topic: string(p.Topic), QoS: p.QoS, Duplicate: p.Dup, Retain: p.Retain,
			PacketID: p.PacketID, Payload: p.Payload, Properties: pp}
		if alias := pp.TopicAlias; p.TopicAlias != 0 && (alias == nil || *alias != p.TopicAlias) {
			t.Errorf("topic alias %d, paho reads %v", p.TopicAlias, alias)
		}
	case *Ack:
		switch p.Type {
		case TypePuback:
			want = &paho.Puback{PacketID: p.PacketID, ReasonCode: byte(p.ReasonCode), Properties: props(p.Properties)}
		case TypePubrec:
			want = &paho.Pubrec{PacketID: p.PacketID, ReasonCode: byte(p.ReasonCode), Properties: props(p.Properties)}
		case TypePubrel:
			want = &paho.Pubrel{PacketID: p.PacketID, ReasonCode: byte(p.ReasonCode), Properties: props(p.Properties)}
		case TypePubcomp:
			want = &paho.Pubcomp{PacketID: p.PacketID, ReasonCode: byte(p.ReasonCode), Properties: props(p.Properties)}
		}
	case *Subscribe:
		s := &paho.Subscribe{PacketID: p.PacketID, Properties: props(p.Properties)}
		for _, sub := range p.Subscriptions {
			s.Subscriptions = append(s.Subscriptions, paho.SubOptions{Topic: string(sub.Filter), QoS: sub.QoS,
				RetainHandling: sub.RetainHandling, NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished})
		}
		want = s
	case *Suback:
		want = &paho.Suback{PacketID: p.PacketID, Properties: props(p.Properties), Reasons: codeBytes(p.Codes)}
	case *Unsubscribe:
		u := &paho.Unsubscribe{PacketID: p.PacketID, Properties: props(p.Properties)}
		for _, filter := range p.Filters {
			u.Topics = append(u.Topics, string(filter))
		}
		want = u
	case *Unsuback:
		want = &paho.Unsuback{PacketID: p.PacketID, Properties: props(p.Properties), Reasons: codeBytes(p.Codes)}
	case *Disconnect:
		want = &paho.Disconnect{ReasonCode: byte(p.ReasonCode), Properties: props(p.Properties)}
	case *Auth:
		want = &paho.Auth{ReasonCode: byte(p.ReasonCode), Properties: props(p.Properties)}
	case *Connack:
		want = &paho.Connack{SessionPresent: p.SessionPresent, ReasonCode: byte(p.ReasonCode), Properties: props(p.Properties)}
	default:
		t.Fatalf("no paho counterpart of %T", ours)
	}
	if !reflect.DeepEqual(normalizedPaho(cp.Content), normalizedPaho(want)) {
		t.Errorf("paho reads\n%v\nDecode\n%v", cp.Content, want)
	}
}

// normalizedPaho makes an empty slice of a paho packet nil, as
// normalized does for ours.
func normalizedPaho(p any) any {
	switch p := p.(type) {
	case *paho.Publish:
		c := *p
		if len(c.Payload) == 0 {
			c.Payload = nil
		}
		return &c
	case *paho.Suback:
		c := *p
		if len(c.Reasons) == 0 {
			c.Reasons = nil
		}
		return &c
	case *paho.Unsuback:
		c := *p
		if len(c.Reasons) == 0 {
			c.Reasons = nil
		}
		return &c
	}
	return p
}

// checkMochi reads raw, an MQTT 3.1.1 packet, with mochi-mqtt and compares
// it with ours, the packet decoded.
func checkMochi(t testing.TB, ours packet, raw []byte) {
	t.Helper()
	fr, err := frameOne(ProtocolV311, raw)
	if err != nil {
		t.Fatal(err)
	}
	pk := mochi.Packet{ProtocolVersion: ProtocolV311}
	if err := pk.FixedHeader.Decode(raw[0]); err != nil {
		t.Fatalf("mochi refuses the fixed header: %v", err)
	}
	body := fr.Body()
	var decode func([]byte) error
	var got, want any
	switch p := ours.(type) {
	case *Publish:
		decode = pk.PublishDecode
		got = func() any {
			return []any{pk.TopicName, pk.FixedHeader.Qos, pk.FixedHeader.Dup, pk.FixedHeader.Retain, pk.PacketID, string(pk.Payload)}
		}
		want = []any{string(p.Topic), p.QoS, p.Dup, p.Retain, p.PacketID, string(p.Payload)}
	case *Ack:
		decode = map[PacketType]func([]byte) error{TypePuback: pk.PubackDecode, TypePubrec: pk.PubrecDecode,
			TypePubrel: pk.PubrelDecode, TypePubcomp: pk.PubcompDecode}[p.Type]
		got = func() any { return pk.PacketID }
		want = p.PacketID
	case *Subscribe:
		decode = pk.SubscribeDecode
		got = func() any {
			var subs []any
			for _, sub := range pk.Filters {
				subs = append(subs, []any{sub.Filter, sub.Qos})
			}
			return []any{pk.PacketID, subs}
		}
		var subs []any
		for _, sub := range p.Subscriptions {
			subs = append(subs, []any{string(sub.Filter), sub.QoS})
		}
		want = []any{p.PacketID, subs}
	case *Suback:
		decode = pk.SubackDecode
		got = func() any { return []any{pk.PacketID, string(pk.ReasonCodes)} }
		want = []any{p.PacketID, string(codeBytes(p.Codes))}
	case *Unsubscribe:
		decode = pk.UnsubscribeDecode
		got = func() any {
			var filters []string
			for _, sub := range pk.Filters {
				filters = append(filters, sub.Filter)
			}
			return []any{pk.PacketID, filters}
		}
		var filters []string
		for _, filter := range p.Filters {
			filters = append(filters, string(filter))
		}
		want = []any{p.PacketID, filters}
	case *Unsuback:
		decode = pk.UnsubackDecode
		got = func() any { return pk.PacketID }
		want = p.PacketID
	case *Disconnect:
		decode = pk.DisconnectDecode
		got = func() any { return nil }
	case *Connack:
		decode = pk.ConnackDecode
		got = func() any { return []any{pk.SessionPresent, pk.ReasonCode} }
		want = []any{p.SessionPresent, byte(p.ReasonCode)}
	default:
		t.Fatalf("no mochi counterpart of %T", ours)
	}
	if err := decode(body); err != nil {
		t.Fatalf("mochi refuses what Decode accepts: %v", err)
	}
	if theirs := got.(func() any)(); !reflect.DeepEqual(theirs, want) {
		t.Errorf("mochi reads %v, Decode %v", theirs, want)
	}
}

func codeBytes(codes []ReasonCode) []byte {
	b := make([]byte, len(codes))
	for i, c := range codes {
		b[i] = byte(c)
	}
	return b
}

// TestDecodeFrameOfAnotherType: a decoder given the wrong frame says so,
// with a plain error, and one given flags the Framer refuses with an
// *Error.
func TestDecodeFrameOfAnotherType(t *testing.T) {
	fr, err := frameOne(ProtocolV5, unhex("c0 00"))
	if err != nil {
		t.Fatal(err)
	}
	var p Publish
	err = p.Decode(ProtocolV5, fr)
	var perr *Error
	if err == nil || errors.As(err, &perr) {
		t.Errorf("decoding PINGREQ as PUBLISH: %v, want a plain error", err)
	}
	fr = Frame{Type: TypePublish, Flags: 0x06, HeaderLen: 2, Raw: unhex("36 00")}
	checkRefusal(t, p.Decode(ProtocolV5, fr), ErrMalformed, MalformedPacket, ProtocolV5)
}

// TestAppendKeepsDst: Append adds to dst, and leaves it as it was when it
// refuses.
func TestAppendKeepsDst(t *testing.T) {
	dst := []byte("prefix")
	out, err := (&Ack{Type: TypePuback, PacketID: 7}).Append(dst, ProtocolV311)
	if err != nil || !bytes.Equal(out, append([]byte("prefix"), 0x40, 0x02, 0x00, 0x07)) {
		t.Errorf("Append: % x, %v", out, err)
	}
	out, err = (&Ack{Type: TypePuback}).Append(dst, ProtocolV311)
	if err == nil || !bytes.Equal(out, []byte("prefix")) {
		t.Errorf("refused Append: %q, %v; want dst unchanged and an error", out, err)
	}
}

// allPacketCases is every fixture of the packets after CONNECT.
func allPacketCases() []packetCase {
	var all []packetCase
	for _, cases := range [][]packetCase{publishCases, subscribeCases, controlCases} {
		all = append(all, cases...)
	}
	return all
}

// TestStreamErrorCodes: each cause of a refused stream carries the
// DISCONNECT reason code it is answered with.
func TestStreamErrorCodes(t *testing.T) {
	for sentinel, code := range streamSentinels {
		err := newError(ProtocolV5, fmt.Errorf("%w: detail", sentinel))
		if err.Code != code || !errors.Is(err, sentinel) {
			t.Errorf("%v: code %v, want %v", sentinel, err.Code, code)
		}
	}
}
