package scheduler

import (
	"errors"
	"fmt"
	"time"
)

// Defaults applied by Config.ApplyDefaults.
const (
	DefaultPolicy            = PolicyRarestFirst
	DefaultPeerUploadSlots   = 4
	DefaultCDNUploadSlots    = 16
	DefaultCDNPieceFanout    = 16
	DefaultPeerTTL           = 30 * time.Second
	DefaultAssignmentTimeout = 60 * time.Second
	DefaultStrikeLimit       = 2
	DefaultFailedTaskTTL     = 10 * time.Second
)

// PolicyRarestFirst hands out the pieces held by the fewest peers first and
// spreads uploads over the holders with the most free upload slots.
const PolicyRarestFirst = "rarest-first"

// Config tunes the scheduler. The zero value, once ApplyDefaults has run, is
// a working configuration.
type Config struct {
	// Policy names the piece selection policy. Only "rarest-first" exists.
	Policy string `yaml:"policy"`
	// PeerUploadSlots is how many piece uploads one peer serves at once,
	// over all its tasks.
	PeerUploadSlots int `yaml:"peerUploadSlots"`
	// CDNUploadSlots is how many piece uploads the supernode's own upload
	// listener serves at once, over all tasks.
	CDNUploadSlots int `yaml:"cdnUploadSlots"`
	// CDNPieceFanout is how many requesters the CDN may send one piece to
	// at once. The CDN serves a piece only when no peer holding it (and
	// not struck out) has a free upload slot. With 1 it serves a piece
	// only while no peer holds it at all (super-seeding: each piece leaves
	// the CDN about once).
	CDNPieceFanout int `yaml:"cdnPieceFanout"`
	// CDNUploadRate is the bytes per second the CDN sends at most
	// (cdn.uploadRate; 0: unknown). The binary sets it; it is not read
	// from the scheduler's section of the config file. When it is set and
	// every member of a task reported its DownloadRate, the CDN's fanout
	// in that task is CDNUploadRate over the fastest member's rate (at
	// least 1, at most CDNPieceFanout), whatever the task's size.
	CDNUploadRate int64 `yaml:"-"`
	// PeerTTL is how long a peer that neither polls, reports nor heartbeats
	// stays known. An expired peer leaves every task it was in.
	PeerTTL time.Duration `yaml:"peerTTL"`
	// AssignmentTimeout is how long an assignment holds an upload slot of
	// its source before it is given up and the piece can be assigned again.
	AssignmentTimeout time.Duration `yaml:"assignmentTimeout"`
	// StrikeLimit is the number of failed transfers from one peer, in one
	// task, after which that peer is no longer used as a source in the task.
	// A digest or size mismatch strikes a peer out at once.
	StrikeLimit int `yaml:"strikeLimit"`
	// FailedTaskTTL is how long a failed task is kept, so that its peers
	// learn why it failed, before it is forgotten.
	FailedTaskTTL time.Duration `yaml:"failedTaskTTL"`
}

// ApplyDefaults returns c with every unset field set to its default.
func (c Config) ApplyDefaults() Config {
	if c.Policy == "" {
		c.Policy = DefaultPolicy
	}
	if c.PeerUploadSlots == 0 {
		c.PeerUploadSlots = DefaultPeerUploadSlots
	}
	if c.CDNUploadSlots == 0 {
		c.CDNUploadSlots = DefaultCDNUploadSlots
	}
	if c.CDNPieceFanout == 0 {
		c.CDNPieceFanout = DefaultCDNPieceFanout
	}
	if c.PeerTTL == 0 {
		c.PeerTTL = DefaultPeerTTL
	}
	if c.AssignmentTimeout == 0 {
		c.AssignmentTimeout = DefaultAssignmentTimeout
	}
	if c.StrikeLimit == 0 {
		c.StrikeLimit = DefaultStrikeLimit
	}
	if c.FailedTaskTTL == 0 {
		c.FailedTaskTTL = DefaultFailedTaskTTL
	}
	return c
}

// Validate reports every problem of c, joined. Each wraps ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	if _, err := newPolicy(c.Policy); err != nil {
		errs = append(errs, err)
	}
	if c.PeerUploadSlots < 1 {
		errs = append(errs, fmt.Errorf("scheduler peerUploadSlots %d: must be at least 1: %w", c.PeerUploadSlots, ErrInvalid))
	}
	if c.CDNUploadSlots < 1 {
		errs = append(errs, fmt.Errorf("scheduler cdnUploadSlots %d: must be at least 1: %w", c.CDNUploadSlots, ErrInvalid))
	}
	if c.CDNPieceFanout < 1 {
		errs = append(errs, fmt.Errorf("scheduler cdnPieceFanout %d: must be at least 1: %w", c.CDNPieceFanout, ErrInvalid))
	}
	if c.PeerTTL <= 0 {
		errs = append(errs, fmt.Errorf("scheduler peerTTL %v: must be positive: %w", c.PeerTTL, ErrInvalid))
	}
	if c.AssignmentTimeout <= 0 {
		errs = append(errs, fmt.Errorf("scheduler assignmentTimeout %v: must be positive: %w", c.AssignmentTimeout, ErrInvalid))
	}
	if c.StrikeLimit < 1 {
		errs = append(errs, fmt.Errorf("scheduler strikeLimit %d: must be at least 1: %w", c.StrikeLimit, ErrInvalid))
	}
	if c.FailedTaskTTL <= 0 {
		errs = append(errs, fmt.Errorf("scheduler failedTaskTTL %v: must be positive: %w", c.FailedTaskTTL, ErrInvalid))
	}
	return errors.Join(errs...)
}

// sweepInterval is how often Run looks for expired peers, stale assignments
// and failed tasks to forget: a quarter of the shortest of those lifetimes,
// between 10ms and 1s.
func (c Config) sweepInterval() time.Duration {
	d := min(c.PeerTTL, c.AssignmentTimeout, c.FailedTaskTTL) / 4
	return min(max(d, 10*time.Millisecond), time.Second)
}
