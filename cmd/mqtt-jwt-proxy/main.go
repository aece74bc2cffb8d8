// Command mqtt-jwt-proxy is an authenticating MQTT reverse proxy: it checks
// the JWT in each client's CONNECT and connects accepted clients through to
// the broker.
//
//	mqtt-jwt-proxy -config FILE          run the proxy (same as serve)
//	mqtt-jwt-proxy serve -config FILE    run the proxy
//	mqtt-jwt-proxy check -config FILE    validate FILE and exit
//	mqtt-jwt-proxy version               print the version
//	mqtt-jwt-proxy token [flags]         mint a test token
//	mqtt-jwt-proxy keygen [flags]        write a key pair and a JWKS file
//	mqtt-jwt-proxy verify -config FILE [-client-id X] [-username Y] [-publish TOPIC] [-subscribe FILTER] TOKEN
//	                                     say which authenticator accepts TOKEN, or why not,
//	                                     and whether the client may publish and subscribe
//	mqtt-jwt-proxy sessions list|kick -admin URL -token-file FILE [filters]
//	                                     list the proxy's sessions, or end them
//
// -config defaults to $MQTT_JWT_PROXY_CONFIG, and -bind-host (serve, check:
// listen on this IP instead of the file's hosts) to
// $MQTT_JWT_PROXY_BIND_HOST: the container image sets the first, so that
// "docker run IMAGE check" runs check on the mounted file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `mqtt-jwt-proxy checks the JWT in each MQTT client's CONNECT and connects
accepted clients through to the broker.

usage:
  mqtt-jwt-proxy [serve] -config FILE        run the proxy
  mqtt-jwt-proxy check -config FILE          validate a configuration and exit
  mqtt-jwt-proxy version                     print the version
  mqtt-jwt-proxy token [flags]               mint a test token
  mqtt-jwt-proxy keygen [flags]              write a key pair and a JWKS file
  mqtt-jwt-proxy verify -config FILE TOKEN   say which authenticator accepts TOKEN, or why not
  mqtt-jwt-proxy sessions list|kick [flags]  list the proxy's sessions, or end them
  mqtt-jwt-proxy help                        print this

Run 'mqtt-jwt-proxy COMMAND -h' for a command's flags.
`

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	switch {
	case len(args) > 0 && !strings.HasPrefix(args[0], "-"):
		cmd, args = args[0], args[1:]
	case len(args) > 0 && isHelpFlag(args[0]):
		// Without a command, -h is about the commands, not serve's flags.
		cmd = "help"
	}
	var err error
	switch cmd {
	case "serve":
		err = serveCommand(ctx, args, stderr)
	case "check":
		err = checkCommand(args, stdout, stderr)
	case "token":
		err = tokenCommand(args, stdout, stderr)
	case "keygen":
		err = keygenCommand(args, stdout, stderr)
	case "verify":
		err = verifyCommand(ctx, args, os.Stdin, stdout, stderr)
	case "sessions":
		err = sessionsCommand(ctx, args, stdout, stderr)
	case "version":
		err = versionCommand(args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "mqtt-jwt-proxy: unknown command %q\nRun 'mqtt-jwt-proxy help' for the commands.\n", cmd)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errRequestDenied):
		fmt.Fprintf(stderr, "mqtt-jwt-proxy %s: %v\n", cmd, err)
		return exitDenied
	default:
		fmt.Fprintf(stderr, "mqtt-jwt-proxy %s: %v\n", cmd, err)
		return 1
	}
}

// errUsage is returned when the flags were wrong; usageError has already
// said why.
var errUsage = errors.New("usage")

// isHelpFlag reports whether arg asks for help, as the flag package reads it.
func isHelpFlag(arg string) bool {
	switch arg {
	case "-h", "-help", "--h", "--help":
		return true
	}
	return false
}

// newFlagSet returns the flag set of command name, whose -h prints
// "usage: mqtt-jwt-proxy NAME SYNOPSIS", what the command does, and its
// flags.
func newFlagSet(name, synopsis, description string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: mqtt-jwt-proxy %s %s\n%s\n", name, synopsis, description)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs and allows at most maxArgs positional
// arguments. Every problem is reported by usageError.
func parseFlags(fs *flag.FlagSet, args []string, maxArgs int) error {
	// The flag package prints its errors without the command's name, and
	// all of the usage after them; they are printed by usageError instead.
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return err
	case err != nil:
		return usageError(fs, "%v", err)
	case fs.NArg() > maxArgs:
		return usageError(fs, "unexpected arguments: %s", strings.Join(fs.Args()[maxArgs:], " "))
	}
	return nil
}

// usageError prints what is wrong with the command line of fs's command,
// in the form every error of the command takes ("mqtt-jwt-proxy NAME:
// ..."), and where its usage is; it returns errUsage.
func usageError(fs *flag.FlagSet, format string, args ...any) error {
	fmt.Fprintf(fs.Output(), "mqtt-jwt-proxy %s: %s\nRun 'mqtt-jwt-proxy %s -h' for usage.\n", fs.Name(), fmt.Sprintf(format, args...), fs.Name())
	return errUsage
}

// The environment variables that config-reading commands take defaults
// from, so that a container image can run every command: the image sets
// the first, and a container that must listen on all its interfaces with
// a file written for loopback sets the second.
const (
	envConfig   = "MQTT_JWT_PROXY_CONFIG"
	envBindHost = "MQTT_JWT_PROXY_BIND_HOST"
)

// configSource is where serve and check take their configuration from.
type configSource struct {
	path     string // -config
	bindHost string // -bind-host; empty keeps the file's binds
}

// load reads, validates and rebinds the configuration; reloads call it
// again, so that the running binds and the reloaded ones agree.
func (s configSource) load() (*configs.File, error) {
	cfg, err := configs.Load(s.path)
	if err != nil {
		return nil, err
	}
	if s.bindHost != "" {
		if err := cfg.SetBindHost(s.bindHost); err != nil {
			return nil, fmt.Errorf("config %s with -bind-host %s: %w", s.path, s.bindHost, err)
		}
	}
	return cfg, nil
}

// configFlags parses the flags serve and check share.
func configFlags(name, description string, args []string, stderr io.Writer) (configSource, error) {
	fs := newFlagSet(name, "-config FILE [-bind-host IP]", description, stderr)
	var src configSource
	path := configFlag(fs)
	fs.StringVar(&src.bindHost, "bind-host", os.Getenv(envBindHost),
		"listen on this `IP` instead of the host of every listeners[].bind and metrics.bind, such as 0.0.0.0 in a container ($"+envBindHost+" by default)")
	if err := parseFlags(fs, args, 0); err != nil {
		return configSource{}, err
	}
	if *path == "" {
		return configSource{}, usageError(fs, "-config FILE (or $%s) is required", envConfig)
	}
	src.path = *path
	return src, nil
}

// configFlag defines -config on fs, with $MQTT_JWT_PROXY_CONFIG as its
// default.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", os.Getenv(envConfig), "configuration `FILE` (YAML) ($"+envConfig+" by default)")
}

// versionCommand prints the version. It takes no flags and no arguments,
// and says so as every command does.
func versionCommand(args []string, stdout, stderr io.Writer) error {
	if err := parseFlags(newFlagSet("version", "", "Prints the version.", stderr), args, 0); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "mqtt-jwt-proxy", buildVersion())
	return nil
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
