package packets

import (
	"fmt"
	"math/bits"
	"sync"
)

// PacketType is the type of an MQTT control packet: the high four bits of
// its first byte (3.1.1 §2.2.1, 5.0 §2.1.2).
type PacketType byte

// The packet types. TypeAuth exists in MQTT 5 only.
const (
	TypeConnect PacketType = 1 + iota
	TypeConnack
	TypePublish
	TypePuback
	TypePubrec
	TypePubrel
	TypePubcomp
	TypeSubscribe
	TypeSuback
	TypeUnsubscribe
	TypeUnsuback
	TypePingreq
	TypePingresp
	TypeDisconnect
	TypeAuth
)

var typeNames = [...]string{"reserved type 0", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC",
	"PUBREL", "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP",
	"DISCONNECT", "AUTH"}

// String returns the name the specification gives the type, as "PUBLISH".
func (t PacketType) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("packet type %d", byte(t))
}

// MaxPacketSize is the largest packet MQTT can express: a five-byte fixed
// header and the largest remaining length.
const MaxPacketSize = maxFixedHeaderSize + maxRemainingLength

// Frame is one whole packet found in a stream by a Framer.
type Frame struct {
	// Type and Flags are the two halves of the packet's first byte.
	Type  PacketType
	Flags byte
	// HeaderLen is the length of the fixed header: 2 to 5 bytes.
	HeaderLen int
	// Raw is the whole packet, fixed header included. Its capacity ends
	// with the packet, so appending to it cannot overwrite what follows.
	Raw []byte
	// Offset is where Raw starts in the bytes of the last Feed, or -1 when
	// the packet arrived over several feeds and Raw is the Framer's own
	// buffer, valid until the next call to Next or Release. Frames with an
	// Offset follow each other in the fed bytes without a gap, so a run of
	// them can be written on with one call.
	Offset int
}

// Body returns the packet after its fixed header: the variable header and
// the payload.
func (f Frame) Body() []byte { return f.Raw[f.HeaderLen:] }

// Framer finds whole packets in one direction of an MQTT stream, after the
// CONNECT, for an engine that reads whatever bytes a non-blocking socket
// has: Feed gives it those bytes, and Next returns the packets they
// complete, one at a time, then reports that it needs more.
//
// A packet that lies entirely within the fed bytes is returned as a slice
// of them, without a copy. Only a packet split across feeds is gathered, in
// a buffer taken from a pool when its first bytes arrive and given back
// once the packet has been returned, so a Framer between packets holds no
// buffer. The buffer grows with the bytes that arrive, in powers of two
// from 64 bytes: it holds at most twice what has arrived, and never more
// than the size limit, whatever length the packet declares. The limit is
// checked as soon as the fixed header is known, before any of the body is
// kept.
//
// Every fixed header is checked: the packet type must exist in the
// session's version, the flags must be those the type requires, and the
// remaining length must fit in four bytes (and, in MQTT 5, be minimally
// encoded). A failure is an *Error, which the Framer then returns from
// every call to Next. The Framer does not judge where a type may appear
// (a second CONNECT, a SUBSCRIBE from the broker): the session does.
//
// A Framer is not safe for concurrent use.
type Framer struct {
	version byte
	maxSize int

	in  []byte // the part of the last Feed not framed yet
	fed int    // the length of the last Feed, to place frames in it

	// A packet begun in an earlier Feed: its fixed header while that is
	// incomplete, then its bytes so far in buf.
	head    [maxFixedHeaderSize]byte
	headLen int
	buf     *[]byte
	total   int // the begun packet's size, once its header is complete

	lent *[]byte // the buffer of the last frame Next gathered
	err  error
}

// NewFramer returns a Framer for a session of the given protocol version
// (the level of its CONNECT: ProtocolV31, ProtocolV311 or ProtocolV5),
// refusing packets larger than maxPacketSize bytes, fixed header included,
// as MQTT 5's Maximum Packet Size counts them. A maxPacketSize of 0 or less,
// or above MaxPacketSize, means MaxPacketSize.
func NewFramer(version byte, maxPacketSize int) *Framer {
	if maxPacketSize <= 0 || maxPacketSize > MaxPacketSize {
		maxPacketSize = MaxPacketSize
	}
	return &Framer{version: version, maxSize: maxPacketSize}
}

// Feed hands the Framer bytes read from the stream. The Framer keeps p,
// without copying, until Next reports that it needs more bytes: the caller
// must not change p before then. Feed panics if Next has not yet framed
// the bytes of the previous Feed.
func (f *Framer) Feed(p []byte) {
	if len(f.in) != 0 {
		panic("packets: Framer.Feed before Next framed the bytes of the previous Feed")
	}
	f.in, f.fed = p, len(p)
}

// Next returns the next whole packet, with ok true. It returns ok false
// when the bytes fed so far hold no further whole packet: the start of
// one, if any, is kept and the next Feed continues it. A stream that
// breaks the protocol gives an *Error (the Framer's version in Version),
// and so does every later call.
func (f *Framer) Next() (frame Frame, ok bool, err error) {
	if f.err != nil {
		return Frame{}, false, f.err
	}
	f.giveBack()
	if f.headLen > 0 || f.buf != nil {
		return f.gather()
	}
	if len(f.in) == 0 {
		return f.needMore()
	}
	headerLen, remaining, err := parseFixedHeader(f.version, f.in)
	if err != nil {
		return f.fail(err)
	}
	if headerLen == 0 {
		// The fixed header itself is split: it is short enough to keep in
		// the Framer, without a buffer.
		f.headLen = copy(f.head[:], f.in)
		return f.needMore()
	}
	total := headerLen + remaining
	if total > f.maxSize {
		return f.fail(f.tooLarge(f.in[0], total))
	}
	if total > len(f.in) {
		f.total = total
		f.reserve(len(f.in))
		f.keep(f.in)
		return f.needMore()
	}
	raw := f.in[:total:total]
	frame = Frame{Type: PacketType(raw[0] >> 4), Flags: raw[0] & 0x0F, HeaderLen: headerLen, Raw: raw, Offset: f.fed - len(f.in)}
	f.in = f.in[total:]
	return frame, true, nil
}

// gather continues the packet begun in an earlier Feed with the bytes fed
// since.
func (f *Framer) gather() (Frame, bool, error) {
	if f.buf == nil {
		// The fixed header is still incomplete: at most five bytes tell
		// whether it ends.
		taken := copy(f.head[f.headLen:], f.in)
		headerLen, remaining, err := parseFixedHeader(f.version, f.head[:f.headLen+taken])
		if err != nil {
			return f.fail(err)
		}
		if headerLen == 0 {
			f.headLen += taken
			return f.needMore()
		}
		f.in = f.in[headerLen-f.headLen:]
		f.headLen = 0
		total := headerLen + remaining
		if total > f.maxSize {
			return f.fail(f.tooLarge(f.head[0], total))
		}
		if total == headerLen {
			// A packet without a body (PINGREQ, a short DISCONNECT) is
			// whole already; the header array holds it until the next call.
			raw := f.head[:headerLen:headerLen]
			return Frame{Type: PacketType(raw[0] >> 4), Flags: raw[0] & 0x0F, HeaderLen: headerLen, Raw: raw, Offset: -1}, true, nil
		}
		f.total = total
		f.reserve(headerLen + min(remaining, len(f.in)))
		f.keep(f.head[:headerLen])
	}
	n := min(f.total-len(*f.buf), len(f.in))
	f.keep(f.in[:n])
	f.in = f.in[n:]
	if len(*f.buf) < f.total {
		return f.needMore()
	}
	f.lent, f.buf = f.buf, nil
	raw := (*f.lent)[:f.total:f.total]
	headerLen := fixedHeaderLen(raw)
	return Frame{Type: PacketType(raw[0] >> 4), Flags: raw[0] & 0x0F, HeaderLen: headerLen, Raw: raw, Offset: -1}, true, nil
}

// needMore reports that the bytes fed so far, all of them taken, hold no
// further whole packet, and lets go of them: the caller's buffer is not
// kept alive by a Framer that waits.
func (f *Framer) needMore() (Frame, bool, error) {
	f.in = nil
	return Frame{}, false, nil
}

// keep appends p to the begun packet's buffer.
func (f *Framer) keep(p []byte) {
	if f.buf == nil {
		f.reserve(len(p))
	} else {
		f.reserve(len(*f.buf) + len(p))
	}
	*f.buf = append(*f.buf, p...)
}

// reserve makes the begun packet's buffer hold need bytes, growing it to
// the size class that does.
func (f *Framer) reserve(need int) {
	if f.buf != nil && cap(*f.buf) >= need {
		return
	}
	grown := takeBuffer(need, f.total, f.maxSize)
	if f.buf != nil {
		*grown = append(*grown, *f.buf...)
		giveBuffer(f.buf)
	}
	f.buf = grown
}

// Buffered returns how many bytes of a begun packet the Framer holds: 0
// between packets.
func (f *Framer) Buffered() int {
	if f.buf != nil {
		return len(*f.buf)
	}
	return f.headLen
}

// Release gives back the buffers the Framer holds, for a session that
// ends, possibly in the middle of a packet. The Framer is empty afterwards;
// a Frame it returned with Offset -1 is no longer valid.
func (f *Framer) Release() {
	f.giveBack()
	if f.buf != nil {
		giveBuffer(f.buf)
		f.buf = nil
	}
	f.in, f.headLen, f.total = nil, 0, 0
}

// giveBack returns the buffer of the last gathered frame to its pool.
func (f *Framer) giveBack() {
	if f.lent != nil {
		giveBuffer(f.lent)
		f.lent = nil
	}
}

func (f *Framer) fail(err error) (Frame, bool, error) {
	f.Release()
	f.err = newError(f.version, err)
	return Frame{}, false, f.err
}

// tooLarge refuses a packet, whose first byte is first, of total bytes,
// above the limit: in MQTT 5 the Maximum Packet Size, whose breach is
// answered with 0x95 (§3.1.2.11.4, §3.2.2.3.6).
func (f *Framer) tooLarge(first byte, total int) error {
	return fmt.Errorf("%w: %v of %d bytes, limit %d", ErrTooLarge, PacketType(first>>4), total, f.maxSize)
}

// parseFixedHeader reads the fixed header at the start of b. It returns its
// length and the remaining length it declares, or a length of 0 when b
// ends before the header does. The first byte is checked as soon as it is
// there, so a bad type or flags fail before the length arrives.
func parseFixedHeader(version byte, b []byte) (headerLen, remaining int, err error) {
	if len(b) == 0 {
		return 0, 0, nil
	}
	if err := checkFirstByte(version, b[0]); err != nil {
		return 0, 0, err
	}
	if len(b) > 1 && b[1] < 0x80 {
		return 2, int(b[1]), nil // the common case: a packet under 128 bytes
	}
	for i := 1; i < len(b) && i <= maxVarintSize; i++ {
		remaining |= int(b[i]&0x7F) << (7 * (i - 1))
		if b[i]&0x80 != 0 {
			continue
		}
		if version == ProtocolV5 && i > 1 && b[i] == 0 {
			// 3.1.1 §2.2.3 has no such rule, so MQTT 3 lengths are decoded
			// as ReadConnect decodes them.
			return 0, 0, fmt.Errorf("%w: remaining length not minimally encoded [MQTT-1.5.5-1]", ErrMalformed)
		}
		return i + 1, remaining, nil
	}
	if len(b) > maxVarintSize {
		return 0, 0, fmt.Errorf("%w: remaining length longer than %d bytes", ErrMalformed, maxVarintSize)
	}
	return 0, 0, nil
}

// fixedHeaderLen is the length of the fixed header of a packet whose
// header parseFixedHeader accepted.
func fixedHeaderLen(raw []byte) int {
	n := 2
	for raw[n-1]&0x80 != 0 {
		n++
	}
	return n
}

// checkFirstByte applies the rules on a fixed header's first byte: type 0
// is reserved and so is 15 before MQTT 5 (3.1.1 §2.2.1, 5.0 §2.1.2); flags
// other than those the type requires are malformed (3.1.1 [MQTT-2.2.2-2],
// 5.0 §2.1.3).
func checkFirstByte(version, first byte) error {
	t, flags := PacketType(first>>4), first&0x0F
	switch {
	case t == 0 || t == TypeAuth && version != ProtocolV5:
		return fmt.Errorf("%w: reserved packet type %d", ErrMalformed, byte(t))
	case t == TypePublish:
		switch qos := flags >> 1 & 3; {
		case qos == 3:
			return fmt.Errorf("%w: PUBLISH with QoS 3 [MQTT-3.3.1-4]", ErrMalformed)
		case qos == 0 && flags&flagDup != 0:
			return fmt.Errorf("%w: PUBLISH with DUP set at QoS 0 [MQTT-3.3.1-2]", ErrMalformed)
		}
	case t == TypePubrel || t == TypeSubscribe || t == TypeUnsubscribe:
		if flags != 0x02 {
			clause := map[PacketType]string{TypePubrel: "3.6", TypeSubscribe: "3.8", TypeUnsubscribe: "3.10"}[t]
			return fmt.Errorf("%w: %v fixed header flags 0x%X, want 0x2 [MQTT-%s.1-1]", ErrMalformed, t, flags, clause)
		}
	case flags != 0:
		return fmt.Errorf("%w: %v fixed header flags 0x%X, want 0 [MQTT-2.2.2-2]", ErrMalformed, t, flags)
	}
	return nil
}

// The PUBLISH fixed header flags (3.1.1 §3.3.1, 5.0 §3.3.1).
const (
	flagRetain = 0x01
	flagQoS    = 0x06
	flagDup    = 0x08
	shiftQoS   = 1
)

// Gathering buffers come in size classes, powers of two from
// minGatherBuffer to maxPooledBuffer, each class with its own pool. A
// larger class is allocated when needed and left to the collector: packets
// that large are rare, and a pool would keep them alive.
const (
	minGatherBuffer = 64
	maxPooledBuffer = 64 << 10
	pooledClasses   = 11 // 64 B, 128 B, ... 64 KiB
)

var gatherBuffers [pooledClasses]sync.Pool

// takeBuffer returns an empty buffer for need bytes of a packet of total
// bytes: the smallest size class that holds need, or exactly total bytes
// when that class would exceed limit, so that no buffer exceeds the limit.
func takeBuffer(need, total, limit int) *[]byte {
	size := max(minGatherBuffer, 1<<bits.Len(uint(need-1)))
	if size > limit {
		b := make([]byte, 0, total)
		return &b
	}
	if size <= maxPooledBuffer {
		if b, ok := gatherBuffers[bits.Len(uint(size/minGatherBuffer))-1].Get().(*[]byte); ok {
			return b
		}
	}
	b := make([]byte, 0, size)
	return &b
}

// giveBuffer returns b to the pool of its size class, if it has one.
func giveBuffer(b *[]byte) {
	size := cap(*b)
	if size < minGatherBuffer || size > maxPooledBuffer || size&(size-1) != 0 {
		return
	}
	*b = (*b)[:0]
	gatherBuffers[bits.Len(uint(size/minGatherBuffer))-1].Put(b)
}
