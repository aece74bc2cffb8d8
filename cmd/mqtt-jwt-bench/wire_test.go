package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"

	paho "github.com/eclipse/paho.golang/packets"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// pahoBytes is what paho.golang writes for an MQTT 5 packet: the reference
// the encoders are checked against.
func pahoBytes(t *testing.T, p interface {
	WriteTo(io.Writer) (int64, error)
}) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := p.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestPublishTemplate(t *testing.T) {
	payload := []byte("0123456789abcdef")
	for _, tc := range []struct {
		name    string
		version byte
		qos     byte
		want    func(t *testing.T) []byte
	}{
		{"v3.1.1 QoS 0", packets.ProtocolV311, 0, func(*testing.T) []byte {
			return append([]byte{0x30, 21, 0, 3, 't', '/', '1'}, payload...)
		}},
		{"v3.1.1 QoS 1", packets.ProtocolV311, 1, func(*testing.T) []byte {
			return append([]byte{0x32, 23, 0, 3, 't', '/', '1', 0x12, 0x34}, payload...)
		}},
		{"v5 QoS 0", packets.ProtocolV5, 0, func(t *testing.T) []byte {
			return pahoBytes(t, &paho.Publish{Topic: "t/1", Payload: payload, Properties: &paho.Properties{}})
		}},
		{"v5 QoS 1", packets.ProtocolV5, 1, func(t *testing.T) []byte {
			return pahoBytes(t, &paho.Publish{Topic: "t/1", QoS: 1, PacketID: 0x1234, Payload: payload, Properties: &paho.Properties{}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := newPublish(tc.version, "t/1", tc.qos, len(payload))
			if err != nil {
				t.Fatal(err)
			}
			copy(p.Payload, payload)
			if tc.qos > 0 {
				p.setPacketID(0x1234)
			}
			if want := tc.want(t); !bytes.Equal(p.Packet, want) {
				t.Fatalf("encoded % x\nwant    % x", p.Packet, want)
			}

			// And it reads back through the tool's own reader and decoder.
			r := newPacketReader(bytes.NewReader(p.Packet), 1<<10)
			header, body, err := r.next()
			if err != nil {
				t.Fatal(err)
			}
			got, err := parsePublish(tc.version, header, body)
			if err != nil {
				t.Fatal(err)
			}
			wantID := uint16(0)
			if tc.qos > 0 {
				wantID = 0x1234
			}
			if got.QoS != tc.qos || got.PacketID != wantID || string(got.Topic) != "t/1" || !bytes.Equal(got.Payload, payload) {
				t.Errorf("decoded %+v", got)
			}
		})
	}
}

func TestPublishTemplateRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		topic string
		qos   byte
		size  int
	}{
		{"QoS 2", "t", 2, 8},
		{"empty topic", "", 0, 8},
		{"over the largest packet", "t", 0, maxRemainingLength},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := newPublish(packets.ProtocolV311, tc.topic, tc.qos, tc.size); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestLongPublishHasMultiByteLength(t *testing.T) {
	p, err := newPublish(packets.ProtocolV311, "t", 0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	// 2 + 1 + 4096 = 4099 = 0x03 0x20 in two varint bytes: 0x83 0x20.
	if got := p.Packet[:3]; !bytes.Equal(got, []byte{0x30, 0x83, 0x20}) || len(p.Packet) != 3+4099 {
		t.Errorf("header % x, %d bytes", got, len(p.Packet))
	}
}

func TestSubscribeAndPuback(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  []byte
		want func(t *testing.T) []byte
	}{
		{"SUBSCRIBE v3.1.1", appendSubscribe(nil, packets.ProtocolV311, 7, "bench/0", 1), func(*testing.T) []byte {
			return []byte{0x82, 12, 0, 7, 0, 7, 'b', 'e', 'n', 'c', 'h', '/', '0', 1}
		}},
		{"SUBSCRIBE v5", appendSubscribe(nil, packets.ProtocolV5, 7, "bench/0", 1), func(t *testing.T) []byte {
			return pahoBytes(t, &paho.Subscribe{PacketID: 7, Properties: &paho.Properties{}, Subscriptions: []paho.SubOptions{{Topic: "bench/0", QoS: 1}}})
		}},
		{"PUBACK", appendPuback(nil, 0xbeef), func(*testing.T) []byte {
			return []byte{0x40, 2, 0xbe, 0xef}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if want := tc.want(t); !bytes.Equal(tc.got, want) {
				t.Errorf("encoded % x\nwant    % x", tc.got, want)
			}
		})
	}
}

func TestPacketReader(t *testing.T) {
	mustHex := func(s string) []byte {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	t.Run("a stream of packets", func(t *testing.T) {
		long := append([]byte{0x30, 0x80, 0x01}, make([]byte, 128)...) // remaining length 128 in two bytes
		stream := append(mustHex("20 02 00 00  d0 00"), long...)
		r := newPacketReader(bytes.NewReader(stream), 1<<10)
		for i, want := range []struct {
			header byte
			size   int
		}{{0x20, 2}, {0xd0, 0}, {0x30, 128}} {
			header, body, err := r.next()
			if err != nil || header != want.header || len(body) != want.size {
				t.Fatalf("packet %d: %#x with %d bytes, %v; want %#x with %d", i, header, len(body), err, want.header, want.size)
			}
		}
		if _, _, err := r.next(); err != io.EOF {
			t.Errorf("after the last packet: %v, want io.EOF", err)
		}
	})
	for _, tc := range []struct {
		name  string
		input string
		want  error
	}{
		{"cut in the length", "30 80", io.ErrUnexpectedEOF},
		{"cut in the body", "30 05 00 01", io.ErrUnexpectedEOF},
		{"five length bytes", "30 80 80 80 80 01", errMalformed},
		{"over the limit", "30 80 10", errPacketTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newPacketReader(bytes.NewReader(mustHex(tc.input)), 1<<10)
			if _, _, err := r.next(); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestConnackAndSuback(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header byte
		body   []byte
		code   byte
		fails  bool
	}{
		{"v3 accepted", 0x20, []byte{0, 0}, 0, false},
		{"v3 not authorized", 0x20, []byte{0, 5}, 5, false},
		{"v5 with properties", 0x20, []byte{0, 0x87, 3, 0x21, 0, 20}, 0x87, false},
		{"short", 0x20, []byte{0}, 0, true},
		{"not a CONNACK", 0x30, []byte{0, 0}, 0, true},
	} {
		t.Run("CONNACK "+tc.name, func(t *testing.T) {
			code, err := connackCode(tc.header, tc.body)
			if (err != nil) != tc.fails || code != tc.code {
				t.Errorf("code %#x, %v; want %#x, failure %v", code, err, tc.code, tc.fails)
			}
		})
	}
	for _, tc := range []struct {
		name    string
		version byte
		body    []byte
		codes   []byte
		fails   bool
	}{
		{"v3", packets.ProtocolV311, []byte{0, 1, 1}, []byte{1}, false},
		{"v5 with properties", packets.ProtocolV5, []byte{0, 1, 2, 0x1f, 0, 0x80}, []byte{0x80}, false},
		{"v5 properties past the end", packets.ProtocolV5, []byte{0, 1, 9, 0}, nil, true},
	} {
		t.Run("SUBACK "+tc.name, func(t *testing.T) {
			id, codes, err := subackCodes(tc.version, typeSuback<<4, tc.body)
			if (err != nil) != tc.fails || !bytes.Equal(codes, tc.codes) || (!tc.fails && id != 1) {
				t.Errorf("packet %d codes % x, %v; want % x, failure %v", id, codes, err, tc.codes, tc.fails)
			}
		})
	}
}
