package manifestcache

import (
	"errors"
	"fmt"
	"time"

	"github.com/damselfly/damselfly/pkg/bytesize"
)

// Defaults applied by Config.ApplyDefaults.
const (
	DefaultTagTTL       = 30 * time.Second
	DefaultStaleIfError = 5 * time.Minute
	DefaultNegativeTTL  = 5 * time.Second
	DefaultAccessTTL    = time.Minute
	DefaultMaxBytes     = 64 << 20
	DefaultMaxEntries   = 100_000
	DefaultFillTimeout  = time.Minute
)

// ErrInvalid is wrapped by every configuration problem Validate reports.
var ErrInvalid = errors.New("invalid cache configuration")

// Config tunes the cache. The zero value, once ApplyDefaults has run, is a
// working configuration. Durations are Go durations in YAML ("30s", "5m").
type Config struct {
	// TagTTL is how long a tag's resolution (tag -> digest, per upstream,
	// repository, Accept set and credential partition) is served without
	// asking the upstream again.
	TagTTL time.Duration `yaml:"tagTTL"`
	// StaleIfError is how long past its TTL a tag resolution (or a
	// confirmed read permission, see AccessTTL) may still be served when the
	// upstream fails: a 5xx, 429, a connection error or timeout, or an answer
	// that does not match its digest. Never on 401, 403 or 404. Negative:
	// never serve stale.
	StaleIfError time.Duration `yaml:"staleIfError"`
	// NegativeTTL is how long an upstream 404 is remembered and answered
	// without asking again. Negative: 404s are not cached.
	NegativeTTL time.Duration `yaml:"negativeTTL"`
	// AccessTTL is how long a credential partition's confirmed permission to
	// read a manifest by digest is trusted before the upstream is asked
	// again (with a HEAD carrying that client's own credentials).
	AccessTTL time.Duration `yaml:"accessTTL"`
	// MaxBytes bounds the manifest bodies kept, in bytes; the least recently
	// used are evicted first. A manifest larger than this is served but not
	// kept.
	MaxBytes bytesize.Size `yaml:"maxBytes"`
	// MaxEntries bounds the small records kept besides the bodies (tag
	// resolutions, 404s, read permissions); least recently used first out.
	MaxEntries int `yaml:"maxEntries"`
	// FillTimeout bounds one upstream request made to fill the cache. The
	// request runs detached from the client that caused it, so a client that
	// hangs up does not fail the others waiting for the same answer.
	FillTimeout time.Duration `yaml:"fillTimeout"`
}

// ApplyDefaults returns c with every unset (zero) field set to its default.
func (c Config) ApplyDefaults() Config {
	if c.TagTTL == 0 {
		c.TagTTL = DefaultTagTTL
	}
	if c.StaleIfError == 0 {
		c.StaleIfError = DefaultStaleIfError
	}
	if c.NegativeTTL == 0 {
		c.NegativeTTL = DefaultNegativeTTL
	}
	if c.AccessTTL == 0 {
		c.AccessTTL = DefaultAccessTTL
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultMaxEntries
	}
	if c.FillTimeout == 0 {
		c.FillTimeout = DefaultFillTimeout
	}
	return c
}

// Validate reports every problem of c, joined; each names its key and wraps
// ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	if c.TagTTL <= 0 {
		errs = append(errs, fmt.Errorf("tagTTL %v: must be positive: %w", c.TagTTL, ErrInvalid))
	}
	if c.AccessTTL <= 0 {
		errs = append(errs, fmt.Errorf("accessTTL %v: must be positive: %w", c.AccessTTL, ErrInvalid))
	}
	if c.MaxBytes <= 0 {
		errs = append(errs, fmt.Errorf("maxBytes %d: must be positive: %w", c.MaxBytes, ErrInvalid))
	}
	if c.MaxEntries <= 0 {
		errs = append(errs, fmt.Errorf("maxEntries %d: must be positive: %w", c.MaxEntries, ErrInvalid))
	}
	if c.FillTimeout <= 0 {
		errs = append(errs, fmt.Errorf("fillTimeout %v: must be positive: %w", c.FillTimeout, ErrInvalid))
	}
	return errors.Join(errs...)
}

// staleWindow is StaleIfError, or 0 when stale serving is off.
func (c Config) staleWindow() time.Duration { return max(c.StaleIfError, 0) }
