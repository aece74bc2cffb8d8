package proxytest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// What mosquitto_pub and mosquitto_sub 2.0 print with -d, checked against
// mosquitto 2.0.11 for -V mqttv31, mqttv311 and mqttv5. On standard output,
// one libmosquitto log line per packet:
//
//	Client mosq-HAwuG720WGJ15OJUqI sending CONNECT     (v3.1: the client generates an id)
//	Client (null) sending CONNECT                      (v3.1.1, v5: empty id, the broker assigns one)
//	Client (null) received CONNACK (0)                 (v5: "Client auto-7F49... received", the assigned id)
//	Client (null) received CONNACK (5)                 v3.1/v3.1.1 return code 5, not authorised
//	Client (null) received CONNACK (135)               v5 reason code in decimal: 0x87 not authorized
//	Client (null) sending PUBLISH (d0, q1, r0, m1, 't/1', ... (2 bytes))
//	Client (null) received PUBACK (Mid: 1, RC:0)       (v5 without subscribers: RC:16, no matching subscribers)
//	Client (null) sending SUBSCRIBE (Mid: 1, Topic: t/1, QoS: 1, Options: 0x00)
//	Client (null) received SUBACK
//	Subscribed (mid: 1): 1                             mosquitto_sub only: granted QoS per topic (128 or a v5 code: refused)
//	Client (null) received PUBLISH (d0, q1, r0, m1, 't/1', ... (5 bytes))
//	Client (null) sending PUBACK (m1, rc0)
//	hello                                              mosquitto_sub only: the message, formatted by -F
//	Client (null) sending DISCONNECT
//
// Errors go to standard error: "Connection error: Connection Refused: not
// authorised." (v3), "Connection error: Not authorized" (v5), "Error: The
// connection was lost.", "Error: Connection refused" (nothing listening).
// A refused client exits with the CONNACK code as its status (5, 135).
// When the server closes the connection without a CONNACK, mosquitto_pub
// exits (status 7 for v5) but mosquitto_sub reconnects every second,
// printing "sending CONNECT" again.
//
// mosquitto_sub flushes standard output only after printing a message, so
// into a pipe its -d lines, SUBACK included, would stay buffered until the
// first message; StartSub therefore runs it under "stdbuf -oL" (GNU
// coreutils) for line buffering. mosquitto_pub's output is read after it
// exits, so buffering does not matter there.
var (
	connackLine = regexp.MustCompile(`received CONNACK \((\d+)\)`)
	debugLine   = regexp.MustCompile(`^(Client .+ (sending|received) [A-Z]+( .*)?|Subscribed \(mid: \d+\): .*)$`)
)

const (
	logSubAck  = "received SUBACK"
	logConnect = " sending CONNECT"
)

// parseConnack returns the code of the first CONNACK reported in output,
// or -1 if there is none.
func parseConnack(output string) int {
	match := connackLine.FindStringSubmatch(output)
	if match == nil {
		return -1
	}
	code, err := strconv.Atoi(match[1])
	if err != nil {
		return -1
	}
	return code
}

// PubResult is what one mosquitto_pub run reported. The zero value, with
// Connack 0, reads as an accepted run; only Pub makes one.
type PubResult struct {
	// Output is its standard output and standard error, interleaved.
	Output string
	// Connack is the CONNACK code it received: a v3 return code or a v5
	// reason code, in decimal; -1 when it received none.
	Connack int
	// Err is nil when it exited with status 0; otherwise it wraps the
	// *exec.ExitError (a refused client exits with the CONNACK code) or,
	// when it was killed at its timeout, context.DeadlineExceeded.
	Err error
}

// Pub runs mosquitto_pub with -d and the given arguments, killing it after
// DefaultTimeout; it returns the output and the CONNACK code the client
// reported. A refusal is a result, not a test failure; only a
// mosquitto_pub that cannot be run fails the test.
func Pub(t testing.TB, args ...string) PubResult {
	t.Helper()
	return PubWithTimeout(t, DefaultTimeout, args...)
}

// PubWithTimeout is Pub with its own timeout, for a client that is expected
// to hang, such as one whose server never answers.
func PubWithTimeout(t testing.TB, timeout time.Duration, args ...string) PubResult {
	t.Helper()
	binary := LookPath(t, "mosquitto_pub")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"-d"}, args...)...)
	output, err := cmd.CombinedOutput()
	result := PubResult{Output: string(output), Connack: parseConnack(string(output))}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		result.Err = fmt.Errorf("mosquitto_pub %s: killed after %v: %w", strings.Join(args, " "), timeout, ctx.Err())
	case errors.As(err, &exitErr):
		result.Err = fmt.Errorf("mosquitto_pub %s: %w", strings.Join(args, " "), err)
	default:
		t.Fatalf("running mosquitto_pub %s: %v", strings.Join(args, " "), err)
	}
	return result
}

// Sub is a running mosquitto_sub, started by StartSub and stopped at test
// cleanup. The zero value is not a client; use StartSub.
type Sub struct {
	proc *process
	// Guarded by proc.mu.
	nextLine    int  // index in proc.lines of the first line Next has not looked at
	stopped     bool // Stop was called
	linesAtStop int  // len(proc.lines) when Stop was called
}

// StartSub starts mosquitto_sub -d with the arguments and returns once the
// subscription is acknowledged (SUBACK seen), the client exited (refused:
// Connack is set), or it began reconnecting because the server closed the
// connection without a CONNACK (Connack is -1). It fails the test if none
// of these happens within DefaultTimeout. The client is stopped at cleanup.
//
// Each output line that is not one of the -d lines is taken as a received
// message (see Next), so a payload that itself looks like a -d line, or
// that spans lines, is not returned whole.
func StartSub(t testing.TB, args ...string) *Sub {
	t.Helper()
	binary := LookPath(t, "mosquitto_sub")
	lineBuffered := LookPath(t, "stdbuf")
	cmd := exec.Command(lineBuffered, append([]string{"-oL", binary, "-d"}, args...)...)
	proc, err := startProcess(cmd, true)
	if err != nil {
		t.Fatalf("mosquitto_sub %s: %v", strings.Join(args, " "), err)
	}
	sub := &Sub{proc: proc}
	t.Cleanup(sub.Stop)
	settled := proc.waitLines(DefaultTimeout, func(lines []string) bool {
		connects := 0
		for _, line := range lines {
			if strings.Contains(line, logSubAck) {
				return true
			}
			if debugLine.MatchString(line) && strings.Contains(line, logConnect) {
				connects++
			}
		}
		return connects > 1
	})
	exited := false
	proc.read(func() { exited = proc.exited })
	if !settled && !exited {
		t.Fatalf("mosquitto_sub %s: no SUBACK within %v; output:\n%s", strings.Join(args, " "), DefaultTimeout, proc.output())
	}
	return sub
}

// Connack returns the code of the CONNACK the client reported: a v3 return
// code or a v5 reason code, in decimal; -1 when it received none.
func (s *Sub) Connack() int {
	code := -1
	s.proc.read(func() {
		for _, line := range s.proc.lines {
			if code = parseConnack(line); code != -1 {
				return
			}
		}
	})
	return code
}

// Next returns the next received message line (the payload, or whatever
// -F format was passed) within timeout. It returns false on timeout, or at
// once when every message was returned and the client has exited or was
// stopped.
func (s *Sub) Next(timeout time.Duration) (string, bool) {
	message, found := "", false
	s.proc.wait(timeout, func() bool {
		end := len(s.proc.lines)
		if s.stopped {
			end = min(end, s.linesAtStop)
		}
		for s.nextLine < end {
			line := s.proc.lines[s.nextLine]
			s.nextLine++
			if !debugLine.MatchString(line) {
				message, found = line, true
				return true
			}
		}
		return s.proc.exited || s.stopped
	})
	return message, found
}

// Stop ends the client (SIGTERM: it sends DISCONNECT) and waits until it
// has exited. Next then returns only the lines printed before Stop: on
// SIGTERM mosquitto_sub logs from its signal handler, which re-enters
// stdio and can print the last message a second time. StartSub registers
// Stop as a cleanup. Safe to call more than once.
func (s *Sub) Stop() {
	s.proc.change(func() {
		if !s.stopped {
			s.stopped, s.linesAtStop = true, len(s.proc.lines)
		}
	})
	s.proc.stop()
}

// Output returns the client's output so far, for failure messages.
func (s *Sub) Output() string { return s.proc.output() }
