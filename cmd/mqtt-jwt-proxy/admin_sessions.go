package main

import (
	"cmp"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
)

// sessionStore is what the sessions API lists and ends: *proxy.Proxy.
type sessionStore interface {
	// Sessions lists the authenticated sessions f selects.
	Sessions(f proxy.SessionFilter) []proxy.SessionInfo
	// EndSessions ends every session f selects and returns how many.
	EndSessions(f proxy.SessionFilter, reason proxy.EndReason) int
}

// sessionJSON is one session as GET /sessions writes it and the sessions
// command reads it.
type sessionJSON struct {
	ClientID        string     `json:"client_id"`
	Username        string     `json:"username"`
	Subject         string     `json:"sub"`
	TokenID         string     `json:"jti"`
	Listener        string     `json:"listener"`
	Remote          string     `json:"remote"`
	ConnectedAt     time.Time  `json:"connected_at"`
	ExpiresAt       *time.Time `json:"expires_at"` // null when the token has no exp
	BytesFromClient int64      `json:"bytes_from_client"`
	BytesToClient   int64      `json:"bytes_to_client"`
}

func toSessionJSON(s proxy.SessionInfo) sessionJSON {
	j := sessionJSON{
		ClientID: s.ClientID, Username: s.Username, Subject: s.Subject, TokenID: s.TokenID,
		Listener: s.Listener, Remote: s.Remote, ConnectedAt: s.ConnectedAt.UTC(),
		BytesFromClient: s.BytesFromClient, BytesToClient: s.BytesToClient,
	}
	if !s.ExpiresAt.IsZero() {
		exp := s.ExpiresAt.UTC()
		j.ExpiresAt = &exp
	}
	return j
}

// endedJSON is DELETE /sessions's answer.
type endedJSON struct {
	Ended int `json:"ended"`
}

// errorJSON is the answer to a request refused: 400, 401, 404, 405.
type errorJSON struct {
	Error string `json:"error"`
}

// The query parameters of /sessions: a filter each, and allParam.
const (
	filterClientID = "client_id"
	filterUsername = "username"
	filterSubject  = "sub"
	filterListener = "listener"
	filterRemote   = "remote"
	// allParam=true lets DELETE end every session: without a filter and
	// without it, DELETE is refused, so that a filter lost on the way
	// (a typo, a shell variable left empty) cannot end them all.
	allParam = "all"
)

// maxLoggedQuery bounds the query a refused request's log line shows.
const maxLoggedQuery = 256

// sessionsAPI serves /sessions on the admin endpoint: GET lists sessions,
// DELETE ends them, each with the filters of the query. Every request must
// carry the admin token as "Authorization: Bearer TOKEN"; without a token
// configured, the API answers 404, as if it did not exist.
type sessionsAPI struct {
	store  sessionStore
	logger *zap.Logger
	// token is the SHA-256 of the admin token, nil when none is
	// configured. Comparing digests takes as long whatever the length of
	// what a caller sends.
	token atomic.Pointer[[sha256.Size]byte]
}

func newSessionsAPI(store sessionStore, token string, logger *zap.Logger) *sessionsAPI {
	a := &sessionsAPI{store: store, logger: logger}
	a.setToken(token)
	return a
}

// setToken makes token the one requests must carry from now on; "" turns
// the API off. Reloads call it.
func (a *sessionsAPI) setToken(token string) {
	if token == "" {
		a.token.Store(nil)
		return
	}
	digest := sha256.Sum256([]byte(token))
	a.token.Store(&digest)
}

// ServeHTTP implements http.Handler.
func (a *sessionsAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token := a.token.Load()
	if token == nil {
		writeJSON(w, http.StatusNotFound, errorJSON{"not found"})
		return
	}
	log := a.logger.With(zap.String("remote", r.RemoteAddr), zap.String("method", r.Method))
	// A refused request is logged with its query as sent, cut short: its
	// filters may not parse.
	refused := func(status int, reason string, fields ...zap.Field) {
		query := r.URL.RawQuery
		if len(query) > maxLoggedQuery {
			query = query[:maxLoggedQuery] + "..."
		}
		log.Info("admin request refused", append([]zap.Field{zap.Int("status", status), zap.String("reason", reason), zap.String("query", query)}, fields...)...)
	}
	if !authorized(r, token) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="mqtt-jwt-proxy admin"`)
		writeJSON(w, http.StatusUnauthorized, errorJSON{"the admin token is missing or wrong: send Authorization: Bearer TOKEN"})
		refused(http.StatusUnauthorized, "unauthorized")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodDelete {
		w.Header().Set("Allow", "GET, HEAD, DELETE")
		writeJSON(w, http.StatusMethodNotAllowed, errorJSON{r.Method + " is not allowed: GET lists sessions, DELETE ends them"})
		refused(http.StatusMethodNotAllowed, "method_not_allowed")
		return
	}
	f, all, err := parseSessionQuery(r.URL.RawQuery, r.Method == http.MethodDelete)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorJSON{err.Error()})
		refused(http.StatusBadRequest, "bad_request", zap.Error(err))
		return
	}
	log = log.With(filterField(f))
	if r.Method == http.MethodDelete {
		n := a.store.EndSessions(f, proxy.EndedByAdmin)
		writeJSON(w, http.StatusOK, endedJSON{Ended: n})
		log.Info("sessions ended", zap.Bool("all", all), zap.Int("ended", n))
		return
	}
	sessions := a.store.Sessions(f)
	slices.SortFunc(sessions, func(x, y proxy.SessionInfo) int {
		return cmp.Or(x.ConnectedAt.Compare(y.ConnectedAt), strings.Compare(x.ClientID, y.ClientID), strings.Compare(x.Remote, y.Remote))
	})
	list := make([]sessionJSON, len(sessions))
	for i, s := range sessions {
		list[i] = toSessionJSON(s)
	}
	writeJSON(w, http.StatusOK, list)
	log.Info("sessions listed", zap.Int("sessions", len(list)))
}

// authorized reports whether r carries the token whose digest is want.
// The scheme is case-insensitive (RFC 9110, section 11.1).
func authorized(r *http.Request, want *[sha256.Size]byte) bool {
	scheme, credential, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(credential)))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// parseSessionQuery reads the filters of a /sessions query, and for a
// DELETE (ending) whether it asks for all=true, which it must do when it
// gives no filter, and may only do then. Unknown, repeated and empty
// parameters are errors: read as no filter, they would select more
// sessions than meant.
func parseSessionQuery(rawQuery string, ending bool) (f proxy.SessionFilter, all bool, err error) {
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return f, false, fmt.Errorf("the query does not parse: %w", err)
	}
	fields := map[string]*string{
		filterClientID: &f.ClientID, filterUsername: &f.Username, filterSubject: &f.Subject,
		filterListener: &f.Listener, filterRemote: &f.Remote,
	}
	for name, values := range query {
		field, isFilter := fields[name]
		switch {
		case name == allParam && ending:
			if len(values) != 1 || values[0] != "true" {
				return f, false, errors.New("all: the only value is true")
			}
			all = true
			continue
		case name == allParam:
			return f, false, errors.New("all: only with DELETE; GET without filters lists every session")
		case !isFilter:
			return f, false, fmt.Errorf("%s: unknown parameter; the filters are client_id, username, sub, listener and remote", name)
		case len(values) > 1:
			return f, false, fmt.Errorf("%s: given %d times; give each filter at most once", name, len(values))
		case values[0] == "":
			return f, false, fmt.Errorf("%s: empty; leave the filter out to select any", name)
		}
		*field = values[0]
	}
	if f.Remote != "" {
		if f.Remote, err = canonicalRemote(f.Remote); err != nil {
			return f, false, err
		}
	}
	switch {
	case ending && all && !f.IsZero():
		return f, false, errors.New("all=true ends every session: give it without filters")
	case ending && !all && f.IsZero():
		return f, false, errors.New("give a filter (client_id, username, sub, listener, remote), or all=true to end every session")
	}
	return f, all, nil
}

// canonicalRemote writes a remote filter, an IP address with or without
// a port, as the proxy writes client addresses, so that ::FFFF:10.0.0.1
// selects 10.0.0.1 and 2001:DB8::1 selects 2001:db8::1.
func canonicalRemote(remote string) (string, error) {
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String(), nil
	}
	if addr, err := netip.ParseAddr(remote); err == nil {
		return addr.Unmap().String(), nil
	}
	return "", fmt.Errorf("remote: %q is neither an IP address nor IP:port", remote)
}

// filterField logs the filters of a request, those given only.
func filterField(f proxy.SessionFilter) zap.Field {
	var fields []zap.Field
	for _, kv := range []struct{ key, value string }{
		{filterClientID, f.ClientID}, {filterUsername, f.Username}, {filterSubject, f.Subject},
		{filterListener, f.Listener}, {filterRemote, f.Remote},
	} {
		if kv.value != "" {
			fields = append(fields, zap.String(kv.key, kv.value))
		}
	}
	return zap.Dict("filter", fields...)
}

// writeJSON answers with v as JSON. The answers describe live sessions:
// no cache may keep them.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
