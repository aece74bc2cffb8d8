// Package upstream decides which broker an authenticated client is
// connected to. A Pool holds the servers of one upstream and balances over
// those that are up: smooth weighted round robin, weighted least
// connections, or client_id affinity by weighted rendezvous hashing, so
// that a device reconnecting lands on the broker that holds its session,
// whichever proxy process it reaches. Health checks (a TCP connect, or an
// MQTT CONNECT that must be accepted) mark servers down after a run of
// failures and up after a run of successes. A Router chooses the pool for
// a client by its listener, subject or claims.
//
// The package dials no client's broker: Pick returns the candidates in
// failover order, and the caller dials them in turn, reporting each
// outcome with Dialed and holding the server with Acquire and Release for
// as long as the connection lives. What a server needs to be dialed (TLS,
// a PROXY header) is the caller's, carried opaque to balancing as
// Server.Settings and handed back with each candidate; health checks dial
// through the caller's Dialer too, so they go through the same TLS and
// PROXY header as clients do.
//
// Typical usage:
//
//	router, err := upstream.NewRouter(cfg, dial, logger) // cfg from upstream.FromConfig
//	if err != nil { ... }
//	defer router.Close()
//
//	pool, err := router.Route(listener, identity.Subject, identity.Claims)
//	if err != nil { ... } // errors.Is(err, upstream.ErrNoRoute): refuse, not authorized
//	var buf [8]*upstream.Backend[settings]
//	candidates, err := pool.Pick(clientID, buf[:0])
//	if err != nil { ... } // errors.Is(err, upstream.ErrNoServerUp): refuse, server unavailable
//	for _, b := range candidates {
//		b.Acquire()
//		start := time.Now()
//		conn, err := dial(ctx, b.Server())
//		b.Dialed(time.Since(start), err)
//		if err != nil {
//			b.Release()
//			continue // the next candidate, within the client's dial timeout
//		}
//		... // relay; b.Release() when the connection ends
//	}
package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/defaults"
)

// Balance is how a pool chooses among its servers that are up.
type Balance string

// The balances.
const (
	// RoundRobin takes the servers in turn, each as often as its weight,
	// interleaved (nginx's smooth weighted round robin: weights 5, 1, 1
	// give a a b a c a a, not a a a a a b c).
	RoundRobin Balance = "round_robin"
	// LeastConnections takes the server with the fewest active
	// connections for its weight (as counted by this process), ties in
	// turn.
	LeastConnections Balance = "least_connections"
	// ClientID takes the server that the client identifier hashes to, by
	// weighted rendezvous hashing: the same identifier lands on the same
	// server in every process and after every restart, and adding or
	// removing a server moves only the identifiers that go to, or came
	// from, that server. An empty identifier is balanced as
	// LeastConnections.
	ClientID Balance = "client_id"
)

// Balances lists the valid values of Balance.
var Balances = []Balance{RoundRobin, LeastConnections, ClientID}

// Server is one broker of a pool.
type Server[T any] struct {
	// Address is the broker's host:port. It is the server's identity in
	// its pool: what client_id hashes with, what metrics are labelled
	// with, and what a reload matches servers by. Required and unique in
	// a pool.
	Address string
	// Weight is the server's share of clients relative to the others.
	// At least 1.
	Weight int
	// Settings is whatever the caller needs to dial the server (TLS, a
	// PROXY header); the pool hands it back with each candidate and to
	// the Dialer of its health checks, and never looks into it.
	Settings T
}

// Dialer opens a connection to s as client connections to it are opened:
// through TLS and with a PROXY header when s's settings ask for them. A
// health check uses it, then closes the connection or speaks MQTT on it.
// ctx carries the check's timeout.
type Dialer[T any] func(ctx context.Context, s *Server[T]) (net.Conn, error)

// Defaults for the zero values of HealthCheck's fields: HAProxy's inter,
// fall and rise.
const (
	DefaultCheckInterval = 2 * time.Second
	DefaultCheckTimeout  = time.Second
	DefaultFall          = 3
	DefaultRise          = 2
)

// HealthCheck configures the health checks of a pool's servers. Each
// server is checked every Interval; it is marked down after Fall
// consecutive failures and up again after Rise consecutive successes.
// A server starts up, and its first check, made at once, decides: a
// failure marks it down without waiting for Fall (HAProxy's init-state
// up). A connection a client's dial failed to open counts as a failed
// check (HAProxy's observe layer4 with on-error fail-check), so that a
// broker that dies under load is marked down by the first Fall dials that
// find it gone, not an interval later.
type HealthCheck struct {
	// Interval is the time between two checks of a server. Zero means
	// DefaultCheckInterval.
	Interval time.Duration
	// Timeout bounds one check: the dial, and the CONNECT's answer. Zero
	// means DefaultCheckTimeout, or Interval when that is shorter.
	Timeout time.Duration
	// Fall is how many consecutive failures mark a server down. Zero
	// means DefaultFall.
	Fall int
	// Rise is how many consecutive successes mark a server up. Zero
	// means DefaultRise.
	Rise int
	// Connect, if set, makes each check an MQTT session: after the dial,
	// an MQTT 3.1.1 CONNECT with these credentials, which the broker must
	// accept, then a DISCONNECT. Nil means the dial alone (TCP, and TLS
	// and the PROXY header where the server has them).
	Connect *ProbeConnect
}

// ProbeConnect is the CONNECT a health check sends.
type ProbeConnect struct {
	// ClientID is the client identifier; empty lets the broker assign
	// one (the session is clean), so that the checks of several proxy
	// processes never take over each other's session.
	ClientID string
	// Username, when not empty, is sent as the user name.
	Username string
	// Password, when not nil, is sent as the password; it needs a
	// Username [MQTT-3.1.2-22].
	Password []byte
}

func (h HealthCheck) interval() time.Duration { return defaults.Or(h.Interval, DefaultCheckInterval) }

func (h HealthCheck) timeout() time.Duration {
	if h.Timeout > 0 {
		return h.Timeout
	}
	return min(DefaultCheckTimeout, h.interval())
}

func (h HealthCheck) fall() int { return defaults.Or(h.Fall, DefaultFall) }

func (h HealthCheck) rise() int { return defaults.Or(h.Rise, DefaultRise) }

// ErrNoServerUp is wrapped by the error Pick returns when every server of
// the pool is marked down: the client is refused with CONNACK 0x88 server
// unavailable (3 in MQTT 3.1.1), as when the one broker is unreachable.
var ErrNoServerUp = errors.New("upstream: no server is up")

// ErrNoRoute is wrapped by the error Router.Route returns when no route
// matches the client and there is no default pool. The client is refused
// with CONNACK 0x87 not authorized (5 in MQTT 3.1.1): the route table is
// policy over who goes where, so a client it has no place for is one this
// proxy does not serve, and retrying cannot help; 0x88 would tell the
// device to come back later, forever, and hide a gap in the routes as an
// outage. (HAProxy answers 503 where no use_backend matches and there is
// no default_backend; EMQX's authorization, when no rule matches and
// no_match is deny, refuses as not authorized.)
var ErrNoRoute = errors.New("upstream: no route for the client")

// validate checks a pool's configuration as NewPool and Update take it.
func (c *PoolConfig[T]) validate() error {
	var errs []error
	if len(c.Servers) == 0 {
		errs = append(errs, errors.New("no servers"))
	}
	seen := make(map[string]bool, len(c.Servers))
	for i, s := range c.Servers {
		switch {
		case s.Address == "":
			errs = append(errs, fmt.Errorf("servers[%d]: no address", i))
		case seen[s.Address]:
			errs = append(errs, fmt.Errorf("servers[%d]: %s is listed twice", i, s.Address))
		}
		seen[s.Address] = true
		if s.Weight < 1 {
			errs = append(errs, fmt.Errorf("servers[%d]: weight %d is under 1", i, s.Weight))
		}
	}
	switch c.Balance {
	case RoundRobin, LeastConnections, ClientID:
	default:
		errs = append(errs, fmt.Errorf("balance %q is not one of %v", c.Balance, Balances))
	}
	if h := c.HealthCheck; h != nil {
		if h.Interval < 0 || h.Timeout < 0 || h.Fall < 0 || h.Rise < 0 {
			errs = append(errs, errors.New("health check: negative interval, timeout, fall or rise"))
		}
		if h.Connect != nil {
			if _, err := encodeProbe(h.Connect); err != nil {
				errs = append(errs, fmt.Errorf("health check: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}
