package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// MQTT control packet types (3.1.1 §2.2.1, 5.0 §2.1.2), as the high nibble
// of a packet's first byte.
const (
	typeConnack    = 2
	typePublish    = 3
	typePuback     = 4
	typeSubscribe  = 8
	typeSuback     = 9
	typeDisconnect = 14
)

// maxRemainingLength is the largest remaining length four bytes carry.
const maxRemainingLength = 268_435_455

// disconnectPacket ends a session normally in every version: MQTT 5 reads a
// remaining length of 0 as reason code 0x00 (5.0 §3.14.2.1).
var disconnectPacket = []byte{typeDisconnect << 4, 0}

var (
	errPacketTooLarge = errors.New("packet too large")
	errMalformed      = errors.New("malformed packet")
)

// appendVarint appends n as a variable byte integer (3.1.1 §2.2.3, 5.0
// §1.5.5).
func appendVarint(dst []byte, n int) []byte {
	for {
		b := byte(n & 0x7f)
		n >>= 7
		if n == 0 {
			return append(dst, b)
		}
		dst = append(dst, b|0x80)
	}
}

func appendString(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// publishTemplate is an encoded PUBLISH whose packet identifier and
// payload are overwritten in place for each message, so publishing costs
// no allocation and no re-encoding.
type publishTemplate struct {
	// Packet is the whole packet, fixed header included.
	Packet []byte
	// Payload is the payload's part of Packet.
	Payload []byte
	// idOffset is where the packet identifier sits in Packet; 0 for QoS 0,
	// which has none.
	idOffset int
}

// newPublish encodes a PUBLISH of payloadSize zero bytes to topic, with
// packet identifier 1 when qos is 1.
func newPublish(version byte, topic string, qos byte, payloadSize int) (*publishTemplate, error) {
	if qos > 1 {
		return nil, fmt.Errorf("QoS %d: only 0 and 1 are supported", qos)
	}
	if len(topic) == 0 || len(topic) > 0xffff {
		return nil, fmt.Errorf("topic of %d bytes: want 1 to 65535", len(topic))
	}
	remaining := 2 + len(topic) + payloadSize
	if qos > 0 {
		remaining += 2
	}
	if version == packets.ProtocolV5 {
		remaining++ // property length 0
	}
	if remaining > maxRemainingLength {
		return nil, fmt.Errorf("payload of %d bytes: %w", payloadSize, errPacketTooLarge)
	}
	b := make([]byte, 0, 5+remaining)
	b = append(b, typePublish<<4|qos<<1)
	b = appendVarint(b, remaining)
	b = appendString(b, topic)
	p := &publishTemplate{}
	if qos > 0 {
		p.idOffset = len(b)
		b = append(b, 0, 1)
	}
	if version == packets.ProtocolV5 {
		b = append(b, 0)
	}
	start := len(b)
	b = b[:start+payloadSize]
	p.Packet, p.Payload = b, b[start:]
	return p, nil
}

// setPacketID sets the packet identifier of a QoS 1 template.
func (p *publishTemplate) setPacketID(id uint16) {
	binary.BigEndian.PutUint16(p.Packet[p.idOffset:], id)
}

// appendSubscribe appends a SUBSCRIBE for one topic filter at qos.
func appendSubscribe(dst []byte, version byte, packetID uint16, filter string, qos byte) []byte {
	remaining := 2 + 2 + len(filter) + 1
	if version == packets.ProtocolV5 {
		remaining++ // property length 0
	}
	dst = append(dst, typeSubscribe<<4|0x02) // reserved flags 0010 [MQTT-3.8.1-1]
	dst = appendVarint(dst, remaining)
	dst = binary.BigEndian.AppendUint16(dst, packetID)
	if version == packets.ProtocolV5 {
		dst = append(dst, 0)
	}
	dst = appendString(dst, filter)
	// The requested QoS; in MQTT 5 the subscription options byte, whose
	// other bits (no local, retain handling) stay 0.
	return append(dst, qos)
}

// appendPuback appends a PUBACK for packetID. Without a reason code it is
// a success in MQTT 5 too (5.0 §3.4.2.1).
func appendPuback(dst []byte, packetID uint16) []byte {
	dst = append(dst, typePuback<<4, 2)
	return binary.BigEndian.AppendUint16(dst, packetID)
}

// packetReader reads whole MQTT packets from a buffered stream. Reset
// points it at a new connection and keeps its buffers, so a worker that
// opens connection after connection allocates them once.
type packetReader struct {
	r       *bufio.Reader
	scratch []byte
	max     int
}

// newPacketReader reads packets of at most maxSize bytes of remaining
// length.
func newPacketReader(r io.Reader, maxSize int) *packetReader {
	return &packetReader{r: bufio.NewReaderSize(r, 64<<10), max: maxSize}
}

// Reset makes p read from r, dropping what it had buffered.
func (p *packetReader) Reset(r io.Reader) { p.r.Reset(r) }

// Buffered is how many bytes are read from the connection but not yet
// returned as packets.
func (p *packetReader) Buffered() int { return p.r.Buffered() }

// next returns the next packet's first byte and its body (everything past
// the remaining length). The body is valid until the next call.
func (p *packetReader) next() (header byte, body []byte, err error) {
	header, err = p.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, multiplier := 0, 1
	for i := 0; ; i++ {
		b, err := p.r.ReadByte()
		if err != nil {
			return 0, nil, noEOF(err)
		}
		n += int(b&0x7f) * multiplier
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, fmt.Errorf("remaining length of more than 4 bytes: %w", errMalformed)
		}
		multiplier <<= 7
	}
	if n > p.max {
		return 0, nil, fmt.Errorf("%d bytes, over %d: %w", n, p.max, errPacketTooLarge)
	}
	if cap(p.scratch) < n {
		p.scratch = make([]byte, n)
	}
	body = p.scratch[:n]
	if _, err := io.ReadFull(p.r, body); err != nil {
		return 0, nil, noEOF(err)
	}
	return header, body, nil
}

// noEOF turns an end of input inside a packet into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// connackCode returns the return code (MQTT 3.1.1) or reason code (MQTT
// 5) of a CONNACK: 0 is accepted.
func connackCode(header byte, body []byte) (byte, error) {
	if header>>4 != typeConnack {
		return 0, fmt.Errorf("packet type %d where CONNACK was expected: %w", header>>4, errMalformed)
	}
	if len(body) < 2 {
		return 0, fmt.Errorf("CONNACK of %d bytes: %w", len(body), errMalformed)
	}
	return body[1], nil
}

// subackCodes returns the packet identifier and return codes of a SUBACK.
func subackCodes(version byte, header byte, body []byte) (packetID uint16, codes []byte, err error) {
	if header>>4 != typeSuback || len(body) < 3 {
		return 0, nil, fmt.Errorf("expected a SUBACK, got type %d of %d bytes: %w", header>>4, len(body), errMalformed)
	}
	packetID, rest := binary.BigEndian.Uint16(body), body[2:]
	if version == packets.ProtocolV5 {
		if rest, err = skipProperties(rest); err != nil {
			return 0, nil, fmt.Errorf("SUBACK: %w", err)
		}
	}
	return packetID, rest, nil
}

// publishView is a received PUBLISH; its slices point into the body.
type publishView struct {
	QoS      byte
	PacketID uint16
	Topic    []byte
	Payload  []byte
}

// parsePublish decodes a PUBLISH body.
func parsePublish(version byte, header byte, body []byte) (publishView, error) {
	var v publishView
	if header>>4 != typePublish {
		return v, fmt.Errorf("packet type %d is not PUBLISH: %w", header>>4, errMalformed)
	}
	v.QoS = header >> 1 & 3
	if len(body) < 2 {
		return v, fmt.Errorf("PUBLISH of %d bytes: %w", len(body), errMalformed)
	}
	topicLen := int(binary.BigEndian.Uint16(body))
	rest := body[2:]
	if len(rest) < topicLen {
		return v, fmt.Errorf("PUBLISH topic of %d bytes in %d: %w", topicLen, len(rest), errMalformed)
	}
	v.Topic, rest = rest[:topicLen], rest[topicLen:]
	if v.QoS > 0 {
		if len(rest) < 2 {
			return v, fmt.Errorf("PUBLISH without packet identifier: %w", errMalformed)
		}
		v.PacketID, rest = binary.BigEndian.Uint16(rest), rest[2:]
	}
	if version == packets.ProtocolV5 {
		var err error
		if rest, err = skipProperties(rest); err != nil {
			return v, fmt.Errorf("PUBLISH: %w", err)
		}
	}
	v.Payload = rest
	return v, nil
}

// skipProperties returns what follows MQTT 5 properties at the start of b.
func skipProperties(b []byte) ([]byte, error) {
	n, multiplier := 0, 1
	for i := 0; ; i++ {
		if i == len(b) || i == 4 {
			return nil, fmt.Errorf("property length: %w", errMalformed)
		}
		n += int(b[i]&0x7f) * multiplier
		if b[i]&0x80 == 0 {
			b = b[i+1:]
			break
		}
		multiplier <<= 7
	}
	if n > len(b) {
		return nil, fmt.Errorf("properties of %d bytes in %d: %w", n, len(b), errMalformed)
	}
	return b[n:], nil
}
