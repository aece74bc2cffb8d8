package packets

import (
	"fmt"
	"unicode/utf8"

	paho "github.com/eclipse/paho.golang/packets"
)

// The decoders of the packets after CONNECT share a shape: a type with a
// Decode method that reads a Frame for a session of a given version and an
// Append method that writes the packet for one; Decode refuses what breaks
// the rules with an *Error (Version set, so the proxy can answer with
// DISCONNECT(Code) in MQTT 5), and Append refuses, with a plain error and
// dst unchanged, what Decode would refuse. Decode keeps nothing from an
// earlier call and allocates only for MQTT 5 properties that are present.

// reasonSet is a set of reason codes, a bit per code.
type reasonSet [4]uint64

func newReasonSet(codes ...ReasonCode) reasonSet {
	var s reasonSet
	for _, c := range codes {
		s[c/64] |= 1 << (c % 64)
	}
	return s
}

func (s *reasonSet) has(c ReasonCode) bool { return s[c/64]&(1<<(c%64)) != 0 }

// checkFrame refuses fr when it is not of type want (a plain error: the
// caller chose the wrong decoder) or when its first byte breaks the rules
// the Framer applies (an *Error), for frames made by hand.
func checkFrame(version byte, fr Frame, want PacketType) error {
	if fr.Type != want {
		return fmt.Errorf("packets: decode %v: frame is %v", want, fr.Type)
	}
	if err := checkFirstByte(version, byte(fr.Type)<<4|fr.Flags&0x0F); err != nil {
		return newError(version, err)
	}
	return nil
}

// end refuses bytes left after the last field of a packet of type t: its
// Remaining Length counts exactly its fields.
func (d *decoder) end(t PacketType) error {
	if d.err == nil && d.off != len(d.buf) {
		return fmt.Errorf("%w: %v with %d bytes after its last field", ErrMalformed, t, len(d.buf)-d.off)
	}
	return d.err
}

// optionalProperties reads a property section as properties does, but
// returns nil, without allocating, for an empty one.
func (d *decoder) optionalProperties(set propertySet) *paho.Properties {
	if d.err == nil && d.off < len(d.buf) && d.buf[d.off] == 0 {
		d.off++
		return nil
	}
	return d.properties(set)
}

// packetWriter appends one packet to a buffer: the body first, behind room
// for the longest fixed header, which finish then writes right before it.
type packetWriter struct {
	encoder
	start int // where the packet starts in buf
}

func beginPacket(dst []byte) packetWriter {
	return packetWriter{encoder: encoder{buf: append(dst, make([]byte, maxFixedHeaderSize)...)}, start: len(dst)}
}

// finish writes the fixed header, with first as its first byte, and
// returns the buffer with the packet of type t appended; or, on an error
// met while writing, the buffer as it was before.
func (w *packetWriter) finish(first byte, t PacketType) ([]byte, error) {
	bodyStart := w.start + maxFixedHeaderSize
	remaining := len(w.buf) - bodyStart
	if w.err == nil && remaining > maxRemainingLength {
		w.err = fmt.Errorf("%d bytes, more than the %d a packet holds", remaining, maxRemainingLength)
	}
	if w.err != nil {
		return w.buf[:w.start], fmt.Errorf("packets: encode %v: %w", t, w.err)
	}
	var header [maxFixedHeaderSize]byte
	header[0] = first
	n := 1
	for {
		header[n] = byte(remaining & 0x7F)
		remaining >>= 7
		if remaining == 0 {
			n++
			break
		}
		header[n] |= 0x80
		n++
	}
	copy(w.buf[w.start+n:], w.buf[bodyStart:])
	copy(w.buf[w.start:], header[:n])
	return w.buf[:len(w.buf)-(maxFixedHeaderSize-n)], nil
}

// reasonAndProperties writes an MQTT 5 reason code and properties in the
// shortest form the packet allows: nothing for Success without properties
// (PUBACK and its kin, DISCONNECT); and, when lengthOptional, the code
// alone when there are no properties (PUBACK and its kin).
func (w *packetWriter) reasonAndProperties(code ReasonCode, p *paho.Properties, set propertySet, lengthOptional bool) {
	mark := len(w.buf)
	w.byte(byte(code))
	w.properties(p, set)
	if len(w.buf) > mark+2 || w.buf[mark+1] != 0 {
		return
	}
	switch {
	case code == Success:
		w.buf = w.buf[:mark]
	case lengthOptional:
		w.buf = w.buf[:mark+1]
	}
}

// The kinds of byte scanText reports: all but plain ASCII other than the
// wildcards, which text in a packet allows as a rule.
const (
	byteNUL = 1 << iota
	byteWildcard
	byteNonASCII
)

var byteKinds = func() (kinds [256]uint8) {
	kinds[0] = byteNUL
	kinds['+'], kinds['#'] = byteWildcard, byteWildcard
	for c := 0x80; c < 0x100; c++ {
		kinds[c] = byteNonASCII
	}
	return kinds
}()

// scanText reads b once and returns the kinds of byte it holds besides
// plain ASCII: cheaper on the short text of topics than a search for each.
func scanText(b []byte) (kinds uint8) {
	for _, c := range b {
		kinds |= byteKinds[c]
	}
	return kinds
}

// textProblem is stringProblem for text still in the packet's bytes, read
// without a copy.
func textProblem(b []byte) string { return textProblemOf(b, scanText(b)) }

// textProblemOf is textProblem for b, whose byte kinds are kinds.
func textProblemOf(b []byte, kinds uint8) string {
	switch {
	case kinds&byteNonASCII != 0 && !utf8.Valid(b):
		return "is not valid UTF-8 [MQTT-1.5.4-1]"
	case kinds&byteNUL != 0:
		return "contains U+0000 [MQTT-1.5.4-2]"
	default:
		return ""
	}
}

// checkText applies textProblem to each of texts, parts of the named field.
func checkText(field string, texts ...[]byte) error {
	for _, s := range texts {
		if problem := textProblem(s); problem != "" {
			return fmt.Errorf("%w: %s: %q %s", ErrMalformed, field, s, problem)
		}
	}
	return nil
}

// versionName names a protocol level as the specifications do.
func versionName(version byte) string {
	switch version {
	case ProtocolV31:
		return "3.1"
	case ProtocolV311:
		return "3.1.1"
	case ProtocolV5:
		return "5"
	default:
		return fmt.Sprintf("level %d", version)
	}
}
