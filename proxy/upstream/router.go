package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
)

// DefaultPool names the pool of clients no route matches: the
// configuration's upstream section. A route may name it too.
const DefaultPool = "default"

// RouterConfig is the pools and the routes between them.
type RouterConfig[T any] struct {
	// Pools by name. DefaultPool, when present, takes the clients no route
	// matches; without it they are refused.
	Pools map[string]PoolConfig[T]
	// Routes are tried in order; the first that matches decides.
	Routes []Route
}

// Route sends the clients it matches to a pool. All its conditions must
// hold; a condition left zero holds for every client. At least one is
// set.
type Route struct {
	// Listener, if set, is the name of the listener the client came in on.
	Listener string
	// Subject, if set, is an RE2 regular expression that the whole subject
	// (the sub claim) must match: "fleet-.*" matches "fleet-7" but not
	// "x-fleet-7", so that a route cannot take in a subject by a part of
	// it.
	Subject string
	// Claims, if set, are top-level claims and the values they must have,
	// compared as text: a string as is, a number as written in the token,
	// a boolean as true or false. An absent claim, an array or an object
	// matches no value.
	Claims map[string]string
	// Pool names the pool. Required.
	Pool string
}

// Router chooses a client's pool. Its methods may be called from any
// goroutine, Route concurrently with Update.
type Router[T any] struct {
	dial   Dialer[T]
	logger *zap.Logger

	table atomic.Pointer[routeTable[T]]

	mu     sync.Mutex // guards the fields below, and Update and Close
	closed bool
	pools  map[string]*Pool[T]
}

// routeTable is a generation of the routes, which Update replaces whole.
type routeTable[T any] struct {
	routes   []compiledRoute[T]
	fallback *Pool[T] // nil when there is no default pool
	pools    map[string]*Pool[T]
}

type compiledRoute[T any] struct {
	listener string
	subject  *regexp.Regexp
	claims   []claimCondition // sorted by name, for a stable order
	pool     *Pool[T]
}

type claimCondition struct{ name, value string }

// NewRouter starts the pools of cfg (their health checks included) and
// returns the router over them. dial and logger are the pools'.
func NewRouter[T any](cfg RouterConfig[T], dial Dialer[T], logger *zap.Logger) (*Router[T], error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	r := &Router[T]{dial: dial, logger: logger, pools: map[string]*Pool[T]{}}
	if err := r.Update(cfg); err != nil {
		return nil, err
	}
	return r, nil
}

// Update applies a new configuration, as a reload does: pools it keeps
// (by name) are updated in place (see Pool.Update), new ones start, and
// removed ones stop, their servers' Removed channels closed. On error
// nothing changes.
func (r *Router[T]) Update(cfg RouterConfig[T]) error {
	routes, err := compileRoutes(cfg)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Pools)) {
		pc := cfg.Pools[name]
		if err := pc.validate(); err != nil {
			return fmt.Errorf("upstream pool %q: %w", name, err)
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("upstream: router closed")
	}
	next := map[string]*Pool[T]{}
	for _, name := range slices.Sorted(maps.Keys(cfg.Pools)) {
		if _, ok := r.pools[name]; ok {
			continue
		}
		p, err := NewPool(name, cfg.Pools[name], r.dial, r.logger)
		if err != nil {
			for _, p := range next {
				p.Close()
			}
			return err
		}
		next[name] = p
	}
	for name, p := range r.pools {
		pc, ok := cfg.Pools[name]
		if !ok {
			p.retire()
			continue
		}
		// Validated above, and open while the router is: it takes pc.
		p.Update(pc)
		next[name] = p
	}
	r.pools = next
	t := &routeTable[T]{fallback: next[DefaultPool], pools: next}
	for i := range routes {
		routes[i].pool = next[cfg.Routes[i].Pool]
	}
	t.routes = routes
	r.table.Store(t)
	return nil
}

// compileRoutes checks cfg's routes and compiles their expressions; Update
// sets their pools.
func compileRoutes[T any](cfg RouterConfig[T]) ([]compiledRoute[T], error) {
	var errs []error
	routes := make([]compiledRoute[T], 0, len(cfg.Routes))
	for i, rt := range cfg.Routes {
		cr := compiledRoute[T]{listener: rt.Listener}
		if _, ok := cfg.Pools[rt.Pool]; !ok {
			errs = append(errs, fmt.Errorf("routes[%d]: no pool named %q", i, rt.Pool))
		}
		if rt.Listener == "" && rt.Subject == "" && len(rt.Claims) == 0 {
			errs = append(errs, fmt.Errorf("routes[%d]: no condition", i))
		}
		if rt.Subject != "" {
			re, err := CompileSubject(rt.Subject)
			if err != nil {
				errs = append(errs, fmt.Errorf("routes[%d]: %w", i, err))
			}
			cr.subject = re
		}
		for _, name := range slices.Sorted(maps.Keys(rt.Claims)) {
			cr.claims = append(cr.claims, claimCondition{name, rt.Claims[name]})
		}
		routes = append(routes, cr)
	}
	return routes, errors.Join(errs...)
}

// CompileSubject compiles a route's subject expression, anchored at both
// ends so that the whole subject must match.
func CompileSubject(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return nil, fmt.Errorf("subject %q: %w", expr, err)
	}
	return re, nil
}

// Route returns the pool for a client that came in on listener with
// subject and claims (nil for none): the first route's that matches, else
// the default pool. Without a default pool, an unmatched client gets an
// error wrapping ErrNoRoute.
func (r *Router[T]) Route(listener, subject string, claims map[string]any) (*Pool[T], error) {
	t := r.table.Load()
	for i := range t.routes {
		if rt := &t.routes[i]; rt.matches(listener, subject, claims) {
			return rt.pool, nil
		}
	}
	if t.fallback == nil {
		return nil, fmt.Errorf("%w: listener %q, subject %q", ErrNoRoute, listener, subject)
	}
	return t.fallback, nil
}

func (rt *compiledRoute[T]) matches(listener, subject string, claims map[string]any) bool {
	if rt.listener != "" && rt.listener != listener {
		return false
	}
	if rt.subject != nil && !rt.subject.MatchString(subject) {
		return false
	}
	for _, c := range rt.claims {
		text, ok := claimText(claims[c.name])
		if !ok || text != c.value {
			return false
		}
	}
	return true
}

// claimText is a scalar claim as text, as authn compares claims: a string
// as is, a number as written in the token (json.Number) or in its
// shortest form, a boolean as true or false. Other values have none.
func claimText(claim any) (string, bool) {
	switch v := claim.(type) {
	case string:
		return v, true
	case json.Number:
		return string(v), true
	case bool:
		return strconv.FormatBool(v), true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	case int:
		return strconv.Itoa(v), true
	case int64:
		return strconv.FormatInt(v, 10), true
	}
	return "", false
}

// Pool returns the pool named name, or nil.
func (r *Router[T]) Pool(name string) *Pool[T] { return r.table.Load().pools[name] }

// Ready returns nil while at least one server of any pool is up, and
// otherwise says which pools have none. One tenant's brokers being down
// does not make the proxy unready: it still serves the others.
func (r *Router[T]) Ready() error {
	t := r.table.Load()
	names := slices.Sorted(maps.Keys(t.pools))
	for _, name := range names {
		if t.pools[name].Ready() {
			return nil
		}
	}
	return fmt.Errorf("%w (pools %s)", ErrNoServerUp, strings.Join(names, ", "))
}

// Status appends the state of every server of every pool to dst, pools
// by name.
func (r *Router[T]) Status(dst []ServerStatus) []ServerStatus {
	t := r.table.Load()
	for _, name := range slices.Sorted(maps.Keys(t.pools)) {
		dst = t.pools[name].Status(dst)
	}
	return dst
}

// Close stops every pool's health checks. Route still answers, for
// connections on their way; Update refuses.
func (r *Router[T]) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, p := range r.pools {
		p.Close()
	}
}
