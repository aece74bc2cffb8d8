package packets

import (
	"bytes"
	"errors"
)

// ConnectNeeds returns how many bytes, counted from the packet's first,
// ReadConnect reads to decide on the first packet whose first bytes are
// prefix: the whole packet when its length is within maxSize, fewer when
// they are enough to refuse it (a packet that is no CONNECT, an oversize
// one), and more than len(prefix) as long as prefix is not enough. The
// answer can grow as prefix does: before the fixed header is complete it
// is one more byte than prefix has.
//
// It serves a reader that is told when bytes have arrived rather than
// blocking until they do (an event loop), or that accounts for the memory
// a client's bytes take: it collects them as they come, as many as
// ConnectNeeds asks for, and then calls ParseConnect. A reader that must
// not read past the packet may ask for max(n, MinConnectSize) bytes.
func ConnectNeeds(prefix []byte, maxSize int) int {
	if maxSize <= 0 {
		maxSize = DefaultMaxConnectSize
	}
	headerLen, remaining, err := fixedHeader(prefix)
	switch {
	case errors.Is(err, errShortHeader):
		return len(prefix) + 1
	case err != nil:
		return headerLen // refused on what it has read
	}
	if total := headerLen + remaining; total <= maxSize {
		return total
	}
	need, _ := versionProbe(prefix[headerLen:], remaining)
	return headerLen + need
}

// ParseConnect decodes the first packet in b as ReadConnect reads it from
// the same bytes: b holds at least ConnectNeeds(b, maxSize) of them, else
// the error is an end of input. An accepted packet's Raw is b's own first
// bytes, not a copy, with its capacity ending at the packet's end; what b
// holds past the packet is not read.
func ParseConnect(b []byte, maxSize int) (*Connect, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxConnectSize
	}
	headerLen, remaining, err := fixedHeader(b)
	if total := headerLen + remaining; err == nil && total <= maxSize && len(b) >= total {
		return parseConnect(b[:total:total], headerLen)
	}
	// A refusal, or too few bytes: the reader's own path, which allocates
	// nothing that grows with a declared length it refuses.
	return ReadConnect(bytes.NewReader(b), maxSize)
}

// errShortHeader says that a fixed header goes on past the bytes given.
var errShortHeader = errors.New("packets: fixed header incomplete")

// fixedHeader decodes the fixed header at the start of b: its length and
// the remaining length it declares. The error is errShortHeader when b
// ends inside it, or the *Error ReadConnect refuses the packet with, after
// headerLen bytes.
func fixedHeader(b []byte) (headerLen, remaining int, err error) {
	if len(b) == 0 {
		return 0, 0, errShortHeader
	}
	if err := checkConnectByte(b[0]); err != nil {
		return 1, 0, err
	}
	headerLen = 1
	remaining, err = readVarint("remaining length", func() (byte, error) {
		if headerLen == len(b) {
			return 0, errShortHeader
		}
		headerLen++
		return b[headerLen-1], nil
	})
	if err != nil && !errors.Is(err, errShortHeader) {
		err = newError(0, err)
	}
	return headerLen, remaining, err
}
