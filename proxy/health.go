package proxy

import (
	"sync/atomic"
	"time"
)

// Health is what a readiness probe needs to know of a proxy, at one
// moment. The zero value is a proxy that serves no listener and has never
// dialed the broker.
type Health struct {
	// Listeners is how many listeners Serve is accepting on.
	Listeners int
	// Draining is true once Shutdown or Close has begun: the listeners
	// are closed or closing and no new client is taken.
	Draining bool
	// LastDialSuccess is when a connection to the broker last succeeded;
	// zero if none has.
	LastDialSuccess time.Time
	// LastDialFailure is when a connection to the broker last failed; zero
	// if none has.
	LastDialFailure time.Time
}

// Health reports the proxy's state for readiness probes. It is safe to
// call at any time, from any goroutine.
func (p *Proxy) Health() Health {
	p.mu.Lock()
	h := Health{Listeners: len(p.listeners), Draining: p.closed}
	p.mu.Unlock()
	h.LastDialSuccess = unixNano(p.dials.lastSuccess.Load())
	h.LastDialFailure = unixNano(p.dials.lastFailure.Load())
	return h
}

// dialOutcomes keeps when dials to the broker last succeeded and failed,
// in Unix nanoseconds (0: never). Atomics rather than Proxy.mu: every
// accepted client records one, and none needs the other fields.
type dialOutcomes struct {
	lastSuccess, lastFailure atomic.Int64
}

// record notes one dial's outcome, at the time it ended.
func (d *dialOutcomes) record(err error) {
	now := time.Now().UnixNano()
	if err != nil {
		d.lastFailure.Store(now)
		return
	}
	d.lastSuccess.Store(now)
}

func unixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
