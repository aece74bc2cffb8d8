package proxy

import (
	"fmt"
	"os"
	"testing"
)

// relayEnv names the environment variable that picks the relay engine
// every test's Proxy runs (epoll or portable) unless the test sets one:
// CI runs the package once with each. Empty means the platform's default.
const relayEnv = "MQTT_JWT_PROXY_RELAY"

func TestMain(m *testing.M) {
	if kind := RelayEngine(os.Getenv(relayEnv)); kind != "" {
		if err := kind.check(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", relayEnv, err)
			os.Exit(2)
		}
		defaultRelay = kind
	}
	os.Exit(m.Run())
}
