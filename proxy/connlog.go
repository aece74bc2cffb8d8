package proxy

import (
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
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
