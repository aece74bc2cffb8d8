package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// maxServerPacket bounds what the tool reads from the server: CONNACK and
// SUBACK are small, and PUBLISH carries at most the largest -size.
const maxServerPacket = 16 << 20

// connector opens MQTT connections for one worker. Its buffers are reused
// from one connection to the next.
type connector struct {
	o         *options
	tokens    *tokenSource
	keepAlive uint16
	clientID  []byte // prefix-worker-, then the connection's number
	idLen     int
	seq       int
	reader    *packetReader
	// partial, when positive, is how many bytes of its CONNECT each
	// connection sends: open then returns without a CONNACK, the
	// connection pending at the server.
	partial int
	// connectSize is the size of the last CONNECT built.
	connectSize int
}

func newConnector(o *options, tokens *tokenSource, worker int, keepAlive uint16) *connector {
	id := fmt.Appendf(nil, "%s-%d-", o.ClientPrefix, worker)
	return &connector{o: o, tokens: tokens, keepAlive: keepAlive, clientID: id, idLen: len(id), reader: newPacketReader(nil, maxServerPacket)}
}

// open dials, sends CONNECT and reads the CONNACK. It returns the
// connection, its deadline cleared, with the CONNACK's code; on error the
// connection is closed. With w.partial set, it sends only that much of
// the CONNECT and returns at once, with code 0.
func (w *connector) open() (net.Conn, byte, error) {
	token, err := w.tokens.token()
	if err != nil {
		return nil, 0, err
	}
	w.seq++
	w.clientID = strconv.AppendInt(w.clientID[:w.idLen], int64(w.seq), 10)
	connect := packets.Connect{
		ProtocolName:    "MQTT",
		ProtocolVersion: w.o.Version,
		CleanStart:      true,
		KeepAlive:       w.keepAlive,
		ClientID:        string(w.clientID),
		UsernameFlag:    true,
		Username:        "bench",
	}
	switch {
	case token != nil && w.o.From == "username":
		connect.Username = string(token)
	case token != nil:
		connect.PasswordFlag, connect.Password = true, token
	}
	packet, err := connect.Encode()
	if err != nil {
		return nil, 0, err
	}
	w.connectSize = len(packet)
	if w.partial > 0 {
		packet = packet[:min(w.partial, len(packet))]
	}

	deadline := time.Now().Add(w.o.Timeout)
	c, err := net.DialTimeout("tcp", w.o.Addr, w.o.Timeout)
	if err != nil {
		return nil, 0, err
	}
	c.SetDeadline(deadline)
	if _, err := c.Write(packet); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("write CONNECT: %w", err)
	}
	if w.partial > 0 {
		c.SetDeadline(time.Time{})
		return c, 0, nil
	}
	w.reader.Reset(c)
	header, body, err := w.reader.next()
	if err == nil {
		var code byte
		if code, err = connackCode(header, body); err == nil {
			c.SetDeadline(time.Time{})
			return c, code, nil
		}
	}
	c.Close()
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF // closed before any answer
	}
	return nil, 0, fmt.Errorf("read CONNACK: %w", err)
}

// hangUp ends a connection the way that leaves the TIME_WAIT state to
// the server: DISCONNECT when the session was accepted, then wait for the
// server to close first, then close. A client that closes first keeps each
// of its ports in TIME_WAIT for a minute, and at thousands of connections
// a second the kernel's search for a free port among them becomes what is
// measured.
func (w *connector) hangUp(c net.Conn, accepted bool) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(w.o.Timeout))
	if accepted {
		if _, err := c.Write(disconnectPacket); err != nil {
			return fmt.Errorf("write DISCONNECT: %w", err)
		}
	}
	var b [64]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("wait for the server to close: %w", err)
		}
	}
}

// expectation is which CONNACK outcomes -expect allows.
type expectation string

const (
	expectAccept expectation = "accept"
	expectRefuse expectation = "refuse"
	expectAny    expectation = "any"
)

func (e expectation) allows(code byte) bool {
	return e == expectAny || (code == 0) == (e == expectAccept)
}

// connectTally is one worker's counts, merged at the end.
type connectTally struct {
	accepted, refused, unexpected int64
	errors                        errorCounter
	latency                       histogram
}

func (t *connectTally) merge(o *connectTally) {
	t.accepted += o.accepted
	t.refused += o.refused
	t.unexpected += o.unexpected
	t.errors.merge(&o.errors)
	t.latency.merge(&o.latency)
}

func (t *connectTally) count(code byte, expect expectation) {
	if code == 0 {
		t.accepted++
	} else {
		t.refused++
	}
	if !expect.allows(code) {
		t.unexpected++
	}
}

// fill copies t's counts into r.
func (t *connectTally) fill(r *result) {
	r.Accepted, r.Refused, r.Unexpected = t.accepted, t.refused, t.unexpected
	r.Connects = t.accepted + t.refused
	r.Errors, r.FirstError = t.errors.counts, t.errors.first
	r.Latency = t.latency.summary()
}

func connectCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlagSet("connect", &o, stderr, 10*time.Second)
	workers := fs.Int("c", 16, "concurrent workers, each with one connection at a time")
	count := fs.Int64("count", 0, "stop after this many connections (0: run for -duration)")
	rate := fs.Float64("rate", 0, "connections started per second over all workers, each latency timed from its scheduled start; 0 for as fast as the workers go")
	expect := fs.String("expect", "accept", "CONNACK outcome that counts as expected: accept, refuse or any")
	if err := o.parse(fs, args); err != nil {
		return err
	}
	e := expectation(*expect)
	if e != expectAccept && e != expectRefuse && e != expectAny {
		return fmt.Errorf("-expect %q: want accept, refuse or any", *expect)
	}
	if *workers < 1 || *count < 0 || *rate < 0 || (*count == 0 && o.Duration == 0) {
		return fmt.Errorf("-c must be at least 1, -count and -rate not negative, and -count or -duration set")
	}
	tokens, err := newTokenSource(o.Tokens)
	if err != nil {
		return err
	}
	r, err := runConnect(ctx, &o, tokens, *workers, *count, *rate, e)
	if err != nil {
		return err
	}
	if err := r.emit(stdout, stderr); err != nil {
		return err
	}
	if r.Unexpected > 0 || r.Connects == 0 {
		return fmt.Errorf("%d of %d CONNACKs were not what -expect %s allows", r.Unexpected, r.Connects, e)
	}
	return nil
}

// runConnect runs workers that connect and disconnect until o.Duration
// has passed or count connections were attempted: as fast as they can, or
// rate connections a second, on a fixed schedule.
func runConnect(ctx context.Context, o *options, tokens *tokenSource, workers int, count int64, rate float64, expect expectation) (*result, error) {
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	before, err := o.Procs.sample()
	if err != nil {
		return nil, err
	}
	cpu := selfCPU()
	start := time.Now()
	var claimed atomic.Int64
	next := func() (time.Time, bool) {
		k := claimed.Add(1)
		if rate == 0 {
			return time.Time{}, count == 0 || k <= count
		}
		return start.Add(time.Duration(float64(k-1) * float64(time.Second) / rate)), count == 0 || k <= count
	}
	total := openLoop(ctx, workers, expect, next,
		func(w *connector, c net.Conn, code byte) error { return w.hangUp(c, code == 0) },
		func(i int) *connector { return newConnector(o, tokens, i, 30) })
	elapsed := time.Since(start)
	after, err := o.Procs.sample()
	if err != nil {
		return nil, err
	}

	r := newResult("connect", o)
	total.fill(r)
	r.Seconds = roundTo(elapsed.Seconds(), 3)
	r.Rate = perSecond(r.Connects, elapsed)
	r.ToolCPUSeconds = roundTo((selfCPU() - cpu).Seconds(), 3)
	r.Procs = o.Procs.report(before, after, r.Connects, 0)
	return r, nil
}

func holdCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlagSet("hold", &o, stderr, 10*time.Second)
	n := fs.Int("n", 1000, "connections to open and hold")
	workers := fs.Int("c", 64, "connections opened concurrently")
	settle := fs.Duration("settle", time.Second, "wait after the last connection opened before measuring the -pid processes")
	partial := fs.Int("partial", 0, "send only the first `N` bytes of each CONNECT and hold the connection unanswered: "+
		"what a client costs while its CONNECT is pending (0: send it whole and hold the accepted connection)")
	if err := o.parse(fs, args); err != nil {
		return err
	}
	if *n < 1 || *workers < 1 || *partial < 0 {
		return fmt.Errorf("-n and -c must be at least 1, -partial not negative")
	}
	tokens, err := newTokenSource(o.Tokens)
	if err != nil {
		return err
	}
	r, err := runHold(ctx, &o, tokens, holdConfig{Conns: *n, Workers: *workers, Settle: *settle, Partial: *partial}, stderr)
	if err != nil {
		return err
	}
	if err := r.emit(stdout, stderr); err != nil {
		return err
	}
	if r.Held == 0 {
		return errors.New("no connection was held")
	}
	return nil
}

// openLoop runs workers that open connections while ctx lasts and next
// allows, each with the connector newWorker makes for it, timing each
// dial-to-CONNACK and counting the answer against expect; then keep
// decides what becomes of the connection. A connection that next
// schedules waits for its time and is timed from it, so that a server
// that falls behind shows in the latency rather than slowing the
// schedule. It returns the workers' tallies merged.
func openLoop(ctx context.Context, workers int, expect expectation, next func() (at time.Time, ok bool),
	keep func(w *connector, c net.Conn, code byte) error, newWorker func(worker int) *connector) connectTally {
	tallies := make([]connectTally, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			w := newWorker(i)
			t := &tallies[i]
			for ctx.Err() == nil {
				began, ok := next()
				if !ok {
					break
				}
				if began.IsZero() {
					began = time.Now()
				} else if !sleepUntil(ctx, began) {
					break
				}
				c, code, err := w.open()
				if err != nil {
					t.errors.add(err)
					continue
				}
				t.latency.record(time.Since(began))
				t.count(code, expect)
				if err := keep(w, c, code); err != nil {
					t.errors.add(err)
				}
			}
		})
	}
	wg.Wait()
	var total connectTally
	for i := range tallies {
		total.merge(&tallies[i])
	}
	return total
}

// heldConns are the connections a hold run keeps open. A goroutine per
// connection blocks in Read, so a connection the server drops is noticed
// when it happens, at no CPU cost while it is idle.
type heldConns struct {
	goodbye bool // send DISCONNECT before closing: the connections were accepted
	mu      sync.Mutex
	conns   []net.Conn
	closing atomic.Bool
	dropped atomic.Int64
	readers sync.WaitGroup
}

func (h *heldConns) add(c net.Conn) {
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
	h.readers.Go(func() {
		var b [64]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				if !h.closing.Load() {
					h.dropped.Add(1)
				}
				return
			}
		}
	})
}

// closeAll closes every connection, after a DISCONNECT when goodbye is
// set, and waits for the readers.
func (h *heldConns) closeAll() {
	h.closing.Store(true)
	for _, c := range h.conns {
		if h.goodbye {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(disconnectPacket)
		}
		c.Close()
	}
	h.readers.Wait()
}

// holdConfig is what a hold run opens and how.
type holdConfig struct {
	Conns, Workers int
	// Settle is the wait after the last connection opened before the
	// watched processes are measured.
	Settle time.Duration
	// Partial, when positive, is how many bytes of its CONNECT each
	// connection sends: the connections are held pending, unanswered.
	Partial int
}

// runHold opens cfg.Conns connections with cfg.Workers at a time, samples
// the watched processes once they are all open and settled, and keeps
// them for o.Duration (or until ctx ends when it is 0).
func runHold(ctx context.Context, o *options, tokens *tokenSource, cfg holdConfig, stderr io.Writer) (*result, error) {
	before, err := o.Procs.sample()
	if err != nil {
		return nil, err
	}
	cpu := selfCPU()
	start := time.Now()
	held := &heldConns{goodbye: cfg.Partial == 0}
	var claimed, connectSize atomic.Int64
	// Keep alive 0: the held connections idle without PINGREQ.
	total := openLoop(ctx, cfg.Workers, expectAccept,
		func() (time.Time, bool) { return time.Time{}, claimed.Add(1) <= int64(cfg.Conns) },
		func(w *connector, c net.Conn, code byte) error {
			connectSize.Store(int64(w.connectSize))
			if code != 0 {
				return c.Close()
			}
			held.add(c)
			return nil
		},
		func(i int) *connector {
			w := newConnector(o, tokens, i, 0)
			w.partial = cfg.Partial
			return w
		})
	opening := time.Since(start)

	open := len(held.conns)
	what := "connections"
	if cfg.Partial > 0 {
		what = fmt.Sprintf("connections with %d bytes of a %d-byte CONNECT each", cfg.Partial, connectSize.Load())
	}
	fmt.Fprintf(stderr, "hold: %d of %d %s open after %.1fs; holding for %s\n", open, cfg.Conns, what, opening.Seconds(), o.Duration)
	wait(ctx, cfg.Settle)
	after, err := o.Procs.sample()
	if err != nil {
		held.closeAll()
		return nil, err
	}
	if o.Duration > cfg.Settle {
		wait(ctx, o.Duration-cfg.Settle)
	} else if o.Duration == 0 {
		<-ctx.Done()
	}
	stillOpen := int64(open) - held.dropped.Load()
	held.closeAll()

	r := newResult("hold", o)
	total.fill(r)
	r.Held = stillOpen
	if cfg.Partial > 0 {
		r.Partial, r.ConnectSize = cfg.Partial, int(connectSize.Load())
	}
	r.Seconds = roundTo(time.Since(start).Seconds(), 3)
	r.Rate = perSecond(r.Connects, opening)
	r.ToolCPUSeconds = roundTo((selfCPU() - cpu).Seconds(), 3)
	r.Procs = o.Procs.report(before, after, 0, open)
	return r, nil
}

// wait returns after d or when ctx ends, whichever is first.
func wait(ctx context.Context, d time.Duration) {
	sleepUntil(ctx, time.Now().Add(d))
}

// sleepUntil returns true at t, or false when ctx ends first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
