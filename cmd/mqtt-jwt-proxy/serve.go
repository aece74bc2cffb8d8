package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/embedded"
)

func checkCommand(args []string, stdout, stderr io.Writer) error {
	src, err := configFlags("check", "Validates the configuration, parses its keys and secrets, and exits: 0 when valid.", args, stderr)
	if err != nil {
		return err
	}
	path := src.path
	cfg, err := src.load()
	if err != nil {
		return err
	}
	// Building the chain parses keys, secrets and templates, which YAML
	// validation cannot, and so does compiling the authorization rules
	// (their topic filters); every step runs, so that every problem is
	// listed.
	_, forwardErr := proxy.NewForward(cfg.Forward)
	_, aclErr := acl.FromConfig(cfg.Authorization)
	list, listErr := newRevocation(cfg.Revocation, zap.NewNop())
	chain, chainErr := authn.New(cfg.Authentication)
	if err := errors.Join(forwardErr, aclErr, listErr, chainErr); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	chain.Close()
	list.Close()
	logWarnings(cfg, checkLogger(stderr))
	fmt.Fprintf(stdout, "%s: OK (%d listeners, %d authenticators)\n", path, len(cfg.Listeners), len(cfg.Authentication))
	return nil
}

func serveCommand(ctx context.Context, args []string, stderr io.Writer) error {
	// At once: until then a SIGHUP (systemctl reload right after start)
	// would kill the process. One that comes before the proxy serves is a
	// reload once it does.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	src, err := configFlags("serve", "Runs the proxy until SIGINT or SIGTERM; SIGHUP reloads the configuration.", args, stderr)
	if err != nil {
		return err
	}
	path := src.path
	cfg, err := src.load()
	if err != nil {
		return err
	}
	// Flushed, never synced: zap syncs at every flush, and an fsync of a
	// log file ten times a second waits on the disk for nothing.
	out := &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(struct{ io.Writer }{stderr}), Size: logBufferSize, FlushInterval: logFlushInterval}
	defer out.Stop() // writes what is left
	logger, err := newLogger(cfg.Log, out)
	if err != nil {
		return err
	}

	logWarnings(cfg, logger)
	forward, err := proxy.NewForward(cfg.Forward)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	authorization, err := proxyAuthorization(cfg.Authorization)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}

	// Every socket first: a port in use ends the start before the broker
	// starts or a JWKS endpoint is asked for keys. Until they are served,
	// the sockets are this function's to close.
	p := &proxy.Proxy{Logger: logger, Relay: proxy.RelayEngine(cfg.Tuning.Relay)}
	var listeners []net.Listener
	var adminListener net.Listener
	served := false
	defer func() {
		if !served {
			closeAll(listeners)
			if adminListener != nil {
				adminListener.Close()
			}
			// A PROXY-protocol listener's sockets started p's relay
			// engine (p.Listener), also when a later bind failed.
			p.Close()
		}
	}()
	listeners, certs, err := openListeners(cfg, p.Listener, logger)
	if err != nil {
		return err
	}
	if adminListener, err = listenAdmin(cfg); err != nil {
		return err
	}

	list, err := newRevocation(cfg.Revocation, logger)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	defer func() { list.Close() }() // the list in force at exit, after reloads
	chain, err := authn.New(cfg.Authentication, authn.WithLogger(logger), authn.WithRevocation(list))
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	defer func() { chain.Close() }() // the chain in force at exit, after reloads

	// The embedded broker's address stands for "embedded" in this
	// configuration and the reloaded ones; empty when none runs.
	var embeddedAddr string
	if cfg.Upstream.Address == configs.EmbeddedAddress {
		b, err := embedded.Start(slog.New(zapslog.NewHandler(brokerLogCore(logger))))
		if err != nil {
			return err
		}
		defer b.Close()
		embeddedAddr = b.Addr()
		logger.Info("embedded broker started; it is for trying things out, not for production", zap.String("address", embeddedAddr))
	}
	pools, err := upstreamsConfig(cfg, embeddedAddr)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	// The health checks start now; the proxy stops them when it stops.
	if p.Upstreams, err = proxy.NewUpstreams(pools, logger); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	logPools(pools, logger)

	p.Verifier = chain
	p.Forward = forward
	p.Authorization = authorization
	p.Limits = proxyLimits(cfg)
	// The chain and the revocation list in force, for the admin endpoint.
	var chains atomic.Pointer[authn.Chain]
	var lists atomic.Pointer[revocation.List]
	chains.Store(chain)
	lists.Store(list)
	admin := startAdmin(adminListener, cfg, p, func() []authn.KeySetStatus { return chains.Load().Status() }, lists.Load, logger)
	defer admin.Close()
	// Live sessions are held to the list in force: those it revokes end
	// at each new version. Before the list is closed (deferred above).
	p.WatchRevocation(list)
	if list != nil {
		// A URL's first fetch, bounded by its timeout: with
		// on_unavailable: deny, clients let in before it would all be
		// refused revocation_unavailable.
		select {
		case <-list.FirstRefreshDone():
		case <-ctx.Done():
		}
	}
	served = true

	errc := make(chan error, len(listeners))
	for i, ln := range listeners {
		name := cfg.Listeners[i].Name
		logger.Info("listening", zap.String("listener", name), zap.String("address", ln.Addr().String()))
		go func() { errc <- p.Serve(ln, name) }()
	}

	// listUsers are the retirements of the chains before chain that use
	// list too: a reload that leaves the revocation section as it was
	// keeps the list for the next chain.
	var listUsers []<-chan struct{}
	var serveErr error
	for serving := true; serving; {
		select {
		case <-hup:
			certs.reload(logger)
			if next, nextChain, nextList, retired, err := reload(src, cfg, chain, list, embeddedAddr, p, logger); err != nil {
				logger.Error("reload rejected; the running configuration stays in force", zap.String("config", path), zap.Error(err))
			} else {
				// Connections accepted before the reload are decided by
				// the old chain and list, however late their CONNECT
				// comes (a WebSocket upgrade takes its time): the chain
				// is closed once they all have been, and the list once
				// every configuration that used it has been retired.
				oldChain := chain
				go func() {
					<-retired
					oldChain.Close()
				}()
				if list != nil {
					listUsers = append(listUsers, retired)
				}
				if nextList != list {
					if list != nil {
						oldList, users := list, listUsers
						go func() {
							for _, retired := range users {
								<-retired
							}
							oldList.Close()
						}()
					}
					listUsers = nil
				}
				cfg, chain, list = next, nextChain, nextList
				chains.Store(chain)
				lists.Store(list)
				p.WatchRevocation(list)
				admin.setAdminToken(cfg.Metrics.AdminToken())
			}
		case <-ctx.Done():
			logger.Info("signal received; shutting down", zap.Duration("drain_timeout", cfg.Shutdown.DrainTimeout.Or(configs.DefaultDrainTimeout)))
			serving = false
		case serveErr = <-errc:
			logger.Error("listener failed; shutting down", zap.Error(serveErr))
			serving = false
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.DrainTimeout.Or(configs.DefaultDrainTimeout))
	defer cancel()
	if err := p.Shutdown(sctx); errors.Is(err, context.DeadlineExceeded) {
		logger.Info("drain timeout reached; closed the remaining connections")
	}
	logger.Info("stopped")
	return serveErr
}

// restartOnly are the sections read once, at start: sockets, the logger
// and the relay engine are not rebuilt by a reload. Of metrics, the admin
// token is read again (see reloadable).
var restartOnly = map[string]bool{"listeners": true, "metrics": true, "log": true, "tuning": true}

// reloadable are the keys of restartOnly's sections that a reload applies:
// the sessions API's token, so that it can be rotated without a restart.
var reloadable = map[string]bool{"metrics.admin_token_file": true, "metrics.admin_token_env": true}

// reload reads the configuration again and applies to new connections
// what may change while the proxy runs: authenticators, secrets, keys,
// the revocation list, limits, forward, authorization, the upstream
// pools and routes, and the drain timeout; established sessions keep the
// rules they started with; the admin token too. A server the reload
// removes is drained: its connections have the new drain timeout to end,
// then are closed. Listeners, the metrics endpoint and the log stay as
// they started; a change there is logged, key by key, and needs a
// restart. Nothing changes when the new file is invalid. retired is
// closed once runningChain and runningList are no longer used (see
// proxy.Proxy.Reload). embedded is the embedded broker's address, empty
// when none runs.
func reload(src configSource, running *configs.File, runningChain *authn.Chain, runningList *revocation.List, embedded string, p *proxy.Proxy, logger *zap.Logger) (_ *configs.File, _ *authn.Chain, _ *revocation.List, retired <-chan struct{}, _ error) {
	path := src.path
	cfg, err := src.load()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	forward, err := proxy.NewForward(cfg.Forward)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	if cfg.Upstream.Address == configs.EmbeddedAddress && embedded == "" {
		return nil, nil, nil, nil, fmt.Errorf("config %s: upstream.address: the embedded broker starts with the proxy only; restart to use it", path)
	}
	pools, err := upstreamsConfig(cfg, embedded)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	authorization, err := proxyAuthorization(cfg.Authorization)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	list, err := reloadRevocation(running.Revocation, cfg.Revocation, runningList, logger)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	// JWKS authenticators keep their last good keys: a reload while the
	// identity provider is down must not refuse every token.
	chain, err := authn.New(cfg.Authentication, authn.WithLogger(logger), authn.WithPrevious(runningChain), authn.WithRevocation(list))
	if err != nil {
		if list != runningList {
			list.Close()
		}
		return nil, nil, nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	var needRestart []string
	for _, key := range configs.Diff(running, cfg) {
		section := key
		if i := strings.IndexAny(key, ".["); i >= 0 {
			section = key[:i]
		}
		if restartOnly[section] && !reloadable[key] {
			needRestart = append(needRestart, key)
		}
	}
	// The one step left that may fail (the pools are validated again, and
	// a proxy that is stopping refuses): nothing is applied before it.
	if err := p.UpdateUpstreams(pools, cfg.Shutdown.DrainTimeout.Or(configs.DefaultDrainTimeout)); err != nil {
		chain.Close()
		if list != runningList {
			list.Close()
		}
		return nil, nil, nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	logPools(pools, logger)
	if len(needRestart) > 0 {
		logger.Warn("these changes take effect at the next restart; the rest is reloaded", zap.Strings("keys", needRestart))
		// The admin token, read from the new file, stays.
		cfg.Metrics.Bind, cfg.Metrics.Pprof = running.Metrics.Bind, running.Metrics.Pprof
		cfg.Listeners, cfg.Log, cfg.Tuning = running.Listeners, running.Log, running.Tuning
	}
	retired = p.Reload(chain, proxyLimits(cfg), forward, authorization)
	logger.Info("configuration reloaded", zap.String("config", path), zap.Int("authenticators", len(cfg.Authentication)))
	logWarnings(cfg, logger)
	return cfg, chain, list, retired, nil
}

// logPools logs each pool of cfg: its servers and balance.
func logPools(cfg proxy.UpstreamsConfig, logger *zap.Logger) {
	for _, name := range slices.Sorted(maps.Keys(cfg.Pools)) {
		pc := cfg.Pools[name]
		servers := make([]string, len(pc.Servers))
		for i, s := range pc.Servers {
			servers[i] = s.Address
		}
		logger.Info("upstream pool", zap.String("pool", name), zap.Strings("servers", servers),
			zap.String("balance", string(pc.Balance)), zap.Bool("health_check", pc.HealthCheck != nil))
	}
}

// newRevocation builds the revocation list of cfg's revocation section, or
// returns nil without one. Errors start with "revocation: ".
func newRevocation(cfg *configs.Revocation, logger *zap.Logger) (*revocation.List, error) {
	if cfg == nil {
		return nil, nil
	}
	list, err := revocation.New(*cfg, revocation.WithLogger(logger))
	if err != nil {
		return nil, fmt.Errorf("revocation: %w", err)
	}
	return list, nil
}

// reloadRevocation returns the revocation list for the reloaded section
// next: the running list when the section is unchanged, read again at once
// (a SIGHUP is how an operator says the file changed); otherwise a new
// list, which starts with the running one's set when it reads the same
// file or URL.
func reloadRevocation(running, next *configs.Revocation, list *revocation.List, logger *zap.Logger) (*revocation.List, error) {
	if next == nil {
		return nil, nil
	}
	if list != nil && running != nil && reflect.DeepEqual(*running, *next) {
		// In the background: a URL may take the fetch timeout to answer.
		// The list logs a failure itself, and Close ends the refresh.
		go list.Refresh(context.Background())
		return list, nil
	}
	l, err := revocation.New(*next, revocation.WithLogger(logger), revocation.WithPrevious(list))
	if err != nil {
		return nil, fmt.Errorf("revocation: %w", err)
	}
	return l, nil
}

// logWarnings logs what cfg does that is unsafe or not applied as written:
// serve at start and at each reload, check before its verdict.
func logWarnings(cfg *configs.File, logger *zap.Logger) {
	for _, w := range authn.Warnings(cfg.Authentication) {
		logger.Warn(w.Message, append([]zap.Field{zap.String("authenticator", w.Authenticator)}, w.Fields...)...)
	}
}

// checkLogger writes check's warnings to stderr as serve's console log
// would, without the time.
func checkLogger(stderr io.Writer) *zap.Logger {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = ""
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(encCfg), zapcore.AddSync(stderr), zapcore.WarnLevel))
}

// The log goes out at most every logFlushInterval, or when logBufferSize
// bytes are waiting. A write to stderr is a blocking system call, and
// each one wakes the Go runtime's monitor thread, which then polls for a
// while, at up to a few hundred lines a second (the sampler's 100 per
// message and second); docs/performance.md has what batching saved.
const (
	logFlushInterval = 100 * time.Millisecond
	logBufferSize    = 64 << 10
)

// newLogger builds the zap logger the config asks for. Sampling keeps a
// flood of identical lines (bad tokens, say) from flooding the log: per
// message and second, the first 100 are written, then one in 100.
func newLogger(c configs.Log, out zapcore.WriteSyncer) (*zap.Logger, error) {
	level := zapcore.InfoLevel
	if c.Level != "" {
		if err := level.Set(c.Level); err != nil {
			return nil, fmt.Errorf("log.level: %w", err)
		}
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == "console" {
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	core := zapcore.NewSamplerWithOptions(zapcore.NewCore(enc, out, level), time.Second, 100, 100)
	return zap.New(core, zap.ErrorOutput(out)), nil
}

// brokerLogCore is where the embedded broker logs: warnings and up only,
// since its per-client chatter is not the proxy's.
func brokerLogCore(logger *zap.Logger) zapcore.Core {
	core := logger.Named("embedded").Core()
	if warn, err := zapcore.NewIncreaseLevelCore(core, zapcore.WarnLevel); err == nil {
		return warn
	}
	return core // already at error level or above
}

// proxyLimits translates the limits section of cfg for the proxy.
func proxyLimits(cfg *configs.File) proxy.Limits {
	l := cfg.Limits
	perListener := make(map[string]int)
	for _, ln := range cfg.Listeners {
		if ln.MaxConnections > 0 {
			perListener[ln.Name] = ln.MaxConnections
		}
	}
	return proxy.Limits{
		ConnectTimeout:          l.ConnectTimeout.Or(0),
		MaxConnectSize:          l.MaxConnectSize,
		MaxPacketSize:           l.MaxPacketSize,
		MaxConnections:          l.MaxConnections,
		MaxListenerConnections:  perListener,
		MaxPendingConnects:      l.MaxPendingConnects,
		MaxPendingConnectBytes:  l.MaxPendingConnectBytes,
		PerIPConnectRate:        l.PerIPConnectRate,
		PerIPConnectBurst:       l.PerIPConnectBurst,
		PerClientIDConnectRate:  l.PerClientIDConnectRate,
		PerClientIDConnectBurst: l.PerClientIDConnectBurst,
	}
}

// proxyAuthorization compiles the authorization section for the proxy.
func proxyAuthorization(a configs.Authorization) (proxy.Authorization, error) {
	rules, err := acl.FromConfig(a)
	if err != nil {
		return proxy.Authorization{}, err
	}
	return proxy.Authorization{Rules: rules, DisconnectOnDeny: a.DenyAction == configs.DenyActionDisconnect}, nil
}
