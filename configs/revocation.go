package configs

import (
	"fmt"
	"net/url"
	"time"
)

// Revocation is where the list of revoked tokens comes from: a file the
// proxy re-reads when it changes, or a URL every replica fetches. The
// document's form and what it revokes are the revocation package's.
type Revocation struct {
	// File is the path of the revocation document, re-read when its size,
	// modification time or inode change (checked every RefreshInterval)
	// and at every reload. Exactly one of File and URL is required.
	File string `yaml:"file"`
	// URL is fetched with GET every RefreshInterval, with the JWKS fetch's
	// rules: size cap, timeout, redirects kept to https and the headers
	// kept to the URL's host.
	URL string `yaml:"url"`
	// RefreshInterval is how often the URL is fetched, or the file
	// checked. Zero means DefaultRevocationRefreshInterval.
	RefreshInterval Duration `yaml:"refresh_interval"`
	// Headers are sent with the request (url only). Zero means
	// Accept: application/json.
	Headers map[string]string `yaml:"headers"`
	// SSL configures TLS for the fetch (url only).
	SSL *TLSClient `yaml:"ssl"`
	// OnUnavailable is what a new connection gets while no list is in
	// force (none loaded yet, or the last good one older than MaxStale):
	// RevocationDeny (the default) refuses it, RevocationAllow lets it in
	// with the last good list, if any, applied.
	OnUnavailable string `yaml:"on_unavailable"`
	// MaxStale is the oldest the last good list may be, since its last
	// successful refresh, before on_unavailable: deny refuses new
	// connections. Zero means no age limit: after one success the last
	// good list stays in force through failed refreshes.
	MaxStale Duration `yaml:"max_stale"`
}

// Values of Revocation.OnUnavailable.
const (
	RevocationDeny  = "deny"
	RevocationAllow = "allow"
)

const (
	// DefaultRevocationRefreshInterval is Revocation.RefreshInterval's
	// zero value, as for JWKS.
	DefaultRevocationRefreshInterval = 300 * time.Second
	// MinRevocationURLRefreshInterval is the shortest refresh_interval
	// for a URL: every replica downloads the whole list at each refresh.
	MinRevocationURLRefreshInterval = 10 * time.Second
	// MinRevocationFileRefreshInterval is the shortest refresh_interval
	// for a file, which costs one stat when it has not changed.
	MinRevocationFileRefreshInterval = time.Second
)

// RefreshEvery is the refresh interval in force: RefreshInterval, or its
// default.
func (r *Revocation) RefreshEvery() time.Duration {
	return r.RefreshInterval.Or(DefaultRevocationRefreshInterval)
}

// Deny reports whether a new connection is refused while no list is in
// force.
func (r *Revocation) Deny() bool { return r.OnUnavailable != RevocationAllow }

// validate checks the section; r may be nil (no revocation list).
func (r *Revocation) validate() []error {
	if r == nil {
		return nil
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("revocation."+format, args...)) }

	minInterval := MinRevocationFileRefreshInterval
	switch {
	case r.File == "" && r.URL == "":
		errs = append(errs, fmt.Errorf("revocation: give file or url"))
	case r.File != "" && r.URL != "":
		bad("file, url: give one, not both")
	case r.URL != "":
		minInterval = MinRevocationURLRefreshInterval
		if u, err := url.Parse(r.URL); err != nil {
			bad("url: %v", err)
		} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("url: %q is not an http or https URL", u.Redacted())
		}
	default:
		if len(r.Headers) > 0 {
			bad("headers: only used with url")
		}
		if r.SSL != nil {
			bad("ssl: only used with url")
		}
	}
	for name := range r.Headers {
		if name == "" {
			bad("headers: a header name is empty")
		}
	}
	if every := time.Duration(r.RefreshInterval); every != 0 && every < minInterval {
		bad("refresh_interval: %s is under the minimum of %s", every, minInterval)
	}
	switch r.OnUnavailable {
	case "", RevocationDeny:
		if stale := time.Duration(r.MaxStale); stale != 0 && stale <= r.RefreshEvery() {
			bad("max_stale: %s is not longer than refresh_interval (%s): the list would go stale between two refreshes", stale, r.RefreshEvery())
		}
	case RevocationAllow:
		if r.MaxStale != 0 {
			// With allow, the last good list is applied however old it is:
			// dropping it would let in what it revokes.
			bad("max_stale: only used with on_unavailable: deny")
		}
	default:
		bad("on_unavailable: %q is not one of deny, allow", r.OnUnavailable)
	}
	return errs
}
