//go:build !linux

package proxy

import (
	"errors"
	"net"
	"time"
)

// The epoll relay is Linux-only; elsewhere each connection copies with two
// goroutines.
type (
	watcher struct{}
	relay   struct{}
)

func newWatcher() (*watcher, error) { return nil, errors.New("proxy: no epoll relay on this OS") }
func (w *watcher) stop()            {}
func (r *relay) abort()             {}

func (w *watcher) startRelay(client, upstream net.Conn, halfClose time.Duration, done func(fromClient, toClient int64)) (*relay, bool) {
	return nil, false
}
