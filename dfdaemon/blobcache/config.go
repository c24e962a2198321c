package blobcache

import (
	"errors"
	"fmt"
	"time"

	"github.com/damselfly/damselfly/pkg/bytesize"
)

// Defaults of Config.
const (
	DefaultQuota         bytesize.Size = 20 << 30
	DefaultLowWater                    = 0.9
	DefaultCheckInterval               = time.Minute
	DefaultSeedTTL                     = time.Hour
	DefaultMaxSeeds                    = 1000
	DefaultDiskHighWater               = 0.90
	DefaultDiskLowWater                = 0.85
	DefaultScrubInterval               = 24 * time.Hour
	DefaultScrubRate     bytesize.Size = 32 << 20
)

// Config bounds the node's cache.
type Config struct {
	// Quota is the most bytes of committed content the node keeps (default
	// 20GiB). Content in use may exceed it until released.
	Quota bytesize.Size `yaml:"quota"`
	// LowWater is the fraction of Quota eviction frees space down to
	// (default 0.9), so that one commit does not trigger eviction after
	// eviction.
	LowWater float64 `yaml:"lowWater"`
	// CheckInterval is how often usage is checked besides after each
	// commit, and seeds past SeedTTL are dropped (default 1m).
	CheckInterval time.Duration `yaml:"checkInterval"`
	// SeedTTL is how long after its last local use a blob is still offered
	// to other peers through the supernode (default 1h).
	SeedTTL time.Duration `yaml:"seedTTL"`
	// MaxSeeds bounds how many finished blobs are offered to other peers
	// at once (default 1000); past it the least recently used stop being
	// offered first. Each one costs an open file and a line in every
	// heartbeat to the supernode.
	MaxSeeds int `yaml:"maxSeeds"`
	// DiskHighWater is the fraction of the filesystem's size that, once in
	// use (by anything), makes the cache evict (default 0.9), whatever its
	// quota; DiskLowWater is the fraction it evicts down to (default
	// 0.85). A download of known size first makes room for itself so that
	// it stays under DiskHighWater.
	DiskHighWater float64 `yaml:"diskHighWater"`
	DiskLowWater  float64 `yaml:"diskLowWater"`
	// ScrubInterval is how often every committed blob is hashed again in
	// the background (default 24h); a blob that no longer matches its
	// digest is removed and fetched again when next asked for.
	ScrubInterval time.Duration `yaml:"scrubInterval"`
	// ScrubRate bounds the bytes per second the scrub reads (default
	// 32MiB), so it never competes with pulls.
	ScrubRate bytesize.Size `yaml:"scrubRate"`
	// BufferedIO writes and reads downloads and blobs through the page
	// cache. By default (false) they go around it with O_DIRECT where the
	// filesystem allows, and the newest pieces are served from memory:
	// copying into new page-cache pages costs more CPU than receiving and
	// hashing the bytes (docs/benchmarks.md).
	BufferedIO bool `yaml:"bufferedIO"`
}

// ApplyDefaults returns c with unset fields set to their defaults.
func (c Config) ApplyDefaults() Config {
	if c.Quota == 0 {
		c.Quota = DefaultQuota
	}
	if c.LowWater == 0 {
		c.LowWater = DefaultLowWater
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = DefaultCheckInterval
	}
	if c.SeedTTL == 0 {
		c.SeedTTL = DefaultSeedTTL
	}
	if c.MaxSeeds == 0 {
		c.MaxSeeds = DefaultMaxSeeds
	}
	if c.DiskHighWater == 0 {
		c.DiskHighWater = DefaultDiskHighWater
	}
	if c.DiskLowWater == 0 {
		c.DiskLowWater = min(DefaultDiskLowWater, c.DiskHighWater)
	}
	if c.ScrubInterval == 0 {
		c.ScrubInterval = DefaultScrubInterval
	}
	if c.ScrubRate == 0 {
		c.ScrubRate = DefaultScrubRate
	}
	return c
}

// Validate reports every value out of range, each naming its key.
func (c Config) Validate() error {
	var errs []error
	if c.Quota <= 0 {
		errs = append(errs, fmt.Errorf("cache.quota %d: must be positive", c.Quota))
	}
	if c.LowWater <= 0 || c.LowWater > 1 {
		errs = append(errs, fmt.Errorf("cache.lowWater %g: must be in (0, 1]", c.LowWater))
	}
	if c.CheckInterval <= 0 {
		errs = append(errs, fmt.Errorf("cache.checkInterval %s: must be positive", c.CheckInterval))
	}
	if c.SeedTTL <= 0 {
		errs = append(errs, fmt.Errorf("cache.seedTTL %s: must be positive", c.SeedTTL))
	}
	if c.MaxSeeds < 1 {
		errs = append(errs, fmt.Errorf("cache.maxSeeds %d: must be at least 1", c.MaxSeeds))
	}
	if c.DiskHighWater <= 0 || c.DiskHighWater > 1 {
		errs = append(errs, fmt.Errorf("cache.diskHighWater %g: must be in (0, 1]", c.DiskHighWater))
	}
	if c.DiskLowWater <= 0 || c.DiskLowWater > c.DiskHighWater {
		errs = append(errs, fmt.Errorf("cache.diskLowWater %g: must be in (0, cache.diskHighWater]", c.DiskLowWater))
	}
	if c.ScrubInterval <= 0 {
		errs = append(errs, fmt.Errorf("cache.scrubInterval %s: must be positive", c.ScrubInterval))
	}
	if c.ScrubRate <= 0 {
		errs = append(errs, fmt.Errorf("cache.scrubRate %d: must be positive", c.ScrubRate))
	}
	return errors.Join(errs...)
}
