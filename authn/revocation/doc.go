// Package revocation keeps the list of tokens revoked before their exp (a
// stolen device, a leaked key, "log out everywhere") and answers, for each
// new connection, whether its token is on it. The list is a JSON document
// in a file or at a URL; every proxy replica that reads the same document
// revokes the same tokens, with no state of its own.
//
// Typical usage:
//
//	list, err := revocation.New(*cfg.Revocation, revocation.WithLogger(logger))
//	if err != nil {
//		return err // "file: open /etc/revoked.json: no such file or directory"
//	}
//	defer list.Close()
//	chain, err := authn.New(cfg.Authentication, authn.WithRevocation(list))
//
//	// Sessions already connected: scan them at each new list.
//	versions, stop := list.Subscribe()
//	defer stop()
//	for range versions {
//		for _, s := range sessions {
//			if reason, ok := list.Matches(s.Token); ok {
//				s.End(reason)
//			}
//		}
//	}
//
// The document (see Parse):
//
//	{"jti": ["4f1c..."], "sub": ["mallory"], "client_id": ["sensor-13"],
//	 "issued_before": {"alice": "2025-06-01T12:00:00Z"}}
//
// A file is checked every refresh_interval (its size, modification time
// and inode) and read again when it changed, and at every Refresh; a URL
// is fetched every refresh_interval with the JWKS fetch's rules, asking
// for it only if it changed when the server sends an ETag or
// Last-Modified. A document identical to the last is not parsed again; a
// new one is parsed at a quarter of a core at most, so that a large list
// leaves the CPU to the connections, and replaces the whole set at once;
// lookups never wait for a refresh. A failed refresh keeps the last good set. While there is none,
// or it is older than max_stale, on_unavailable decides: deny (the
// default) refuses every new connection, allow lets it in with the last
// good set applied, if any.
package revocation
