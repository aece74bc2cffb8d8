package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// stampSize is the send time at the start of every payload: nanoseconds
// since clockBase on the monotonic clock, which publisher and subscriber
// share because they are one process.
const stampSize = 8

var clockBase = time.Now()

func stamp() uint64 { return uint64(time.Since(clockBase)) }

// pubsubConfig is what a pubsub run does beyond the shared options.
type pubsubConfig struct {
	Publishers, Subscribers int
	Size                    int
	QoS                     byte
	// Rate is messages per second over all publishers; 0 is as fast as
	// they can (saturation).
	Rate float64
	// Inflight bounds each QoS 1 publisher's unacknowledged messages.
	Inflight int
	// Window bounds, at saturation, each publisher's messages that its
	// subscriber has not received yet.
	Window int
	// Topic prefixes the topics: subscriber j subscribes to Topic/j, and
	// publisher i publishes to Topic/(i mod Subscribers), so every message
	// is delivered once.
	Topic string
}

func pubsubCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	var cfg pubsubConfig
	fs := newFlagSet("pubsub", &o, stderr, 10*time.Second)
	fs.IntVar(&cfg.Publishers, "pub", 1, "publishers")
	fs.IntVar(&cfg.Subscribers, "sub", 1, "subscribers")
	fs.IntVar(&cfg.Size, "size", 64, "payload bytes (at least 8, for the timestamp)")
	qos := fs.Int("qos", 0, "QoS of the messages and subscriptions: 0 or 1")
	fs.Float64Var(&cfg.Rate, "rate", 0, "messages per second over all publishers; 0 for as fast as possible")
	fs.IntVar(&cfg.Inflight, "inflight", 16, "unacknowledged QoS 1 messages per publisher")
	fs.IntVar(&cfg.Window, "window", 100, "at saturation, messages per publisher sent but not yet received")
	fs.StringVar(&cfg.Topic, "topic", "bench", "topic prefix")
	if err := o.parse(fs, args); err != nil {
		return err
	}
	switch {
	case cfg.Publishers < 1 || cfg.Subscribers < 1:
		return errors.New("-pub and -sub must be at least 1")
	case cfg.Size < stampSize || cfg.Size > maxServerPacket-1024:
		return fmt.Errorf("-size %d: want %d to %d", cfg.Size, stampSize, maxServerPacket-1024)
	case *qos != 0 && *qos != 1:
		return fmt.Errorf("-qos %d: want 0 or 1", *qos)
	case cfg.Rate < 0 || cfg.Inflight < 1 || cfg.Window < 1:
		return errors.New("-rate must not be negative, -inflight and -window at least 1")
	case o.Duration == 0:
		return errors.New("-duration must be positive")
	}
	cfg.QoS = byte(*qos)
	tokens, err := newTokenSource(o.Tokens)
	if err != nil {
		return err
	}
	r, err := runPubsub(ctx, &o, tokens, cfg)
	if err != nil {
		return err
	}
	if err := r.emit(stdout, stderr); err != nil {
		return err
	}
	if r.Received == 0 {
		return errors.New("no message was received")
	}
	return nil
}

// subscriber reads one subscription's messages.
type subscriber struct {
	conn    net.Conn
	reader  *packetReader
	version byte
	// received and lastAt are read while the subscriber runs, to see when
	// delivery has settled.
	received atomic.Int64
	lastAt   atomic.Uint64 // stamp() of the last message
	bytes    int64
	latency  histogram
	// closing is set before the run closes the connections: errors from
	// then on are the run's doing, not failures.
	closing *atomic.Bool
	// delivered is the window of the publishers sending to this
	// subscriber; nil at a fixed rate.
	delivered *window
	err       error
}

// run reads PUBLISH packets until the connection closes, acknowledging
// QoS 1 ones.
func (s *subscriber) run() {
	w := bufio.NewWriter(s.conn)
	var ack []byte
	for {
		header, body, err := s.reader.next()
		if err != nil {
			if !s.closing.Load() {
				s.err = err
			}
			return
		}
		if header>>4 != typePublish {
			continue // PINGRESP and the like
		}
		now := stamp()
		msg, err := parsePublish(s.version, header, body)
		if err != nil || len(msg.Payload) < stampSize {
			s.err = fmt.Errorf("message of %d bytes: %w", len(msg.Payload), errors.Join(err, errMalformed))
			return
		}
		s.latency.record(time.Duration(now - binary.BigEndian.Uint64(msg.Payload)))
		s.bytes += int64(len(msg.Payload))
		s.received.Add(1)
		s.lastAt.Store(now)
		if s.delivered != nil {
			s.delivered.release()
		}
		if msg.QoS == 1 {
			ack = appendPuback(ack[:0], msg.PacketID)
			w.Write(ack)
			if s.reader.Buffered() == 0 { // no more queued: answer now
				if err := w.Flush(); err != nil {
					s.err = err
					return
				}
			}
		}
	}
}

// publisher sends one stream of messages.
type publisher struct {
	conn    net.Conn
	reader  *packetReader
	message *publishTemplate
	// acks counts unacknowledged QoS 1 messages; nil for QoS 0.
	acks *window
	// delivered counts messages its subscriber has not received yet, when
	// the run saturates: it bounds how far publishers run ahead of
	// delivery, so the broker's queue, and with it the latency, stays
	// bounded and nothing is dropped. Nil at a fixed rate.
	delivered *window
	sent      int64
	err       error
}

// window bounds messages in flight: sent by publishers and not yet
// received by a subscriber, or not yet acknowledged by the broker. Once
// full it lets its publisher go on only when half of it has drained, so a
// saturating publisher wakes and writes once per half window, not once per
// message. Its zero value is not usable; see newWindow.
type window struct {
	size     int64
	inFlight atomic.Int64
	// resume is signalled when inFlight falls to half the size; it holds
	// one signal so that one sent before the publisher waits is not lost.
	resume chan struct{}
}

func newWindow(size int) *window {
	return &window{size: int64(size), resume: make(chan struct{}, 1)}
}

// acquire counts one more message in flight. When the window is full it
// calls beforeWait (what is buffered may be what frees the window) and
// waits. It returns false when ctx ends first or beforeWait fails.
func (w *window) acquire(ctx context.Context, beforeWait func() error) bool {
	if w.inFlight.Add(1) <= w.size {
		return true
	}
	if beforeWait() != nil {
		return false
	}
	for w.inFlight.Load() > w.size {
		select {
		case <-w.resume:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// release counts one message out of flight.
func (w *window) release() {
	if w.inFlight.Add(-1) == w.size/2 {
		select {
		case w.resume <- struct{}{}:
		default:
		}
	}
}

// run publishes until ctx ends: back to back, or every interval when it
// is positive.
func (p *publisher) run(ctx context.Context, interval time.Duration) {
	w := bufio.NewWriterSize(p.conn, 64<<10)
	flush := func() error {
		p.err = w.Flush()
		return p.err
	}
	var id uint16
	send := func() bool {
		if p.delivered != nil && !p.delivered.acquire(ctx, flush) {
			return false
		}
		if p.acks != nil {
			if !p.acks.acquire(ctx, flush) {
				return false
			}
			if id++; id == 0 {
				id = 1
			}
			p.message.setPacketID(id)
		}
		binary.BigEndian.PutUint64(p.message.Payload, stamp())
		if _, p.err = w.Write(p.message.Packet); p.err != nil {
			return false
		}
		p.sent++
		return true
	}
	defer func() {
		if p.err == nil {
			p.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			p.err = w.Flush()
		}
	}()

	if interval <= 0 {
		for ctx.Err() == nil && send() {
		}
		return
	}
	// Paced: at each wake-up, send every message that is due, each
	// stamped as it goes, then flush.
	timer := time.NewTimer(0)
	defer timer.Stop()
	next := time.Now()
	for {
		if wait := time.Until(next); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		for now := time.Now(); !next.After(now); next = next.Add(interval) {
			if !send() {
				return
			}
		}
		if flush() != nil {
			return
		}
	}
}

// readAcks frees a window slot for each PUBACK until the connection
// closes.
func (p *publisher) readAcks() {
	for {
		header, _, err := p.reader.next()
		if err != nil {
			return
		}
		if header>>4 == typePuback {
			p.acks.release()
		}
	}
}

// runPubsub connects the subscribers, then the publishers, publishes for
// o.Duration, waits for the last messages to arrive, and measures.
func runPubsub(ctx context.Context, o *options, tokens *tokenSource, cfg pubsubConfig) (*result, error) {
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func(i int) (*connector, net.Conn, error) {
		w := newConnector(o, tokens, i, 0)
		c, code, err := w.open()
		if err != nil {
			return nil, nil, err
		}
		conns = append(conns, c)
		if code != 0 {
			return nil, nil, fmt.Errorf("connection refused with CONNACK code %#x", code)
		}
		return w, c, nil
	}

	var closing atomic.Bool
	subs := make([]*subscriber, cfg.Subscribers)
	for j := range subs {
		w, c, err := dial(j)
		if err != nil {
			return nil, fmt.Errorf("subscriber %d: %w", j, err)
		}
		if err := subscribe(c, w.reader, o.Version, cfg.Topic+"/"+strconv.Itoa(j), cfg.QoS, o.Timeout); err != nil {
			return nil, fmt.Errorf("subscriber %d: %w", j, err)
		}
		subs[j] = &subscriber{conn: c, reader: w.reader, version: o.Version, closing: &closing}
		if cfg.Rate == 0 {
			// Room for Window messages of each publisher sending to j.
			publishers := (cfg.Publishers + cfg.Subscribers - 1) / cfg.Subscribers
			subs[j].delivered = newWindow(cfg.Window * publishers)
		}
	}
	pubs := make([]*publisher, cfg.Publishers)
	for i := range pubs {
		w, c, err := dial(cfg.Subscribers + i)
		if err != nil {
			return nil, fmt.Errorf("publisher %d: %w", i, err)
		}
		message, err := newPublish(o.Version, cfg.Topic+"/"+strconv.Itoa(i%cfg.Subscribers), cfg.QoS, cfg.Size)
		if err != nil {
			return nil, err
		}
		pubs[i] = &publisher{conn: c, reader: w.reader, message: message, delivered: subs[i%cfg.Subscribers].delivered}
		if cfg.QoS > 0 {
			pubs[i].acks = newWindow(cfg.Inflight)
		}
	}

	var readers sync.WaitGroup
	for _, s := range subs {
		readers.Go(s.run)
	}
	for _, p := range pubs {
		if p.acks != nil {
			readers.Go(p.readAcks)
		}
	}

	before, err := o.Procs.sample()
	if err != nil {
		return nil, err
	}
	cpu := selfCPU()
	start := stamp()
	publishing, stop := context.WithTimeout(ctx, o.Duration)
	defer stop()
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(cfg.Publishers) / cfg.Rate)
	}
	var writers sync.WaitGroup
	for _, p := range pubs {
		writers.Go(func() { p.run(publishing, interval) })
	}
	writers.Wait()

	var published int64
	for _, p := range pubs {
		published += p.sent
	}
	received := func() int64 {
		var n int64
		for _, s := range subs {
			n += s.received.Load()
		}
		return n
	}
	// Deliveries still under way: wait until all have arrived, or none has
	// for a while (QoS 0 may lose some), within the timeout.
	last, quietSince := received(), time.Now()
	for deadline := time.Now().Add(o.Timeout); ctx.Err() == nil && received() < published && time.Now().Before(deadline); {
		wait(ctx, 20*time.Millisecond)
		if n := received(); n != last {
			last, quietSince = n, time.Now()
		} else if time.Since(quietSince) > 500*time.Millisecond {
			break
		}
	}
	after, err := o.Procs.sample()
	if err != nil {
		return nil, err
	}
	toolCPU := selfCPU() - cpu
	closing.Store(true)
	for _, c := range conns {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write(disconnectPacket)
		c.Close()
	}
	readers.Wait()

	r := newResult("pubsub", o)
	var latency histogram
	var bytes int64
	var lastAt uint64
	var errs errorCounter
	for _, s := range subs {
		latency.merge(&s.latency)
		r.Received += s.received.Load()
		bytes += s.bytes
		lastAt = max(lastAt, s.lastAt.Load())
		if s.err != nil {
			errs.add(s.err)
		}
	}
	for _, p := range pubs {
		if p.err != nil {
			errs.add(p.err)
		}
	}
	window := time.Duration(lastAt - start)
	r.Published = published
	r.Seconds = roundTo(window.Seconds(), 3)
	r.Rate = perSecond(r.Received, window)
	if window > 0 {
		r.MBPerSecond = roundTo(float64(bytes)/1e6/window.Seconds(), 2)
	}
	r.Latency = latency.summary()
	r.Errors, r.FirstError = errs.counts, errs.first
	r.ToolCPUSeconds = roundTo(toolCPU.Seconds(), 3)
	r.Procs = o.Procs.report(before, after, r.Received, 0)
	return r, nil
}

// subscribe sends a SUBSCRIBE for filter and waits for its SUBACK.
func subscribe(c net.Conn, reader *packetReader, version byte, filter string, qos byte, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(appendSubscribe(nil, version, 1, filter, qos)); err != nil {
		return fmt.Errorf("write SUBSCRIBE: %w", err)
	}
	header, body, err := reader.next()
	if err != nil {
		return fmt.Errorf("read SUBACK: %w", err)
	}
	id, codes, err := subackCodes(version, header, body)
	switch {
	case err != nil:
		return err
	case id != 1 || len(codes) != 1:
		return fmt.Errorf("SUBACK for packet %d with %d codes, want packet 1 with 1: %w", id, len(codes), errMalformed)
	case codes[0] >= 0x80:
		return fmt.Errorf("subscription to %s refused with %#x", filter, codes[0])
	}
	return nil
}
