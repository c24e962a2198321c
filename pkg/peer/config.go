package peer

import (
	"errors"
	"fmt"
	"time"

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
	// request to the last byte (default 60s).
	PieceTimeout time.Duration `yaml:"pieceTimeout"`
	// StallTimeout: when no piece has been verified for this long, P2P is
	// considered failed (default 60s).
	StallTimeout time.Duration `yaml:"stallTimeout"`
	// HeartbeatInterval is how often Run heartbeats the tasks the engine
	// seeds (default 10s).
	HeartbeatInterval time.Duration `yaml:"heartbeatInterval"`
}

// Defaults of Config.
const (
	DefaultConcurrency       = 8
	DefaultPollWait          = 10 * time.Second
	DefaultPieceTimeout      = 60 * time.Second
	DefaultStallTimeout      = 60 * time.Second
	DefaultHeartbeatInterval = 10 * time.Second
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
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("peer config: %w", err)
	}
	return nil
}
