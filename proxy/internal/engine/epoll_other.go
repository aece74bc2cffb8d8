//go:build !linux

package engine

import "errors"

// DefaultKind is the engine a platform runs unless told otherwise.
const DefaultKind = Portable

func newEpoll() (Engine, error) { return nil, errors.New("engine: epoll is Linux-only") }
