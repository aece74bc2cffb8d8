package authn

import "time"

// KeySetStatus is the state of one JWKS authenticator's key set, for
// readiness probes and metrics.
type KeySetStatus struct {
	// Authenticator names the authenticator.
	Authenticator string
	// Loaded is true when the authenticator holds a usable key set: one
	// was fetched, and neither max_fail_count nor max_stale has dropped it.
	Loaded bool
	// Age is the time since the last successful fetch; zero before one.
	Age time.Duration
	// ConsecutiveFailures counts failed fetches since the last success.
	ConsecutiveFailures int
	// Refreshes counts successful fetches since the chain was built.
	Refreshes uint64
	// Failures counts failed fetches since the chain was built.
	Failures uint64
}

// Status reports the key set of each JWKS authenticator, in chain order.
// Authenticators with a static key (secret, public_key) are left out:
// their keys cannot go missing. It is safe for concurrent use.
func (c *Chain) Status() []KeySetStatus {
	var out []KeySetStatus
	for _, l := range c.links {
		a, ok := l.(*authenticator)
		if !ok {
			continue
		}
		p, ok := a.keys.(*jwksProvider)
		if !ok {
			continue
		}
		st := p.status()
		p.mu.Lock()
		refreshes, failures := p.refreshes, p.refreshFailures
		p.mu.Unlock()
		out = append(out, KeySetStatus{
			Authenticator:       a.name,
			Loaded:              st.loaded,
			Age:                 st.age,
			ConsecutiveFailures: st.consecutiveFailures,
			Refreshes:           refreshes,
			Failures:            failures,
		})
	}
	return out
}
