package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// connLog writes a connection's log lines: the listener, the client's
// address and, once its CONNECT is read, its client ID, user name and
// protocol version go on each line. zap's Logger.With would encode them at
// once into a copy of the encoder, for every connection; connLog keeps them
// as fields and encodes them only into the lines the sampler lets through,
// which in a connection storm are few.
type connLog struct {
	logger *zap.Logger
	fields [5]zap.Field
	n      int
}

func newConnLog(logger *zap.Logger, fields ...zap.Field) *connLog {
	l := &connLog{logger: logger}
	l.add(fields...)
	return l
}

// add puts fields on every line written from now on; there is room for
// five in all.
func (l *connLog) add(fields ...zap.Field) { l.n += copy(l.fields[l.n:], fields) }

func (l *connLog) Debug(msg string, fields ...zap.Field) { l.write(zapcore.DebugLevel, msg, fields) }
func (l *connLog) Info(msg string, fields ...zap.Field)  { l.write(zapcore.InfoLevel, msg, fields) }
func (l *connLog) Warn(msg string, fields ...zap.Field)  { l.write(zapcore.WarnLevel, msg, fields) }

func (l *connLog) write(level zapcore.Level, msg string, fields []zap.Field) {
	if ce := l.logger.Check(level, msg); ce != nil {
		ce.Write(append(l.fields[:l.n:l.n], fields...)...)
	}
}

// loggedUsername is what the logs show of a CONNECT's user name. A client
// of an authenticator with from: username sends its token there, and a
// token is a credential the logs must not hold: a user name shaped like a
// JWT (dot-separated parts, the first a base64url JSON object) is shown as
// "jwt:" and the first 12 hex digits of its SHA-256, enough to tell one
// client's lines from another's and to match a token one holds.
func loggedUsername(username string) string {
	header, _, found := strings.Cut(username, ".")
	if !found || !strings.Contains(username[len(header)+1:], ".") {
		return username
	}
	decoded, err := base64.RawURLEncoding.DecodeString(header)
	if err != nil || !bytes.HasPrefix(bytes.TrimSpace(decoded), []byte("{")) {
		return username
	}
	sum := sha256.Sum256([]byte(username))
	return "jwt:" + hex.EncodeToString(sum[:6])
}

// hintField is a refusal's hint at the client's likely mistake
// (authn.HintOf), or no field.
func hintField(err error) zap.Field {
	if hint := authn.HintOf(err); hint != "" {
		return zap.String("hint", hint)
	}
	return zap.Skip()
}

// bridgeField marks the lines of a broker's bridge (packets.Connect.Bridge)
// with bridge: true; other clients' lines go without the field.
func bridgeField(bridge bool) zap.Field {
	if !bridge {
		return zap.Skip()
	}
	return zap.Bool("bridge", true)
}

// poolField names the pool a client was routed to, or is no field
// without Upstreams.
func poolField(pool *upstream.Pool[ServerSettings]) zap.Field {
	if pool == nil {
		return zap.Skip()
	}
	return zap.String("pool", pool.Name())
}

// serverField is the address of the pool's server a client was connected
// to, or no field without Upstreams.
func serverField(server *upstream.Backend[ServerSettings]) zap.Field {
	if server == nil {
		return zap.Skip()
	}
	return zap.String("server", server.Server().Address)
}

// expiryField is the token's expiry, or no field for a token without one.
func expiryField(exp time.Time) zap.Field {
	if exp.IsZero() {
		return zap.Skip()
	}
	return zap.Time("exp", exp)
}

// framedField marks the accepting line of a session with topic rules,
// which the proxy frames and authorizes, with rules: true.
func framedField(framed bool) zap.Field {
	if !framed {
		return zap.Skip()
	}
	return zap.Bool("rules", true)
}

// methodField marks the accepting line of a session whose client
// presented its token under an Authentication Method, which may
// re-authenticate, with auth_method.
func methodField(method string) zap.Field {
	if method == "" {
		return zap.Skip()
	}
	return zap.String("auth_method", method)
}
