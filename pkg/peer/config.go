package peer

import (
	"errors"
	"fmt"
	"time"

	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

// Config tunes the peer engine. The zero value, after ApplyDefaults, is a
// sensible configuration.
type Config struct {
	// Concurrency is how many pieces are downloaded at once (default 8).
	Concurrency int `yaml:"concurrency"`
	// PollWait is how long one long poll for piece assignments waits
	// (default 10s, at most schedapi.MaxWait).
	PollWait time.Duration `yaml:"pollWait"`
	// PieceTimeout bounds one piece fetch from another peer, from the
	// request to the last byte (default 60s). A fetch usually fails much
	// sooner: see PieceMinRate.
	PieceTimeout time.Duration `yaml:"pieceTimeout"`
	// PieceMinRate is the slowest a piece may arrive, in bytes per second
	// (default 1 MiB/s): a fetch of n bytes fails as too slow ("transfer",
	// which counts towards the source's strikes) after PieceGrace plus
	// n/PieceMinRate, not counting the time this peer's own rate limits
	// held it back. The piece then goes to another source.
	PieceMinRate ratelimit.Rate `yaml:"pieceMinRate"`
	// PieceGrace is added to every piece's transfer time: connecting, the
	// request, the first byte (default 3s).
	PieceGrace time.Duration `yaml:"pieceGrace"`
	// StallTimeout: when no piece has been verified for this long, P2P is
	// considered failed (default 60s).
	StallTimeout time.Duration `yaml:"stallTimeout"`
	// HeartbeatInterval is how often Run heartbeats the tasks the engine
	// seeds (default 10s).
	HeartbeatInterval time.Duration `yaml:"heartbeatInterval"`
	// Prefetch is what a download fetches beyond the ranges its readers
	// want now: "on" (default), "off" or a rate (see Prefetch).
	Prefetch Prefetch `yaml:"prefetch"`
}

// Defaults of Config.
const (
	DefaultConcurrency       = 8
	DefaultPollWait          = 10 * time.Second
	DefaultPieceTimeout      = 60 * time.Second
	DefaultStallTimeout      = 60 * time.Second
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultPieceMinRate      = 1 << 20
	DefaultPieceGrace        = 3 * time.Second
)

// ApplyDefaults returns c with unset fields set to their defaults.
func (c Config) ApplyDefaults() Config {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.PollWait == 0 {
		c.PollWait = DefaultPollWait
	}
	if c.PieceTimeout == 0 {
		c.PieceTimeout = DefaultPieceTimeout
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.PieceMinRate == 0 {
		c.PieceMinRate = DefaultPieceMinRate
	}
	if c.PieceGrace == 0 {
		c.PieceGrace = DefaultPieceGrace
	}
	return c
}

// Validate reports a value out of range.
func (c Config) Validate() error {
	var errs []error
	if c.Concurrency < 1 || c.Concurrency > schedapi.MaxAssignments {
		errs = append(errs, fmt.Errorf("concurrency %d: must be 1 to %d", c.Concurrency, schedapi.MaxAssignments))
	}
	if c.PollWait <= 0 || c.PollWait > schedapi.MaxWait {
		errs = append(errs, fmt.Errorf("pollWait %s: must be positive and at most %s", c.PollWait, schedapi.MaxWait))
	}
	if c.PieceTimeout <= 0 {
		errs = append(errs, fmt.Errorf("pieceTimeout %s: must be positive", c.PieceTimeout))
	}
	if c.StallTimeout <= 0 {
		errs = append(errs, fmt.Errorf("stallTimeout %s: must be positive", c.StallTimeout))
	}
	if c.HeartbeatInterval <= 0 {
		errs = append(errs, fmt.Errorf("heartbeatInterval %s: must be positive", c.HeartbeatInterval))
	}
	if c.PieceMinRate < 1 {
		errs = append(errs, fmt.Errorf("pieceMinRate %d: must be positive", c.PieceMinRate))
	}
	if c.PieceGrace <= 0 {
		errs = append(errs, fmt.Errorf("pieceGrace %s: must be positive", c.PieceGrace))
	}
	return errors.Join(errs...)
}

// pieceDeadline is how long a fetch of n bytes may take, not counting time
// spent waiting for this peer's own rate limiters: PieceGrace plus n at
// PieceMinRate, at most PieceTimeout.
func (c Config) pieceDeadline(n int64) time.Duration {
	d := c.PieceGrace + time.Duration(float64(n)/float64(c.PieceMinRate)*float64(time.Second))
	return min(d, c.PieceTimeout)
}
