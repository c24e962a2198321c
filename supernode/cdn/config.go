package cdn

import (
	"errors"
	"fmt"
	"time"

	"github.com/damselfly/damselfly/pkg/bytesize"
	"github.com/damselfly/damselfly/pkg/ratelimit"
)

// Config tunes the CDN.
type Config struct {
	// FetchTimeout bounds one source fetch, from the first request to the
	// commit of the content. Default 2h.
	FetchTimeout time.Duration `yaml:"fetchTimeout"`
	// MaxSourceSize is the most bytes the CDN takes from one source: a
	// source announcing more is refused at once, and a source of
	// unknown length is cut (and the task fails) when it passes it, so an
	// endless body cannot fill the data directory. Default 64 GiB.
	MaxSourceSize bytesize.Size `yaml:"maxSourceSize"`
	// MinFreeSpace is the free space the CDN leaves on the data
	// directory's filesystem: a fetch that would leave less first evicts
	// committed content not in use (see Quota); when nothing more can be
	// evicted, a source whose announced size would leave less is refused,
	// and a fetch that gets there fails, so sources together cannot fill
	// the disk. Default 1 GiB.
	MinFreeSpace bytesize.Size `yaml:"minFreeSpace"`
	// Quota is the most bytes of committed content the CDN keeps; past it,
	// the least recently used content not in use (no fetch, no member, no
	// upload in flight) is evicted down to QuotaLowWater of it, and its
	// tasks are dropped from the scheduler. 0 (the default) sets no quota:
	// the store is then bounded by the free-space watermarks alone, which
	// track the disk whatever its size.
	Quota bytesize.Size `yaml:"quota"`
	// DiskHighWater is the fraction of the data directory's filesystem
	// that, once in use (by anything), makes the CDN evict content not in
	// use, whatever its quota, down to DiskLowWater. A fetch of known size
	// first makes room for itself. Defaults 0.9 and 0.85.
	DiskHighWater float64 `yaml:"diskHighWater"`
	DiskLowWater  float64 `yaml:"diskLowWater"`
	// ScrubInterval is how often every committed blob is hashed again in
	// the background, against its digest and its piece digests (default
	// 24h); content that fails is removed, its tasks dropped and fetched
	// again from a source at their next registration.
	ScrubInterval time.Duration `yaml:"scrubInterval"`
	// ScrubRate bounds the bytes per second the scrub reads (default
	// 32MiB), so it does not compete with fetches and uploads.
	ScrubRate bytesize.Size `yaml:"scrubRate"`
	// MinSourceRate is the rate below which a digest task's source is
	// abandoned for the next candidate another member offered, averaged
	// over MinSourceRateWindow. A source slower than that is kept while
	// no other candidate is left. Default 1 MiB/s.
	MinSourceRate ratelimit.Rate `yaml:"minSourceRate"`
	// MinSourceRateWindow is the span MinSourceRate and StallRate are
	// averaged over, from the first request of a source on. Default 10s.
	MinSourceRateWindow time.Duration `yaml:"minSourceRateWindow"`
	// StallRate is the rate below which any source, even the only one, is
	// stalled (default 16KiB/s): its connection is cut and the fetch resumes
	// from the stored pieces with the same source, after a pause, at most
	// StallRetries times in a row; then the source is given up (and with it
	// a task that has no other). A source that trickles a byte a second ends
	// its task in about a minute, not at cdn.fetchTimeout.
	StallRate ratelimit.Rate `yaml:"stallRate"`
	// StallRetries is how many times in a row a stalled source is asked
	// again (default 3).
	StallRetries int `yaml:"stallRetries"`
	// UploadRate caps the bytes per second the CDN sends to peers, over
	// all its piece uploads, as a network link of that speed would. 0
	// (the default) means unlimited.
	UploadRate ratelimit.Rate `yaml:"uploadRate"`
	// Dir holds piece metadata (meta/<hex>.json) and the content digest of
	// URL tasks (tasks/<task>.json). The binary sets it from its data
	// directory; it is not read from the config file.
	Dir string `yaml:"-"`
}

const (
	// DefaultMaxSourceSize is cdn.maxSourceSize's default, 64 GiB: above
	// the largest image layers and files seen in clusters (model weights
	// of tens of GiB), far below what an endless body would write.
	DefaultMaxSourceSize = 64 << 30
	// DefaultStallRate is cdn.stallRate's default, 16 KiB/s: far under any
	// origin worth fetching from, far over a trickle.
	DefaultStallRate = 16 << 10
	// DefaultStallRetries is cdn.stallRetries' default.
	DefaultStallRetries = 3
	// DefaultMinFreeSpace is cdn.minFreeSpace's default, 1 GiB: room for
	// the metadata, logs and commits of the fetches in flight.
	DefaultMinFreeSpace = 1 << 30
	// DefaultMinSourceRate is cdn.minSourceRate's default, 1 MiB/s: an
	// origin that slow would keep a 1 GiB layer for a quarter of an hour.
	DefaultMinSourceRate = 1 << 20
	// DefaultDiskHighWater and DefaultDiskLowWater are the free-space
	// watermarks' defaults, as dfdaemon's cache.
	DefaultDiskHighWater = 0.90
	DefaultDiskLowWater  = 0.85
	// DefaultScrubInterval and DefaultScrubRate are the scrub's defaults,
	// as dfdaemon's cache.
	DefaultScrubInterval = 24 * time.Hour
	DefaultScrubRate     = 32 << 20
	// quotaLowWater is the fraction of Quota eviction frees space down to,
	// so that one commit does not trigger eviction after eviction.
	quotaLowWater = 0.9
)

// ApplyDefaults fills unset fields.
func (c Config) ApplyDefaults() Config {
	if c.FetchTimeout == 0 {
		c.FetchTimeout = 2 * time.Hour
	}
	if c.MaxSourceSize == 0 {
		c.MaxSourceSize = DefaultMaxSourceSize
	}
	if c.MinFreeSpace == 0 {
		c.MinFreeSpace = DefaultMinFreeSpace
	}
	if c.MinSourceRate == 0 {
		c.MinSourceRate = DefaultMinSourceRate
	}
	if c.MinSourceRateWindow == 0 {
		c.MinSourceRateWindow = 10 * time.Second
	}
	if c.StallRate == 0 {
		c.StallRate = DefaultStallRate
	}
	if c.StallRetries == 0 {
		c.StallRetries = DefaultStallRetries
	}
	if c.DiskHighWater == 0 {
		c.DiskHighWater = DefaultDiskHighWater
	}
	if c.DiskLowWater == 0 {
		c.DiskLowWater = DefaultDiskLowWater
	}
	if c.ScrubInterval == 0 {
		c.ScrubInterval = DefaultScrubInterval
	}
	if c.ScrubRate == 0 {
		c.ScrubRate = DefaultScrubRate
	}
	return c
}

// Validate reports every problem of the config.
func (c Config) Validate() error {
	var errs []error
	if c.FetchTimeout <= 0 {
		errs = append(errs, fmt.Errorf("cdn.fetchTimeout %s: must be positive", c.FetchTimeout))
	}
	if c.MaxSourceSize <= 0 {
		errs = append(errs, fmt.Errorf("cdn.maxSourceSize %s: must be positive", c.MaxSourceSize))
	}
	if c.MinFreeSpace <= 0 {
		errs = append(errs, fmt.Errorf("cdn.minFreeSpace %s: must be positive", c.MinFreeSpace))
	}
	if c.Quota < 0 {
		errs = append(errs, fmt.Errorf("cdn.quota %d: is negative (0 means no quota)", int64(c.Quota)))
	}
	if c.DiskHighWater <= 0 || c.DiskHighWater > 1 {
		errs = append(errs, fmt.Errorf("cdn.diskHighWater %g: must be in (0, 1]", c.DiskHighWater))
	}
	if c.DiskLowWater <= 0 || c.DiskLowWater > c.DiskHighWater {
		errs = append(errs, fmt.Errorf("cdn.diskLowWater %g: must be in (0, cdn.diskHighWater]", c.DiskLowWater))
	}
	if c.ScrubInterval < 0 {
		errs = append(errs, fmt.Errorf("cdn.scrubInterval %s: is negative", c.ScrubInterval))
	}
	if c.ScrubRate <= 0 {
		errs = append(errs, fmt.Errorf("cdn.scrubRate %s: must be positive", c.ScrubRate))
	}
	if c.MinSourceRate < 0 {
		errs = append(errs, fmt.Errorf("cdn.minSourceRate: %d is negative", c.MinSourceRate))
	}
	if c.StallRate < 0 {
		errs = append(errs, fmt.Errorf("cdn.stallRate: %d is negative", c.StallRate))
	}
	if c.StallRate > c.MinSourceRate && c.MinSourceRate > 0 {
		errs = append(errs, fmt.Errorf("cdn.stallRate %s: must not exceed cdn.minSourceRate (%s)", c.StallRate, c.MinSourceRate))
	}
	if c.StallRetries < 0 {
		errs = append(errs, fmt.Errorf("cdn.stallRetries %d: must not be negative", c.StallRetries))
	}
	if c.MinSourceRateWindow <= 0 {
		errs = append(errs, fmt.Errorf("cdn.minSourceRateWindow %s: must be positive", c.MinSourceRateWindow))
	}
	if c.UploadRate < 0 {
		errs = append(errs, fmt.Errorf("cdn.uploadRate: %d is negative (0 means unlimited)", c.UploadRate))
	}
	if c.Dir == "" {
		errs = append(errs, errors.New("cdn dir: must be set"))
	}
	return errors.Join(errs...)
}
