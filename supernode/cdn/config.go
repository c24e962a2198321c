package cdn

import (
	"errors"
	"fmt"
	"time"

	"github.com/damselfly/damselfly/pkg/ratelimit"
)

// Config tunes the CDN.
type Config struct {
	// FetchTimeout bounds one source fetch, from the first request to the
	// commit of the content. Default 2h.
	FetchTimeout time.Duration `yaml:"fetchTimeout"`
	// MaxSourceSize is the most bytes the CDN takes from one source, in
	// bytes: a source announcing more is refused at once, and a source of
	// unknown length is cut (and the task fails) when it passes it, so an
	// endless body cannot fill the data directory. Default 64 GiB.
	MaxSourceSize int64 `yaml:"maxSourceSize"`
	// MinFreeSpace is the free space, in bytes, the CDN leaves on the data
	// directory's filesystem: a source whose announced size would leave
	// less is refused, and a fetch that gets there fails, so sources
	// together cannot fill the disk. Default 1 GiB.
	MinFreeSpace int64 `yaml:"minFreeSpace"`
	// MinSourceRate is the rate below which a digest task's source is
	// abandoned for the next candidate another member offered, averaged
	// over MinSourceRateWindow. A source slower than that is kept while
	// no other candidate is left. Default 1 MiB/s.
	MinSourceRate ratelimit.Rate `yaml:"minSourceRate"`
	// MinSourceRateWindow is the span MinSourceRate is averaged over, from
	// the first request of a source on. Default 10s.
	MinSourceRateWindow time.Duration `yaml:"minSourceRateWindow"`
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
	// DefaultMinFreeSpace is cdn.minFreeSpace's default, 1 GiB: room for
	// the metadata, logs and commits of the fetches in flight.
	DefaultMinFreeSpace = 1 << 30
	// DefaultMinSourceRate is cdn.minSourceRate's default, 1 MiB/s: an
	// origin that slow would keep a 1 GiB layer for a quarter of an hour.
	DefaultMinSourceRate = 1 << 20
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
	return c
}

// Validate reports every problem of the config.
func (c Config) Validate() error {
	var errs []error
	if c.FetchTimeout <= 0 {
		errs = append(errs, fmt.Errorf("cdn.fetchTimeout %s: must be positive", c.FetchTimeout))
	}
	if c.MaxSourceSize <= 0 {
		errs = append(errs, fmt.Errorf("cdn.maxSourceSize %d: must be positive", c.MaxSourceSize))
	}
	if c.MinFreeSpace <= 0 {
		errs = append(errs, fmt.Errorf("cdn.minFreeSpace %d: must be positive", c.MinFreeSpace))
	}
	if c.MinSourceRate < 0 {
		errs = append(errs, fmt.Errorf("cdn.minSourceRate: %d is negative", c.MinSourceRate))
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
