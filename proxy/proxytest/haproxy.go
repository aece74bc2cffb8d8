package proxytest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Lines HAProxy 2.6 prints in master-worker mode (-W) on its standard
// error, each after "[LEVEL]    (pid) : ":
//
//	Loading success.                                          ready: the worker runs, its listeners bound
//	Binding [haproxy.cfg:12] for frontend fe: cannot bind socket (Address already in use) for [127.0.0.1:40000]
//
// Without -W it prints nothing when it is ready.
const (
	logHAProxyReady     = "Loading success."
	logHAProxyPortTaken = "cannot bind socket (Address already in use)"
)

// HAProxy is an HAProxy process in TCP mode on a free loopback port, in
// front of one server, started by StartHAProxy and stopped at test
// cleanup.
type HAProxy struct {
	// Addr is its frontend's listener, 127.0.0.1:port.
	Addr string

	proc *process
}

// StartHAProxy starts HAProxy (mode tcp) with a frontend on
// 127.0.0.1:<free port> whose bind line ends with bindOptions (for
// example "ssl crt server.pem ca-file ca.pem verify optional") and one
// server, at server, whose line ends with serverOptions (for example
// "send-proxy-v2-ssl-cn"). It waits until HAProxy is ready by reading its
// log, retries on another port if the one it picked was taken meanwhile,
// and stops it (SIGTERM, then kill) at t.Cleanup. It skips or fails the
// test, as LookPath does, when haproxy is not installed.
func StartHAProxy(t testing.TB, bindOptions, server, serverOptions string) *HAProxy {
	t.Helper()
	binary := LookPath(t, "haproxy")
	dir := t.TempDir()
	h := onFreePort(t, "haproxy", func(port int) (*HAProxy, error) {
		return startHAProxyOn(binary, dir, port, bindOptions, server, serverOptions)
	})
	t.Cleanup(h.proc.stop)
	return h
}

// startHAProxyOn writes the config for port into dir and starts HAProxy,
// returning once it is ready. A failed HAProxy has exited.
func startHAProxyOn(binary, dir string, port int, bindOptions, server, serverOptions string) (*HAProxy, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	config := strings.Join([]string{
		"defaults",
		"  mode tcp",
		"  timeout connect " + DefaultTimeout.String(),
		"  timeout client 1m",
		"  timeout server 1m",
		"frontend fe",
		"  bind " + addr + " " + bindOptions,
		"  default_backend be",
		"backend be",
		"  server upstream " + server + " " + serverOptions,
	}, "\n") + "\n"
	configFile := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		return nil, fmt.Errorf("writing config: %w", err)
	}
	// -W: the master reports the worker's start; -db: in the foreground.
	ready := func(line string) bool { return strings.Contains(line, logHAProxyReady) }
	proc, err := startReady(exec.Command(binary, "-W", "-db", "-f", configFile), port, ready, logHAProxyPortTaken)
	if err != nil {
		return nil, fmt.Errorf("%w\nconfig:\n%s", err, config)
	}
	return &HAProxy{Addr: addr, proc: proc}, nil
}
