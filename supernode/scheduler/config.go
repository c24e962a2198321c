package scheduler

import (
	"errors"
	"fmt"
	"time"

	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/schedapi"
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
	DefaultMaxOutstanding    = 16
	DefaultMinPieceRate      = 1 << 20
	DefaultAssignmentGrace   = 5 * time.Second
	DefaultCDNStartGrace     = 2 * time.Second
	DefaultMaxTasks          = 10000
	DefaultMaxTasksPerPeer   = 5000
	DefaultIdleTaskTTL       = 10 * time.Minute
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
	// AssignmentTimeout bounds how long an assignment holds an upload slot
	// of its source before it is given up and the piece can be assigned
	// again. The deadline actually used is usually much shorter: see
	// MinPieceRate.
	AssignmentTimeout time.Duration `yaml:"assignmentTimeout"`
	// MinPieceRate is the slowest transfer of one piece that the scheduler
	// waits for, in bytes per second: an assignment of a piece of n bytes
	// is given up after AssignmentGrace plus n/MinPieceRate (counted from
	// the transfer's start when the CDN reports starts), or
	// AssignmentTimeout if that is shorter. A requester that reported a
	// download rate gets at least what its rate shared by MaxOutstanding
	// transfers needs, within AssignmentTimeout.
	MinPieceRate ratelimit.Rate `yaml:"minPieceRate"`
	// AssignmentGrace is added to every assignment's transfer time: the
	// poll answer's trip to the requester, connecting, the first byte.
	AssignmentGrace time.Duration `yaml:"assignmentGrace"`
	// CDNStartGrace is how long a CDN assignment may wait for its transfer
	// to start, when the CDN's upload server reports starts
	// (WithStartReports). One not started by then is revoked, its slot
	// freed, and it counts as unused against its requester.
	CDNStartGrace time.Duration `yaml:"cdnStartGrace"`
	// MaxOutstanding is how many assignments one peer may have in flight
	// (handed out and not reported) in one task. A poll beyond it gets
	// fewer or none.
	MaxOutstanding int `yaml:"maxOutstanding"`
	// MaxTasks bounds the tasks the scheduler knows at once; AddTask beyond
	// it fails with ErrLimit.
	MaxTasks int `yaml:"maxTasks"`
	// MaxTasksPerPeer bounds the tasks one peer ID is a member of at once;
	// Join beyond it fails with ErrLimit.
	MaxTasksPerPeer int `yaml:"maxTasksPerPeer"`
	// IdleTaskTTL is how long a task that is not running (succeeded) stays
	// known with no members. It is then forgotten (see WithTaskForgotten);
	// the next registration finds it in the CDN's store or fetches again.
	IdleTaskTTL time.Duration `yaml:"idleTaskTTL"`
	// StrikeLimit is the number of failed transfers from one peer, in one
	// task, after which that peer is no longer used as a source in the task.
	// A digest or size mismatch strikes a peer out at once.
	StrikeLimit int `yaml:"strikeLimit"`
	// FailedTaskTTL is how long a failed task is kept, so that its peers
	// learn why it failed, before it is forgotten.
	FailedTaskTTL time.Duration `yaml:"failedTaskTTL"`
	// CutThrough lets the CDN serve a piece while it still receives it
	// from the origin (default true): the piece the CDN's sequential read
	// is filling (PieceArriving) is assigned from the CDN, within its
	// slots and the task's fanout like a piece only it has, marked
	// Arriving with no digest; the CDN sends the digest at the end of the
	// transfer, once the piece is published. false: only published pieces
	// are assigned.
	CutThrough *bool `yaml:"cutThrough"`
}

// cutThrough reports whether arriving pieces are assigned (CutThrough,
// true when unset).
func (c Config) cutThrough() bool { return c.CutThrough == nil || *c.CutThrough }

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
	if c.MaxOutstanding == 0 {
		c.MaxOutstanding = DefaultMaxOutstanding
	}
	if c.MinPieceRate == 0 {
		c.MinPieceRate = DefaultMinPieceRate
	}
	if c.AssignmentGrace == 0 {
		c.AssignmentGrace = DefaultAssignmentGrace
	}
	if c.CDNStartGrace == 0 {
		c.CDNStartGrace = DefaultCDNStartGrace
	}
	if c.MaxTasks == 0 {
		c.MaxTasks = DefaultMaxTasks
	}
	if c.MaxTasksPerPeer == 0 {
		c.MaxTasksPerPeer = DefaultMaxTasksPerPeer
	}
	if c.IdleTaskTTL == 0 {
		c.IdleTaskTTL = DefaultIdleTaskTTL
	}
	if c.CutThrough == nil {
		on := true
		c.CutThrough = &on
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
		errs = append(errs, fmt.Errorf("scheduler.peerUploadSlots %d: must be at least 1: %w", c.PeerUploadSlots, ErrInvalid))
	}
	if c.CDNUploadSlots < 1 {
		errs = append(errs, fmt.Errorf("scheduler.cdnUploadSlots %d: must be at least 1: %w", c.CDNUploadSlots, ErrInvalid))
	}
	if c.CDNPieceFanout < 1 {
		errs = append(errs, fmt.Errorf("scheduler.cdnPieceFanout %d: must be at least 1: %w", c.CDNPieceFanout, ErrInvalid))
	}
	if c.PeerTTL <= 0 {
		errs = append(errs, fmt.Errorf("scheduler.peerTTL %v: must be positive: %w", c.PeerTTL, ErrInvalid))
	}
	if c.AssignmentTimeout <= 0 {
		errs = append(errs, fmt.Errorf("scheduler.assignmentTimeout %v: must be positive: %w", c.AssignmentTimeout, ErrInvalid))
	}
	if c.StrikeLimit < 1 {
		errs = append(errs, fmt.Errorf("scheduler.strikeLimit %d: must be at least 1: %w", c.StrikeLimit, ErrInvalid))
	}
	if c.FailedTaskTTL <= 0 {
		errs = append(errs, fmt.Errorf("scheduler.failedTaskTTL %v: must be positive: %w", c.FailedTaskTTL, ErrInvalid))
	}
	if c.MaxOutstanding < 1 || c.MaxOutstanding > schedapi.MaxAssignments {
		errs = append(errs, fmt.Errorf("scheduler.maxOutstanding %d: must be 1 to %d: %w", c.MaxOutstanding, schedapi.MaxAssignments, ErrInvalid))
	}
	if c.MinPieceRate < 1 {
		errs = append(errs, fmt.Errorf("scheduler.minPieceRate %d: must be positive: %w", c.MinPieceRate, ErrInvalid))
	}
	if c.AssignmentGrace <= 0 {
		errs = append(errs, fmt.Errorf("scheduler.assignmentGrace %v: must be positive: %w", c.AssignmentGrace, ErrInvalid))
	}
	if c.CDNStartGrace <= 0 {
		errs = append(errs, fmt.Errorf("scheduler.cdnStartGrace %v: must be positive: %w", c.CDNStartGrace, ErrInvalid))
	}
	if c.MaxTasks < 1 {
		errs = append(errs, fmt.Errorf("scheduler.maxTasks %d: must be at least 1: %w", c.MaxTasks, ErrInvalid))
	}
	if c.MaxTasksPerPeer < 1 {
		errs = append(errs, fmt.Errorf("scheduler.maxTasksPerPeer %d: must be at least 1: %w", c.MaxTasksPerPeer, ErrInvalid))
	}
	if c.IdleTaskTTL <= 0 {
		errs = append(errs, fmt.Errorf("scheduler.idleTaskTTL %v: must be positive: %w", c.IdleTaskTTL, ErrInvalid))
	}
	return errors.Join(errs...)
}

// sweepInterval is how often Run looks for expired peers, stale assignments
// and failed or idle tasks to forget: a quarter of the shortest of those
// lifetimes, between 10ms and 1s.
func (c Config) sweepInterval() time.Duration {
	d := min(c.PeerTTL, c.AssignmentTimeout, c.AssignmentGrace, c.CDNStartGrace, c.FailedTaskTTL, c.IdleTaskTTL) / 4
	return min(max(d, 10*time.Millisecond), time.Second)
}

// transferTimeout is how long a transfer of n bytes to a requester that
// reported rate (0: none) may take: AssignmentGrace plus n at MinPieceRate,
// or at the requester's rate shared by MaxOutstanding transfers if that is
// slower, and never more than AssignmentTimeout.
func (c Config) transferTimeout(n, rate int64) time.Duration {
	r := int64(c.MinPieceRate)
	if rate > 0 {
		r = max(min(r, rate/int64(c.MaxOutstanding)), 1)
	}
	d := c.AssignmentGrace + time.Duration(float64(n)/float64(r)*float64(time.Second))
	return min(d, c.AssignmentTimeout)
}

// cdnLapse is how long a CDN assignment may wait for its transfer to start
// before it stops holding a CDN slot (it is revoked at CDNStartGrace): an
// eighth of the grace, at most 100ms. A peer told to fetch from the CDN
// asks it within milliseconds; one that does not costs others that long.
func (c Config) cdnLapse() time.Duration { return min(c.CDNStartGrace/8, 100*time.Millisecond) }
