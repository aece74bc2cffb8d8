// Package defaults fills in the settings left unset: the proxy's packages
// take a zero or negative timeout or count as "use the default".
//
//	timeout := defaults.Or(l.Timeout, DefaultProxyProtocolTimeout)
package defaults

import "time"

// Or is v, or def when v is zero or negative.
func Or[N int | time.Duration](v, def N) N {
	if v <= 0 {
		return def
	}
	return v
}
