package transport

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/pires/go-proxyproto"
)

// TestLocalHeader: the header of a connection of the proxy's own is one a
// PROXY protocol reader takes as LOCAL, with no addresses, in either
// version, and none without a version.
func TestLocalHeader(t *testing.T) {
	if b, err := NoProxyHeader.Local(); b != nil || err != nil {
		t.Errorf("NoProxyHeader.Local() = %q, %v; want nothing", b, err)
	}
	for _, v := range []ProxyHeader{ProxyHeaderV1, ProxyHeaderV2} {
		b, err := v.Local()
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		r := bufio.NewReader(bytes.NewReader(append(b, "MQTT"...)))
		h, err := proxyproto.Read(r)
		if err != nil {
			t.Fatalf("v%d: reading %q: %v", v, b, err)
		}
		if h.Version != byte(v) || h.Command != proxyproto.LOCAL || h.SourceAddr != nil {
			t.Errorf("v%d: read a v%d header, command %v, source %v; want LOCAL without addresses", v, h.Version, h.Command, h.SourceAddr)
		}
		if rest, _ := r.Peek(4); string(rest) != "MQTT" {
			t.Errorf("v%d: the header took more than its bytes: %q left", v, rest)
		}
	}
}
