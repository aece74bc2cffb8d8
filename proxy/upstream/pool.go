package upstream

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// PoolConfig is what a pool balances over and how.
type PoolConfig[T any] struct {
	// Servers are the brokers. At least one.
	Servers []Server[T]
	// Balance is how a server is chosen; one of Balances.
	Balance Balance
	// HealthCheck, if set, checks the servers and marks them down and up;
	// nil means they are never checked and never marked down (a failed
	// dial still moves the client to the next candidate).
	HealthCheck *HealthCheck
	// DialTimeout is the caller's, carried for it: how long a client's
	// dials of the pool's servers may take, the candidates after a
	// failed one included (Pool.DialTimeout). Zero means the caller's
	// default.
	DialTimeout time.Duration
}

// Pool is one upstream: its servers, their health, and the balance over
// them. Pick and the methods of its Backends may be called from any
// goroutine, concurrently with Update.
type Pool[T any] struct {
	name   string
	dial   Dialer[T]
	logger *zap.Logger
	// noServerUp is Pick's error, made once so that a refusal under an
	// outage costs no allocation.
	noServerUp error

	set atomic.Pointer[serverSet[T]]
	// turn rotates the ties of LeastConnections.
	turn atomic.Uint32
	// roundRobin guards serverSet.current.
	roundRobin sync.Mutex

	mu       sync.Mutex // guards the fields below, and Update and Close
	closed   bool
	check    *HealthCheck
	probe    []byte // the CONNECT of check.Connect, encoded
	checkers map[*Backend[T]]*checker
	// draining are the servers removed by an Update that still had
	// connections then, by address: one that a later Update puts back
	// while its connections last is the same Backend again, so that they
	// go on counted against it.
	draining map[string]*Backend[T]
}

// serverSet is a generation of a pool's servers: Update replaces it
// whole, so that Pick reads a consistent set without a lock.
type serverSet[T any] struct {
	balance  Balance
	backends []*Backend[T]
	weights  []int
	// seeds are the hashes of the addresses that client_id mixes with.
	seeds []uint64
	// equalWeights says every server has the same weight.
	equalWeights bool
	// current is each server's running weight for RoundRobin, guarded by
	// Pool.roundRobin.
	current []int
	// dialTimeout is PoolConfig.DialTimeout.
	dialTimeout time.Duration
}

// Backend is a server of a pool with its state: health, active
// connections and dial outcomes. A Backend stays the same object across
// reloads that keep its address, so connections that hold it count
// against the server they were opened to, and so does one removed and
// put back while it still has connections.
type Backend[T any] struct {
	pool   string
	server atomic.Pointer[Server[T]]
	logger *zap.Logger
	// removed is closed when a reload removes the server; a reload that
	// puts it back gives it a new one.
	removed atomic.Pointer[chan struct{}]

	up           atomic.Bool
	active       atomic.Int64
	dials        atomic.Uint64
	dialFailures atomic.Uint64
	dialTime     atomic.Int64 // nanoseconds, successful dials

	health health
}

// health is a backend's run of check results.
type health struct {
	mu      sync.Mutex // guards the fields below
	checked bool       // the pool checks its servers; else results are ignored
	settled bool       // a result came in since checks started
	fall    int
	rise    int
	fails   int // consecutive failures while up
	oks     int // consecutive successes while down
	lastErr string
}

// NewPool returns a pool named name (for logs and metrics) over cfg's
// servers, and starts their health checks when cfg has them; dial opens
// the checks' connections. Close stops the checks. A nil logger logs
// nothing.
func NewPool[T any](name string, cfg PoolConfig[T], dial Dialer[T], logger *zap.Logger) (*Pool[T], error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	p := &Pool[T]{
		name:       name,
		dial:       dial,
		logger:     logger,
		noServerUp: fmt.Errorf("%w in pool %q", ErrNoServerUp, name),
		checkers:   map[*Backend[T]]*checker{},
		draining:   map[string]*Backend[T]{},
	}
	if err := p.Update(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// Name is the pool's name.
func (p *Pool[T]) Name() string { return p.name }

// DialTimeout is the pool's PoolConfig.DialTimeout, as last configured.
func (p *Pool[T]) DialTimeout() time.Duration { return p.set.Load().dialTimeout }

// Update applies a new configuration, as a reload does. Servers it keeps
// (by address) keep their health and their connections, and take the new
// weight and settings; new servers start up, and are checked at once;
// removed servers are no longer picked, their checks stop and their
// Removed channel closes, so that the caller can drain their connections.
// A removed server put back while it still has connections is kept: it
// is the same Backend, with its connections and a new Removed channel
// that is open, and is checked at once.
// A change of health check restarts the checks, keeping each server's
// state. On error nothing changes.
func (p *Pool[T]) Update(cfg PoolConfig[T]) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("upstream pool %q: %w", p.name, err)
	}
	if cfg.HealthCheck != nil && p.dial == nil {
		return fmt.Errorf("upstream pool %q: health checks need a Dialer", p.name)
	}
	var probe []byte
	if cfg.HealthCheck != nil && cfg.HealthCheck.Connect != nil {
		probe, _ = encodeProbe(cfg.HealthCheck.Connect) // validate encoded it
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("upstream pool %q: closed", p.name)
	}
	old := map[string]*Backend[T]{}
	if s := p.set.Load(); s != nil {
		for _, b := range s.backends {
			old[b.Server().Address] = b
		}
	}
	next := &serverSet[T]{
		balance:  cfg.Balance,
		backends: make([]*Backend[T], len(cfg.Servers)),
		weights:  make([]int, len(cfg.Servers)),
		seeds:    make([]uint64, len(cfg.Servers)),
		current:  make([]int, len(cfg.Servers)),

		dialTimeout: cfg.DialTimeout,
	}
	var added []*Backend[T]
	for address, b := range p.draining {
		if b.Active() == 0 {
			delete(p.draining, address) // drained: a new Backend if it comes back
		}
	}
	for i, s := range cfg.Servers {
		b, ok := old[s.Address]
		switch {
		case ok:
			delete(old, s.Address)
		case p.draining[s.Address] != nil:
			b = p.draining[s.Address]
			delete(p.draining, s.Address)
			b.restore()
			added = append(added, b)
		default:
			b = &Backend[T]{pool: p.name, logger: p.logger}
			b.restore()
			b.up.Store(true)
			added = append(added, b)
		}
		b.server.Store(&s)
		next.backends[i] = b
		next.weights[i] = s.Weight
		next.seeds[i] = serverSeed(s.Address)
	}
	next.equalWeights = !slices.ContainsFunc(cfg.Servers, func(s Server[T]) bool { return s.Weight != cfg.Servers[0].Weight })

	checkChanged := !reflect.DeepEqual(p.check, cfg.HealthCheck)
	for address, b := range old {
		p.stopChecker(b)
		b.remove()
		if b.Active() > 0 {
			p.draining[address] = b
		}
	}
	if checkChanged {
		for b := range p.checkers {
			p.stopChecker(b)
		}
		p.check, p.probe = cfg.HealthCheck, probe
	}
	for _, b := range next.backends {
		b.configure(p.check)
	}
	p.roundRobin.Lock() // a Pick under way finishes with the set it read
	p.set.Store(next)
	p.roundRobin.Unlock()
	if p.check == nil {
		return nil
	}
	start := added
	if checkChanged {
		start = next.backends
	}
	for _, b := range start {
		p.startChecker(b)
	}
	return nil
}

// Close stops the health checks and waits until they have ended. The
// pool still picks, from the state its servers were last in, for
// connections still on their way.
func (p *Pool[T]) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for b := range p.checkers {
		p.stopChecker(b)
	}
}

// retire closes the pool as a reload that removes it does: its servers'
// Removed channels close too.
func (p *Pool[T]) retire() {
	p.Close()
	for _, b := range p.set.Load().backends {
		b.remove()
	}
}

// Ready reports whether at least one server is up.
func (p *Pool[T]) Ready() bool {
	for _, b := range p.set.Load().backends {
		if b.up.Load() {
			return true
		}
	}
	return false
}

// ServerStatus is a server's state, for metrics and readiness.
type ServerStatus struct {
	// Pool and Address name the server.
	Pool, Address string
	// Weight is its configured weight.
	Weight int
	// Up is false while the health checks have it marked down.
	Up bool
	// Checked says the pool has health checks: without them a server is
	// up whether or not its broker answers.
	Checked bool
	// Active is the connections that hold it (Acquire without Release).
	Active int64
	// Dials and DialFailures count the dials reported with Dialed.
	Dials, DialFailures uint64
	// DialTime is the total time of the successful dials.
	DialTime time.Duration
	// LastError is why the last failed check or dial failed; empty
	// after a success.
	LastError string
}

// Status appends the state of each server of the pool to dst, in the
// configured order.
func (p *Pool[T]) Status(dst []ServerStatus) []ServerStatus {
	s := p.set.Load()
	for i, b := range s.backends {
		b.health.mu.Lock()
		lastErr, checked := b.health.lastErr, b.health.checked
		b.health.mu.Unlock()
		dst = append(dst, ServerStatus{
			Pool:         p.name,
			Address:      b.Server().Address,
			Weight:       s.weights[i],
			Up:           b.up.Load(),
			Checked:      checked,
			Active:       b.active.Load(),
			Dials:        b.dials.Load(),
			DialFailures: b.dialFailures.Load(),
			DialTime:     time.Duration(b.dialTime.Load()),
			LastError:    lastErr,
		})
	}
	return dst
}

// Server returns the server as last configured. The caller must not
// change it.
func (b *Backend[T]) Server() *Server[T] { return b.server.Load() }

// Up reports whether the server is up (always, when its pool has no
// health checks).
func (b *Backend[T]) Up() bool { return b.up.Load() }

// Acquire counts a connection to the server, from the dial on: least
// connections balances by this count. Each Acquire needs one Release.
func (b *Backend[T]) Acquire() { b.active.Add(1) }

// Release ends what Acquire began: the dial failed, or the connection
// has closed.
func (b *Backend[T]) Release() { b.active.Add(-1) }

// Active returns the connections that hold the server.
func (b *Backend[T]) Active() int64 { return b.active.Load() }

// Removed returns a channel that is closed when a reload removes the
// server (or its pool): its connections are then to be drained.
func (b *Backend[T]) Removed() <-chan struct{} { return *b.removed.Load() }

// remove closes the server's Removed channel. Pool.mu is held.
func (b *Backend[T]) remove() { close(*b.removed.Load()) }

// restore gives the server an open Removed channel: it is configured
// (again). Pool.mu is held.
func (b *Backend[T]) restore() {
	removed := make(chan struct{})
	b.removed.Store(&removed)
}

// Dialed reports how a dial of the server that took took ended. A
// failure counts as a failed health check, in a pool that has them,
// unless it is the caller's own cancellation (the client went away); a
// success ends a run of failures.
func (b *Backend[T]) Dialed(took time.Duration, err error) {
	b.dials.Add(1)
	if err != nil {
		b.dialFailures.Add(1)
		if errors.Is(err, context.Canceled) {
			return
		}
		err = fmt.Errorf("dial: %w", err)
	} else {
		b.dialTime.Add(int64(took))
	}
	b.observe(err)
}

// observe takes one result, of a health check or of a client's dial, and
// marks the server down or up when the run of results says so.
func (b *Backend[T]) observe(err error) {
	h := &b.health
	h.mu.Lock()
	if !h.checked {
		h.mu.Unlock()
		return
	}
	wasUp := b.up.Load()
	up := wasUp
	switch {
	case !h.settled:
		h.settled, up = true, err == nil
		h.fails, h.oks = 0, 0
	case err == nil && wasUp:
		h.fails = 0
	case err == nil:
		h.oks++
		if h.oks >= h.rise {
			up, h.fails = true, 0
		}
	case wasUp:
		h.fails++
		if h.fails >= h.fall {
			up, h.oks = false, 0
		}
	default:
		h.oks = 0
	}
	if err != nil {
		h.lastErr = err.Error()
	} else {
		h.lastErr = ""
	}
	b.up.Store(up)
	fails := h.fails
	h.mu.Unlock()

	switch {
	case wasUp && !up:
		b.logger.Info("upstream server marked down", zap.String("pool", b.pool), zap.String("server", b.Server().Address),
			zap.Int("failures", max(fails, 1)), zap.String("reason", err.Error()))
	case !wasUp && up:
		b.logger.Info("upstream server marked up", zap.String("pool", b.pool), zap.String("server", b.Server().Address))
	}
}

// configure sets the thresholds of check, or, for nil, stops taking
// results and marks the server up: without checks, nothing marks it down.
// A server keeps its state across a change; its runs start again.
func (b *Backend[T]) configure(check *HealthCheck) {
	h := &b.health
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fails, h.oks = 0, 0
	if check == nil {
		h.checked, h.settled, h.lastErr = false, false, ""
		b.up.Store(true)
		return
	}
	h.checked, h.fall, h.rise = true, check.fall(), check.rise()
}
