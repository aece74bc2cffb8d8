package proxytest

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopGrace is how long a process may take to exit after SIGTERM before it
// is killed. mosquitto and mosquitto_sub exit within milliseconds.
const stopGrace = 5 * time.Second

// process is a running command whose output lines are collected by one
// goroutine. That goroutine reads until the output pipe closes, which
// happens when the command exits, then reaps the command, so it never
// outlives the command.
type process struct {
	watched
	cmd *exec.Cmd

	// Guarded by mu.
	lines  []string        // output lines so far, without their newline
	stderr strings.Builder // standard error, when kept apart from lines
	exited bool            // the command has exited and lines is complete
	err    error           // what cmd.Wait returned, once exited

	done     chan struct{} // closed after exited is set
	stopOnce sync.Once
}

// startProcess starts cmd and collects its standard output as lines.
// Standard error joins the lines when separateStderr is false; otherwise it
// is kept apart (mosquitto_sub writes its errors there, and they must not
// be taken for received messages).
func startProcess(cmd *exec.Cmd, separateStderr bool) (*process, error) {
	p := &process{cmd: cmd, done: make(chan struct{})}
	outputReader, outputWriter, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("creating output pipe for %s: %w", cmd.Path, err)
	}
	cmd.Stdout, cmd.Stderr = outputWriter, outputWriter
	if separateStderr {
		// Not an *os.File, so exec copies it in a goroutine of its own
		// that cmd.Wait waits for.
		cmd.Stderr = stderrWriter{p}
	}
	if err := cmd.Start(); err != nil {
		outputReader.Close()
		outputWriter.Close()
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	// The child holds its own copy; closing ours lets the reader see EOF
	// when the child exits.
	outputWriter.Close()
	go p.collect(outputReader)
	return p, nil
}

// stderrWriter appends a process's standard error to its stderr buffer.
type stderrWriter struct{ p *process }

func (w stderrWriter) Write(b []byte) (int, error) {
	w.p.change(func() { w.p.stderr.Write(b) })
	return len(b), nil
}

// collect reads output lines until the command exits, then reaps it.
func (p *process) collect(output *os.File) {
	defer close(p.done)
	reader := bufio.NewReader(output)
	for {
		// ReadString rather than a Scanner: a Scanner stops at its
		// buffer limit, and a child blocked writing would never exit.
		line, readErr := reader.ReadString('\n')
		if line != "" {
			p.change(func() { p.lines = append(p.lines, strings.TrimSuffix(line, "\n")) })
		}
		if readErr != nil {
			break
		}
	}
	output.Close()
	waitErr := p.cmd.Wait()
	p.change(func() { p.exited, p.err = true, waitErr })
}

// stop ends the process, SIGTERM first so it can say goodbye (mosquitto_sub
// sends DISCONNECT), SIGKILL after stopGrace, and waits until it has exited
// and its output goroutine has ended. Safe to call more than once.
func (p *process) stop() {
	p.stopOnce.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		grace := time.NewTimer(stopGrace)
		defer grace.Stop()
		select {
		case <-p.done:
		case <-grace.C:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// kill ends the process with SIGKILL and waits until it has exited and
// its output goroutine has ended. Safe to call more than once, and after
// stop.
func (p *process) kill() {
	p.stopOnce.Do(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	<-p.done
}

// output returns the output so far: the lines, then standard error when it
// was kept apart.
func (p *process) output() string {
	var out string
	p.read(func() {
		out = strings.Join(p.lines, "\n")
		if p.stderr.Len() > 0 {
			out += "\n[stderr]\n" + p.stderr.String()
		}
	})
	return out
}

// waitLines waits until match, called under mu with the lines so far,
// returns true, or the process exits, or timeout passes. It reports whether
// match returned true.
func (p *process) waitLines(timeout time.Duration, match func(lines []string) bool) bool {
	matched := false
	p.wait(timeout, func() bool {
		matched = match(p.lines)
		return matched || p.exited
	})
	return matched
}

// maxStartAttempts bounds onFreePort's retries when the free port it
// picked is taken before the process binds it.
const maxStartAttempts = 5

// errPortTaken means another process bound the port first.
var errPortTaken = errors.New("port already in use")

// onFreePort runs start, which starts a server named name on port, with a
// free port, and again with another one while it fails with errPortTaken,
// up to maxStartAttempts times. Any other failure fails the test.
func onFreePort[S any](t testing.TB, name string, start func(port int) (S, error)) S {
	t.Helper()
	for attempt := 1; ; attempt++ {
		s, err := start(FreePort(t))
		if err == nil {
			return s
		}
		if !errors.Is(err, errPortTaken) || attempt == maxStartAttempts {
			t.Fatalf("starting %s (attempt %d): %v", name, attempt, err)
		}
		t.Logf("%s attempt %d: %v; retrying on another port", name, attempt, err)
	}
}

// startReady starts cmd, a server that is to listen on port, and waits
// until one of its output lines is ready, within DefaultTimeout. When it
// is not, it stops the process and returns an error, errPortTaken when
// its output contains portTaken.
func startReady(cmd *exec.Cmd, port int, ready func(line string) bool, portTaken string) (*process, error) {
	proc, err := startProcess(cmd, false)
	if err != nil {
		return nil, err
	}
	if proc.waitLines(DefaultTimeout, func(lines []string) bool { return slices.ContainsFunc(lines, ready) }) {
		return proc, nil
	}
	proc.stop()
	var exitErr error
	proc.read(func() { exitErr = proc.err })
	log := proc.output()
	if strings.Contains(log, portTaken) {
		return nil, fmt.Errorf("port %d: %w\n%s", port, errPortTaken, log)
	}
	return nil, fmt.Errorf("not ready within %v (exit: %v); log:\n%s", DefaultTimeout, exitErr, log)
}
