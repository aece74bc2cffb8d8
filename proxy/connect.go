package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/engine"
)

// connectReader collects a client's CONNECT as its bytes arrive. Its
// buffer grows with what the client sends, not with the length it
// declares, and every growth is announced first (connectOwner.hold), so
// that the bytes held by all pending clients can be bounded
// (Limits.MaxPendingConnectBytes).
//
// A socket of the epoll engine (a queuedReader) is never waited on by a
// goroutine: when it has nothing more queued, the reader leaves it in the
// engine's epoll set and returns, and a goroutine starts again when bytes
// arrive. A client that has sent
// part of its CONNECT then costs its buffer and a few small structures,
// not a parked goroutine's stack, which is most of what such a client
// cost before (measured in docs/performance.md). Other connections (TLS,
// WebSocket, PROXY protocol) are read by a goroutine that blocks.
type connectReader struct {
	conn    net.Conn
	maxSize int // Limits.MaxConnectSize, 0 for the default
	// held is what has arrived of the CONNECT and, from a bare socket,
	// what came with it in the same read.
	held  []byte
	owner connectOwner
}

// connectOwner is what a connectReader reads for: the session's
// pendingConnect.
type connectOwner interface {
	// hold is told before the buffer's capacity grows by n bytes; false
	// ends the read with errEvicted (the connection is closed to keep
	// within a limit).
	hold(n int) bool
	engine.Resumer
}

// queuedReader is a socket that can be read without waiting
// (engine.ErrWouldBlock when nothing has arrived), and waited on without a
// goroutine: a socket of the epoll engine's.
type queuedReader interface {
	ReadNow(b []byte) (int, error)
	WhenReadable(r engine.Resumer) error
}

var (
	// errWaiting: the CONNECT is incomplete and the socket waits for more;
	// the reader's owner is resumed when it may have come.
	errWaiting = errors.New("proxy: waiting for the rest of the CONNECT")
	// errEvicted: the connection was closed to keep within a limit while
	// its CONNECT was read.
	errEvicted = errors.New("proxy: connection evicted")
)

// connectGrowth is the least a CONNECT buffer read by a goroutine that
// blocks grows by, ahead of the bytes: a trickled CONNECT takes few
// copies, and holds at most this much, or twice what has arrived.
const connectGrowth = 4 << 10

// connectReadAhead is how much the first read of a bare socket takes. A
// CONNECT with a token nearly always fits and has nearly always arrived
// whole, so that it costs one read(2); what came after it in the same
// read is for the broker, once the client is authenticated.
const connectReadAhead = 1024

// readAheads are the first reads' buffers, each held during one read.
var readAheads = sync.Pool{New: func() any { return new([connectReadAhead]byte) }}

// read reads until the CONNECT can be decided, then returns it and, from
// a bare socket, what was read past it, or the refusal as
// packets.ReadConnect gives it; from other connections nothing past the
// CONNECT is read. When a bare socket has nothing more queued, read
// returns errWaiting at once instead, and the owner is resumed, once, on
// a goroutine of its own, when the socket may have become readable, its
// read deadline passed or it was closed: calling read again goes on.
func (r *connectReader) read() (*packets.Connect, []byte, error) {
	queued, bare := r.conn.(queuedReader)
	for {
		need := packets.ConnectNeeds(r.held, r.maxSize)
		if len(r.held) >= need {
			break
		}
		var err error
		if bare {
			err = r.readQueued(queued, need)
		} else {
			err = r.readOnce(need)
		}
		switch {
		case errors.Is(err, engine.ErrWouldBlock):
			if err := queued.WhenReadable(r.owner); err != nil {
				return nil, nil, fmt.Errorf("proxy: read CONNECT: %w", err)
			}
			return nil, nil, errWaiting
		case err != nil:
			return nil, nil, err
		}
	}
	pk, err := packets.ParseConnect(r.held, r.maxSize)
	if err != nil {
		return nil, nil, err
	}
	// The decoded CONNECT is held beside its bytes while its token is
	// checked, and many tiny user properties make it several times their
	// size: it counts as well, once decoded (at most one per CONNECT held
	// whole is not yet counted).
	if !r.owner.hold(pk.DecodedSize()) {
		return nil, nil, errEvicted
	}
	return pk, r.held[len(pk.Raw):], nil
}

// readQueued reads what a bare socket has queued, engine.ErrWouldBlock
// when nothing. While held has no free capacity, it reads into a pooled buffer
// and grows held to take what arrived, so that a client holds what it
// sent (the first read exactly that, later ones at most twice what has
// arrived), never a buffer for bytes yet to come.
func (r *connectReader) readQueued(c queuedReader, need int) error {
	if len(r.held) < cap(r.held) {
		n, err := c.ReadNow(r.held[len(r.held):cap(r.held)])
		r.held = r.held[:len(r.held)+n]
		return r.readError(err)
	}
	b := readAheads.Get().(*[connectReadAhead]byte)
	defer readAheads.Put(b)
	n, err := c.ReadNow(b[:])
	if err != nil {
		return r.readError(err)
	}
	defer clear(b[:n]) // no token stays in the pool
	size := max(len(r.held)+n, min(need, 2*cap(r.held)))
	if !r.owner.hold(size - cap(r.held)) {
		return errEvicted
	}
	r.held = append(append(make([]byte, 0, size), r.held...), b[:n]...)
	return nil
}

// readOnce reads once from a connection that blocks, never past the
// CONNECT.
func (r *connectReader) readOnce(need int) error {
	room, err := r.room(need)
	if err != nil {
		return err
	}
	n, err := r.conn.Read(room)
	r.held = r.held[:len(r.held)+n]
	if n > 0 {
		return nil // an error comes again with the next read
	}
	return r.readError(err)
}

// room returns held's free capacity for a read that blocks, growing held
// first when it has none: at most doubling (connectGrowth at least), never
// past what the CONNECT needs, or packets.MinConnectSize while its length
// is unknown.
func (r *connectReader) room(need int) ([]byte, error) {
	if len(r.held) == cap(r.held) {
		size := min(max(need, packets.MinConnectSize), max(2*cap(r.held), len(r.held)+connectGrowth))
		if !r.owner.hold(size - cap(r.held)) {
			return nil, errEvicted
		}
		r.held = append(make([]byte, 0, size), r.held...)
	}
	return r.held[len(r.held):cap(r.held)], nil
}

// readError wraps a read's error, as packets.ReadConnect does: an end of
// input is unexpected once the CONNECT has begun.
func (r *connectReader) readError(err error) error {
	switch {
	case err == nil, errors.Is(err, engine.ErrWouldBlock):
		return err
	case err == io.EOF && len(r.held) > 0:
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("proxy: read CONNECT: %w", err)
}
