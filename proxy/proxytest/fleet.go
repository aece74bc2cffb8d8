package proxytest

import (
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// visitors is how many devices VisitAll has connecting at once.
const visitors = 8

// OpenSession connects to addr, sends connect, an MQTT 3.1.1 CONNECT, and
// reads the CONNACK, all within DefaultTimeout. It returns the CONNACK's
// return code, and the connection, open, when that is 0 (accepted).
func OpenSession(addr string, connect []byte) (net.Conn, byte, error) {
	c, err := net.DialTimeout("tcp", addr, DefaultTimeout)
	if err != nil {
		return nil, 0, err
	}
	c.SetDeadline(time.Now().Add(DefaultTimeout))
	var ack [4]byte
	if _, err := c.Write(connect); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("sending CONNECT: %w", err)
	}
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("reading CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 {
		c.Close()
		return nil, 0, fmt.Errorf("the answer to CONNECT is % x, not an MQTT 3.1.1 CONNACK", ack)
	}
	if ack[3] != 0 {
		c.Close()
		return nil, ack[3], nil
	}
	c.SetDeadline(time.Time{})
	return c, 0, nil
}

// Visit is a device's short visit: OpenSession, then, when accepted,
// DISCONNECT and close. It returns the CONNACK's return code.
func Visit(addr string, connect []byte) (byte, error) {
	c, code, err := OpenSession(addr, connect)
	if c != nil {
		c.Write([]byte{0xE0, 0x00}) // DISCONNECT
		c.Close()
	}
	return code, err
}

// ExpectPong sends PINGREQ on c, an open MQTT session, and reads
// the PINGRESP, within DefaultTimeout: the session is still open end to
// end.
func ExpectPong(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(DefaultTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{0xC0, 0x00}); err != nil {
		t.Fatalf("PINGREQ: %v", err)
	}
	var pong [2]byte
	if _, err := io.ReadFull(c, pong[:]); err != nil || pong != [2]byte{0xD0, 0x00} {
		t.Fatalf("PINGRESP: %x, %v", pong, err)
	}
}

// VisitAll has each of connects make a Visit to addr, a few at a time,
// and fails the test unless every one is accepted.
func VisitAll(t testing.TB, addr string, connects [][]byte) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(connects))
	var next atomic.Int64
	for range visitors {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < len(connects); i = int(next.Add(1)) - 1 {
				if code, err := Visit(addr, connects[i]); err != nil || code != 0 {
					errs <- fmt.Errorf("CONNECT %d of %d: CONNACK %d, %v", i, len(connects), code, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// WhereConnected maps each client identifier the brokers logged as
// connected to the brokers that had it, by index in brokers, from
// since[i] on for broker i (a count from ClientCounts; nil is from the
// start). A nil broker, one killed, is left out.
func WhereConnected(t testing.TB, brokers []*Mosquitto, since []int) map[string][]int {
	t.Helper()
	where := map[string][]int{}
	for i, b := range brokers {
		if b == nil {
			continue
		}
		b.SyncLog(t)
		ids := b.ClientIDs()
		if since != nil {
			ids = ids[since[i]:]
		}
		for _, id := range ids {
			if !slices.Contains(where[id], i) {
				where[id] = append(where[id], i)
			}
		}
	}
	return where
}

// ClientCounts is how many clients each broker has logged as connected
// so far (ClientIDs); 0 for a nil broker.
func ClientCounts(t testing.TB, brokers []*Mosquitto) []int {
	t.Helper()
	counts := make([]int, len(brokers))
	for i, b := range brokers {
		if b != nil {
			b.SyncLog(t)
			counts[i] = len(b.ClientIDs())
		}
	}
	return counts
}
