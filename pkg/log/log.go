// Package log builds zap loggers for the binaries. Libraries take a
// *zap.Logger as an option and default to a no-op logger; only a binary's
// cmd package calls New.
package log

import (
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config selects the level and encoding of a binary's logs.
type Config struct {
	// Level is one of debug, info, warn, error.
	Level string `yaml:"level"`
	// Format is json or console.
	Format string `yaml:"format"`
}

// ApplyDefaults fills unset fields: info level, console format.
func (c Config) ApplyDefaults() Config {
	if c.Level == "" {
		c.Level = "info"
	}
	if c.Format == "" {
		c.Format = "console"
	}
	return c
}

// Validate reports an unknown level or format.
func (c Config) Validate() error {
	if _, err := zapcore.ParseLevel(c.Level); err != nil {
		return fmt.Errorf("log.level %q: must be debug, info, warn or error", c.Level)
	}
	if c.Format != "json" && c.Format != "console" {
		return fmt.Errorf("log.format %q: must be json or console", c.Format)
	}
	return nil
}

// New builds a logger writing to w.
func New(c Config, w io.Writer) (*zap.Logger, error) {
	c = c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	level, _ := zapcore.ParseLevel(c.Level)
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == "json" {
		enc = zapcore.NewJSONEncoder(encCfg)
	} else {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(w)))), nil
}
