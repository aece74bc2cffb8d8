package proxytest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
)

// Recorder is a TCP server standing in for a broker: it counts accepted
// connections and records every byte received on each. With a forward
// address it relays each connection to a real broker, so a client gets
// real answers while the test sees exactly what went upstream; without
// one it never answers. The zero value is not a server; use NewRecorder.
type Recorder struct {
	// Addr is the loopback address the Recorder listens on, host:port.
	Addr string

	forward  string
	listener net.Listener
	serving  sync.WaitGroup // the accept loop and one per connection

	watched
	// Guarded by mu.
	received [][]byte          // per accepted connection, in accept order
	ended    []bool            // per accepted connection: no more bytes will be recorded
	open     map[net.Conn]bool // connections to close at Close, client and upstream
	closed   bool              // Close has begun; new connections are dropped
	errs     []error           // failures to reach forward
}

// NewRecorder starts a Recorder on a free loopback port. forward is the
// host:port of the broker to relay to, or "" to record only and never
// answer. It is closed at test cleanup, which also fails the test if a
// connection could not be relayed to forward.
func NewRecorder(t testing.TB, forward string) *Recorder {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("recorder: %v", err)
	}
	r := &Recorder{
		Addr:     listener.Addr().String(),
		forward:  forward,
		listener: listener,
		open:     make(map[net.Conn]bool),
	}
	r.serving.Add(1)
	go r.acceptLoop()
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("recorder: %v", err)
		}
	})
	return r
}

// acceptLoop accepts until the listener is closed.
func (r *Recorder) acceptLoop() {
	defer r.serving.Done()
	for {
		conn, err := r.listener.Accept()
		if err != nil {
			return
		}
		index := -1
		r.change(func() {
			if r.closed {
				return
			}
			index = len(r.received)
			r.received = append(r.received, nil)
			r.ended = append(r.ended, false)
			r.open[conn] = true
			r.serving.Add(1)
		})
		if index < 0 {
			conn.Close()
			return
		}
		go r.serve(conn, index)
	}
}

// serve records what the client sends on connection index, relaying it to
// forward if set, until either side ends.
func (r *Recorder) serve(client net.Conn, index int) {
	defer r.serving.Done()
	defer r.forget(client)
	if r.forward == "" {
		r.record(client, io.Discard, index)
		return
	}
	upstream, err := r.dialForward()
	if err != nil {
		// Closing the client tells it the "broker" is unreachable.
		r.change(func() { r.ended[index] = true })
		return
	}
	defer r.forget(upstream)
	// One goroutine per direction; each half-closes its destination at
	// EOF so a client's or broker's FIN travels through.
	toClient := make(chan struct{})
	go func() {
		defer close(toClient)
		io.Copy(client, upstream)
		closeWrite(client)
	}()
	r.record(client, upstream, index)
	closeWrite(upstream)
	<-toClient
}

// dialForward connects to the forward broker, tracking the connection so
// Close ends it. A failure is kept for Close to report.
func (r *Recorder) dialForward() (net.Conn, error) {
	upstream, err := net.DialTimeout("tcp", r.forward, DefaultTimeout)
	if err != nil {
		err = fmt.Errorf("relaying to %s: %w", r.forward, err)
		r.change(func() { r.errs = append(r.errs, err) })
		return nil, err
	}
	keep := false
	r.change(func() {
		if !r.closed {
			r.open[upstream], keep = true, true
		}
	})
	if !keep {
		upstream.Close()
		return nil, net.ErrClosed
	}
	return upstream, nil
}

// record appends what client sends to connection index's bytes, copying
// it to relay, until the client's side ends or relaying fails.
func (r *Recorder) record(client net.Conn, relay io.Writer, index int) {
	defer r.change(func() { r.ended[index] = true })
	buf := make([]byte, 32*1024)
	for {
		n, readErr := client.Read(buf)
		if n > 0 {
			r.change(func() { r.received[index] = append(r.received[index], buf[:n]...) })
			if _, err := relay.Write(buf[:n]); err != nil {
				return
			}
		}
		if readErr != nil {
			return
		}
	}
}

// closeWrite half-closes conn where the transport supports it.
func closeWrite(conn net.Conn) {
	if halfCloser, ok := conn.(interface{ CloseWrite() error }); ok {
		halfCloser.CloseWrite()
	}
}

// forget closes conn and stops tracking it.
func (r *Recorder) forget(conn net.Conn) {
	conn.Close()
	r.change(func() { delete(r.open, conn) })
}

// Close stops accepting, closes every connection and waits until all the
// Recorder's goroutines have ended. It returns the failures to reach the
// forward broker not returned by an earlier Close. NewRecorder registers it
// as a cleanup; a test calls it early to make the upstream disappear. Safe
// to call more than once.
func (r *Recorder) Close() error {
	var errs []error
	r.change(func() {
		r.closed = true
		for conn := range r.open {
			conn.Close()
		}
		errs, r.errs = r.errs, nil
	})
	r.listener.Close()
	r.serving.Wait()
	return errors.Join(errs...)
}

// Accepted returns how many connections the Recorder has accepted.
func (r *Recorder) Accepted() int {
	count := 0
	r.read(func() { count = len(r.received) })
	return count
}

// Received returns a copy of the bytes received on each connection, in
// accept order.
func (r *Recorder) Received() [][]byte {
	var received [][]byte
	r.read(func() {
		received = make([][]byte, len(r.received))
		for i, b := range r.received {
			received[i] = append([]byte(nil), b...)
		}
	})
	return received
}

// WaitAccepted waits until at least n connections were accepted, or fails
// the test after DefaultTimeout.
func (r *Recorder) WaitAccepted(t testing.TB, n int) {
	t.Helper()
	if !r.wait(DefaultTimeout, func() bool { return len(r.received) >= n }) {
		t.Fatalf("recorder accepted %d connections within %v, want %d", r.Accepted(), DefaultTimeout, n)
	}
}

// WaitReceived waits until connection conn (in accept order, from 0) has
// received at least n bytes, or fails the test after DefaultTimeout.
func (r *Recorder) WaitReceived(t testing.TB, conn, n int) {
	t.Helper()
	got := r.wait(DefaultTimeout, func() bool {
		return conn < len(r.received) && len(r.received[conn]) >= n
	})
	if !got {
		t.Fatalf("recorder connection %d: want %d bytes within %v; received per connection: %x", conn, n, DefaultTimeout, r.Received())
	}
}

// WaitEnded waits until the Recorder stopped reading connection conn (the
// client closed, half-closed or reset it, or relaying it failed), or fails
// the test after DefaultTimeout. Received then holds all it will hold.
func (r *Recorder) WaitEnded(t testing.TB, conn int) {
	t.Helper()
	if !r.wait(DefaultTimeout, func() bool { return conn < len(r.ended) && r.ended[conn] }) {
		t.Fatalf("recorder connection %d still open after %v (%d accepted)", conn, DefaultTimeout, r.Accepted())
	}
}
