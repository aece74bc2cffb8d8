package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

func TestHealth(t *testing.T) {
	cases := []struct {
		name        string
		reachable   bool // the broker accepts connections
		wantSuccess bool // LastDialSuccess is set after one client
		wantFailure bool // LastDialFailure is set after one client
	}{
		{name: "broker reachable", reachable: true, wantSuccess: true},
		{name: "broker down", reachable: false, wantFailure: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			proxytest.VerifyNoLeaks(t)
			upstream := proxytest.ClosedAddr(t)
			var rec *proxytest.Recorder
			if tc.reachable {
				rec = proxytest.NewRecorder(t, "")
				upstream = rec.Addr
			}
			p := &Proxy{Upstream: upstream, Verifier: passwordVerifier{}}
			if h := p.Health(); h != (Health{}) {
				t.Errorf("Health before Serve = %+v, want the zero value", h)
			}
			addr := startProxy(t, p)
			before := time.Now()

			connect := connectPacket(t, packets.ProtocolV311, "good")
			c := dial(t, addr)
			c.Write(connect)
			if tc.reachable {
				rec.WaitReceived(t, 0, len(connect))
				// Bytes after the CONNECT go through once the relay has
				// started, which is after the dial was recorded.
				c.Write([]byte{0xc0, 0}) // PINGREQ
				rec.WaitReceived(t, 0, len(connect)+2)
			} else {
				readAll(t, c) // the CONNACK comes after the failed dial
			}

			h := p.Health()
			if h.Listeners != 1 || h.Draining {
				t.Errorf("Health while serving = %+v, want 1 listener, not draining", h)
			}
			if got := !h.LastDialSuccess.Before(before); got != tc.wantSuccess {
				t.Errorf("LastDialSuccess = %v (test began %v), want set: %v", h.LastDialSuccess, before, tc.wantSuccess)
			}
			if got := !h.LastDialFailure.Before(before); got != tc.wantFailure {
				t.Errorf("LastDialFailure = %v (test began %v), want set: %v", h.LastDialFailure, before, tc.wantFailure)
			}

			ctx, cancel := context.WithCancel(context.Background())
			cancel() // Shutdown begins, then closes what is left at once
			p.Shutdown(ctx)
			if h := p.Health(); !h.Draining {
				t.Errorf("Health after Shutdown = %+v, want draining", h)
			}
		})
	}
}
