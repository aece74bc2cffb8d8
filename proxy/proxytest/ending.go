package proxytest

import (
	"testing"
	"time"
)

// Ending tells, once, how a client's connection ended: the reason code of
// the DISCONNECT the server sent, or -1 when it ended without one. Make
// one with NewEnding and call End from the client's callbacks.
type Ending chan int

// NewEnding returns an Ending not yet told.
func NewEnding() Ending { return make(Ending, 1) }

// End tells the connection's end; only the first call counts.
func (e Ending) End(code int) {
	select {
	case e <- code:
	default: // told already
	}
}

// Wait waits for the end of client's connection and returns its code,
// failing t after DefaultTimeout.
func (e Ending) Wait(t testing.TB, client string) int {
	t.Helper()
	select {
	case code := <-e:
		return code
	case <-time.After(DefaultTimeout):
		t.Fatalf("client %s still connected after %v", client, DefaultTimeout)
		return 0
	}
}

// Connected reports whether the connection has not ended.
func (e Ending) Connected() bool {
	select {
	case code := <-e:
		e <- code
		return false
	default:
		return true
	}
}
