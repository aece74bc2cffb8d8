package upstream

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// checker is the goroutine that checks one server.
type checker struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine has ended
}

// startChecker starts checking b with the pool's health check. Called
// with p.mu held.
func (p *Pool[T]) startChecker(b *Backend[T]) {
	ctx, cancel := context.WithCancel(context.Background())
	c := &checker{cancel: cancel, done: make(chan struct{})}
	p.checkers[b] = c
	go p.checkServer(ctx, b, *p.check, p.probe, c.done)
}

// stopChecker stops checking b and waits until its check under way, if
// any, has given up. Called with p.mu held.
func (p *Pool[T]) stopChecker(b *Backend[T]) {
	c, ok := p.checkers[b]
	if !ok {
		return
	}
	c.cancel()
	<-c.done
	delete(p.checkers, b)
}

// checkServer checks b at once and then every interval, until ctx ends.
func (p *Pool[T]) checkServer(ctx context.Context, b *Backend[T], check HealthCheck, probe []byte, done chan<- struct{}) {
	defer close(done)
	next := time.NewTimer(0)
	defer next.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-next.C:
		}
		err := p.checkOnce(ctx, b.Server(), check.timeout(), probe)
		if ctx.Err() != nil {
			return // stopped, not failed
		}
		b.observe(err)
		next.Reset(check.interval())
	}
}

// checkOnce dials s, and with a probe CONNECT, has an MQTT session
// accepted, all within timeout.
func (p *Pool[T]) checkOnce(ctx context.Context, s *Server[T], timeout time.Duration, probe []byte) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := p.dial(ctx, s)
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	defer conn.Close()
	if probe == nil {
		return nil
	}
	if err := mqttProbe(ctx, conn, probe); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	return nil
}

// probeKeepAlive is the probe session's keep alive, in seconds: not 0,
// which a broker with a maximum keep alive (mosquitto's max_keepalive)
// refuses.
const probeKeepAlive = 60

// encodeProbe encodes the CONNECT of a health check.
func encodeProbe(c *ProbeConnect) ([]byte, error) {
	pk := &packets.Connect{
		ProtocolName:    "MQTT",
		ProtocolVersion: packets.ProtocolV311,
		CleanStart:      true,
		KeepAlive:       probeKeepAlive,
		ClientID:        c.ClientID,
		UsernameFlag:    c.Username != "",
		Username:        c.Username,
		PasswordFlag:    c.Password != nil,
		Password:        c.Password,
	}
	return pk.Encode()
}

// mqttDisconnect is an MQTT 3.1.1 DISCONNECT (§3.14).
var mqttDisconnect = []byte{0xE0, 0x00}

// connackReturnCodes names the MQTT 3.1.1 CONNACK return codes (§3.2.2.3).
var connackReturnCodes = map[byte]string{
	1: "unacceptable protocol version",
	2: "identifier rejected",
	3: "server unavailable",
	4: "bad user name or password",
	5: "not authorized",
}

// mqttProbe sends connect on conn and reads the CONNACK, which must accept
// it, then says DISCONNECT, all before ctx ends.
func mqttProbe(ctx context.Context, conn net.Conn, connect []byte) error {
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	// A check stopped meanwhile ends at once rather than at its deadline.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(connect); err != nil {
		return fmt.Errorf("send CONNECT: %w", err)
	}
	// A 3.1.1 CONNACK: type, remaining length 2, flags, return code.
	var ack [4]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		return fmt.Errorf("read CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 {
		return fmt.Errorf("the answer to CONNECT is % x, not an MQTT 3.1.1 CONNACK", ack)
	}
	if code := ack[3]; code != 0 {
		name, ok := connackReturnCodes[code]
		if !ok {
			name = "unknown"
		}
		return fmt.Errorf("CONNECT refused: return code %d, %s", code, name)
	}
	conn.Write(mqttDisconnect) // the check has passed; a broker gone now is the next check's
	return nil
}
