package bt

import (
	"context"
	"fmt"
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newSlogger routes anacrolix's slog records to log: its warnings and
// errors as such, everything else at debug.
func newSlogger(log *zap.Logger) *slog.Logger {
	return slog.New(&zapHandler{log: log})
}

type zapHandler struct {
	log *zap.Logger
}

func level(l slog.Level) zapcore.Level {
	switch {
	case l >= slog.LevelError:
		return zapcore.ErrorLevel
	case l >= slog.LevelWarn:
		return zapcore.WarnLevel
	default:
		return zapcore.DebugLevel
	}
}

func (h *zapHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.log.Core().Enabled(level(l))
}

func (h *zapHandler) Handle(_ context.Context, r slog.Record) error {
	ce := h.log.Check(level(r.Level), r.Message)
	if ce == nil {
		return nil
	}
	fields := make([]zap.Field, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		fields = append(fields, field(a))
		return true
	})
	ce.Write(fields...)
	return nil
}

func (h *zapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	fields := make([]zap.Field, len(attrs))
	for i, a := range attrs {
		fields[i] = field(a)
	}
	return &zapHandler{log: h.log.With(fields...)}
}

func (h *zapHandler) WithGroup(name string) slog.Handler {
	return &zapHandler{log: h.log.Named(name)}
}

// field converts an attribute: groups become dicts, errors and Stringers
// their text (anacrolix's values are mostly structs with unexported
// fields, which zap.Any would render as {}).
func field(a slog.Attr) zap.Field {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindGroup:
		g := v.Group()
		fs := make([]zap.Field, len(g))
		for i, ga := range g {
			fs[i] = field(ga)
		}
		return zap.Dict(a.Key, fs...)
	case slog.KindString:
		return zap.String(a.Key, v.String())
	case slog.KindInt64:
		return zap.Int64(a.Key, v.Int64())
	case slog.KindUint64:
		return zap.Uint64(a.Key, v.Uint64())
	case slog.KindBool:
		return zap.Bool(a.Key, v.Bool())
	case slog.KindDuration:
		return zap.Duration(a.Key, v.Duration())
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return zap.NamedError(a.Key, x)
		case fmt.Stringer:
			return zap.Stringer(a.Key, x)
		}
	}
	return zap.String(a.Key, v.String())
}
