package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/embedded"
)

// shutdownTimeout bounds how long open connections may take to close on a signal.
const shutdownTimeout = 5 * time.Second

func checkCommand(args []string, stdout, stderr io.Writer) error {
	path, err := configFlag("check", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := configs.Load(path)
	if err != nil {
		return err
	}
	// Building the chain parses keys and secrets, which YAML validation cannot.
	chain, err := authn.New(cfg.Authentication)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	chain.Close()
	fmt.Fprintf(stdout, "%s: OK (%d listeners, %d authenticators)\n", path, len(cfg.Listeners), len(cfg.Authentication))
	return nil
}

func serveCommand(ctx context.Context, args []string, stderr io.Writer) error {
	path, err := configFlag("serve", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := configs.Load(path)
	if err != nil {
		return err
	}
	logger, err := newLogger(cfg.Log, zapcore.AddSync(stderr))
	if err != nil {
		return err
	}
	defer logger.Sync()

	for _, a := range cfg.Authentication {
		if a.UsesExampleSecret() {
			logger.Warn("authenticator uses a secret published in documentation; anyone can mint tokens for it",
				zap.String("authenticator", a.Name))
		}
	}
	chain, err := authn.New(cfg.Authentication, authn.WithLogger(logger))
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	defer chain.Close()

	upstream := cfg.Upstream.Address
	if upstream == configs.EmbeddedAddress {
		b, err := embedded.Start(slog.New(zapslog.NewHandler(brokerLogCore(logger))))
		if err != nil {
			return err
		}
		defer b.Close()
		upstream = b.Addr()
		logger.Info("embedded broker started; it is for trying things out, not for production", zap.String("address", upstream))
	}

	p := &proxy.Proxy{
		Upstream:    upstream,
		Verifier:    chain,
		DialTimeout: cfg.Upstream.DialTimeout.Or(0),
		Limits:      proxyLimits(cfg),
		Logger:      logger,
	}
	listeners := make([]net.Listener, 0, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		ln, err := net.Listen("tcp", l.Bind)
		if err != nil {
			for _, open := range listeners {
				open.Close()
			}
			return fmt.Errorf("listener %s: %w", l.Name, err)
		}
		listeners = append(listeners, ln)
	}

	errc := make(chan error, len(listeners))
	for i, ln := range listeners {
		name := cfg.Listeners[i].Name
		logger.Info("listening", zap.String("listener", name), zap.String("address", ln.Addr().String()), zap.String("upstream", upstream))
		go func() { errc <- p.Serve(ln, name) }()
	}

	var serveErr error
	select {
	case <-ctx.Done():
		logger.Info("signal received; shutting down")
	case serveErr = <-errc:
		logger.Error("listener failed; shutting down", zap.Error(serveErr))
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := p.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	logger.Info("stopped")
	return serveErr
}

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
		ConnectTimeout:         l.ConnectTimeout.Or(0),
		MaxConnectSize:         l.MaxConnectSize,
		MaxConnections:         l.MaxConnections,
		MaxListenerConnections: perListener,
		MaxPendingConnects:     l.MaxPendingConnects,
		PerIPConnectRate:       l.PerIPConnectRate,
		PerIPConnectBurst:      l.PerIPConnectBurst,
	}
}
