package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

const (
	// upstreamProbeInterval is how long a dial to the broker, a client's
	// or the readiness probe's own, answers "is the broker reachable?";
	// it is also the least time between two probes.
	upstreamProbeInterval = 5 * time.Second
	// upstreamProbeTimeout bounds the readiness probe's dial.
	upstreamProbeTimeout = time.Second

	// adminWriteTimeout is long enough for a 30 s CPU profile or trace
	// and still bounds a client that stops reading.
	adminWriteTimeout = 2 * time.Minute
	// maxConcurrentScrapes bounds the work of gathering metrics (process
	// statistics are read from /proc) when many scrapers come at once.
	maxConcurrentScrapes = 4
)

// adminServer is the admin HTTP endpoint of metrics.bind: Prometheus
// metrics on /metrics, liveness on /healthz, readiness on /readyz, with
// an admin token the sessions API on /sessions, and with metrics.pprof
// Go's profiler on /debug/pprof/. A nil *adminServer (no metrics.bind)
// serves nothing and may be closed.
type adminServer struct {
	server   *http.Server
	addr     net.Addr
	served   chan struct{} // closed when server.Serve has returned
	ready    *readiness
	sessions *sessionsAPI
}

// listenAdmin binds metrics.bind, before anything else starts: a port in
// use must end the start at once. Without metrics.bind it returns nil.
func listenAdmin(cfg *configs.File) (net.Listener, error) {
	if cfg.Metrics.Bind == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Metrics.Bind)
	if err != nil {
		return nil, fmt.Errorf("metrics.bind: %w", err)
	}
	return ln, nil
}

// startAdmin serves the admin endpoint on ln, from listenAdmin, in front
// of p, which is to serve cfg's listeners, and whose sessions the
// sessions API lists and ends with cfg's admin token. It sets p.Metrics,
// so it must run before p serves, and once p's other fields are final:
// readiness probes dial as p does. keySets reports the key sets of the
// authentication chain in force, and revocations the revocation list in
// force (nil without one). Without ln (no metrics.bind) it returns nil.
func startAdmin(ln net.Listener, cfg *configs.File, p *proxy.Proxy, keySets func() []authn.KeySetStatus, revocations func() *revocation.List, logger *zap.Logger) *adminServer {
	if ln == nil {
		return nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		keySetCollector{keySets: keySets},
		revocationCollector{list: revocations},
	)
	if p.Upstreams != nil {
		reg.MustRegister(serverCollector{status: p.Upstreams.Status})
	}
	p.Metrics = proxy.NewMetrics(reg, buildVersion())
	ready := &readiness{
		health:    p.Health,
		listeners: len(cfg.Listeners),
		keySets:   keySets,
		upstream:  &upstreamCheck{dial: upstreamDialer(p), now: time.Now},
	}
	if p.Upstreams != nil {
		ready.upstream.servers = p.Upstreams.Status
	}
	sessions := newSessionsAPI(p, cfg.Metrics.AdminToken(), logger.Named("admin"))
	a := &adminServer{
		server: &http.Server{
			Handler:           adminHandler(reg, ready, sessions, cfg.Metrics.Pprof, logger),
			ReadHeaderTimeout: 5 * time.Second,
			WriteTimeout:      adminWriteTimeout,
			IdleTimeout:       time.Minute,
			ErrorLog:          zap.NewStdLog(logger.Named("admin")),
		},
		addr:     ln.Addr(),
		served:   make(chan struct{}),
		ready:    ready,
		sessions: sessions,
	}
	go func() {
		defer close(a.served)
		a.server.Serve(ln) // returns ErrServerClosed after Close
	}()
	logger.Info("admin endpoint started", zap.String("address", a.addr.String()), zap.Bool("pprof", cfg.Metrics.Pprof),
		zap.Bool("sessions_api", cfg.Metrics.AdminToken() != ""))
	if tcp, ok := a.addr.(*net.TCPAddr); ok && cfg.Metrics.Pprof && !tcp.IP.IsLoopback() {
		// The endpoint has no authentication: the profiler shows the
		// command line and lets anyone who reaches it load the process.
		logger.Warn("the profiler is served beyond loopback, without authentication; bind metrics to loopback or a private network", zap.String("address", a.addr.String()))
	}
	return a
}

// setAdminToken makes token the sessions API's from now on ("" turns the
// API off), as a reload reads it.
func (a *adminServer) setAdminToken(token string) {
	if a != nil {
		a.sessions.setToken(token)
	}
}

// Close stops the endpoint at once and waits for its goroutines, a
// readiness probe under way included.
func (a *adminServer) Close() {
	if a == nil {
		return
	}
	a.server.Close()
	<-a.served
	a.ready.upstream.wait()
}

// upstreamDialer opens a TCP connection to one of p's brokers that no
// health check watches: each server of p.Upstreams' pools without health
// checks in turn, until one answers; without Upstreams, with
// p.DialUpstream when set, else to p.Upstream.
func upstreamDialer(p *proxy.Proxy) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		switch {
		case p.Upstreams != nil:
			var firstErr error
			for _, st := range p.Upstreams.Status(nil) {
				if st.Checked {
					continue
				}
				c, err := d.DialContext(ctx, "tcp", st.Address)
				if err == nil {
					return c, nil
				}
				if firstErr = cmp.Or(firstErr, err); ctx.Err() != nil {
					break
				}
			}
			return nil, firstErr
		case p.DialUpstream != nil:
			return p.DialUpstream(ctx)
		}
		return d.DialContext(ctx, "tcp", p.Upstream)
	}
}

// adminHandler routes the admin endpoint's paths.
func adminHandler(reg *prometheus.Registry, ready *readiness, sessions *sessionsAPI, withPprof bool, logger *zap.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: zap.NewStdLog(logger.Named("metrics")),
		// One failing collector (a /proc file hidden by a sandbox, say)
		// must not hide every other metric.
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: maxConcurrentScrapes,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		// The process answers, so it is alive; whether it should get
		// traffic is /readyz's question.
		writePlain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready.check(r.Context()); err != nil {
			writePlain(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
		writePlain(w, http.StatusOK, "ok")
	})
	// Every method: the API answers the others with 405, after the token.
	mux.Handle("/sessions", sessions)
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

func writePlain(w http.ResponseWriter, status int, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, text)
}

// readiness decides /readyz: the proxy takes clients when every listener
// serves, it is not draining, every JWKS authenticator holds keys, and a
// broker is up: a server that health checks have up, or one that was
// reachable recently.
type readiness struct {
	health    func() proxy.Health
	listeners int // how many the proxy is to serve
	keySets   func() []authn.KeySetStatus
	upstream  *upstreamCheck
}

// check returns nil when the proxy is ready, or why not, briefly.
func (r *readiness) check(ctx context.Context) error {
	h := r.health()
	if h.Draining {
		return errors.New("draining")
	}
	if h.Listeners < r.listeners {
		return fmt.Errorf("%d of %d listeners serving", h.Listeners, r.listeners)
	}
	for _, ks := range r.keySets() {
		if !ks.Loaded {
			return fmt.Errorf("authenticator %s has no usable JWKS keys (%d consecutive failed fetches)", ks.Authenticator, ks.ConsecutiveFailures)
		}
	}
	if err := r.upstream.check(ctx, h); err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	return nil
}

// errClientDialFailed is the readiness reason when the latest word on the
// broker is a client's failed connection and a probe ran too recently to
// run again.
var errClientDialFailed = errors.New("the last connection to the broker failed")

// upstreamCheck tells whether a broker is up. A server of a pool with
// health checks that they have up answers at once. Without one, a
// broker that no health check watches must have been reachable recently:
// the latest of the proxy's own dials and this check's probes answers
// when it is younger than upstreamProbeInterval and either succeeded or
// follows a probe; otherwise a probe (dial, a TCP dial closed at once)
// decides. Probes are shared by concurrent callers and start at most once
// per upstreamProbeInterval, so however often /readyz is requested the
// brokers see at most one connection from it per interval.
type upstreamCheck struct {
	dial func(context.Context) (net.Conn, error)
	now  func() time.Time
	// servers, if set, returns the state of the pools' servers.
	servers func([]upstream.ServerStatus) []upstream.ServerStatus

	mu       sync.Mutex    // guards the fields below
	probedAt time.Time     // when the last probe started; zero before one
	probeErr error         // the last probe's outcome
	probing  chan struct{} // closed when the probe under way ends; nil when none
	running  sync.WaitGroup
}

// check returns nil when the broker was reachable recently, or the latest
// failure. It waits for a probe, at most upstreamProbeTimeout, unless ctx
// ends first.
func (u *upstreamCheck) check(ctx context.Context, h proxy.Health) error {
	if u.servers != nil {
		var down []string // the checked servers' latest errors
		unchecked := false
		for _, st := range u.servers(nil) {
			switch {
			case st.Checked && st.Up:
				return nil
			case st.Checked:
				down = append(down, st.Pool+" "+st.Address+": "+st.LastError)
			default:
				unchecked = true
			}
		}
		if !unchecked {
			return fmt.Errorf("no server is up (%s)", strings.Join(down, "; "))
		}
	}
	u.mu.Lock()
	if u.probing == nil {
		now := u.now()
		at, err := h.LastDialSuccess, error(nil)
		if h.LastDialFailure.After(at) {
			at, err = h.LastDialFailure, errClientDialFailed
		}
		if u.probedAt.After(at) {
			at, err = u.probedAt, u.probeErr
		}
		probedRecently := now.Sub(u.probedAt) < upstreamProbeInterval
		if probedRecently || err == nil && now.Sub(at) < upstreamProbeInterval {
			u.mu.Unlock()
			return err
		}
		u.startProbeLocked(now)
	}
	probing := u.probing
	u.mu.Unlock()

	select {
	case <-probing:
	case <-ctx.Done():
		return fmt.Errorf("waiting for the probe: %w", ctx.Err())
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.probeErr
}

// startProbeLocked dials the broker in the background. It does not use a
// caller's context: the probe serves every caller waiting for it.
func (u *upstreamCheck) startProbeLocked(now time.Time) {
	probing := make(chan struct{})
	u.probing, u.probedAt = probing, now
	u.running.Add(1)
	go func() {
		defer u.running.Done()
		ctx, cancel := context.WithTimeout(context.Background(), upstreamProbeTimeout)
		defer cancel()
		c, err := u.dial(ctx)
		if err == nil {
			c.Close()
		}
		u.mu.Lock()
		u.probeErr, u.probing = err, nil
		close(probing)
		u.mu.Unlock()
	}()
}

// wait returns once no probe is under way.
func (u *upstreamCheck) wait() { u.running.Wait() }

// serverCollector exports the state of each server of the proxy's pools,
// read from Upstreams.Status at each scrape: the servers a reload adds
// appear, those it removes go, and those it keeps keep their counts.
type serverCollector struct {
	status func([]upstream.ServerStatus) []upstream.ServerStatus
}

var (
	serverLabels = []string{"pool", "server"}
	serverUpDesc = prometheus.NewDesc("mqtt_jwt_proxy_upstream_server_up",
		"1 while the server takes clients, 0 while its health checks have it down; always 1 in a pool without health checks.",
		serverLabels, nil)
	serverActiveDesc = prometheus.NewDesc("mqtt_jwt_proxy_upstream_server_connections_active",
		"Client connections that hold the server, from their dial on.",
		serverLabels, nil)
	serverWeightDesc = prometheus.NewDesc("mqtt_jwt_proxy_upstream_server_weight",
		"The server's configured weight.",
		serverLabels, nil)
	serverDialFailuresDesc = prometheus.NewDesc("mqtt_jwt_proxy_upstream_server_dial_failures_total",
		"Clients' dials of the server that failed (each moved on to the next server, if there was time and one up).",
		serverLabels, nil)
	serverDialDesc = prometheus.NewDesc("mqtt_jwt_proxy_upstream_server_dial_seconds",
		"Time to connect a client to the server, successful dials only.",
		serverLabels, nil)
)

// Describe implements prometheus.Collector.
func (serverCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- serverUpDesc
	ch <- serverActiveDesc
	ch <- serverWeightDesc
	ch <- serverDialFailuresDesc
	ch <- serverDialDesc
}

// Collect implements prometheus.Collector.
func (c serverCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.status(nil) {
		up := 0.0
		if st.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(serverUpDesc, prometheus.GaugeValue, up, st.Pool, st.Address)
		ch <- prometheus.MustNewConstMetric(serverActiveDesc, prometheus.GaugeValue, float64(st.Active), st.Pool, st.Address)
		ch <- prometheus.MustNewConstMetric(serverWeightDesc, prometheus.GaugeValue, float64(st.Weight), st.Pool, st.Address)
		ch <- prometheus.MustNewConstMetric(serverDialFailuresDesc, prometheus.CounterValue, float64(st.DialFailures), st.Pool, st.Address)
		ch <- prometheus.MustNewConstSummary(serverDialDesc, st.Dials-st.DialFailures, st.DialTime.Seconds(), nil, st.Pool, st.Address)
	}
}

// keySetCollector exports the JWKS key sets' state. It reads
// authn.Chain.Status at each scrape, so a reload, which builds a new
// chain, restarts the counters from zero: Prometheus's rate() and
// increase() take counter resets in their stride.
type keySetCollector struct {
	keySets func() []authn.KeySetStatus
}

var (
	jwksRefreshesDesc = prometheus.NewDesc("mqtt_jwt_proxy_jwks_refreshes_total",
		"JWKS fetches per authenticator by result (success, failure), since the authenticator was built.",
		[]string{"authenticator", "result"}, nil)
	jwksAgeDesc = prometheus.NewDesc("mqtt_jwt_proxy_jwks_keyset_age_seconds",
		"Time since the last successful JWKS fetch; absent before the first.",
		[]string{"authenticator"}, nil)
	jwksLoadedDesc = prometheus.NewDesc("mqtt_jwt_proxy_jwks_keys_loaded",
		"1 when the authenticator holds a usable key set, 0 when its tokens are refused with keys_unavailable.",
		[]string{"authenticator"}, nil)
)

// Describe implements prometheus.Collector.
func (keySetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- jwksRefreshesDesc
	ch <- jwksAgeDesc
	ch <- jwksLoadedDesc
}

// Collect implements prometheus.Collector.
func (c keySetCollector) Collect(ch chan<- prometheus.Metric) {
	for _, ks := range c.keySets() {
		ch <- prometheus.MustNewConstMetric(jwksRefreshesDesc, prometheus.CounterValue, float64(ks.Refreshes), ks.Authenticator, "success")
		ch <- prometheus.MustNewConstMetric(jwksRefreshesDesc, prometheus.CounterValue, float64(ks.Failures), ks.Authenticator, "failure")
		if ks.Refreshes > 0 {
			ch <- prometheus.MustNewConstMetric(jwksAgeDesc, prometheus.GaugeValue, ks.Age.Seconds(), ks.Authenticator)
		}
		loaded := 0.0
		if ks.Loaded {
			loaded = 1
		}
		ch <- prometheus.MustNewConstMetric(jwksLoadedDesc, prometheus.GaugeValue, loaded, ks.Authenticator)
	}
}

// revocationCollector exports the state of the revocation list in force,
// read at each scrape: nothing without a list. A reload that builds a new
// list restarts its counters from zero, as for the key sets.
type revocationCollector struct {
	list func() *revocation.List
}

var (
	revocationEntriesDesc = prometheus.NewDesc("mqtt_jwt_proxy_revocation_entries",
		"Entries of the revocation list in force (jti, sub, client_id and issued_before together); 0 before the first load.",
		nil, nil)
	revocationAgeDesc = prometheus.NewDesc("mqtt_jwt_proxy_revocation_age_seconds",
		"Time since the last successful refresh of the revocation list, changed or not; absent before the first.",
		nil, nil)
	revocationRefreshesDesc = prometheus.NewDesc("mqtt_jwt_proxy_revocation_refreshes_total",
		"Reads of the revocation file or fetches of its URL by result (success, failure), since the list was built.",
		[]string{"result"}, nil)
	revocationInForceDesc = prometheus.NewDesc("mqtt_jwt_proxy_revocation_in_force",
		"1 when new connections are checked against a revocation list, 0 when none is in force and on_unavailable decides.",
		nil, nil)
)

// Describe implements prometheus.Collector.
func (revocationCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- revocationEntriesDesc
	ch <- revocationAgeDesc
	ch <- revocationRefreshesDesc
	ch <- revocationInForceDesc
}

// Collect implements prometheus.Collector.
func (c revocationCollector) Collect(ch chan<- prometheus.Metric) {
	l := c.list()
	if l == nil {
		return
	}
	st := l.Status()
	ch <- prometheus.MustNewConstMetric(revocationEntriesDesc, prometheus.GaugeValue, float64(st.Entries))
	if st.Refreshes > 0 {
		ch <- prometheus.MustNewConstMetric(revocationAgeDesc, prometheus.GaugeValue, st.Age.Seconds())
	}
	ch <- prometheus.MustNewConstMetric(revocationRefreshesDesc, prometheus.CounterValue, float64(st.Refreshes), "success")
	ch <- prometheus.MustNewConstMetric(revocationRefreshesDesc, prometheus.CounterValue, float64(st.Failures), "failure")
	inForce := 0.0
	if st.InForce {
		inForce = 1
	}
	ch <- prometheus.MustNewConstMetric(revocationInForceDesc, prometheus.GaugeValue, inForce)
}
