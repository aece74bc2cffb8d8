//go:build !linux

package proxy

import (
	"errors"
	"net"
	"net/netip"
	"time"
)

// The epoll relay is Linux-only; elsewhere each connection copies with two
// goroutines.
type (
	watchers struct{}
	relay    struct{}
)

func newWatchers() (*watchers, error) { return nil, errors.New("proxy: no epoll relay on this OS") }
func (ws *watchers) stop()            {}
func (r *relay) abort()               {}

func (r *relay) start() error    { return errors.New("proxy: no epoll relay on this OS") }
func (r *relay) cancel()         {}
func (r *relay) setClient(int32) {}

func (ws *watchers) dialRelay(addrs []netip.AddrPort, first []byte, deadline time.Time, halfClose time.Duration, done func(fromClient, toClient int64)) (*relay, error) {
	return nil, errors.New("proxy: no epoll relay on this OS")
}

func (ws *watchers) newRawListener(*net.TCPListener) net.Listener { return nil }

func socketOf(net.Conn) (int32, bool) { return -1, false }
func isSocket(net.Conn) bool          { return false }

func (ws *watchers) startRelay(client, upstream net.Conn, halfClose time.Duration, done func(fromClient, toClient int64)) (*relay, bool) {
	return nil, false
}
