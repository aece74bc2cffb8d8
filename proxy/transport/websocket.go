package transport

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/internal/defaults"
)

// Defaults for the zero values of WebSocketListener's fields.
const (
	DefaultWebSocketPath = "/mqtt"
	// DefaultHandshakeTimeout is the proxy's default connect timeout.
	DefaultHandshakeTimeout = 10 * time.Second
	// maxUpgradeRequestBytes bounds the upgrade request's header: room for
	// a browser's cookies and a token in the query.
	maxUpgradeRequestBytes = 32 << 10
	// closeFrameTimeout bounds sending the WebSocket close frame, which
	// Close does on the goroutine that closes. A connection ended from
	// outside (eviction, the proxy's Close, token expiry) gets none: its
	// socket is closed first.
	closeFrameTimeout = 100 * time.Millisecond
)

// WebSocketSubprotocols are the subprotocols of MQTT over WebSocket, in
// order of preference: "mqtt" (MQTT 3.1.1 and 5) and "mqttv3.1".
var WebSocketSubprotocols = []string{"mqtt", "mqttv3.1"}

// errTextMessage ends a WebSocket connection that sent a text message:
// MQTT packets travel in binary messages only [MQTT-6.0.0-1].
var errTextMessage = errors.New("transport: WebSocket text message; MQTT over WebSocket is binary only")

// WebSocketListener serves MQTT over WebSocket: it answers HTTP upgrade
// requests on Path and returns each upgraded connection from Accept as a
// net.Conn that carries the MQTT byte stream, whatever the message
// boundaries (a CONNECT may span several messages, and one message may
// hold several packets). The proxy forwards that stream to the broker as
// it would a TCP client's, so the broker needs no WebSocket support. Set
// Listener (TCP, or TLS for wss) and call Start.
//
// The upgrade request is read on the HTTP server's goroutine within
// HandshakeTimeout; the proxy's connect timeout applies from Accept on.
// With an Admitter (the proxy sets one when it serves the listener), each
// TCP connection is admitted as it is accepted, before a byte of the
// upgrade is read: under the proxy's limits, counted as pending until its
// CONNECT is decided, as on a TCP listener.
type WebSocketListener struct {
	// Listener accepts the connections HTTP is served on. Required.
	Listener net.Listener
	// Path is the upgrade's HTTP path. Zero means DefaultWebSocketPath.
	Path string
	// AllowedOrigins are the Origin header values accepted, or "*" for
	// any. A request without Origin (not from a browser) is accepted.
	// Nil means only an origin whose host is the request's own.
	AllowedOrigins []string
	// TokenFromAuthorization takes a client's token from the upgrade
	// request's "Authorization: Bearer" header when its CONNECT has no
	// password.
	TokenFromAuthorization bool
	// TokenQueryParam, when set, takes a client's token from this query
	// parameter of the upgrade request when its CONNECT has no password.
	TokenQueryParam string
	// RequireSubprotocol refuses, with 400 Bad Request, an upgrade that
	// does not offer one of WebSocketSubprotocols. By default such an
	// upgrade is served without a subprotocol, as EMQX does unless
	// fail_if_no_subprotocol is set.
	RequireSubprotocol bool
	// HandshakeTimeout bounds reading the upgrade request (and the TLS
	// handshake before it). Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Logger receives refused upgrades, at debug level. Nil means none.
	Logger *zap.Logger

	server   *http.Server
	upgrader websocket.Upgrader
	ready    chan net.Conn
	served   chan struct{} // closed when the HTTP server has stopped
	serveErr error         // why it stopped, if not Close

	mu       sync.Mutex
	closed   bool
	done     chan struct{} // closed by Close
	handlers sync.WaitGroup
	admitter Admitter               // nil: connections are admitted at Accept
	admitted map[net.Conn]Admission // TCP connections admitted, until upgraded or closed
}

// An Admitter decides, as each TCP connection is accepted and before a
// byte of it is read, whether it may go on: the proxy's limits, so that a
// flood of connections that never finish their upgrade is bounded as on a
// TCP listener.
type Admitter interface {
	// Admit returns c's admission, or false when c is refused; c is then
	// closed.
	Admit(c net.Conn) (Admission, bool)
}

// An Admission is a connection's place under the Admitter's limits. The
// upgraded connection that Accept returns carries it (AdmissionOf); a
// connection that ends before is released.
type Admission interface {
	Release()
}

// SetAdmitter makes the listener admit the connections it accepts from
// now on through a.
func (l *WebSocketListener) SetAdmitter(a Admitter) {
	l.mu.Lock()
	l.admitter = a
	l.mu.Unlock()
}

// AdmissionOf returns the admission c was accepted with, when c is an
// upgraded connection from a WebSocketListener with an Admitter; else nil.
func AdmissionOf(c net.Conn) Admission {
	if wc, ok := c.(*wsConn); ok && wc.admission != nil {
		return wc.admission
	}
	return nil
}

// admittingListener is what the HTTP server accepts from: it passes each
// connection through the listener's Admitter, once there is one.
// Connections go through unwrapped: the HTTP server must see a *tls.Conn
// as such.
type admittingListener struct {
	net.Listener
	l *WebSocketListener
}

func (a admittingListener) Accept() (net.Conn, error) {
	for {
		c, err := a.Listener.Accept()
		if err != nil {
			return nil, err
		}
		a.l.mu.Lock()
		admitter := a.l.admitter
		a.l.mu.Unlock()
		if admitter == nil {
			return c, nil
		}
		admission, ok := admitter.Admit(c)
		if !ok { // refused by a limit, or the proxy is closing: c is closed
			continue
		}
		a.l.mu.Lock()
		if a.l.admitted == nil {
			a.l.admitted = make(map[net.Conn]Admission)
		}
		a.l.admitted[c] = admission
		a.l.mu.Unlock()
		return c, nil
	}
}

// take returns the admission of the TCP connection c, once: the caller
// either hands it to Accept with the upgraded connection or releases it.
func (l *WebSocketListener) take(c net.Conn) Admission {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.admitted[c]
	delete(l.admitted, c)
	return a
}

// release frees the admission of a TCP connection that ends without an
// upgrade handed to Accept; it does nothing for one that was.
func (l *WebSocketListener) release(c net.Conn) {
	if a := l.take(c); a != nil {
		a.Release()
	}
}

// connState releases a connection the HTTP server closed (a malformed
// request, or one not finished within HandshakeTimeout, which never
// reaches serveHTTP); a hijacked one is serveHTTP's.
func (l *WebSocketListener) connState(c net.Conn, state http.ConnState) {
	if state == http.StateClosed {
		l.release(c)
	}
}

var _ net.Listener = (*WebSocketListener)(nil)

// Start serves HTTP on Listener; it returns l for chaining.
func (l *WebSocketListener) Start() *WebSocketListener {
	logger := l.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	errorLog, err := zap.NewStdLogAt(logger.Named("websocket"), zapcore.DebugLevel)
	if err != nil {
		errorLog = nil // the level is valid; net/http then logs to stderr
	}
	l.ready = make(chan net.Conn)
	l.served = make(chan struct{})
	l.done = make(chan struct{})
	l.upgrader = websocket.Upgrader{
		HandshakeTimeout: defaults.Or(l.HandshakeTimeout, DefaultHandshakeTimeout),
		WriteBufferPool:  &sync.Pool{},
		Subprotocols:     WebSocketSubprotocols,
		CheckOrigin:      l.checkOrigin,
	}
	l.server = &http.Server{
		Handler:           http.HandlerFunc(l.serveHTTP),
		ReadHeaderTimeout: defaults.Or(l.HandshakeTimeout, DefaultHandshakeTimeout),
		MaxHeaderBytes:    maxUpgradeRequestBytes,
		ErrorLog:          errorLog,
		ConnContext:       withConn,
		ConnState:         l.connState,
	}
	// One upgrade per connection: no idle keep-alive connection to bound.
	l.server.SetKeepAlivesEnabled(false)
	go func() {
		defer close(l.served)
		if err := l.server.Serve(admittingListener{l.Listener, l}); !errors.Is(err, http.ErrServerClosed) {
			l.serveErr = err
		}
	}()
	return l
}

// Accept returns the next upgraded connection.
func (l *WebSocketListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-l.served:
		if l.serveErr != nil {
			return nil, fmt.Errorf("transport: WebSocket listener: %w", l.serveErr)
		}
		return nil, net.ErrClosed
	}
}

// Close stops the HTTP server and waits for its handlers; connections
// already returned by Accept are the proxy's to close.
func (l *WebSocketListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return net.ErrClosed
	}
	l.closed = true
	close(l.done)
	l.mu.Unlock()
	err := l.server.Close()
	<-l.served
	l.handlers.Wait()
	return err
}

// Addr is the address the listener is bound to.
func (l *WebSocketListener) Addr() net.Addr { return l.Listener.Addr() }

// enter registers a handler; false once Close has begun.
func (l *WebSocketListener) enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.handlers.Add(1)
	return true
}

// connKey is the context key of the TCP connection an upgrade request came
// on.
type connKey struct{}

// withConn is the HTTP server's ConnContext: it keeps the connection for
// the upgrade, which sees only the request.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

func (l *WebSocketListener) serveHTTP(w http.ResponseWriter, r *http.Request) {
	raw, _ := r.Context().Value(connKey{}).(net.Conn)
	// Unless handed to Serve below, the connection's session ends here.
	defer l.release(raw)
	if !l.enter() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer l.handlers.Done()
	if r.URL.Path != cmp.Or(l.Path, DefaultWebSocketPath) {
		http.NotFound(w, r)
		return
	}
	if l.RequireSubprotocol && !offersMQTT(r) {
		http.Error(w, "Bad Request: the upgrade offers no MQTT subprotocol (mqtt or mqttv3.1)", http.StatusBadRequest)
		l.refused(r, errNoSubprotocol)
		return
	}
	ws, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		l.refused(r, err) // the upgrader has answered with the HTTP error
		return
	}
	c := &wsConn{ws: ws, token: l.token(r), admission: l.take(raw)}
	select {
	case l.ready <- c:
	case <-l.done:
		c.Close()
		if c.admission != nil {
			c.admission.Release()
		}
	}
}

var errNoSubprotocol = errors.New("transport: WebSocket upgrade offers no MQTT subprotocol")

// offersMQTT reports whether the upgrade request offers one of
// WebSocketSubprotocols.
func offersMQTT(r *http.Request) bool {
	for _, offered := range websocket.Subprotocols(r) {
		if slices.Contains(WebSocketSubprotocols, offered) {
			return true
		}
	}
	return false
}

// refused logs an upgrade that was answered with an HTTP error.
func (l *WebSocketListener) refused(r *http.Request, err error) {
	if l.Logger != nil {
		l.Logger.Debug("WebSocket upgrade refused", zap.String("remote", r.RemoteAddr), zap.String("origin", r.Header.Get("Origin")), zap.Error(err))
	}
}

// checkOrigin applies AllowedOrigins.
func (l *WebSocketListener) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if l.AllowedOrigins == nil {
		u, err := url.Parse(origin)
		return err == nil && strings.EqualFold(u.Host, r.Host)
	}
	for _, allowed := range l.AllowedOrigins {
		if allowed == "*" || strings.EqualFold(allowed, origin) {
			return true
		}
	}
	return false
}

// token returns the token the upgrade request carries where the listener
// is told to look, or nil.
func (l *WebSocketListener) token(r *http.Request) []byte {
	if l.TokenFromAuthorization {
		scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if ok && strings.EqualFold(scheme, "Bearer") && token != "" {
			return []byte(token)
		}
	}
	if l.TokenQueryParam != "" {
		if token := r.URL.Query().Get(l.TokenQueryParam); token != "" {
			return []byte(token)
		}
	}
	return nil
}

// wsConn is an upgraded WebSocket connection seen as the byte stream its
// binary messages carry. Each Write sends one binary message. It supports
// one reader and one writer at a time, as the proxy uses it; Close and the
// deadlines may be called at any time.
type wsConn struct {
	ws        *websocket.Conn
	reader    io.Reader // the message being read; nil between messages
	token     []byte    // the upgrade request's token; nil without one
	closeOnce sync.Once
	// admission is what the TCP connection was admitted with, by the
	// listener's Admitter; nil when it is to be admitted at Accept.
	admission Admission
}

var _ net.Conn = (*wsConn)(nil)

func (c *wsConn) Read(b []byte) (int, error) {
	for {
		if c.reader == nil {
			if err := c.nextMessage(); err != nil {
				return 0, err
			}
		}
		n, err := c.reader.Read(b)
		if errors.Is(err, io.EOF) {
			c.reader = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// NextMessage returns the rest of the message being read, if any, else
// waits for the next one; it returns io.EOF at the stream's normal end.
// A copy that reads message by message holds no buffer between messages.
func (c *wsConn) NextMessage() (io.Reader, error) {
	if c.reader == nil {
		if err := c.nextMessage(); err != nil {
			return nil, err
		}
	}
	r := c.reader
	c.reader = nil
	return r, nil
}

// NetConn is the connection the WebSocket runs on.
func (c *wsConn) NetConn() net.Conn { return c.ws.NetConn() }

func (c *wsConn) describe(info Info) Info {
	if info.Token == nil {
		info.Token = c.token
	}
	return info
}

// nextMessage waits for the next message; a close frame with a normal
// status is io.EOF.
func (c *wsConn) nextMessage() error {
	kind, r, err := c.ws.NextReader()
	switch {
	case websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived):
		return io.EOF
	case err != nil:
		return err
	case kind != websocket.BinaryMessage:
		return errTextMessage
	}
	c.reader = r
	return nil
}

// Write sends b as one binary message.
func (c *wsConn) Write(b []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close sends a close frame (normal closure) if it can at once, and closes
// the connection.
func (c *wsConn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(closeFrameTimeout))
		err = c.ws.Close()
	})
	return err
}

func (c *wsConn) LocalAddr() net.Addr  { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

func (c *wsConn) SetDeadline(t time.Time) error {
	return errors.Join(c.ws.SetReadDeadline(t), c.ws.SetWriteDeadline(t))
}
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
