package revocation

import (
	"context"
	"time"
)

// refreshCPUShare is the most of one core that hashing, parsing and
// building a new document's set may take: the refresh works for a
// moment, then sleeps three times as long. On a machine of two cores, a
// refresh that takes a whole core for the 0.3 s a million entries need
// puts the connections' threads behind it in the run queue, and
// multiplied the p99 of connects by five to ten (docs/performance.md); at a
// quarter of a core the same list takes four to six times as long to
// apply (1.2 to 1.8 s rather than 0.3 s), during which the old set
// stays in force.
const refreshCPUShare = 0.25

// paceChunk is about how long the refresh works before it sleeps: short
// enough that a connection waiting for the core waits little, long
// enough that timers and the scheduler cost nothing next to it.
const paceChunk = time.Millisecond

// paceCheckEvery is how many steps pass between two looks at the
// clock: a step (a string parsed, hashed or placed) takes tens of
// nanoseconds, a look at the clock about as much.
const paceCheckEvery = 256

// pacer spaces out a long computation, which calls step after each small
// piece of work, so that it uses at most refreshCPUShare of one core:
// after each paceChunk of work, it sleeps for the work's time times
// (1 - share) / share. Once ctx is done it sleeps no more, so that Close
// does not wait for a paced refresh; the caller checks ctx afterwards. A
// nil *pacer does not pace: Parse, for tests and benchmarks.
type pacer struct {
	ctx   context.Context
	since time.Time // when the current chunk of work began
	steps int       // since the last look at the clock
	timer *time.Timer
}

// newPacer starts a pacer, the first chunk of work from now.
func newPacer(ctx context.Context) *pacer {
	return &pacer{ctx: ctx, since: time.Now()}
}

// step counts a piece of work done, and sleeps when a chunk is over.
func (p *pacer) step() {
	if p == nil {
		return
	}
	if p.steps++; p.steps < paceCheckEvery {
		return
	}
	p.check()
}

// check sleeps when a chunk of work is over: step's look at the clock,
// for work done in pieces large enough to look at it after each.
func (p *pacer) check() {
	if p == nil {
		return
	}
	p.steps = 0
	if worked := time.Since(p.since); worked >= paceChunk {
		p.sleep(time.Duration(float64(worked) * (1 - refreshCPUShare) / refreshCPUShare))
	}
}

// sleep waits for d, or until ctx is done, and starts the next chunk.
func (p *pacer) sleep(d time.Duration) {
	if p.ctx.Err() == nil {
		if p.timer == nil {
			p.timer = time.NewTimer(d)
		} else {
			p.timer.Reset(d)
		}
		select {
		case <-p.timer.C:
		case <-p.ctx.Done():
			p.timer.Stop()
		}
	}
	p.since = time.Now()
}
