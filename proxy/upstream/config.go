package upstream

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// FromConfig returns the router configuration that f's upstream,
// upstreams and routes describe: the upstream section is DefaultPool
// (unless it is absent), and each key of upstreams a pool of that name.
// settings makes a server's dial settings from its pool's section and its
// own, which for a pool given by address is made of the pool's address,
// tls and proxy_protocol (configs.Upstream.PoolServers). f has been
// validated; an upstream address of "embedded" must have been replaced by
// the embedded broker's.
func FromConfig[T any](f *configs.File, settings func(pool configs.Upstream, s configs.UpstreamServer) (T, error)) (RouterConfig[T], error) {
	cfg := RouterConfig[T]{Pools: map[string]PoolConfig[T]{}}
	var errs []error
	add := func(name string, u configs.Upstream) {
		pc, err := poolFromConfig(u, settings)
		if err != nil {
			errs = append(errs, fmt.Errorf("upstream pool %q: %w", name, err))
			return
		}
		cfg.Pools[name] = pc
	}
	if !f.Upstream.IsZero() {
		add(DefaultPool, f.Upstream)
	}
	for name, u := range f.Upstreams {
		add(name, u)
	}
	for _, r := range f.Routes {
		rt := Route{Pool: r.Upstream}
		for key, value := range r.Match {
			switch {
			case key == configs.MatchListener:
				rt.Listener = value
			case key == configs.MatchSubject:
				rt.Subject = value
			case strings.HasPrefix(key, configs.MatchClaimsPrefix):
				if rt.Claims == nil {
					rt.Claims = map[string]string{}
				}
				rt.Claims[strings.TrimPrefix(key, configs.MatchClaimsPrefix)] = value
			}
		}
		cfg.Routes = append(cfg.Routes, rt)
	}
	return cfg, errors.Join(errs...)
}

func poolFromConfig[T any](u configs.Upstream, settings func(configs.Upstream, configs.UpstreamServer) (T, error)) (PoolConfig[T], error) {
	pc := PoolConfig[T]{Balance: RoundRobin, DialTimeout: time.Duration(u.DialTimeout)}
	if u.Balance != "" {
		pc.Balance = Balance(u.Balance)
	}
	var errs []error
	for _, s := range u.PoolServers() {
		weight := 1
		if s.Weight != nil {
			weight = *s.Weight
		}
		t, err := settings(u, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("server %s: %w", s.Address, err))
		}
		pc.Servers = append(pc.Servers, Server[T]{Address: s.Address, Weight: weight, Settings: t})
	}
	if h := u.HealthCheck; h != nil {
		pc.HealthCheck = &HealthCheck{
			Interval: time.Duration(h.Interval),
			Timeout:  time.Duration(h.Timeout),
			Fall:     h.Fall,
			Rise:     h.Rise,
		}
		if c := h.Connect; c != nil {
			pc.HealthCheck.Connect = &ProbeConnect{ClientID: c.ClientID, Username: c.Username}
			if c.Password != "" {
				pc.HealthCheck.Connect.Password = []byte(c.Password)
			}
		}
	}
	return pc, errors.Join(errs...)
}
