package proxytest

import (
	"strings"
	"testing"
	"time"
)

// Bridge is the bridge section of a mosquitto configuration: the broker
// whose configuration holds it (the edge) connects to Address as a client,
// the bridge, and relays the topics its Topics name between itself and the
// remote broker (the cloud). Config gives the lines for StartMosquitto:
//
//	cloud := proxytest.StartMosquitto(t)
//	bridge := proxytest.Bridge{Address: cloud.Addr, ClientID: "edge-1", Topics: []string{"x/# both 1"}}
//	edge := proxytest.StartMosquitto(t, bridge.Config()...)
//	asBridge := cloud.WaitForClient(t, "edge-1", proxytest.DefaultTimeout)
//
// The zero value relays nothing; Address and Topics are needed.
type Bridge struct {
	// Address is the remote broker, host:port, or a proxy in front of it.
	Address string
	// ClientID, Username and Password go into the bridge's CONNECT
	// (remote_clientid, remote_username, remote_password). An empty
	// ClientID leaves mosquitto's own ("<hostname>.bridge"); an empty
	// Username or Password sends none.
	ClientID, Username, Password string
	// ProtocolVersion is the bridge's bridge_protocol_version: mqttv31,
	// mqttv311 or mqttv50; empty is mosquitto's default, mqttv311.
	// mosquitto's 3.1 and 3.1.1 bridges set bit 7 of the protocol level
	// (try_private, on by default).
	ProtocolVersion string
	// Topics are topic lines, "pattern direction qos", such as
	// "x/# both 1".
	Topics []string
}

// Config returns the bridge's configuration lines, a connection named
// "bridge". Its restart_timeout is 1 second rather than mosquitto's
// default back-off (5 seconds, growing to 30), so that a bridge whose
// connection failed is soon tried again.
func (b Bridge) Config() []string {
	config := []string{
		"connection bridge",
		"address " + b.Address,
		"restart_timeout 1",
	}
	for _, option := range []struct{ key, value string }{
		{"remote_clientid", b.ClientID},
		{"remote_username", b.Username},
		{"remote_password", b.Password},
		{"bridge_protocol_version", b.ProtocolVersion},
	} {
		if option.value != "" {
			config = append(config, option.key+" "+option.value)
		}
	}
	for _, topic := range b.Topics {
		config = append(config, "topic "+topic)
	}
	return config
}

// WaitForClient waits until the broker logs that clientID connected, and
// reports whether it connected as a bridge: mosquitto logs "New bridge
// connected from ..." for a CONNECT whose protocol level has bit 7 set,
// "New client connected from ..." for any other. It fails the test after
// timeout or when the broker exits.
func (m *Mosquitto) WaitForClient(t testing.TB, clientID string, timeout time.Duration) (bridge bool) {
	t.Helper()
	as := " as " + clientID + " ("
	found := m.process().waitLines(timeout, func(lines []string) bool {
		for _, line := range lines {
			switch {
			case strings.Contains(line, logNewBridge) && strings.Contains(line, as):
				bridge = true
				return true
			case strings.Contains(line, logNewClient) && strings.Contains(line, as):
				return true
			}
		}
		return false
	})
	if !found {
		t.Fatalf("mosquitto logged no connection of %q within %v; log:\n%s", clientID, timeout, m.Log())
	}
	return bridge
}
