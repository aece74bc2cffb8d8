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
//	mqtt-jwt-proxy verify -config FILE [-client-id X] [-username Y] TOKEN
//	                                     say which authenticator accepts TOKEN, or why not
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
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  mqtt-jwt-proxy [serve] -config FILE   run the proxy
  mqtt-jwt-proxy check -config FILE     validate a configuration and exit
  mqtt-jwt-proxy version                print the version
  mqtt-jwt-proxy token [flags]          mint a test token (token -h lists the flags)
  mqtt-jwt-proxy keygen [flags]         write a key pair and a JWKS file
  mqtt-jwt-proxy verify -config FILE TOKEN  say which authenticator accepts TOKEN, or why not
`

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
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
	case "version":
		fmt.Fprintln(stdout, "mqtt-jwt-proxy", buildVersion())
	case "help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "mqtt-jwt-proxy: unknown command %q\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "mqtt-jwt-proxy %s: %v\n", cmd, err)
		return 1
	}
}

// errUsage is returned when the flags were wrong; the flag package has
// already said why.
var errUsage = errors.New("usage")

// configFlag parses the flags every config-reading command shares.
func configFlag(name string, args []string, stderr io.Writer) (string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	if err := parseFlags(fs, args, 0); err != nil {
		return "", err
	}
	if *path == "" {
		fmt.Fprintf(stderr, "%s: -config FILE is required\n", name)
		return "", errUsage
	}
	return *path, nil
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
